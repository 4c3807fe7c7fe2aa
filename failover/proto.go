package failover

// This file is the sync channel's codec (see "The sync channel" in doc.go):
// it turns Messages into authenticated frames and bytes back into
// Messages. It does no I/O and reads no clock, so it is tested and fuzzed
// on its own; the failover code owns the connection, the timers and the
// counters.
//
// # Frame
//
// Every field is big-endian.
//
//	length  uint32   bytes after this field: 33 + len(body); at most MaxFrame-4
//	type    uint8    MsgType
//	epoch   uint64   sender's epoch
//	seq     uint64   per-direction frame counter: the first frame (HELLO) is 1, then +1
//	body    ...      type-specific, below
//	mac     [16]byte the frame's tag, below, over length..body
//
// HELLO frames are tagged with HMAC-SHA256(key, 32 zero bytes || frame),
// truncated to its first 16 bytes: neither side knows the other's nonce
// yet. Every later frame is tagged with AES-256-GMAC (GCM with the frame
// as additional data and no plaintext, as IPsec's RFC 4543 does) under a
// key of the session and direction:
//
//	HKDF-SHA256(secret = key, salt = none,
//	            info = "rfsis sync session v2" || sender nonce || receiver nonce)
//
// with the frame's seq as the GCM nonce (4 zero bytes, then seq). GMAC is
// used because the tag is computed over every replicated byte twice (once
// per node): HMAC-SHA256 was a third of each node's CPU under bulk
// transfer, GMAC runs about five times faster (BENCHMARKS.md, run I).
//
// Why this is safe: GCM must never see the same key and nonce twice for
// different frames. A direction's key includes the sender's nonce, fresh
// for every connection (NewNonce), and seq never repeats within one
// connection, so no sender ever reuses a pair. Putting the sender first
// makes the two directions of one session use different keys: a frame
// cannot be reflected back to the node that sent it (a main's HEARTBEAT
// echoed to it would otherwise pass as proof that the backup is alive).
// The receiver verifies with the seq the frame carries, which the tag
// covers, so an authentic frame out of place is reported as a replay
// rather than as a bad tag.
//
// The tag is 128 bits. A forger gets one try per connection (any error
// drops the connection), so 2^-128 per try is ample; the HELLO's HMAC is
// truncated to the same length to keep one frame layout.
//
// # Bodies
//
// Connection ids (conn) are 12 bytes: local IPv4 address [4], local port
// uint16, remote IPv4 address [4], remote port uint16, as the main sees the
// connection. Every body has a fixed layout; a body that is shorter or
// longer than its layout says, or whose length prefix disagrees with what
// is left, is ErrMalformed. Bytes are never ignored, so there is exactly
// one way to encode a message (OPEN aside, whose snapshot is JSON).
//
//	HELLO      role uint8, nonce [16]byte, version uint16, flags uint8   (20 bytes)
//	HEARTBEAT  sent int64 (Unix nanoseconds, two's complement), ping uint64,
//	           pong uint64, role uint8, flags uint8                      (26)
//	SYNCACK    applied uint64                                            (8)
//	OPEN       conn, n uint32, snapshot [n]byte (tcp.Snapshot.MarshalBinary)
//	IN         conn, seq uint32 (tcp.Seq of the first byte), n uint32, data [n]byte
//	OUT        as IN
//	ACKED      conn, snd.una, snd.wnd, ts.recent, rcv.adv, received.end,
//	           written.end (uint32 each), flags uint8 (bit 0 peer FIN,
//	           bit 1 FIN queued; other bits zero)                        (37)
//	CLOSE      conn, kind uint8 (1 FIN, 2 RST, 3 GONE)                   (13)
//	STANDDOWN  empty
//	REJOIN     conn, written uint32 (tcp.Seq), m uint32, state [m]byte,
//	           n uint32, snapshot [n]byte; m at most stack.MaxCheckpointState
//
// role is a Role (role.go); any other value is ErrMalformed. The flags of
// HELLO and HEARTBEAT have bit 0 set when the sender is configured as the
// backup ("backup": true), which the role machine needs to break ties;
// other bits are zero. HEARTBEAT is the role machine's PING (ping != 0,
// its id) and PONG (pong != 0, the id of the latest PING received): a
// PONG that echoes a recent PING proves a round trip through the peer's
// stack, which a stream of one-way beats cannot.
//
// The frame header, and HELLO's first 19 bytes (role, nonce, version),
// never change between protocol versions, and the Decoder checks a HELLO's
// version before its length, so a node can always report a version
// mismatch (ErrVersion) instead of a puzzling MAC or layout error.
//
// # Handshake and what a HELLO proves
//
// Each side sends HELLO as its first frame, without waiting for the other,
// with a fresh random nonce (NewNonce). The HELLO is MAC'd under the
// all-zero context, so anyone who once recorded a HELLO can replay it into
// a new connection. That is harmless for the session: the replayed HELLO
// only contributes a nonce, and every later frame to us must be tagged
// under a key derived from our own fresh nonce, which no earlier
// session used, so without the key nothing after the replayed HELLO will
// verify and the connection dies at the first frame. It does mean that a
// HELLO alone proves nothing about the peer being alive, or about its
// epoch and role now. Decoder.Live reports when it does: after the first
// frame under the session key has verified. Act on nothing a HELLO
// says (epoch, role) until then; every side should send a frame (a
// HEARTBEAT) right after its HELLO so that this happens at once.
//
// A HELLO that carries our own nonce is our HELLO reflected back to us, and
// is refused (ErrReplay); an all-zero nonce is refused (ErrMalformed).
//
// The channel is authenticated, not encrypted: connection payloads cross
// in clear. The nodes' own link is expected to be private.
//
// # Errors
//
// Every decoding error wraps exactly one of the sentinels below, with
// context, so the caller can count by kind with errors.Is (an OPEN whose
// snapshot does not validate also wraps tcp.ErrBadSnapshot). After any error
// the Decoder is poisoned: it drops further input and returns the same
// error forever. The caller logs it, counts it, and drops the connection;
// nothing of a rejected frame has been returned, so nothing of it can be
// applied. The Encoder refuses, with the same sentinels, to produce any
// frame the Decoder would reject; an encoding error consumes no seq and
// does not poison the Encoder.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/netip"

	"github.com/zppratt/rfsis/stack"
	"github.com/zppratt/rfsis/stack/tcp"
)

// Sentinel errors of the codec, for errors.Is.
var (
	// ErrTooLarge: a frame's length field is over MaxFrame-4 (checked as
	// soon as the 4 bytes are in, before any of the rest is buffered), or
	// a message to encode would not fit.
	ErrTooLarge = errors.New("failover: sync frame too large")
	// ErrMalformed: a length field too small for the header and MAC, or a
	// body that does not match its type's layout (short, trailing bytes,
	// a length prefix that disagrees, a field out of its domain, a snapshot
	// that does not validate).
	ErrMalformed = errors.New("failover: malformed sync frame")
	// ErrBadMAC: the frame was not MAC'd with our key in this session and
	// direction (wrong key, another session, a corrupted frame).
	ErrBadMAC = errors.New("failover: sync frame MAC mismatch")
	// ErrReplay: an authentic frame out of sequence (replayed, reordered,
	// or following a lost one), or our own HELLO reflected back.
	ErrReplay = errors.New("failover: sync frame out of sequence")
	// ErrUnknownType: an authentic frame of a type this version does not
	// know.
	ErrUnknownType = errors.New("failover: unknown sync message type")
	// ErrVersion: the peer's HELLO speaks another protocol version.
	ErrVersion = errors.New("failover: sync protocol version mismatch")
	// ErrUnexpected: an authentic, well-formed message that is not allowed
	// at this point of the session (anything but HELLO first, a second
	// HELLO), or, when encoding, a frame before our HELLO or before Bind.
	ErrUnexpected = errors.New("failover: unexpected sync message")
)

// Sizes of the frame and its parts.
const (
	// ProtocolVersion is carried in HELLO; both sides must speak the same.
	// Version 2 replaced the HMAC of frames after HELLO with GMAC;
	// version 3 added OUTSUM and CHECKED.
	ProtocolVersion uint16 = 3

	// MaxFrame is the largest frame on the wire, length field included, so
	// a buffer of MaxFrame bytes always holds a whole frame. It bounds what
	// a hostile peer can make the Decoder buffer.
	MaxFrame = 1 << 20

	headerLen = 4 + 1 + 8 + 8 // length, type, epoch, seq
	macLen    = 16
	// minLength is the smallest valid length field: an empty body.
	minLength = headerLen - 4 + macLen

	// MaxBody is the largest body a frame can carry.
	MaxBody = MaxFrame - headerLen - macLen

	connLen = 12
	// MaxData is the most bytes one IN or OUT message can carry: split
	// longer runs into several messages.
	MaxData = MaxBody - connLen - 4 - 4
	// MaxSnapshot is the largest encoded tcp.Snapshot an OPEN can carry.
	// Snapshots are taken in SYN-RECEIVED, with empty buffers, a few
	// hundred bytes.
	MaxSnapshot = MaxBody - connLen - 4
)

// Fixed body sizes.
const (
	helloLen     = 1 + 16 + 2 + 1
	heartbeatLen = 8 + 8 + 8 + 1 + 1
	u64Len       = 8
	ackedLen     = connLen + 6*4 + 1
	closeLen     = connLen + 1
	outSumLen    = connLen + 3*4
	checkedLen   = connLen + 4
)

// MsgType is a frame's type byte.
type MsgType uint8

// The message types. Zero is not a type, so a zeroed frame is refused.
const (
	// MsgHello opens a session in each direction: role, nonce, version.
	MsgHello MsgType = iota + 1
	// MsgHeartbeat is the liveness beat, a PING or a PONG of the role
	// machine (or both), with the sender's role and its clock when sent
	// (for logs of round trips and skew, not to decide with).
	MsgHeartbeat
	// MsgSyncAck acknowledges, cumulatively, every frame of the peer up to
	// and including seq Applied as applied. No longer sent: the sync
	// connection's TCP acknowledgements release the main's gates
	// (doc.go, "Acknowledgements"); received, it is ignored.
	MsgSyncAck
	// MsgOpen ships a new connection: its id and its tcp.Snapshot taken in
	// SYN-RECEIVED (replication invariant 1).
	MsgOpen
	// MsgIn ships in-order inbound bytes starting at DataSeq (invariant 2).
	MsgIn
	// MsgOut ships bytes the application wrote starting at DataSeq
	// (invariant 3).
	MsgOut
	// MsgAcked ships the client's progress, tcp.Progress (invariant 5 of
	// doc.go): what the client acknowledged, its window and timestamp,
	// our advertised edge, and where FINs stand. doc.go lists only the
	// first four; the FIN flags and the received and written ends are what
	// tcp.Conn.StandbyProgress needs to apply a FIN at the right byte,
	// and the client's FIN has no other message to travel in.
	MsgAcked
	// MsgClose tells that a connection is closing or gone (invariant 4).
	MsgClose
	// MsgStandDown tells the peer that the sender stops serving: a main
	// that shuts down on purpose sends it so that the backup takes over at
	// once instead of waiting heartbeat_timer x heartbeat_misses, and a
	// main that learned of a higher epoch sends it to confirm it has gone
	// quiet. It has no body; what to do with it is the role machine's
	// business.
	MsgStandDown
	// MsgRejoin ships a connection that was open before this backup
	// joined, from its application's checkpoint (stack.Rejoin): the
	// connection as it is now, with its receive side starting at the
	// checkpoint, the position of the application's output at the
	// checkpoint, and the checkpoint's state.
	MsgRejoin
	// MsgOutSum stands for an OUT whose bytes the backup's hot standby
	// writes itself: SumLen bytes from DataSeq, known by their CRC-32C,
	// Sum. The main sends them only once the backup has checked its own
	// against it (CHECKED): invariant 3 in its hot-standby form.
	MsgOutSum
	// MsgChecked, from the backup, says that its standby's output for the
	// connection is checked against the main's OUTSUMs up to DataSeq.
	MsgChecked

	msgTypeEnd // one past the last known type
)

var msgTypeNames = [...]string{
	MsgHello: "HELLO", MsgHeartbeat: "HEARTBEAT", MsgSyncAck: "SYNCACK",
	MsgOpen: "OPEN", MsgIn: "IN", MsgOut: "OUT", MsgAcked: "ACKED",
	MsgClose: "CLOSE", MsgStandDown: "STANDDOWN", MsgRejoin: "REJOIN",
	MsgOutSum: "OUTSUM", MsgChecked: "CHECKED",
}

func (t MsgType) String() string {
	if t > 0 && t < msgTypeEnd {
		return msgTypeNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// CloseKind says how a connection ends, in a CLOSE message.
type CloseKind uint8

// The close kinds. Zero is not a kind.
const (
	// CloseFIN: the application closed its side; our FIN follows the last
	// OUT byte shipped. The connection lives on until the FINs are acked.
	CloseFIN CloseKind = iota + 1
	// CloseRST: the main resets the connection (an abort, or the protocol
	// demands it); the backup drops its copy.
	CloseRST
	// CloseGone: the connection finished normally and left the main's
	// table (both FINs acknowledged, TIME-WAIT over, or timed out); the
	// backup drops its copy.
	CloseGone
	// CloseDropped: the sender stops replicating the connection, which
	// goes on unprotected. Either node sends it: the main when it cannot
	// ship the connection's changes, the backup when it cannot apply them
	// (a gap, a full accept queue). One connection's trouble must not cost
	// the session, which every other connection and the heartbeats share.
	CloseDropped

	closeKindEnd
)

func (k CloseKind) String() string {
	switch k {
	case CloseFIN:
		return "FIN"
	case CloseRST:
		return "RST"
	case CloseGone:
		return "GONE"
	case CloseDropped:
		return "DROPPED"
	}
	return fmt.Sprintf("CloseKind(%d)", uint8(k))
}

// Flags of HELLO and HEARTBEAT.
const (
	flagStartAsBackup = 1 << 0
)

// Flags of ACKED.
const (
	ackedPeerFin   = 1 << 0
	ackedFinQueued = 1 << 1
	ackedAllFlags  = ackedPeerFin | ackedFinQueued
)

// Key authenticates the sync channel.
type Key [32]byte

// DeriveKey turns the configured sync_key into a Key. The empty string
// gives the all-zero Key, the key of "insecure": true: the caller checks
// config.RequireSyncKey first. A secret of any length maps to a full-size
// key, so a sync_key that is not random hex still uses all of its bytes;
// the label keeps this key apart from any other use of the same secret.
func DeriveKey(secret string) Key {
	if secret == "" {
		return Key{}
	}
	h := sha256.New()
	h.Write([]byte("rfsis sync key v1\x00"))
	h.Write([]byte(secret))
	var k Key
	h.Sum(k[:0])
	return k
}

// Nonce is a session's random contribution from one side, carried in its
// HELLO.
type Nonce [16]byte

// NewNonce returns a fresh random nonce. Use a new one for every
// connection.
func NewNonce() Nonce {
	var n Nonce
	rand.Read(n[:]) // never fails: it crashes the program instead
	return n
}

// Message is one sync message, decoded or to encode. Type says which of
// the fields below mean something; the others are zero in decoded
// messages and ignored when encoding. Keeping one flat struct rather than
// a type per message lets the Decoder return messages without boxing them
// in an interface, which would allocate.
type Message struct {
	Type  MsgType
	Epoch uint64 // sender's epoch; the caller sets it when encoding
	Seq   uint64 // frame counter; the Encoder assigns it and stores it here

	// HELLO, HEARTBEAT: the sender's Role as its wire byte (it must be
	// Valid), and its "backup" setting.
	Role          uint8
	StartAsBackup bool

	// HELLO. The Encoder fills Nonce and Version itself.
	Nonce   Nonce
	Version uint16

	// HEARTBEAT: the sender's clock in Unix nanoseconds; the role
	// machine's PING id and PONG echo (0 when not a PING, not a PONG).
	Sent       int64
	Ping, Pong uint64

	// SYNCACK: the highest seq of the receiver's frames applied.
	Applied uint64

	// OPEN, IN, OUT, ACKED, CLOSE: the connection, IPv4 only.
	Conn tcp.FourTuple

	// OPEN, REJOIN: the connection's state; its ID must equal Conn.
	Snapshot *tcp.Snapshot

	// REJOIN: where the application's output stood at its checkpoint,
	// and the checkpoint's state (aliasing the Decoder's buffer, as Data).
	Written tcp.Seq
	State   []byte

	// IN, OUT: Data starts at sequence number DataSeq. In decoded messages
	// Data aliases the Decoder's buffer (see Decoder.Next) and is nil when
	// empty. OUTSUM: the SumLen bytes from DataSeq have the CRC-32C Sum.
	// CHECKED: DataSeq is the end of the output checked.
	DataSeq tcp.Seq
	Data    []byte
	SumLen  uint32
	Sum     uint32

	// ACKED.
	Progress tcp.Progress

	// CLOSE.
	Close CloseKind
}

// String describes the message for logs, without payload bytes.
func (m *Message) String() string {
	head := fmt.Sprintf("%v epoch=%d seq=%d", m.Type, m.Epoch, m.Seq)
	switch m.Type {
	case MsgHello:
		return fmt.Sprintf("%s role=%v backup=%t version=%d", head, Role(m.Role), m.StartAsBackup, m.Version)
	case MsgHeartbeat:
		return fmt.Sprintf("%s role=%v backup=%t ping=%d pong=%d sent=%d", head, Role(m.Role), m.StartAsBackup, m.Ping, m.Pong, m.Sent)
	case MsgSyncAck:
		return fmt.Sprintf("%s applied=%d", head, m.Applied)
	case MsgOpen:
		return fmt.Sprintf("%s conn=%v", head, m.Conn)
	case MsgRejoin:
		return fmt.Sprintf("%s conn=%v written=%d state=%d", head, m.Conn, m.Written, len(m.State))
	case MsgIn, MsgOut:
		return fmt.Sprintf("%s conn=%v at=%d len=%d", head, m.Conn, m.DataSeq, len(m.Data))
	case MsgOutSum:
		return fmt.Sprintf("%s conn=%v at=%d len=%d crc32c=%08x", head, m.Conn, m.DataSeq, m.SumLen, m.Sum)
	case MsgChecked:
		return fmt.Sprintf("%s conn=%v end=%d", head, m.Conn, m.DataSeq)
	case MsgAcked:
		p := m.Progress
		return fmt.Sprintf("%s conn=%v una=%d wnd=%d ts=%d adv=%d rcvd=%d wrtn=%d peerfin=%t finq=%t", head, m.Conn,
			p.SndUna, p.SndWnd, p.TSRecent, p.RcvAdvEdge, p.ReceivedEnd, p.WrittenEnd, p.PeerFin, p.FinQueued)
	case MsgClose:
		return fmt.Sprintf("%s conn=%v kind=%v", head, m.Conn, m.Close)
	}
	return head
}

// macState computes and checks frame tags without allocating: HMAC for
// HELLO frames, GMAC under the direction's session key for the rest.
type macState struct {
	key   Key
	hello hash.Hash // HMAC-SHA256 under key
	gmac  cipher.AEAD
	nonce [12]byte
	sum   [sha256.Size]byte
}

// sessionKeyInfo labels the HKDF that derives a direction's key.
const sessionKeyInfo = "rfsis sync session v2"

// helloCtx is what HELLO's HMAC covers before the frame: the zero context
// (the nonces are not known yet).
var helloCtx [32]byte

func (s *macState) init(key Key) {
	s.key = key
	s.hello = hmac.New(sha256.New, key[:])
}

// bind derives the key of frames from sender to receiver.
func (s *macState) bind(sender, receiver Nonce) {
	info := make([]byte, 0, len(sessionKeyInfo)+2*len(Nonce{}))
	info = append(append(append(info, sessionKeyInfo...), sender[:]...), receiver[:]...)
	k, err := hkdf.Key(sha256.New, s.key[:], nil, string(info), 32)
	if err != nil {
		panic(err) // only for a length HKDF cannot produce
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		panic(err) // only for a bad key length
	}
	if s.gmac, err = cipher.NewGCM(block); err != nil {
		panic(err) // only for a nonstandard block size or tag size
	}
}

// helloTag returns the truncated HMAC of a HELLO frame (length through
// body). The result aliases s.sum.
func (s *macState) helloTag(frame []byte) []byte {
	s.hello.Reset()
	s.hello.Write(helloCtx[:])
	s.hello.Write(frame)
	return s.hello.Sum(s.sum[:0])[:macLen]
}

// tag returns the GMAC of frame (length through body) with seq as the
// nonce; bind must have been called. The result aliases s.sum.
func (s *macState) tag(seq uint64, frame []byte) []byte {
	binary.BigEndian.PutUint64(s.nonce[4:], seq)
	return s.gmac.Seal(s.sum[:0], s.nonce[:], nil, frame)
}

// verify reports whether tag is frame's GMAC with seq as the nonce.
func (s *macState) verify(seq uint64, frame, tag []byte) bool {
	binary.BigEndian.PutUint64(s.nonce[4:], seq)
	_, err := s.gmac.Open(s.sum[:0], s.nonce[:], tag, frame)
	return err == nil
}

// Encoder builds the frames one side sends. It is not safe for concurrent
// use; it is independent of the Decoder, so the two may be driven by two
// goroutines once the Encoder is bound.
type Encoder struct {
	mac   macState
	local Nonce
	seq   uint64 // last seq assigned
	bound bool
}

// NewEncoder returns an Encoder for a session in which our nonce is local.
// Its first frame must be our HELLO; the others need Bind first.
func NewEncoder(key Key, local Nonce) *Encoder {
	e := &Encoder{local: local}
	e.mac.init(key)
	return e
}

// Bind sets the peer's nonce, from its HELLO, so that frames after HELLO
// can be tagged under the session's key. It can be done once.
func (e *Encoder) Bind(peer Nonce) error {
	switch {
	case e.bound:
		return fmt.Errorf("%w: encoder already bound", ErrUnexpected)
	case peer == Nonce{}:
		return fmt.Errorf("%w: all-zero peer nonce", ErrMalformed)
	case peer == e.local:
		return fmt.Errorf("%w: peer nonce equals ours", ErrReplay)
	}
	e.mac.bind(e.local, peer)
	e.bound = true
	return nil
}

// Seq returns the seq of the last frame built, 0 before the first.
func (e *Encoder) Seq() uint64 { return e.seq }

// AppendFrame appends m's frame to dst and returns the extended slice. It
// assigns the next seq and stores it in m.Seq: the sender keeps it to
// know when a SYNCACK covers the message. For HELLO it also stores our
// nonce and ProtocolVersion in m. On error dst is returned unchanged (to
// its original length), no seq is used, and the Encoder stays usable.
// With a dst of enough capacity, it allocates nothing (OPEN aside: the
// snapshot is marshaled with encoding/json).
func (e *Encoder) AppendFrame(dst []byte, m *Message) ([]byte, error) {
	switch {
	case e.seq == 0 && m.Type != MsgHello:
		return dst, fmt.Errorf("%w: %v before our HELLO", ErrUnexpected, m.Type)
	case e.seq > 0 && m.Type == MsgHello:
		return dst, fmt.Errorf("%w: a second HELLO", ErrUnexpected)
	case e.seq > 0 && !e.bound:
		return dst, fmt.Errorf("%w: %v before the peer's nonce is bound", ErrUnexpected, m.Type)
	}
	if m.Type == MsgHello {
		if e.local == (Nonce{}) {
			return dst, fmt.Errorf("%w: all-zero local nonce", ErrMalformed)
		}
		m.Nonce, m.Version = e.local, ProtocolVersion
	}
	seq := e.seq + 1
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, byte(m.Type))
	dst = binary.BigEndian.AppendUint64(dst, m.Epoch)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst, err := appendBody(dst, m)
	if err != nil {
		return dst[:start], err
	}
	// appendBody keeps bodies within MaxBody, so the length fits.
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4+macLen))
	if m.Type == MsgHello {
		// Even when Bind came first: the peer cannot know our nonce yet.
		dst = append(dst, e.mac.helloTag(dst[start:])...)
	} else {
		dst = append(dst, e.mac.tag(seq, dst[start:])...)
	}
	e.seq = seq
	m.Seq = seq
	return dst, nil
}

// marshalSnapshot encodes the snapshot of an OPEN or a REJOIN, checked as
// the Decoder will check it, so that a bad snapshot is caught on the
// main, where it was made, rather than as a dropped channel.
func marshalSnapshot(m *Message) ([]byte, error) {
	s := m.Snapshot
	if s == nil {
		return nil, fmt.Errorf("%w: %v without a snapshot", ErrMalformed, m.Type)
	}
	if s.ID != m.Conn {
		return nil, fmt.Errorf("%w: %v for %v with a snapshot of %v", ErrMalformed, m.Type, m.Conn, s.ID)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v snapshot: %w", ErrMalformed, m.Type, err)
	}
	b, err := s.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("%w: %v snapshot: %w", ErrMalformed, m.Type, err)
	}
	return b, nil
}

// parseSnapshot decodes the snapshot of an OPEN or a REJOIN for conn.
func parseSnapshot(t MsgType, b []byte, conn tcp.FourTuple) (*tcp.Snapshot, error) {
	var s tcp.Snapshot
	if err := s.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("%w: %v snapshot: %w", ErrMalformed, t, err)
	}
	if s.ID != conn {
		return nil, fmt.Errorf("%w: %v for %v with a snapshot of %v", ErrMalformed, t, conn, s.ID)
	}
	return &s, nil
}

// appendBody appends m's body, or fails with what the Decoder would say
// of it; dst beyond its original length is then garbage.
func appendBody(dst []byte, m *Message) ([]byte, error) {
	be := binary.BigEndian
	var flags byte
	if m.StartAsBackup {
		flags |= flagStartAsBackup
	}
	switch m.Type {
	case MsgHello:
		if !Role(m.Role).Valid() {
			return dst, fmt.Errorf("%w: HELLO with role %v", ErrMalformed, Role(m.Role))
		}
		dst = append(dst, m.Role)
		dst = append(dst, m.Nonce[:]...)
		dst = be.AppendUint16(dst, m.Version)
		return append(dst, flags), nil
	case MsgHeartbeat:
		if !Role(m.Role).Valid() {
			return dst, fmt.Errorf("%w: HEARTBEAT with role %v", ErrMalformed, Role(m.Role))
		}
		dst = be.AppendUint64(dst, uint64(m.Sent))
		dst = be.AppendUint64(dst, m.Ping)
		dst = be.AppendUint64(dst, m.Pong)
		return append(dst, m.Role, flags), nil
	case MsgSyncAck:
		return be.AppendUint64(dst, m.Applied), nil
	case MsgOpen:
		b, err := marshalSnapshot(m)
		if err != nil {
			return dst, err
		}
		if len(b) > MaxSnapshot {
			return dst, fmt.Errorf("%w: OPEN snapshot of %d bytes, at most %d", ErrTooLarge, len(b), MaxSnapshot)
		}
		if dst, err = appendConn(dst, m.Conn); err != nil {
			return dst, err
		}
		dst = be.AppendUint32(dst, uint32(len(b)))
		return append(dst, b...), nil
	case MsgRejoin:
		if len(m.State) > stack.MaxCheckpointState {
			return dst, fmt.Errorf("%w: REJOIN state of %d bytes, at most %d", ErrTooLarge, len(m.State), stack.MaxCheckpointState)
		}
		b, err := marshalSnapshot(m)
		if err != nil {
			return dst, err
		}
		if len(b)+len(m.State)+4+4 > MaxSnapshot {
			return dst, fmt.Errorf("%w: REJOIN snapshot and state of %d bytes, at most %d", ErrTooLarge, len(b)+len(m.State), MaxSnapshot-8)
		}
		if dst, err = appendConn(dst, m.Conn); err != nil {
			return dst, err
		}
		dst = be.AppendUint32(dst, uint32(m.Written))
		dst = be.AppendUint32(dst, uint32(len(m.State)))
		dst = append(dst, m.State...)
		dst = be.AppendUint32(dst, uint32(len(b)))
		return append(dst, b...), nil
	case MsgIn, MsgOut:
		if len(m.Data) > MaxData {
			return dst, fmt.Errorf("%w: %v of %d bytes, at most %d", ErrTooLarge, m.Type, len(m.Data), MaxData)
		}
		dst, err := appendConn(dst, m.Conn)
		if err != nil {
			return dst, err
		}
		dst = be.AppendUint32(dst, uint32(m.DataSeq))
		dst = be.AppendUint32(dst, uint32(len(m.Data)))
		return append(dst, m.Data...), nil
	case MsgOutSum:
		if m.SumLen == 0 || m.SumLen > stack.MaxSummed {
			return dst, fmt.Errorf("%w: OUTSUM over %d bytes (1..%d)", ErrMalformed, m.SumLen, stack.MaxSummed)
		}
		dst, err := appendConn(dst, m.Conn)
		if err != nil {
			return dst, err
		}
		dst = be.AppendUint32(dst, uint32(m.DataSeq))
		dst = be.AppendUint32(dst, m.SumLen)
		return be.AppendUint32(dst, m.Sum), nil
	case MsgChecked:
		dst, err := appendConn(dst, m.Conn)
		if err != nil {
			return dst, err
		}
		return be.AppendUint32(dst, uint32(m.DataSeq)), nil
	case MsgAcked:
		dst, err := appendConn(dst, m.Conn)
		if err != nil {
			return dst, err
		}
		p := &m.Progress
		for _, v := range [...]uint32{uint32(p.SndUna), p.SndWnd, p.TSRecent, uint32(p.RcvAdvEdge),
			uint32(p.ReceivedEnd), uint32(p.WrittenEnd)} {
			dst = be.AppendUint32(dst, v)
		}
		var flags byte
		if p.PeerFin {
			flags |= ackedPeerFin
		}
		if p.FinQueued {
			flags |= ackedFinQueued
		}
		return append(dst, flags), nil
	case MsgClose:
		if m.Close == 0 || m.Close >= closeKindEnd {
			return dst, fmt.Errorf("%w: CLOSE kind %v", ErrMalformed, m.Close)
		}
		dst, err := appendConn(dst, m.Conn)
		if err != nil {
			return dst, err
		}
		return append(dst, byte(m.Close)), nil
	case MsgStandDown:
		return dst, nil
	}
	return dst, fmt.Errorf("%w: %v", ErrUnknownType, m.Type)
}

func appendConn(dst []byte, id tcp.FourTuple) ([]byte, error) {
	if !id.LocalAddr.Is4() || !id.RemoteAddr.Is4() {
		return dst, fmt.Errorf("%w: connection %v is not IPv4", ErrMalformed, id)
	}
	be := binary.BigEndian
	l, r := id.LocalAddr.As4(), id.RemoteAddr.As4()
	dst = append(dst, l[:]...)
	dst = be.AppendUint16(dst, id.LocalPort)
	dst = append(dst, r[:]...)
	return be.AppendUint16(dst, id.RemotePort), nil
}

// roleFlags checks and sets the role and flags of HELLO and HEARTBEAT.
func roleFlags(t MsgType, role, flags byte, m *Message) error {
	if !Role(role).Valid() {
		return fmt.Errorf("%w: %v with role %v", ErrMalformed, t, Role(role))
	}
	if flags&^flagStartAsBackup != 0 {
		return fmt.Errorf("%w: %v flags %#x", ErrMalformed, t, flags)
	}
	m.Role, m.StartAsBackup = role, flags&flagStartAsBackup != 0
	return nil
}

func parseConn(b []byte) tcp.FourTuple {
	be := binary.BigEndian
	return tcp.FourTuple{
		LocalAddr: netip.AddrFrom4([4]byte(b[0:4])), LocalPort: be.Uint16(b[4:6]),
		RemoteAddr: netip.AddrFrom4([4]byte(b[6:10])), RemotePort: be.Uint16(b[10:12]),
	}
}

// parseBody fills m's fields for type t from body, checking the layout
// exactly. It needs no key, so it is fuzzed on its own. Data aliases body.
func parseBody(t MsgType, body []byte, m *Message) error {
	be := binary.BigEndian
	size := func(want int) error {
		if len(body) != want {
			return fmt.Errorf("%w: %v body of %d bytes, want %d", ErrMalformed, t, len(body), want)
		}
		return nil
	}
	// prefixed checks a body of fixed bytes then n uint32 then n bytes,
	// and returns the n bytes.
	prefixed := func(fixed int) ([]byte, error) {
		if len(body) < fixed+4 {
			return nil, fmt.Errorf("%w: %v body of %d bytes, want at least %d", ErrMalformed, t, len(body), fixed+4)
		}
		n, rest := be.Uint32(body[fixed:]), body[fixed+4:]
		if uint64(n) != uint64(len(rest)) {
			return nil, fmt.Errorf("%w: %v says %d bytes follow, %d do", ErrMalformed, t, n, len(rest))
		}
		return rest[:n:n], nil
	}
	switch t {
	case MsgHello:
		if err := size(helloLen); err != nil {
			return err
		}
		if err := roleFlags(t, body[0], body[19], m); err != nil {
			return err
		}
		m.Nonce = Nonce(body[1:17])
		m.Version = be.Uint16(body[17:])
	case MsgHeartbeat:
		if err := size(heartbeatLen); err != nil {
			return err
		}
		if err := roleFlags(t, body[24], body[25], m); err != nil {
			return err
		}
		m.Sent = int64(be.Uint64(body))
		m.Ping = be.Uint64(body[8:])
		m.Pong = be.Uint64(body[16:])
	case MsgSyncAck:
		if err := size(u64Len); err != nil {
			return err
		}
		m.Applied = be.Uint64(body)
	case MsgOpen:
		b, err := prefixed(connLen)
		if err != nil {
			return err
		}
		m.Conn = parseConn(body)
		if m.Snapshot, err = parseSnapshot(t, b, m.Conn); err != nil {
			return err
		}
	case MsgRejoin:
		const fixed = connLen + 4 + 4
		if len(body) < fixed+4 {
			return fmt.Errorf("%w: REJOIN body of %d bytes, want at least %d", ErrMalformed, len(body), fixed+4)
		}
		k := be.Uint32(body[connLen+4:])
		if k > stack.MaxCheckpointState || uint64(k) > uint64(len(body)-fixed-4) {
			return fmt.Errorf("%w: REJOIN says %d state bytes follow (at most %d), %d do", ErrMalformed, k, stack.MaxCheckpointState, len(body)-fixed-4)
		}
		m.Conn = parseConn(body)
		m.Written = tcp.Seq(be.Uint32(body[connLen:]))
		if k > 0 {
			m.State = body[fixed : fixed+int(k) : fixed+int(k)]
		}
		rest := body[fixed+int(k):]
		n := be.Uint32(rest)
		if uint64(n) != uint64(len(rest)-4) {
			return fmt.Errorf("%w: REJOIN says %d snapshot bytes follow, %d do", ErrMalformed, n, len(rest)-4)
		}
		var err error
		if m.Snapshot, err = parseSnapshot(t, rest[4:], m.Conn); err != nil {
			return err
		}
	case MsgIn, MsgOut:
		b, err := prefixed(connLen + 4)
		if err != nil {
			return err
		}
		m.Conn = parseConn(body)
		m.DataSeq = tcp.Seq(be.Uint32(body[connLen:]))
		if len(b) > 0 {
			m.Data = b
		}
	case MsgOutSum:
		if err := size(outSumLen); err != nil {
			return err
		}
		m.Conn = parseConn(body)
		m.DataSeq = tcp.Seq(be.Uint32(body[connLen:]))
		m.SumLen = be.Uint32(body[connLen+4:])
		m.Sum = be.Uint32(body[connLen+8:])
		if m.SumLen == 0 || m.SumLen > stack.MaxSummed {
			return fmt.Errorf("%w: OUTSUM over %d bytes (1..%d)", ErrMalformed, m.SumLen, stack.MaxSummed)
		}
	case MsgChecked:
		if err := size(checkedLen); err != nil {
			return err
		}
		m.Conn = parseConn(body)
		m.DataSeq = tcp.Seq(be.Uint32(body[connLen:]))
	case MsgAcked:
		if err := size(ackedLen); err != nil {
			return err
		}
		flags := body[ackedLen-1]
		if flags&^ackedAllFlags != 0 {
			return fmt.Errorf("%w: ACKED flags %#x", ErrMalformed, flags)
		}
		m.Conn = parseConn(body)
		u := func(i int) uint32 { return be.Uint32(body[connLen+4*i:]) }
		m.Progress = tcp.Progress{
			SndUna: tcp.Seq(u(0)), SndWnd: u(1), TSRecent: u(2), RcvAdvEdge: tcp.Seq(u(3)),
			ReceivedEnd: tcp.Seq(u(4)), WrittenEnd: tcp.Seq(u(5)),
			PeerFin: flags&ackedPeerFin != 0, FinQueued: flags&ackedFinQueued != 0,
		}
	case MsgClose:
		if err := size(closeLen); err != nil {
			return err
		}
		k := CloseKind(body[connLen])
		if k == 0 || k >= closeKindEnd {
			return fmt.Errorf("%w: CLOSE kind %v", ErrMalformed, k)
		}
		m.Conn = parseConn(body)
		m.Close = k
	case MsgStandDown:
		return size(0)
	default:
		return fmt.Errorf("%w: %v", ErrUnknownType, t)
	}
	return nil
}

// Decoder reads the frames the peer sends, push style: the caller hands
// it bytes as they arrive (Feed, or Fill straight from a reader) and takes
// whole messages out (Next). It is not safe for concurrent use.
//
// Memory: a frame's length is checked as soon as its 4 bytes are in, and
// Fill never makes room for more than the frame in hand (at most
// MaxFrame), so a hostile length costs nothing. Feed keeps whatever it is
// given until Next consumes it, so a caller that feeds bounded chunks and
// drains Next in between holds at most MaxFrame plus one chunk.
type Decoder struct {
	mac   macState
	local Nonce
	peer  Nonce
	seq   uint64 // last seq accepted
	live  bool   // a frame under the session key has verified

	buf []byte // buffered input; buf[r:] is not yet consumed
	r   int
	err error // sticky: once set, the Decoder is poisoned
}

// Fill reads small frames in gulps of about fillChunk bytes, and makes a
// new buffer when less than minFill is free (rather than reading a few
// bytes at a time).
const (
	fillChunk = 16 << 10
	minFill   = 4 << 10
)

// NewDecoder returns a Decoder for a session in which our nonce is local.
// It expects the peer's HELLO first and binds itself to the peer's nonce
// from it.
func NewDecoder(key Key, local Nonce) *Decoder {
	d := &Decoder{local: local}
	d.mac.init(key)
	return d
}

// Feed appends input. It invalidates the Data of messages returned
// before. A poisoned Decoder drops it.
func (d *Decoder) Feed(b []byte) {
	if d.err != nil {
		return
	}
	d.compact()
	d.buf = append(d.buf, b...)
}

// Fill does one Read from src straight into the Decoder's buffer, saving
// Feed's copy, and returns what Read returned. It makes room for the rest
// of the frame in hand, or for a fillChunk gulp of small frames, but never
// for more than a valid length field announces, so a hostile length costs
// nothing. It invalidates the Data of messages returned before. A
// poisoned Decoder returns its error without reading.
func (d *Decoder) Fill(src io.Reader) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	d.compact()
	missing := 4 - len(d.buf)
	if len(d.buf) >= 4 {
		missing = 1 // a whole frame is in already (or a bad length): Next will say
		if n := binary.BigEndian.Uint32(d.buf); n <= MaxFrame-4 && 4+int(n) > len(d.buf) {
			missing = 4 + int(n) - len(d.buf)
		}
	}
	if free := cap(d.buf) - len(d.buf); free < missing || free < minFill {
		b := make([]byte, len(d.buf), len(d.buf)+max(missing, fillChunk))
		copy(b, d.buf)
		d.buf = b
	}
	n, err := src.Read(d.buf[len(d.buf):cap(d.buf)])
	d.buf = d.buf[:len(d.buf)+n]
	return n, err
}

// compact drops consumed input, moving what is left to the front.
func (d *Decoder) compact() {
	if d.r == 0 {
		return
	}
	n := copy(d.buf, d.buf[d.r:])
	d.buf, d.r = d.buf[:n], 0
}

// Buffered returns how many bytes are held that Next has not consumed.
func (d *Decoder) Buffered() int { return len(d.buf) - d.r }

// Seq returns the seq of the last message returned, 0 before the first:
// what a SYNCACK acknowledges once all of them are applied.
func (d *Decoder) Seq() uint64 { return d.seq }

// Peer returns the peer's nonce, zero until its HELLO.
func (d *Decoder) Peer() Nonce { return d.peer }

// Live reports whether the peer has proven itself part of this session:
// a frame after its HELLO has verified under a key derived from our fresh
// nonce. Until then its HELLO may be a replay; act on nothing it says.
func (d *Decoder) Live() bool { return d.live }

// Err returns the error that poisoned the Decoder, or nil.
func (d *Decoder) Err() error { return d.err }

func (d *Decoder) fail(err error) (Message, bool, error) {
	d.err = err
	d.buf, d.r = nil, 0 // nothing more will be read: free the buffer
	return Message{}, false, err
}

// Next returns the next message. ok is false, with a nil error, when a
// whole frame is not in yet: feed more. An error poisons the Decoder (see
// the package's errors); no message is ever returned from a frame that
// failed any check.
//
// Checks run in this order, so that nothing unauthenticated is
// interpreted beyond the length: length bounds, MAC, seq, type, place in
// the session, body layout, and for HELLO the version and nonce.
//
// Aliasing: m.Data (IN, OUT) points into the Decoder's buffer, with its
// capacity clipped to its length. It stays valid until the next Feed or
// Fill, across further calls of Next, so a batch of messages can be
// drained and then applied; copy what must live longer.
func (d *Decoder) Next() (m Message, ok bool, err error) {
	if d.err != nil {
		return Message{}, false, d.err
	}
	in := d.buf[d.r:]
	if len(in) < 4 {
		return Message{}, false, nil
	}
	n := binary.BigEndian.Uint32(in)
	switch {
	case n > MaxFrame-4:
		return d.fail(fmt.Errorf("%w: length %d after frame %d, at most %d", ErrTooLarge, n, d.seq, MaxFrame-4))
	case n < minLength:
		return d.fail(fmt.Errorf("%w: length %d after frame %d, at least %d", ErrMalformed, n, d.seq, minLength))
	}
	size := 4 + int(n)
	if len(in) < size {
		return Message{}, false, nil
	}
	frame := in[:size:size]
	d.r += size
	end := size - macLen
	var authentic bool
	if d.seq == 0 { // only a HELLO can come first
		authentic = subtle.ConstantTimeCompare(d.mac.helloTag(frame[:end]), frame[end:]) == 1
	} else {
		authentic = d.mac.verify(binary.BigEndian.Uint64(frame[13:]), frame[:end], frame[end:])
	}
	if !authentic {
		return d.fail(fmt.Errorf("%w: frame after %d (%d bytes)", ErrBadMAC, d.seq, size))
	}
	m.Type = MsgType(frame[4])
	m.Epoch = binary.BigEndian.Uint64(frame[5:])
	m.Seq = binary.BigEndian.Uint64(frame[13:])
	if m.Seq != d.seq+1 {
		return d.fail(fmt.Errorf("%w: %v with seq %d, want %d", ErrReplay, m.Type, m.Seq, d.seq+1))
	}
	if m.Type == 0 || m.Type >= msgTypeEnd {
		return d.fail(fmt.Errorf("%w: %v, seq %d", ErrUnknownType, m.Type, m.Seq))
	}
	if hello := m.Type == MsgHello; hello != (d.seq == 0) {
		return d.fail(fmt.Errorf("%w: %v as frame %d (HELLO comes first, once)", ErrUnexpected, m.Type, m.Seq))
	}
	body := frame[headerLen:end]
	if m.Type == MsgHello && len(body) >= 19 {
		// The version before the layout, which another version may change.
		if v := binary.BigEndian.Uint16(body[17:]); v != ProtocolVersion {
			return d.fail(fmt.Errorf("%w: peer speaks %d, we speak %d", ErrVersion, v, ProtocolVersion))
		}
	}
	if err := parseBody(m.Type, body, &m); err != nil {
		return d.fail(fmt.Errorf("seq %d: %w", m.Seq, err))
	}
	if m.Type == MsgHello {
		switch {
		case m.Nonce == Nonce{}:
			return d.fail(fmt.Errorf("%w: HELLO with an all-zero nonce", ErrMalformed))
		case m.Nonce == d.local:
			return d.fail(fmt.Errorf("%w: HELLO with our own nonce (reflected)", ErrReplay))
		}
		d.peer = m.Nonce
		d.mac.bind(d.peer, d.local)
	} else {
		d.live = true
	}
	d.seq = m.Seq
	return m, true, nil
}

// Session is the codec of one sync connection: an Encoder for what we
// send, a Decoder for what the peer sends, and the handshake that binds
// them. Use it as:
//
//	s := NewSession(key, NewNonce())
//	out, _ := s.Enc.AppendFrame(out, &Message{Type: MsgHello, Epoch: e, Role: uint8(r)})
//	... s.Dec.Fill(conn) or s.Dec.Feed(in); m, ok, err := s.Next() ...
//	out, _ = s.Enc.AppendFrame(out, &Message{Type: MsgHeartbeat, ...}) // once Bound
//
// Session.Next is Dec.Next plus binding Enc when the peer's HELLO arrives,
// so until then the Session is driven from one goroutine; once Bound,
// Enc and Dec may each be driven by their own goroutine.
type Session struct {
	Enc *Encoder
	Dec *Decoder
}

// NewSession returns the codec for a connection in which our nonce is
// local. Use a fresh nonce (NewNonce) for every connection.
func NewSession(key Key, local Nonce) *Session {
	return &Session{Enc: NewEncoder(key, local), Dec: NewDecoder(key, local)}
}

// Next returns the peer's next message, as Decoder.Next, and binds the
// Encoder on the peer's HELLO.
func (s *Session) Next() (Message, bool, error) {
	m, ok, err := s.Dec.Next()
	if ok && m.Type == MsgHello {
		if err := s.Enc.Bind(m.Nonce); err != nil {
			// Unreachable unless Enc was bound by hand: the Decoder has
			// checked the nonce, and it accepts one HELLO.
			return s.Dec.fail(err)
		}
	}
	return m, ok, err
}

// Bound reports whether the peer's HELLO has arrived, so that frames
// other than HELLO can be sent.
func (s *Session) Bound() bool { return s.Enc.bound }

// Live reports whether the peer has proven itself live in this session
// (Decoder.Live).
func (s *Session) Live() bool { return s.Dec.Live() }
