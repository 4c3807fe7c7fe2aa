package tcp

import (
	"fmt"
	"testing"
	"time"
)

// FuzzReviewConnScript drives one established connection (the server side
// of a sim) with a script decoded from the input: arbitrary peer segments
// placed near the connection's sequence space, application writes, reads
// and closes, timer ticks, gate changes, Nagle toggles and snapshot
// round trips. After every step it checks invariants that hold for any
// peer behaviour: no panic; SND.UNA <= SND.NXT; RCV.READ <= RCV.NXT;
// buffers within limits; nothing emitted beyond SND.NXT; SND.NXT not
// moved past the gate; payloads within the MSS; options within 40 bytes;
// and the connection's own Snapshot validates and restores.
func FuzzReviewConnScript(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, byte(FlagACK), 0x10, 0, 10, 0, 0})
	f.Add([]byte{1, 200, 3, 50, 0, 0, 0, 0, 0, 0, byte(FlagACK), 0x10, 0, 0, 0, 0, 6})
	f.Add([]byte{4, 1, 3, 10, 0, 0, 0, 0, 0, 0, byte(FlagACK | FlagFIN), 0x10, 0, 5, 0, 0, 3, 200})
	f.Add([]byte{0x80, 5, 1, 1, 255, 3, 1, 0, 0, 0, 0, 0, 0, byte(FlagACK), 0x01, 0, 0, 2, 1, 0, 100, 0, 200, 3, 255, 6})
	f.Add([]byte{0, 1, 7, 1, 200, 0x83, 2, 0x83, 4, 0x83, 8})
	f.Add([]byte{0, 5, 1, 0, 10, 0, 1, 100}) // gate 10 bytes ahead, then a 1600-byte write
	f.Fuzz(fuzzScriptBody)
}

func fuzzScriptBody(t *testing.T, script []byte) {
	if len(script) == 0 {
		return
	}
	cfg := Config{ReceiveBufferSize: 8192, SendBufferSize: 16384}
	v := script[0]
	if v&1 != 0 {
		cfg.DisableSACK = true
	}
	if v&2 != 0 {
		cfg.DisableTimestamps = true
	}
	if v&4 != 0 {
		cfg.MSS = 88
	}
	if v&8 != 0 {
		cfg.KeepAlive = 3 * time.Second
		cfg.KeepAliveInterval = time.Second
		cfg.KeepAliveCount = 2
	}
	if v&16 != 0 {
		cfg.ReceiveBufferSize = 1 << 20
	}
	s := newSim(t, Config{}, cfg, issClient, issServer)
	c := s.c[1]
	now := s.now
	var peerTS uint32 = c.tsRecent
	rd := script[1:]
	next := func() byte {
		if len(rd) == 0 {
			return 0
		}
		b := rd[0]
		rd = rd[1:]
		return b
	}
	u16 := func() uint16 { return uint16(next())<<8 | uint16(next()) }
	data := make([]byte, 4096)
	rbuf := make([]byte, 4096)
	step := 0
	check := func(what string, sndNxtBefore Seq, out []Segment) {
		t.Helper()
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("step %d (%s), state %v: %s", step, what, c.State(), fmt.Sprintf(format, args...))
		}
		if c.sndUna.Greater(c.sndNxt) {
			fail("SND.UNA %d after SND.NXT %d", c.sndUna, c.sndNxt)
		}
		if c.rcvRead.Greater(c.rcvNxt) {
			fail("RCV.READ %d after RCV.NXT %d", c.rcvRead, c.rcvNxt)
		}
		if c.Readable() > c.rcvBuf.limit || c.Unsent() > c.sndBuf.limit {
			fail("buffers over limit: %d %d", c.Readable(), c.Unsent())
		}
		for _, o := range out {
			if o.OptionsLen() > 40 {
				fail("options %d bytes: %v", o.OptionsLen(), o.String())
			}
			if len(o.Payload) > c.mss() {
				fail("payload %d over MSS %d", len(o.Payload), c.mss())
			}
			if len(o.Payload) > 0 && o.Seq.Add(uint32(len(o.Payload))).Greater(c.sndNxt) {
				fail("data %v beyond SND.NXT %d", o.String(), c.sndNxt)
			}
			if c.gate.Enabled && o.Flags&FlagACK != 0 && o.Ack.Greater(c.gate.AckLimit) && o.Flags&FlagSYN == 0 {
				fail("ACK %d beyond gate %d", o.Ack, c.gate.AckLimit)
			}
		}
		// New bytes stop at the gate's SendLimit (a FIN after them is
		// CloseOK's business).
		sent := c.sndNxt
		if c.finSent && sent == c.finSeq+1 {
			sent = c.finSeq
		}
		if c.gate.Enabled && sent.Greater(sndNxtBefore) && sent.Greater(c.gate.SendLimit) {
			fail("SND.NXT moved from %d to %d, beyond the gate's SendLimit %d", sndNxtBefore, sent, c.gate.SendLimit)
		}
		if c.State() != StateClosed {
			snap := c.Snapshot()
			if err := snap.Validate(); err != nil {
				fail("own snapshot invalid: %v", err)
			}
		}
	}
	emit := func(what string) {
		t.Helper()
		before := c.sndNxt
		var out []Segment
		if !noPanic(t, func() { out = collect(c, now) }) {
			t.FailNow()
		}
		check(what, before, out)
	}
	for len(rd) > 0 && step < 200 {
		step++
		op := next()
		switch op % 8 {
		case 0, 7: // a segment from the peer
			seg := Segment{WScale: -1}
			seg.Seq = c.rcvNxt + Seq(int16(u16()))
			seg.Ack = c.sndUna + Seq(int16(u16()))
			seg.Flags = Flags(next() & 0x3f)
			seg.Window = u16()
			n := int(next())
			if op&0x80 != 0 {
				n *= 8
			}
			seg.Payload = data[:min(n, len(data))]
			k := next()
			seg.NumSACK = k % 5
			for i := range int(seg.NumSACK) {
				st := c.sndUna + Seq(int16(u16()))
				seg.SACK[i] = SACKBlock{st, st + Seq(next())*16}
			}
			if k&0x80 == 0 && c.tsOK {
				seg.HasTS = true
				peerTS += uint32(next())
				seg.TSVal = peerTS - 64
				seg.TSEcr = c.tsLast
			}
			if !noPanic(t, func() { c.Handle(now, &seg) }) {
				t.FailNow()
			}
			emit("segment " + seg.String())
		case 1: // application write
			n := int(next()) * 16
			if !noPanic(t, func() { c.Write(data[:min(n, len(data))]) }) {
				t.FailNow()
			}
			emit("write")
		case 2: // application read
			c.Read(rbuf[:int(next())*16+1])
			emit("read")
		case 3: // time passes
			d := time.Duration(next()) * time.Millisecond
			if op&0x80 != 0 {
				d *= 1000
			}
			now = now.Add(d)
			if !noPanic(t, func() { c.Tick(now) }) {
				t.FailNow()
			}
			emit("tick")
		case 4: // closes
			switch next() % 4 {
			case 0:
				c.Close(now)
			case 1:
				c.CloseWrite(now)
			case 2:
				c.CloseRead()
			case 3:
				if next() == 0 {
					c.Abort(now)
				}
			}
			emit("close")
		case 5: // the gate
			g := c.Gate()
			switch next() % 3 {
			case 0:
				g = Gate{}
			case 1:
				g = Gate{Enabled: true, OpenOK: true, AckLimit: c.rcvNxt - Seq(next()), SendLimit: c.sndNxt + Seq(next()), CloseOK: next()&1 == 0}
			case 2:
				g.AckLimit = c.rcvNxt
				g.SendLimit = c.dataEnd()
				g.CloseOK = true
			}
			c.SetGate(g)
			emit("gate")
		case 6: // Nagle, or a snapshot round trip
			b := next()
			if b&1 == 0 {
				c.SetNoDelay(b&2 != 0)
			} else if c.State() != StateClosed {
				enc, err := c.Snapshot().MarshalBinary()
				if err != nil {
					t.Fatalf("step %d: marshal: %v", step, err)
				}
				var snap Snapshot
				if err := snap.UnmarshalBinary(enc); err != nil {
					t.Fatalf("step %d: unmarshal own snapshot: %v", step, err)
				}
				r, err := Restore(snap, now)
				if err != nil {
					t.Fatalf("step %d: restore of own snapshot: %v", step, err)
				}
				r.SetGate(c.Gate())
				c = r
			}
			emit("nagle/restore")
		}
	}
}
