package tcp

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// ISNGenerator makes initial sequence numbers as RFC 6528 asks: a 4 µs
// clock plus a keyed hash of the four-tuple, so an off-path attacker
// cannot predict them and successive connections with the same tuple get
// increasing numbers.
type ISNGenerator struct {
	key [32]byte
}

// NewISNGenerator returns a generator with a random key.
func NewISNGenerator() *ISNGenerator {
	g := &ISNGenerator{}
	if _, err := rand.Read(g.key[:]); err != nil {
		panic("tcp: no randomness for ISN key: " + err.Error())
	}
	return g
}

// NewISNGeneratorKey returns a generator with the given key (tests, or a
// pair of nodes that must agree).
func NewISNGeneratorKey(key [32]byte) *ISNGenerator { return &ISNGenerator{key: key} }

// ISN returns the initial sequence number for id at now.
func (g *ISNGenerator) ISN(id FourTuple, now time.Time) Seq {
	var b [32 + 4 + 4 + 2 + 2]byte
	copy(b[:32], g.key[:])
	la, ra := id.LocalAddr.As4(), id.RemoteAddr.As4()
	copy(b[32:], la[:])
	copy(b[36:], ra[:])
	binary.BigEndian.PutUint16(b[40:], id.LocalPort)
	binary.BigEndian.PutUint16(b[42:], id.RemotePort)
	h := sha256.Sum256(b[:])
	return Seq(uint32(now.UnixNano()/4000) + binary.BigEndian.Uint32(h[:]))
}

// ResetFor builds the reply to a segment that belongs to no connection
// (RFC 9293 3.10.7.1): an RST, unless the segment is itself an RST. The
// reply's ports are swapped from seg's.
func ResetFor(seg *Segment) (Segment, bool) {
	if seg.Flags&FlagRST != 0 {
		return Segment{}, false
	}
	r := Segment{SrcPort: seg.DstPort, DstPort: seg.SrcPort, WScale: -1}
	if seg.Flags&FlagACK != 0 {
		r.Seq = seg.Ack
		r.Flags = FlagRST
	} else {
		r.Ack = seg.Seq.Add(seg.Len())
		r.Flags = FlagRST | FlagACK
	}
	return r, true
}
