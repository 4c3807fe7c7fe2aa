package tcp

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Sequence numbers near the wrap point, so every test crosses 2^32.
const (
	issClient Seq = 0xffffff00
	issServer Seq = 0x7ffffff0
)

func TestHandshakeNegotiatesOptions(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	for i, c := range s.c {
		assert.True(t, c.wsOK, "window scaling side %d", i)
		assert.True(t, c.sackOK, "SACK side %d", i)
		assert.True(t, c.tsOK, "timestamps side %d", i)
		assert.Equal(t, 1460-12, c.MSS(), "MSS side %d", i)
		assert.Equal(t, uint8(5), c.sndShift, "peer's window shift for 1 MiB")
	}
	assert.Equal(t, issServer, s.c[0].irs)
	assert.Equal(t, issClient, s.c[1].irs)
	// Client SYN, server SYN-ACK, client ACK: three segments.
	require.Len(t, s.sent[0], 2)
	require.Len(t, s.sent[1], 1)
	assert.Equal(t, FlagSYN|FlagACK, s.sent[1][0].Flags)
	assert.NotZero(t, s.c[0].TakeEvents()&EventEstablished)
}

func TestHandshakeWithoutOptions(t *testing.T) {
	off := Config{DisableWindowScaling: true, DisableSACK: true, DisableTimestamps: true}
	s := newSim(t, off, Config{}, issClient, issServer)
	for i, c := range s.c {
		assert.False(t, c.wsOK, "side %d", i)
		assert.False(t, c.sackOK, "side %d", i)
		assert.False(t, c.tsOK, "side %d", i)
	}
	// Without window scaling the server offers at most 65535.
	assert.LessOrEqual(t, s.c[0].sndWnd, uint32(65535))
	s.send(0, randomBytes(1, 300_000), time.Minute)
	s.send(1, randomBytes(2, 300_000), time.Minute)
}

func TestBulkBothWays(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	s.send(0, randomBytes(1, 3<<20), time.Minute)
	s.send(1, randomBytes(2, 3<<20), time.Minute)
	assert.Zero(t, s.c[0].retries)
}

func lossy(seed uint64, p float64) func(int, *Segment) bool {
	r := rand.New(rand.NewPCG(seed, 2))
	return func(int, *Segment) bool { return r.Float64() < p }
}

func TestBulkUnderLoss(t *testing.T) {
	for _, tc := range []struct {
		name string
		loss float64
		cfg  Config
	}{
		{"1pct-sack", 0.01, Config{}},
		{"5pct-sack", 0.05, Config{}},
		{"5pct-newreno", 0.05, Config{DisableSACK: true}},
		{"10pct-no-timestamps", 0.10, Config{DisableTimestamps: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, tc.cfg, tc.cfg, issClient, issServer)
			s.drop = lossy(7, tc.loss)
			s.send(0, randomBytes(3, 1<<20), 10*time.Minute)
			s.send(1, randomBytes(4, 1<<20), 10*time.Minute)
		})
	}
}

func TestFastRetransmitRepairsSingleLoss(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	dropped := false
	s.drop = func(from int, seg *Segment) bool {
		// Drop the fifth data segment from the client, once.
		if from == 0 && len(seg.Payload) > 0 && !dropped && seg.Seq == s.c[0].iss+1+Seq(4*s.c[0].MSS()) {
			dropped = true
			return true
		}
		return false
	}
	start := s.now
	s.send(0, randomBytes(5, 200_000), time.Minute)
	require.True(t, dropped)
	// Repaired by fast retransmit, well before a 200 ms+ timeout.
	assert.Less(t, s.now.Sub(start), 200*time.Millisecond)
	assert.Zero(t, s.c[0].retries, "no timeout should have fired")
}

func TestReordering(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	r := rand.New(rand.NewPCG(9, 9))
	s.reorder = func(int, *Segment) time.Duration { return time.Duration(r.IntN(8)) * time.Millisecond }
	s.send(0, randomBytes(6, 1<<20), time.Minute)
}

func TestOutOfOrderIsSACKed(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	base := srv.rcvNxt
	seg := &Segment{Seq: base + 1000, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: make([]byte, 500)}
	srv.Handle(s.now, seg)
	var out []Segment
	srv.Output(s.now, func(s *Segment) { out = append(out, *s) })
	require.Len(t, out, 1)
	assert.Equal(t, base, out[0].Ack, "duplicate ACK for the hole")
	require.Equal(t, uint8(1), out[0].NumSACK)
	assert.Equal(t, SACKBlock{base + 1000, base + 1500}, out[0].SACK[0])
	// Fill the hole: the ACK covers both at once.
	srv.Handle(s.now, &Segment{Seq: base, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: make([]byte, 1000)})
	out = out[:0]
	srv.Output(s.now, func(s *Segment) { out = append(out, *s) })
	require.Len(t, out, 1)
	assert.Equal(t, base+1500, out[0].Ack)
	assert.Zero(t, out[0].NumSACK)
	assert.Equal(t, 1500, srv.Readable())
}

func TestSmallReceiveWindowAndSlowReader(t *testing.T) {
	s := newSim(t, Config{}, Config{ReceiveBufferSize: 8192}, issClient, issServer)
	s.autoRead[1] = false
	data := randomBytes(7, 200_000)
	rest := data
	var got []byte
	buf := make([]byte, 3000)
	steps := 0
	end := s.now.Add(time.Minute)
	for len(got) < len(data) {
		require.True(t, s.now.Before(end), "transfer stalled at %d bytes", len(got))
		if len(rest) > 0 {
			n, err := s.c[0].Write(rest)
			require.NoError(t, err)
			rest = rest[n:]
			s.flush(0)
		}
		// The receiver never holds more than its buffer.
		require.LessOrEqual(t, s.c[1].Readable(), 8192)
		steps++
		if steps%5 == 0 || !s.step() {
			n := s.c[1].Read(buf)
			got = append(got, buf[:n]...)
			s.flush(1)
		}
	}
	assert.Equal(t, data, got)
}

func TestZeroWindowProbing(t *testing.T) {
	s := newSim(t, Config{}, Config{ReceiveBufferSize: 4096}, issClient, issServer)
	s.autoRead[1] = false
	n, err := s.c[0].Write(randomBytes(8, 10000))
	require.NoError(t, err)
	require.Equal(t, 10000, n)
	s.flush(0)
	// Run for a while: the window closes, the sender probes with backoff.
	end := s.now.Add(30 * time.Second)
	for s.now.Before(end) && s.step() {
	}
	assert.Equal(t, 4096, s.c[1].Readable())
	assert.Zero(t, s.c[0].sndWnd)
	probes := 0
	for _, seg := range s.sent[0] {
		if len(seg.Payload) == 0 && seg.Seq == s.c[0].sndUna-1 {
			probes++
		}
	}
	assert.GreaterOrEqual(t, probes, 3, "persist timer should probe")
	assert.Less(t, probes, 30, "probes should back off")
	assert.Equal(t, StateEstablished, s.c[0].State(), "probing must not time the connection out")
	// The reader drains: the window update (or the next probe) restarts the flow.
	s.autoRead[1] = true
	s.after(1)
	s.runUntil(func() bool { return s.recv[1].Len() == 10000 }, 2*time.Minute)
}

func TestActiveClose(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	s.send(0, []byte("hello"), time.Second)
	s.c[0].CloseWrite(s.now) // a half-close: the client reads on
	s.flush(0)
	s.runUntil(func() bool { return s.c[1].State() == StateCloseWait && s.c[0].State() == StateFinWait2 }, time.Second)
	assert.True(t, s.c[1].EOF())
	s.send(1, []byte("bye"), time.Second) // half-close: the server still sends
	s.c[1].Close(s.now)
	s.flush(1)
	s.runUntil(func() bool { return s.c[1].State() == StateClosed && s.c[0].State() == StateTimeWait }, time.Second)
	assert.NoError(t, s.c[1].Err())
	twStart := s.now
	s.runUntil(func() bool { return s.c[0].State() == StateClosed }, 2*time.Minute)
	assert.GreaterOrEqual(t, s.now.Sub(twStart), 60*time.Second-time.Second)
	assert.NoError(t, s.c[0].Err())
}

func TestSimultaneousClose(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	s.c[0].Close(s.now)
	s.c[1].Close(s.now)
	s.flush(0)
	s.flush(1)
	s.runUntil(func() bool { return s.c[0].State() == StateTimeWait && s.c[1].State() == StateTimeWait }, time.Second)
	s.runUntil(func() bool { return s.c[0].State() == StateClosed && s.c[1].State() == StateClosed }, 2*time.Minute)
}

func TestCloseWithLostFIN(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	finDropped := 0
	s.drop = func(from int, seg *Segment) bool {
		if seg.Flags&FlagFIN != 0 && finDropped < 2 {
			finDropped++
			return true
		}
		return false
	}
	s.c[0].Close(s.now)
	s.flush(0)
	s.runUntil(func() bool { return s.c[1].State() == StateCloseWait }, 10*time.Second)
	s.c[1].Close(s.now)
	s.flush(1)
	s.runUntil(func() bool { return s.c[1].State() == StateClosed }, 10*time.Second)
	assert.Equal(t, 2, finDropped)
}

// handleOne feeds seg to c and returns what c emits in answer.
func handleOne(c *Conn, now time.Time, seg *Segment) []Segment {
	c.Handle(now, seg)
	var out []Segment
	c.Output(now, func(s *Segment) { out = append(out, *s) })
	return out
}

func TestRSTMustMatchExactly(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	// In the window but not RCV.NXT: a challenge ACK, no reset (RFC 5961 3.2).
	out := handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt + 100, Flags: FlagRST})
	require.Len(t, out, 1)
	assert.Equal(t, FlagACK, out[0].Flags)
	assert.Equal(t, srv.rcvNxt, out[0].Ack)
	assert.Equal(t, StateEstablished, srv.State())
	// Outside the window: silently dropped.
	out = handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt - 100000, Flags: FlagRST})
	assert.Empty(t, out)
	assert.Equal(t, StateEstablished, srv.State())
	// Exact: the connection is reset.
	out = handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Flags: FlagRST})
	assert.Empty(t, out)
	assert.Equal(t, StateClosed, srv.State())
	assert.ErrorIs(t, srv.Err(), ErrConnReset)
	assert.NotZero(t, srv.TakeEvents()&EventClosed)
}

func TestSYNOnEstablishedGetsChallengeACK(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	out := handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Flags: FlagSYN})
	require.Len(t, out, 1)
	assert.Equal(t, FlagACK, out[0].Flags)
	assert.Equal(t, StateEstablished, srv.State())
}

func TestChallengeACKsAreRateLimited(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	n := 0
	for range 100 {
		n += len(handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt + 10, Flags: FlagRST}))
	}
	assert.Equal(t, 10, n)
}

func TestACKOfUnsentDataIsDropped(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	una := srv.sndUna
	out := handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Ack: srv.sndNxt + 1000, Flags: FlagACK, Window: 100, Payload: []byte("x")})
	require.Len(t, out, 1, "answered with an ACK")
	assert.Equal(t, una, srv.sndUna)
	assert.Zero(t, srv.Readable(), "data of a bad-ACK segment is not taken")
}

func TestPAWSDropsOldTimestamp(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	old := srv.tsRecent - 10
	out := handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Ack: srv.sndNxt, Flags: FlagACK, Window: 100, HasTS: true, TSVal: old, Payload: []byte("stale")})
	require.Len(t, out, 1)
	assert.Zero(t, srv.Readable())
}

func TestRetransmissionTimeoutGivesUp(t *testing.T) {
	s := newSim(t, Config{}, Config{MaxRetries: 5}, issClient, issServer)
	s.drop = func(from int, _ *Segment) bool { return from == 1 }
	_, err := s.c[1].Write([]byte("into the void"))
	require.NoError(t, err)
	s.flush(1)
	start, rto := s.now, s.c[1].RTO()
	s.runUntil(func() bool { return s.c[1].State() == StateClosed }, 10*time.Minute)
	assert.ErrorIs(t, s.c[1].Err(), ErrTimeout)
	// The RTO (from the handshake's sample) doubling five times: 63 RTOs.
	assert.InDelta(t, 63*rto.Seconds(), s.now.Sub(start).Seconds(), 0.1)
	var rexmits int
	for _, seg := range s.sent[1] {
		if string(seg.Payload) == "into the void" {
			rexmits++
		}
	}
	assert.Equal(t, 6, rexmits, "original plus five retransmissions")
}

func TestSYNRetransmittedThenRefused(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewActive(Config{}, clientID(), 1, now)
	var out []Segment
	emit := func(s *Segment) { out = append(out, *s) }
	c.Output(now, emit)
	require.Len(t, out, 1)
	now = c.NextDeadline()
	c.Tick(now)
	c.Output(now, emit)
	require.Len(t, out, 2)
	assert.Equal(t, out[0].Seq, out[1].Seq)
	assert.Equal(t, FlagSYN, out[1].Flags)
	// RST with an acceptable ACK: refused.
	c.Handle(now, &Segment{Flags: FlagRST | FlagACK, Ack: 2})
	assert.ErrorIs(t, c.Err(), ErrRefused)
}

func TestDelayedACK(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	srv.quickAcks = 0
	out := handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("one")})
	assert.Empty(t, out, "a single segment's ACK is delayed")
	assert.Equal(t, s.now.Add(40*time.Millisecond), srv.NextDeadline())
	out = handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("two")})
	require.Len(t, out, 1, "the second segment is acknowledged at once")
	out = handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("three")})
	assert.Empty(t, out)
	srv.Tick(s.now.Add(40 * time.Millisecond))
	srv.Output(s.now, func(s *Segment) { out = append(out, *s) })
	require.Len(t, out, 1)
	assert.Equal(t, srv.rcvNxt, out[0].Ack)
}

func TestNagleHoldsSmallSegments(t *testing.T) {
	for _, noDelay := range []bool{false, true} {
		s := newSim(t, Config{NoDelay: noDelay}, Config{}, issClient, issServer)
		cl := s.c[0]
		n0 := len(s.sent[0])
		for _, b := range []string{"a", "b", "c"} {
			_, err := cl.Write([]byte(b))
			require.NoError(t, err)
			s.flush(0)
		}
		segs := len(s.sent[0]) - n0
		if noDelay {
			assert.Equal(t, 3, segs)
		} else {
			assert.Equal(t, 1, segs, "Nagle: later small writes wait for the ACK")
		}
		s.runUntil(func() bool { return s.recv[1].Len() == 3 }, time.Second)
		assert.Equal(t, "abc", s.recv[1].String())
	}
}

func TestResetForUnknownSegment(t *testing.T) {
	r, ok := ResetFor(&Segment{SrcPort: 1, DstPort: 2, Seq: 100, Flags: FlagSYN})
	require.True(t, ok)
	assert.Equal(t, FlagRST|FlagACK, r.Flags)
	assert.Equal(t, Seq(101), r.Ack)
	assert.Equal(t, uint16(2), r.SrcPort)
	r, ok = ResetFor(&Segment{Seq: 100, Ack: 555, Flags: FlagACK, Payload: []byte("xx")})
	require.True(t, ok)
	assert.Equal(t, FlagRST, r.Flags)
	assert.Equal(t, Seq(555), r.Seq)
	_, ok = ResetFor(&Segment{Flags: FlagRST})
	assert.False(t, ok, "never answer an RST")
}

func TestGateHoldsBackOutput(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	g := Gate{Enabled: true, OpenOK: true, AckLimit: srv.rcvNxt, SendLimit: srv.sndNxt}
	srv.SetGate(g)
	s.send(0, []byte("0123456789"), time.Second) // received but not yet acknowledged on the wire
	for _, seg := range s.sent[1] {
		assert.True(t, seg.Ack.LessEq(g.AckLimit), "ACK passed the gate")
	}
	_, _ = srv.Write([]byte("reply"))
	srv.Close(s.now)
	s.flush(1)
	for _, seg := range s.sent[1] {
		assert.Empty(t, seg.Payload, "data passed the gate")
		assert.Zero(t, seg.Flags&FlagFIN, "FIN passed the gate")
	}
	// The backup catches up: everything flows.
	g.AckLimit = srv.rcvNxt
	g.SendLimit = srv.dataEnd()
	g.CloseOK = true
	srv.SetGate(g)
	s.flush(1)
	s.runUntil(func() bool { return s.recv[0].String() == "reply" && s.c[0].EOF() }, 5*time.Second)
}

func TestISNIsKeyedAndMonotonic(t *testing.T) {
	g1 := NewISNGeneratorKey([32]byte{1})
	g2 := NewISNGeneratorKey([32]byte{2})
	now := time.Unix(5000, 0)
	id := clientID()
	assert.NotEqual(t, g1.ISN(id, now), g2.ISN(id, now))
	other := id
	other.RemotePort++
	assert.NotEqual(t, g1.ISN(id, now), g1.ISN(other, now))
	a := g1.ISN(id, now)
	b := g1.ISN(id, now.Add(time.Millisecond))
	assert.Equal(t, uint32(250), b.Sub(a), "4 µs clock")
}

func TestGSOSuperSegments(t *testing.T) {
	gso := Config{GSOMaxSize: 65000}
	s := newSim(t, gso, gso, issClient, issServer)
	s.drop = lossy(3, 0.01)
	s.send(0, randomBytes(31, 4<<20), 10*time.Minute)
	mss := s.c[0].MSS()
	big := 0
	for _, seg := range s.sent[0] {
		if len(seg.Payload) > mss {
			big++
			require.LessOrEqual(t, len(seg.Payload), 65000)
		}
	}
	assert.Greater(t, big, 10, "bulk data should leave in super-segments")
}

// TestSACKBlocksFitTheSegment: a data segment carries SACK blocks only in
// the option space its payload leaves, so header, options and payload
// never exceed the peer's MSS. A full-sized data segment with blocks on
// top was too big for the MTU: the stack dropped it while the connection
// counted it sent, and with traffic both ways and a hole in each
// direction both ends retransmitted such segments forever (nettest's
// FutureTimeout hung about once in 200 runs).
func TestSACKBlocksFitTheSegment(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	require.True(t, srv.sackOK && srv.tsOK, "the sim negotiates SACK and timestamps")
	base := srv.rcvNxt
	// A hole in what the server received: it has blocks to report.
	srv.Handle(s.now, &Segment{Seq: base + 1000, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: make([]byte, 500)})
	srv.Output(s.now, func(*Segment) {})
	_, err := srv.Write(randomBytes(8, 3*srv.mss()+100))
	require.NoError(t, err)
	var data int
	srv.Output(s.now, func(seg *Segment) {
		if len(seg.Payload) == 0 {
			return
		}
		data++
		assert.LessOrEqual(t, seg.OptionsLen()+len(seg.Payload), int(srv.sendMSS),
			"segment at %d: %d option bytes (%d SACK blocks) and %d payload bytes", seg.Seq, seg.OptionsLen(), seg.NumSACK, len(seg.Payload))
	})
	require.Positive(t, data, "the server sent data")
}
