package tcp

import (
	"bytes"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/zppratt/rfsis/stack/wire"
)

func mustV6() netip.Addr { return netip.MustParseAddr("2001:db8::1") }

func FuzzParse(f *testing.F) {
	seg := Segment{SrcPort: 1, DstPort: 2, Seq: 3, Ack: 4, Flags: FlagSYN | FlagACK, Window: 5,
		MSS: 1460, WScale: 7, SACKPermitted: true, HasTS: true, TSVal: 9, TSEcr: 10, Payload: []byte("hi")}
	b := make([]byte, HeaderLen+seg.OptionsLen()+2)
	seg.Marshal(b, 0, wire.Checksum)
	f.Add(b)
	seg = Segment{Flags: FlagACK, WScale: -1, NumSACK: 2, SACK: [4]SACKBlock{{1, 2}, {3, 4}}}
	b = make([]byte, HeaderLen+seg.OptionsLen())
	seg.Marshal(b, 0, nil)
	f.Add(b)
	f.Add(make([]byte, 20))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s Segment
		if err := Parse(b, &s); err != nil {
			return
		}
		// What parsed must encode and parse back to the same fields.
		out := make([]byte, HeaderLen+s.OptionsLen()+len(s.Payload))
		n := s.Marshal(out, 0, nil)
		var s2 Segment
		if err := Parse(out[:n], &s2); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !bytes.Equal(s.Payload, s2.Payload) {
			t.Fatalf("payload changed")
		}
		s.Payload, s2.Payload = nil, nil
		// SACK blocks beyond the 40 bytes of option space are left out.
		if s2.NumSACK < s.NumSACK {
			for i := s2.NumSACK; i < s.NumSACK; i++ {
				s.SACK[i] = SACKBlock{}
			}
			s.NumSACK = s2.NumSACK
		}
		if !reflect.DeepEqual(s, s2) {
			t.Fatalf("fields changed:\n%+v\n%+v", s, s2)
		}
	})
}

func FuzzSnapshotUnmarshal(f *testing.F) {
	s := newSim(f, Config{}, Config{}, issClient, issServer)
	_, _ = s.c[1].Write([]byte("pending data"))
	enc, _ := s.c[1].Snapshot().MarshalBinary()
	f.Add(enc)
	f.Add([]byte(`{"Version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var snap Snapshot
		if err := snap.UnmarshalBinary(b); err != nil {
			return
		}
		c, err := Restore(snap, time.Unix(1, 0))
		if err != nil {
			t.Fatalf("validated snapshot failed to restore: %v", err)
		}
		// A restored connection must survive its own output and timers.
		c.Output(time.Unix(1, 0), func(*Segment) {})
		c.Tick(time.Unix(100, 0))
		c.Output(time.Unix(100, 0), func(*Segment) {})
	})
}

// FuzzConnHandle feeds arbitrary segments to an established connection:
// it must never panic, and its sequence variables must stay consistent.
func FuzzConnHandle(f *testing.F) {
	f.Add(uint32(0), uint32(0), uint8(FlagACK), uint16(1000), []byte("data"), uint8(0))
	f.Add(uint32(1), uint32(0), uint8(FlagRST), uint16(0), []byte{}, uint8(1))
	f.Add(uint32(100), uint32(5), uint8(FlagACK|FlagFIN), uint16(10), []byte("xyz"), uint8(2))
	f.Fuzz(func(t *testing.T, seqOff, ackOff uint32, flags uint8, win uint16, payload []byte, sack uint8) {
		s := newSim(t, Config{ReceiveBufferSize: 8192}, Config{ReceiveBufferSize: 8192}, issClient, issServer)
		c := s.c[1]
		_, _ = c.Write(bytes.Repeat([]byte("a"), 5000))
		c.Output(s.now, func(*Segment) {})
		seg := &Segment{Seq: c.rcvNxt + Seq(seqOff), Ack: c.sndUna + Seq(ackOff), Flags: Flags(flags & 0x3f),
			Window: win, WScale: -1, Payload: payload, NumSACK: sack % 5}
		for i := range int(seg.NumSACK) {
			seg.SACK[i] = SACKBlock{c.sndUna + Seq(seqOff*uint32(i)), c.sndUna + Seq(ackOff*uint32(i+1))}
		}
		for range 3 {
			c.Handle(s.now, seg)
			c.Output(s.now, func(*Segment) {})
			c.Tick(s.now.Add(time.Second))
			if c.sndUna.Greater(c.sndNxt) || c.rcvRead.Greater(c.rcvNxt) || c.Readable() > 8192 || c.rcvBuf.size < 0 {
				t.Fatalf("inconsistent: una %d nxt %d read %d rcvnxt %d readable %d", c.sndUna, c.sndNxt, c.rcvRead, c.rcvNxt, c.Readable())
			}
		}
	})
}
