package failover

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/stack"
	"github.com/zppratt/rfsis/stack/tcp"
)

var (
	testKey = DeriveKey("a sync key for the codec's tests")
	nonceA  = Nonce{0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf, 0xa0}
	nonceB  = Nonce{0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf, 0xb0}
	nonceC  = Nonce{0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xc0}
	zeroCtx = make([]byte, 32)
)

// allSentinels are the errors a decoding error may wrap.
var allSentinels = []error{ErrTooLarge, ErrMalformed, ErrBadMAC, ErrReplay, ErrUnknownType, ErrVersion, ErrUnexpected}

// ctxOf is the MAC context of a frame from sender to receiver after HELLO.
func ctxOf(sender, receiver Nonce) []byte { return append(sender[:], receiver[:]...) }

// rawFrame builds a frame from the layout in proto.go's comment, without
// the Encoder: it pins the wire format, and crafts frames the Encoder
// refuses to make.
func rawFrame(key Key, ctx []byte, typ MsgType, epoch, seq uint64, body []byte) []byte {
	f := binary.BigEndian.AppendUint32(nil, uint32(1+8+8+len(body)+16))
	f = append(f, byte(typ))
	f = binary.BigEndian.AppendUint64(f, epoch)
	f = binary.BigEndian.AppendUint64(f, seq)
	f = append(f, body...)
	return append(f, frameTag(key, ctx, f)...)
}

// frameTag computes a frame's tag from the description in proto.go's
// comment, independently of macState: HMAC-SHA256 under the zero context
// (HELLO), else AES-256-GMAC under the HKDF of the key and ctx (the sender's
// nonce, then the receiver's) with the frame's seq as the nonce.
func frameTag(key Key, ctx, frame []byte) []byte {
	if bytes.Equal(ctx, zeroCtx) {
		h := hmac.New(sha256.New, key[:])
		h.Write(ctx)
		h.Write(frame)
		return h.Sum(nil)[:16]
	}
	k, err := hkdf.Key(sha256.New, key[:], nil, "rfsis sync session v2"+string(ctx), 32)
	if err != nil {
		panic(err)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		panic(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	nonce := make([]byte, 12)
	copy(nonce[4:], frame[13:21])
	return gcm.Seal(nil, nonce, nil, frame)
}

func helloBody(role uint8, n Nonce, version uint16) []byte {
	b := append([]byte{role}, n[:]...)
	return append(binary.BigEndian.AppendUint16(b, version), 0)
}

func heartbeatBody(sent int64, ping, pong uint64, role uint8, flags byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(sent))
	b = binary.BigEndian.AppendUint64(b, ping)
	b = binary.BigEndian.AppendUint64(b, pong)
	return append(b, role, flags)
}

// helloFrom is a's HELLO, as the Encoder makes it.
func helloFrom(n Nonce) []byte {
	return rawFrame(testKey, zeroCtx, MsgHello, 3, 1, helloBody(1, n, ProtocolVersion))
}

func testConn() tcp.FourTuple {
	return tcp.FourTuple{
		LocalAddr: netip.MustParseAddr("192.168.1.100"), LocalPort: 7,
		RemoteAddr: netip.MustParseAddr("192.168.1.50"), RemotePort: 54321,
	}
}

// testSnapshot is a connection in SYN-RECEIVED, as OPEN ships it.
func testSnapshot(t testing.TB) *tcp.Snapshot {
	syn := &tcp.Segment{SrcPort: 54321, DstPort: 7, Seq: 1000, Flags: tcp.FlagSYN, Window: 64240,
		MSS: 1460, WScale: 7, SACKPermitted: true, HasTS: true, TSVal: 4242}
	c := tcp.NewPassive(tcp.Config{}, testConn(), 777, syn, time.Unix(1_700_000_000, 0))
	s := c.Snapshot()
	require.NoError(t, s.Validate())
	return &s
}

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

// samples has every type but HELLO, with fields that differ from zero.
func samples(t testing.TB) []Message {
	id := testConn()
	return []Message{
		{Type: MsgHeartbeat, Epoch: 3, Sent: 1_700_000_000_123_456_789, Ping: 17, Role: uint8(RoleMain)},
		{Type: MsgHeartbeat, Epoch: 3, Sent: -5, Pong: 1 << 63, Role: uint8(RoleBackup), StartAsBackup: true},
		{Type: MsgHeartbeat, Epoch: 3, Ping: 5, Pong: 4, Role: uint8(RoleStoodDown)},
		{Type: MsgSyncAck, Epoch: 3, Applied: 1<<40 + 9},
		{Type: MsgOpen, Epoch: 3, Conn: id, Snapshot: testSnapshot(t)},
		{Type: MsgIn, Epoch: 3, Conn: id, DataSeq: 0xfffffff0, Data: payload(1400)},
		{Type: MsgIn, Epoch: 3, Conn: id, DataSeq: 1001}, // empty
		{Type: MsgOut, Epoch: 3, Conn: id, DataSeq: 778, Data: []byte("hello\n")},
		{Type: MsgAcked, Epoch: 3, Conn: id, Progress: tcp.Progress{
			SndUna: 780, SndWnd: 1 << 20, TSRecent: 0xdeadbeef, RcvAdvEdge: 0x80000001,
			ReceivedEnd: 1100, WrittenEnd: 790, PeerFin: true, FinQueued: true}},
		{Type: MsgAcked, Epoch: 3, Conn: id, Progress: tcp.Progress{SndUna: 1, PeerFin: true}},
		{Type: MsgAcked, Epoch: 3, Conn: id, Progress: tcp.Progress{SndUna: 2, FinQueued: true}},
		{Type: MsgClose, Epoch: 3, Conn: id, Close: CloseFIN},
		{Type: MsgClose, Epoch: 3, Conn: id, Close: CloseRST},
		{Type: MsgClose, Epoch: 3, Conn: id, Close: CloseGone},
		{Type: MsgStandDown, Epoch: 4},
		{Type: MsgRejoin, Epoch: 4, Conn: id, Snapshot: testSnapshot(t), Written: 0xfffffffe, State: []byte("count=7")},
		{Type: MsgRejoin, Epoch: 4, Conn: id, Snapshot: testSnapshot(t), Written: 5}, // no state
		{Type: MsgOutSum, Epoch: 4, Conn: id, DataSeq: 0xfffffff0, SumLen: stack.MaxSummed, Sum: 0xdeadbeef},
		{Type: MsgOutSum, Epoch: 4, Conn: id, DataSeq: 7, SumLen: 1},
		{Type: MsgChecked, Epoch: 4, Conn: id, DataSeq: 0x80000001},
	}
}

// handshake returns two sessions, a (nonceA) and b (nonceB), that have
// exchanged HELLOs.
func handshake(t testing.TB) (a, b *Session) {
	a, b = NewSession(testKey, nonceA), NewSession(testKey, nonceB)
	for _, p := range [][2]*Session{{a, b}, {b, a}} {
		f, err := p[0].Enc.AppendFrame(nil, &Message{Type: MsgHello, Epoch: 3, Role: 1})
		require.NoError(t, err)
		p[1].Dec.Feed(f)
		m, ok, err := p[1].Next()
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, MsgHello, m.Type)
	}
	require.True(t, a.Bound())
	require.True(t, b.Bound())
	return a, b
}

// decodeOne feeds f and returns the one message it holds.
func decodeOne(t testing.TB, d *Decoder, f []byte) Message {
	t.Helper()
	d.Feed(f)
	m, ok, err := d.Next()
	require.NoError(t, err)
	require.True(t, ok)
	_, ok, err = d.Next()
	require.NoError(t, err)
	require.False(t, ok, "one frame, one message")
	return m
}

// requireFails feeds f and checks that Next fails with want, and that the
// decoder stays poisoned.
func requireFails(t *testing.T, d *Decoder, f []byte, want error) {
	t.Helper()
	d.Feed(f)
	m, ok, err := d.Next()
	require.ErrorIs(t, err, want)
	require.False(t, ok)
	require.Equal(t, Message{}, m)
	// Poisoned: the same error, whatever comes next.
	d.Feed(helloFrom(nonceA))
	_, ok, err2 := d.Next()
	assert.False(t, ok)
	assert.Same(t, err, err2)
	assert.Same(t, err, d.Err())
	_, err2 = d.Fill(bytes.NewReader(helloFrom(nonceA)))
	assert.Same(t, err, err2)
}

func TestHandshake(t *testing.T) {
	a, b := NewSession(testKey, nonceA), NewSession(testKey, nonceB)
	assert.False(t, a.Bound())

	hello := Message{Type: MsgHello, Epoch: 3, Role: 1}
	f, err := a.Enc.AppendFrame(nil, &hello)
	require.Len(t, f, 4+33+20)
	require.NoError(t, err)
	assert.Equal(t, helloFrom(nonceA), f, "HELLO is MAC'd under the all-zero context")
	assert.Equal(t, Message{Type: MsgHello, Epoch: 3, Seq: 1, Role: 1, Nonce: nonceA, Version: ProtocolVersion}, hello,
		"the Encoder fills seq, nonce and version")

	// Nothing but HELLO can be sent before the peer's nonce is known.
	_, err = a.Enc.AppendFrame(nil, &Message{Type: MsgHeartbeat})
	assert.ErrorIs(t, err, ErrUnexpected)

	got := decodeOne(t, b.Dec, f)
	assert.Equal(t, hello, got)
	assert.Equal(t, nonceA, b.Dec.Peer())
	assert.False(t, b.Live(), "a HELLO alone may be a replay")

	f, err = b.Enc.AppendFrame(nil, &Message{Type: MsgHello, Epoch: 3, Role: 2})
	require.NoError(t, err)
	a.Dec.Feed(f)
	_, ok, err := a.Next()
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, a.Bound())

	f, err = a.Enc.AppendFrame(nil, &Message{Type: MsgHeartbeat, Epoch: 3, Sent: 1, Ping: 2, Pong: 3, Role: 4, StartAsBackup: true})
	require.NoError(t, err)
	assert.Equal(t, rawFrame(testKey, ctxOf(nonceA, nonceB), MsgHeartbeat, 3, 2, heartbeatBody(1, 2, 3, 4, 1)), f,
		"later frames are MAC'd under sender's nonce || receiver's nonce")
	decodeOne(t, b.Dec, f)
	assert.True(t, b.Live())
}

// TestWireLayout pins a frame byte by byte, as proto.go documents it.
func TestWireLayout(t *testing.T) {
	a, _ := handshake(t)
	f, err := a.Enc.AppendFrame(nil, &Message{Type: MsgClose, Epoch: 0x0102030405060708, Conn: testConn(), Close: CloseRST})
	require.NoError(t, err)
	want := []byte{
		0, 0, 0, 33 + 13, // length
		8,                      // type CLOSE
		1, 2, 3, 4, 5, 6, 7, 8, // epoch
		0, 0, 0, 0, 0, 0, 0, 2, // seq
		192, 168, 1, 100, 0, 7, // local
		192, 168, 1, 50, 0xd4, 0x31, // remote
		2, // kind RST
	}
	require.Len(t, f, len(want)+16)
	assert.Equal(t, want, f[:len(want)])
	assert.Equal(t, rawFrame(testKey, ctxOf(nonceA, nonceB), MsgClose, 0x0102030405060708, 2, want[21:]), f)
}

func TestRoundTripEveryType(t *testing.T) {
	a, b := handshake(t)
	for _, dir := range []struct {
		name     string
		from, to *Session
	}{{"a to b", a, b}, {"b to a", b, a}} {
		for _, want := range samples(t) {
			seq := dir.from.Enc.Seq() + 1
			f, err := dir.from.Enc.AppendFrame(nil, &want)
			require.NoError(t, err, "%s %v", dir.name, want.Type)
			assert.Equal(t, seq, want.Seq, "the Encoder stores the seq it used")
			assert.Equal(t, seq, dir.from.Enc.Seq())
			got := decodeOne(t, dir.to.Dec, f)
			assert.Equal(t, want, got, "%s %v", dir.name, want.Type)
			assert.Equal(t, seq, dir.to.Dec.Seq())
			assert.NotEmpty(t, got.String())
		}
	}
}

// TestChunking feeds a stream of every message in pieces of every size,
// through Feed and through Fill.
func TestChunking(t *testing.T) {
	enc := NewEncoder(testKey, nonceA)
	var stream []byte
	want := []Message{{Type: MsgHello, Epoch: 3, Role: 1}}
	stream, err := enc.AppendFrame(stream, &want[0])
	require.NoError(t, err)
	require.NoError(t, enc.Bind(nonceB))
	for _, m := range samples(t) {
		stream, err = enc.AppendFrame(stream, &m)
		require.NoError(t, err)
		want = append(want, m)
	}
	collect := func(t *testing.T, d *Decoder, got *[]Message) {
		for {
			m, ok, err := d.Next()
			require.NoError(t, err)
			if !ok {
				return
			}
			m.Data = bytes.Clone(m.Data) // Data and State live only until the next Feed
			m.State = bytes.Clone(m.State)
			*got = append(*got, m)
		}
	}
	for _, size := range []int{1, 2, 3, 7, 33, 100, 1437, 4096, len(stream)} {
		d := NewDecoder(testKey, nonceB)
		var got []Message
		for rest := stream; len(rest) > 0; {
			n := min(size, len(rest))
			d.Feed(rest[:n])
			rest = rest[n:]
			collect(t, d, &got)
		}
		require.Equal(t, want, got, "Feed in pieces of %d", size)
		assert.Zero(t, d.Buffered())
	}
	for name, r := range map[string]func() io.Reader{
		"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) },
		"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) },
		"whole":    func() io.Reader { return bytes.NewReader(stream) },
	} {
		d := NewDecoder(testKey, nonceB)
		var got []Message
		src := r()
		for {
			_, err := d.Fill(src)
			collect(t, d, &got)
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
		}
		require.Equal(t, want, got, "Fill, %s", name)
	}
}

// TestDataAliasing: Data points into the Decoder's buffer, clipped, and
// survives further Next calls until the next Feed.
func TestDataAliasing(t *testing.T) {
	a, b := handshake(t)
	var f []byte
	var err error
	for i := range 3 {
		f, err = a.Enc.AppendFrame(f, &Message{Type: MsgIn, Conn: testConn(), DataSeq: tcp.Seq(i * 10), Data: payload(10 + i)})
		require.NoError(t, err)
	}
	b.Dec.Feed(f)
	var got [][]byte
	for range 3 {
		m, ok, err := b.Next()
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, len(m.Data), cap(m.Data), "capacity clipped: appending to Data cannot clobber the next frame")
		got = append(got, m.Data)
	}
	for i, d := range got {
		assert.Equal(t, payload(10+i), d, "message %d's data after draining the batch", i)
	}
}

func TestMaxSizes(t *testing.T) {
	a, b := handshake(t)
	big := payload(MaxData)
	f, err := a.Enc.AppendFrame(nil, &Message{Type: MsgOut, Conn: testConn(), Data: big})
	require.NoError(t, err)
	assert.Len(t, f, MaxFrame, "MaxData fills a frame exactly")
	var got Message
	for src := iotest.HalfReader(bytes.NewReader(f)); ; {
		_, err := b.Dec.Fill(src)
		m, ok, nerr := b.Next()
		require.NoError(t, nerr)
		if ok {
			got = m
			break
		}
		require.NoError(t, err)
	}
	assert.Equal(t, big, got.Data)
	assert.LessOrEqual(t, cap(b.Dec.buf), MaxFrame+fillChunk, "Fill makes room for the frame, not more")

	// One byte more is refused by the Encoder, without using a seq.
	seq := a.Enc.Seq()
	dst := []byte("keep")
	out, err := a.Enc.AppendFrame(dst, &Message{Type: MsgOut, Conn: testConn(), Data: payload(MaxData + 1)})
	assert.ErrorIs(t, err, ErrTooLarge)
	assert.Equal(t, []byte("keep"), out)
	assert.Equal(t, seq, a.Enc.Seq())
}

// TestBitFlips flips every bit of a frame: each corruption is refused, as
// a bad MAC, or, when it hits the length field, as too large or too small
// for a frame (or, grown but still valid, as a bad MAC once the bytes it
// asks for are in).
func TestBitFlips(t *testing.T) {
	a, _ := handshake(t)
	hello := helloFrom(nonceA)
	frames := map[string][]byte{"HELLO": hello}
	for _, m := range []Message{
		{Type: MsgIn, Epoch: 3, Conn: testConn(), DataSeq: 99, Data: payload(40)},
		{Type: MsgAcked, Epoch: 3, Conn: testConn(), Progress: tcp.Progress{SndUna: 5, PeerFin: true}},
		{Type: MsgStandDown, Epoch: 3},
	} {
		a.Enc.seq = 1 // every frame is the one after HELLO
		f, err := a.Enc.AppendFrame(nil, &m)
		require.NoError(t, err)
		frames[m.Type.String()] = f
	}
	for name, f := range frames {
		for bit := range len(f) * 8 {
			bad := bytes.Clone(f)
			bad[bit/8] ^= 1 << (bit % 8)
			d := NewDecoder(testKey, nonceB)
			if name != "HELLO" {
				decodeOne(t, d, hello)
			}
			d.Feed(bad)
			_, ok, err := d.Next()
			if err == nil && !ok {
				// The length grew: the decoder waits for the rest.
				require.Less(t, bit, 32, "%s bit %d: only a length flip can leave a frame incomplete", name, bit)
				n := binary.BigEndian.Uint32(bad)
				d.Feed(make([]byte, 4+int(n)-len(bad)))
				_, ok, err = d.Next()
			}
			require.False(t, ok, "%s bit %d accepted", name, bit)
			switch {
			case bit < 32 && errors.Is(err, ErrTooLarge):
			case bit < 32 && errors.Is(err, ErrMalformed):
			default:
				require.ErrorIs(t, err, ErrBadMAC, "%s bit %d", name, bit)
			}
		}
	}
}

func TestReplayAndReorder(t *testing.T) {
	a, _ := handshake(t)
	var f [4][]byte
	for i := range f {
		var err error
		f[i], err = a.Enc.AppendFrame(nil, &Message{Type: MsgOut, Conn: testConn(), DataSeq: tcp.Seq(i), Data: []byte{byte(i)}})
		require.NoError(t, err)
	}
	fresh := func() *Decoder {
		d := NewDecoder(testKey, nonceB)
		decodeOne(t, d, helloFrom(nonceA))
		return d
	}

	d := fresh()
	decodeOne(t, d, f[0])
	requireFails(t, d, f[0], ErrReplay)

	d = fresh()
	decodeOne(t, d, f[0])
	requireFails(t, d, f[2], ErrReplay) // f[1] skipped or late

	d = fresh()
	decodeOne(t, d, f[0])
	decodeOne(t, d, f[1])
	// The peer's HELLO again: it was MAC'd under the all-zero context, and
	// the session's frames are checked under the session's.
	requireFails(t, d, helloFrom(nonceA), ErrBadMAC)

	// A second HELLO in sequence, authentic, is not allowed either.
	d = fresh()
	requireFails(t, d, rawFrame(testKey, ctxOf(nonceA, nonceB), MsgHello, 3, 2, helloBody(1, nonceA, ProtocolVersion)), ErrUnexpected)
	d = fresh()
	requireFails(t, d, rawFrame(testKey, zeroCtx, MsgHello, 3, 2, helloBody(1, nonceA, ProtocolVersion)), ErrBadMAC)
}

// TestOtherSession: frames recorded in one session are useless in another.
func TestOtherSession(t *testing.T) {
	// Session 1: A (nonceA) talks to B (nonceB). Record A's frames.
	a, _ := handshake(t)
	old, err := a.Enc.AppendFrame(nil, &Message{Type: MsgHeartbeat, Epoch: 3, Sent: 1, Role: 1})
	require.NoError(t, err)

	// Session 2: B has a fresh nonce. A replayed HELLO is accepted, as it
	// only contributes a nonce; the next recorded frame is not.
	d := NewDecoder(testKey, nonceC)
	decodeOne(t, d, helloFrom(nonceA))
	assert.False(t, d.Live())
	requireFails(t, d, old, ErrBadMAC)

	// Same nonces on our side but another peer nonce.
	d = NewDecoder(testKey, nonceB)
	decodeOne(t, d, helloFrom(nonceC))
	requireFails(t, d, old, ErrBadMAC)
}

// TestReflection: what a node sends cannot be passed back to it as the
// peer's.
func TestReflection(t *testing.T) {
	a, _ := handshake(t)
	// Our own HELLO, reflected.
	requireFails(t, NewDecoder(testKey, nonceA), helloFrom(nonceA), ErrReplay)

	// Our own frame after HELLO, reflected at the right seq.
	hb, err := a.Enc.AppendFrame(nil, &Message{Type: MsgHeartbeat, Epoch: 3, Sent: 1, Role: 1})
	require.NoError(t, err)
	require.Equal(t, uint64(1), a.Dec.Seq(), "a expects the peer's frame 2, and hb is a's frame 2")
	requireFails(t, a.Dec, hb, ErrBadMAC)
}

func TestWrongKey(t *testing.T) {
	requireFails(t, NewDecoder(DeriveKey("another key, long enough"), nonceB), helloFrom(nonceA), ErrBadMAC)
	requireFails(t, NewDecoder(Key{}, nonceB), helloFrom(nonceA), ErrBadMAC)
}

func TestInsecureKey(t *testing.T) {
	assert.Equal(t, Key{}, DeriveKey(""), "no sync_key: the all-zero key")
	a, b := NewSession(DeriveKey(""), nonceA), NewSession(Key{}, nonceB)
	f, err := a.Enc.AppendFrame(nil, &Message{Type: MsgHello, Role: uint8(RoleJoining)})
	require.NoError(t, err)
	decodeOne(t, b.Dec, f)
}

func TestDeriveKey(t *testing.T) {
	k := DeriveKey("0123456789abcdef")
	assert.Equal(t, k, DeriveKey("0123456789abcdef"))
	assert.NotEqual(t, k, DeriveKey("0123456789abcdeF"))
	assert.NotEqual(t, Key(sha256.Sum256([]byte("0123456789abcdef"))), k, "labelled")
	assert.NotEqual(t, NewNonce(), NewNonce())
}

func TestHelloChecks(t *testing.T) {
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgHello, 3, 1, helloBody(1, nonceA, ProtocolVersion+1)), ErrVersion)
	// A later version's HELLO may be longer: the version is read first.
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgHello, 3, 1, append(helloBody(1, nonceA, ProtocolVersion+1), 1, 2, 3, 4)), ErrVersion)
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgHello, 3, 1, helloBody(1, nonceA, 0)[:19]), ErrVersion)
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgHello, 3, 1, helloBody(1, Nonce{}, ProtocolVersion)), ErrMalformed)
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgHello, 3, 1, helloBody(0, nonceA, ProtocolVersion)), ErrMalformed)
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgHello, 3, 1, helloBody(uint8(RoleStoodDown)+1, nonceA, ProtocolVersion)), ErrMalformed)
	bad := helloBody(1, nonceA, ProtocolVersion)
	bad[19] = 2 // a flag that does not exist
	requireFails(t, NewDecoder(testKey, nonceB), rawFrame(testKey, zeroCtx, MsgHello, 3, 1, bad), ErrMalformed)
	bad[19] = 1
	m := decodeOne(t, NewDecoder(testKey, nonceB), rawFrame(testKey, zeroCtx, MsgHello, 3, 1, bad))
	assert.True(t, m.StartAsBackup)
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgHello, 3, 1, append(helloBody(1, nonceA, ProtocolVersion), 0)), ErrMalformed)
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgHello, 3, 2, helloBody(1, nonceA, ProtocolVersion)), ErrReplay)
	// Anything else first, even authentic, is out of place.
	requireFails(t, NewDecoder(testKey, nonceB),
		rawFrame(testKey, zeroCtx, MsgStandDown, 3, 1, nil), ErrUnexpected)
}

// TestMalformedBodies: authentic frames whose bodies break their layout.
func TestMalformedBodies(t *testing.T) {
	id, err := appendConn(nil, testConn())
	require.NoError(t, err)
	u32 := func(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	snap, err := testSnapshot(t).MarshalBinary()
	require.NoError(t, err)
	other := *testSnapshot(t)
	other.ID.RemotePort++
	otherSnap, err := other.MarshalBinary()
	require.NoError(t, err)
	badSnap := *testSnapshot(t)
	badSnap.SndShift = 15
	badSnapJSON, err := badSnap.MarshalBinary()
	require.NoError(t, err)

	for _, c := range []struct {
		name string
		typ  MsgType
		body []byte
		want error
	}{
		{"heartbeat short", MsgHeartbeat, heartbeatBody(1, 2, 3, 1, 0)[:25], ErrMalformed},
		{"heartbeat trailing", MsgHeartbeat, append(heartbeatBody(1, 2, 3, 1, 0), 0), ErrMalformed},
		{"heartbeat role 0", MsgHeartbeat, heartbeatBody(1, 2, 3, 0, 0), ErrMalformed},
		{"heartbeat role 6", MsgHeartbeat, heartbeatBody(1, 2, 3, 6, 0), ErrMalformed},
		{"heartbeat flags", MsgHeartbeat, heartbeatBody(1, 2, 3, 1, 0x80), ErrMalformed},
		{"syncack short", MsgSyncAck, make([]byte, 7), ErrMalformed},
		{"syncack trailing", MsgSyncAck, make([]byte, 9), ErrMalformed},
		{"standdown trailing", MsgStandDown, []byte{0}, ErrMalformed},
		{"close trailing", MsgClose, cat(id, []byte{1, 0}), ErrMalformed},
		{"close kind 0", MsgClose, cat(id, []byte{0}), ErrMalformed},
		{"close kind 5", MsgClose, cat(id, []byte{5}), ErrMalformed},
		{"close short", MsgClose, id, ErrMalformed},
		{"acked reserved flag", MsgAcked, cat(id, make([]byte, 24), []byte{4}), ErrMalformed},
		{"acked trailing", MsgAcked, cat(id, make([]byte, 25), []byte{0}), ErrMalformed},
		{"in trailing", MsgIn, cat(id, u32(nil, 1), u32(nil, 3), []byte("abcd")), ErrMalformed},
		{"in short data", MsgIn, cat(id, u32(nil, 1), u32(nil, 3), []byte("ab")), ErrMalformed},
		{"in huge prefix", MsgIn, cat(id, u32(nil, 1), u32(nil, 0xffffffff), []byte("ab")), ErrMalformed},
		{"out no prefix", MsgOut, cat(id, u32(nil, 1)), ErrMalformed},
		{"open trailing", MsgOpen, cat(id, u32(nil, uint32(len(snap))), snap, []byte{' '}), ErrMalformed},
		{"open not json", MsgOpen, cat(id, u32(nil, 3), []byte("{{{")), tcp.ErrBadSnapshot},
		{"open invalid snapshot", MsgOpen, cat(id, u32(nil, uint32(len(badSnapJSON))), badSnapJSON), tcp.ErrBadSnapshot},
		{"open other conn", MsgOpen, cat(id, u32(nil, uint32(len(otherSnap))), otherSnap), ErrMalformed},
		{"rejoin short", MsgRejoin, cat(id, u32(nil, 1), u32(nil, 0)), ErrMalformed},
		{"rejoin state overruns", MsgRejoin, cat(id, u32(nil, 1), u32(nil, 5), []byte("abc"), u32(nil, 0)), ErrMalformed},
		{"rejoin state over the limit", MsgRejoin, cat(id, u32(nil, 1), u32(nil, stack.MaxCheckpointState+1), make([]byte, stack.MaxCheckpointState+1), u32(nil, uint32(len(snap))), snap), ErrMalformed},
		{"rejoin huge state prefix", MsgRejoin, cat(id, u32(nil, 1), u32(nil, 0xffffffff), u32(nil, 0)), ErrMalformed},
		{"rejoin trailing", MsgRejoin, cat(id, u32(nil, 1), u32(nil, 0), u32(nil, uint32(len(snap))), snap, []byte{' '}), ErrMalformed},
		{"rejoin short snapshot", MsgRejoin, cat(id, u32(nil, 1), u32(nil, 2), []byte("st"), u32(nil, uint32(len(snap))+1), snap), ErrMalformed},
		{"rejoin invalid snapshot", MsgRejoin, cat(id, u32(nil, 1), u32(nil, 0), u32(nil, uint32(len(badSnapJSON))), badSnapJSON), tcp.ErrBadSnapshot},
		{"rejoin other conn", MsgRejoin, cat(id, u32(nil, 1), u32(nil, 0), u32(nil, uint32(len(otherSnap))), otherSnap), ErrMalformed},
		{"outsum short", MsgOutSum, cat(id, u32(nil, 1), u32(nil, 3)), ErrMalformed},
		{"outsum trailing", MsgOutSum, cat(id, u32(nil, 1), u32(nil, 3), u32(nil, 3), []byte{0}), ErrMalformed},
		{"outsum over nothing", MsgOutSum, cat(id, u32(nil, 1), u32(nil, 0), u32(nil, 3)), ErrMalformed},
		{"outsum over too much", MsgOutSum, cat(id, u32(nil, 1), u32(nil, stack.MaxSummed+1), u32(nil, 3)), ErrMalformed},
		{"checked short", MsgChecked, cat(id, []byte{0, 0, 1}), ErrMalformed},
		{"checked trailing", MsgChecked, cat(id, u32(nil, 1), []byte{0}), ErrMalformed},
		{"type 0", 0, nil, ErrUnknownType},
		{"type 12", msgTypeEnd, nil, ErrUnknownType},
		{"type 255", 255, make([]byte, 8), ErrUnknownType},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := NewDecoder(testKey, nonceB)
			decodeOne(t, d, helloFrom(nonceA))
			f := rawFrame(testKey, ctxOf(nonceA, nonceB), c.typ, 3, 2, c.body)
			requireFails(t, d, f, c.want)
			if c.want == tcp.ErrBadSnapshot {
				assert.ErrorIs(t, d.Err(), ErrMalformed, "a bad snapshot is a malformed frame")
			}
		})
	}
	// And the well-formed OPEN those were made from passes.
	d := NewDecoder(testKey, nonceB)
	decodeOne(t, d, helloFrom(nonceA))
	m := decodeOne(t, d, rawFrame(testKey, ctxOf(nonceA, nonceB), MsgOpen, 3, 2, cat(id, u32(nil, uint32(len(snap))), snap)))
	assert.Equal(t, testSnapshot(t), m.Snapshot)
	// And the REJOIN's layout: conn, written, state, snapshot.
	m = decodeOne(t, d, rawFrame(testKey, ctxOf(nonceA, nonceB), MsgRejoin, 3, 3, cat(id, u32(nil, 77), u32(nil, 2), []byte("st"), u32(nil, uint32(len(snap))), snap)))
	assert.Equal(t, Message{Type: MsgRejoin, Epoch: 3, Seq: 3, Conn: testConn(), Snapshot: testSnapshot(t), Written: 77, State: []byte("st")}, m)
}

// TestHostileLength: a length over the limit is refused from the 4 bytes
// of the length field alone, and costs no memory.
func TestHostileLength(t *testing.T) {
	for _, n := range []uint32{0xffffffff, 1 << 31, MaxFrame - 3} {
		hdr := binary.BigEndian.AppendUint32(nil, n)
		d := NewDecoder(testKey, nonceB)
		requireFails(t, d, hdr, ErrTooLarge)
		assert.Zero(t, cap(d.buf), "the buffer is dropped")

		// Through Fill, from a peer that would send forever.
		d = NewDecoder(testKey, nonceB)
		src := io.MultiReader(bytes.NewReader(hdr), neverEnding('x'))
		for d.Buffered() < 4 {
			_, err := d.Fill(src)
			require.NoError(t, err)
		}
		assert.LessOrEqual(t, cap(d.buf), fillChunk+4)
		_, _, err := d.Next()
		require.ErrorIs(t, err, ErrTooLarge)
	}
	// Too short for a header and MAC.
	for _, n := range []uint32{0, 1, minLength - 1} {
		requireFails(t, NewDecoder(testKey, nonceB), binary.BigEndian.AppendUint32(nil, n), ErrMalformed)
	}

	// Bytes allocated to refuse the largest length: nothing near it.
	hdr := []byte{0xff, 0xff, 0xff, 0xff}
	d := NewDecoder(testKey, nonceB)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	d.Feed(hdr)
	_, _, err := d.Next()
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, ErrTooLarge)
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<10))
	allocs := testing.AllocsPerRun(100, func() {
		d := Decoder{}
		d.Feed(hdr)
		d.Next()
	})
	assert.LessOrEqual(t, allocs, 8.0, "a buffer for 4 bytes and the error, whatever the length")
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

func TestEncoderRefuses(t *testing.T) {
	a, _ := handshake(t)
	v6 := testConn()
	v6.RemoteAddr = netip.MustParseAddr("2001:db8::1")
	mapped := testConn()
	mapped.LocalAddr = netip.MustParseAddr("::ffff:192.168.1.100")
	snap := testSnapshot(t)
	otherID := testConn()
	otherID.LocalPort = 8
	badSnap := *snap
	badSnap.RcvShift = 15
	for _, c := range []struct {
		name string
		m    Message
		want error
	}{
		{"hello again", Message{Type: MsgHello, Role: 1}, ErrUnexpected},
		{"heartbeat role 0", Message{Type: MsgHeartbeat}, ErrMalformed},
		{"heartbeat role 99", Message{Type: MsgHeartbeat, Role: 99}, ErrMalformed},
		{"type 0", Message{}, ErrUnknownType},
		{"type 99", Message{Type: 99}, ErrUnknownType},
		{"ipv6", Message{Type: MsgIn, Conn: v6}, ErrMalformed},
		{"4in6", Message{Type: MsgClose, Conn: mapped, Close: CloseFIN}, ErrMalformed},
		{"no conn", Message{Type: MsgAcked}, ErrMalformed},
		{"close kind 0", Message{Type: MsgClose, Conn: testConn()}, ErrMalformed},
		{"close kind 9", Message{Type: MsgClose, Conn: testConn(), Close: 9}, ErrMalformed},
		{"open nil", Message{Type: MsgOpen, Conn: testConn()}, ErrMalformed},
		{"open other id", Message{Type: MsgOpen, Conn: otherID, Snapshot: snap}, ErrMalformed},
		{"open invalid", Message{Type: MsgOpen, Conn: testConn(), Snapshot: &badSnap}, tcp.ErrBadSnapshot},
		{"rejoin nil", Message{Type: MsgRejoin, Conn: testConn()}, ErrMalformed},
		{"rejoin invalid", Message{Type: MsgRejoin, Conn: testConn(), Snapshot: &badSnap}, tcp.ErrBadSnapshot},
		{"rejoin state too big", Message{Type: MsgRejoin, Conn: testConn(), Snapshot: snap, State: make([]byte, stack.MaxCheckpointState+1)}, ErrTooLarge},
		{"outsum over nothing", Message{Type: MsgOutSum, Conn: testConn()}, ErrMalformed},
		{"outsum over too much", Message{Type: MsgOutSum, Conn: testConn(), SumLen: stack.MaxSummed + 1}, ErrMalformed},
		{"in too big", Message{Type: MsgIn, Conn: testConn(), Data: make([]byte, MaxData+1)}, ErrTooLarge},
	} {
		seq := a.Enc.Seq()
		dst := []byte{1, 2, 3}
		out, err := a.Enc.AppendFrame(dst, &c.m)
		assert.ErrorIs(t, err, c.want, c.name)
		assert.Equal(t, []byte{1, 2, 3}, out, c.name)
		assert.Equal(t, seq, a.Enc.Seq(), c.name)
	}
	// Still usable.
	_, err := a.Enc.AppendFrame(nil, &Message{Type: MsgStandDown})
	assert.NoError(t, err)

	e := NewEncoder(testKey, Nonce{})
	_, err = e.AppendFrame(nil, &Message{Type: MsgHello, Role: 1})
	assert.ErrorIs(t, err, ErrMalformed, "an all-zero nonce of ours")
	e = NewEncoder(testKey, nonceA)
	_, err = e.AppendFrame(nil, &Message{Type: MsgHello})
	assert.ErrorIs(t, err, ErrMalformed, "no role")
	assert.Zero(t, e.Seq())

	e = NewEncoder(testKey, nonceA)
	assert.ErrorIs(t, e.Bind(Nonce{}), ErrMalformed)
	assert.ErrorIs(t, e.Bind(nonceA), ErrReplay)
	require.NoError(t, e.Bind(nonceB))
	assert.ErrorIs(t, e.Bind(nonceC), ErrUnexpected)
	_, err = e.AppendFrame(nil, &Message{Type: MsgHeartbeat})
	assert.ErrorIs(t, err, ErrUnexpected, "bound, but our HELLO comes first")
}

func TestStrings(t *testing.T) {
	assert.Equal(t, "SYNCACK", MsgSyncAck.String())
	assert.Equal(t, "MsgType(0)", MsgType(0).String())
	assert.Equal(t, "GONE", CloseGone.String())
	assert.Equal(t, "CloseKind(7)", CloseKind(7).String())
	m := Message{Type: MsgIn, Epoch: 2, Seq: 9, Conn: testConn(), DataSeq: 5, Data: []byte("secret")}
	assert.Equal(t, "IN epoch=2 seq=9 conn=192.168.1.100:7<->192.168.1.50:54321 at=5 len=6", m.String())
}

// TestZeroAllocs: steady state costs no allocation either way.
func TestZeroAllocs(t *testing.T) {
	a, b := handshake(t)
	m := Message{Type: MsgIn, Epoch: 3, Conn: testConn(), DataSeq: 1, Data: payload(1400)}
	buf := make([]byte, 0, 2048)
	var err error
	buf, err = a.Enc.AppendFrame(buf[:0], &m)
	require.NoError(t, err)
	b.Dec.Feed(buf)
	_, _, err = b.Next()
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(200, func() {
		buf, _ = a.Enc.AppendFrame(buf[:0], &m)
	})
	assert.Zero(t, allocs, "encode")
	a, b = handshake(t)
	allocs = testing.AllocsPerRun(200, func() {
		buf, _ = a.Enc.AppendFrame(buf[:0], &m)
		b.Dec.Feed(buf)
		if _, ok, err := b.Next(); !ok || err != nil {
			panic(err)
		}
	})
	assert.Zero(t, allocs, "encode and decode")
}

func BenchmarkEncodeIn1400(b *testing.B) {
	a, _ := handshake(b)
	m := Message{Type: MsgIn, Epoch: 3, Conn: testConn(), DataSeq: 1, Data: payload(1400)}
	buf := make([]byte, 0, 2048)
	b.SetBytes(1400)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = a.Enc.AppendFrame(buf[:0], &m)
	}
}

func BenchmarkEncodeDecodeIn1400(b *testing.B) {
	a, s := handshake(b)
	m := Message{Type: MsgIn, Epoch: 3, Conn: testConn(), DataSeq: 1, Data: payload(1400)}
	buf := make([]byte, 0, 2048)
	b.SetBytes(1400)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = a.Enc.AppendFrame(buf[:0], &m)
		s.Dec.Feed(buf)
		if _, ok, err := s.Next(); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

// BenchmarkFrameTag measures tagging and checking an IN frame of each
// size, both ways in one run: "hmac" is protocol version 1's
// HMAC-SHA256, the baseline; "gmac" is what frames after HELLO use now
// (macState). Compare the MB/s columns: the ratio is what GMAC saves on
// every replicated byte, which each node tags or checks once.
func BenchmarkFrameTag(b *testing.B) {
	for _, size := range []int{64, 1500, 32 << 10} {
		frame := make([]byte, size)
		b.Run(fmt.Sprintf("hmac/%d", size), func(b *testing.B) {
			h := hmac.New(sha256.New, testKey[:])
			var sum [sha256.Size]byte
			b.SetBytes(int64(size))
			for b.Loop() {
				h.Reset()
				h.Write(zeroCtx)
				h.Write(frame)
				h.Sum(sum[:0])
			}
		})
		b.Run(fmt.Sprintf("gmac/%d", size), func(b *testing.B) {
			var m macState
			m.init(testKey)
			m.bind(nonceA, nonceB)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			seq := uint64(1)
			for b.Loop() {
				seq++
				m.tag(seq, frame)
			}
		})
	}
}
