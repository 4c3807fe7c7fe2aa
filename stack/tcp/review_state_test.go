package tcp

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Review tests of state transitions, kept as regression tests.

// establishedPair returns a sim with both sides established and idle.
func establishedPair(t *testing.T) *sim {
	return newSim(t, Config{}, Config{}, issClient, issServer)
}

func TestReview_RSTInEachState(t *testing.T) {
	type setup func(t *testing.T) (*sim, *Conn)
	states := map[string]struct {
		f       setup
		want    State
		wantErr error
	}{
		"ESTABLISHED": {func(t *testing.T) (*sim, *Conn) { s := establishedPair(t); return s, s.c[1] }, StateEstablished, ErrConnReset},
		"FIN-WAIT-1": {func(t *testing.T) (*sim, *Conn) {
			s := establishedPair(t)
			s.c[1].Close(s.now)
			collect(s.c[1], s.now)
			return s, s.c[1]
		}, StateFinWait1, ErrConnReset},
		"FIN-WAIT-2": {func(t *testing.T) (*sim, *Conn) {
			s := establishedPair(t)
			s.c[1].Close(s.now)
			s.flush(1)
			s.runUntil(func() bool { return s.c[1].State() == StateFinWait2 }, time.Second)
			return s, s.c[1]
		}, StateFinWait2, ErrConnReset},
		"CLOSE-WAIT": {func(t *testing.T) (*sim, *Conn) {
			s := establishedPair(t)
			s.c[0].Close(s.now)
			s.flush(0)
			s.runUntil(func() bool { return s.c[1].State() == StateCloseWait }, time.Second)
			return s, s.c[1]
		}, StateCloseWait, ErrConnReset},
		"LAST-ACK": {func(t *testing.T) (*sim, *Conn) {
			s := establishedPair(t)
			s.c[0].Close(s.now)
			s.flush(0)
			s.runUntil(func() bool { return s.c[1].State() == StateCloseWait }, time.Second)
			s.c[1].Close(s.now)
			collect(s.c[1], s.now)
			return s, s.c[1]
		}, StateLastAck, nil},
		"CLOSING": {func(t *testing.T) (*sim, *Conn) {
			s := establishedPair(t)
			s.c[0].Close(s.now)
			s.c[1].Close(s.now)
			collect(s.c[1], s.now) // server's FIN sent (and lost)
			s.flush(0)             // client's FIN arrives
			s.runUntil(func() bool { return s.c[1].State() == StateClosing }, time.Second)
			s.drop = func(int, *Segment) bool { return true }
			return s, s.c[1]
		}, StateClosing, nil},
		"TIME-WAIT": {func(t *testing.T) (*sim, *Conn) {
			s := establishedPair(t)
			s.c[1].Close(s.now)
			s.flush(1)
			s.runUntil(func() bool { return s.c[0].State() == StateCloseWait }, time.Second)
			s.c[0].Close(s.now)
			s.flush(0)
			s.runUntil(func() bool { return s.c[1].State() == StateTimeWait }, time.Second)
			return s, s.c[1]
		}, StateTimeWait, nil},
	}
	for name, tc := range states {
		t.Run(name, func(t *testing.T) {
			s, c := tc.f(t)
			require.Equal(t, tc.want, c.State())
			// An RST in the window but not at RCV.NXT: challenge ACK only.
			// (In TIME-WAIT the window may be empty; skip that part.)
			if c.advertisedWindow() > 1 {
				out := handleOne(c, s.now, &Segment{Seq: c.rcvNxt + 1, Flags: FlagRST})
				assert.Equal(t, tc.want, c.State(), "in-window RST must not reset")
				require.Len(t, out, 1)
				assert.Equal(t, FlagACK, out[0].Flags)
			}
			// Out of window: ignored silently.
			out := handleOne(c, s.now, &Segment{Seq: c.rcvNxt - 1_000_000, Flags: FlagRST})
			assert.Empty(t, out)
			assert.Equal(t, tc.want, c.State())
			// Exact: reset.
			out = handleOne(c, s.now, &Segment{Seq: c.rcvNxt, Flags: FlagRST})
			for _, o := range out {
				assert.Zero(t, o.Flags&FlagRST, "never answer an RST with an RST")
			}
			assert.Equal(t, StateClosed, c.State())
			assert.Equal(t, tc.wantErr, c.Err())
		})
	}
}

func TestReview_RSTInSynStates(t *testing.T) {
	now := time.Unix(1000, 0)
	// SYN-SENT: an RST without ACK, or with a bad ACK, is ignored.
	c := NewActive(Config{}, clientID(), 1000, now)
	collect(c, now)
	c.Handle(now, &Segment{Seq: 5, Flags: FlagRST})
	assert.Equal(t, StateSynSent, c.State())
	c.Handle(now, &Segment{Seq: 5, Ack: 5000, Flags: FlagRST | FlagACK})
	assert.Equal(t, StateSynSent, c.State())
	assert.Empty(t, collect(c, now), "never answer an RST")
	c.Handle(now, &Segment{Seq: 5, Ack: 1001, Flags: FlagRST | FlagACK})
	assert.Equal(t, StateClosed, c.State())
	assert.ErrorIs(t, c.Err(), ErrRefused)

	// SYN-RECEIVED: exact RST refuses, others get a challenge.
	syn := &Segment{Seq: 7000, Flags: FlagSYN, Window: 65535, WScale: -1, MSS: 1460}
	p := NewPassive(Config{}, reverse(clientID()), 100, syn, now)
	collect(p, now)
	p.Handle(now, &Segment{Seq: 7005, Flags: FlagRST})
	assert.Equal(t, StateSynReceived, p.State())
	p.Handle(now, &Segment{Seq: 7001, Flags: FlagRST})
	assert.Equal(t, StateClosed, p.State())
	assert.ErrorIs(t, p.Err(), ErrRefused)
}

// TestReview_DataAndFINInOneSegment, out of order, and retransmitted.
func TestReview_FINVariants(t *testing.T) {
	t.Run("data+FIN", func(t *testing.T) {
		s := establishedPair(t)
		srv := s.c[1]
		out := handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Ack: srv.sndNxt, Flags: FlagACK | FlagFIN | FlagPSH, Window: 1000, Payload: []byte("last words")})
		require.NotEmpty(t, out)
		assert.Equal(t, srv.rcvNxt, out[len(out)-1].Ack)
		assert.Equal(t, StateCloseWait, srv.State())
		buf := make([]byte, 100)
		n := srv.Read(buf)
		assert.Equal(t, "last words", string(buf[:n]))
		assert.True(t, srv.EOF())
		// Reading after EOF: nothing, EOF stays.
		assert.Zero(t, srv.Read(buf))
		assert.True(t, srv.EOF())
	})
	t.Run("FIN out of order", func(t *testing.T) {
		s := establishedPair(t)
		srv := s.c[1]
		base := srv.rcvNxt
		handleOne(srv, s.now, &Segment{Seq: base + 5, Ack: srv.sndNxt, Flags: FlagACK | FlagFIN, Window: 1000, Payload: []byte("world")})
		assert.Equal(t, StateEstablished, srv.State())
		assert.False(t, srv.EOF())
		out := handleOne(srv, s.now, &Segment{Seq: base, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("hello")})
		require.NotEmpty(t, out)
		assert.Equal(t, base+11, out[len(out)-1].Ack, "data and FIN acknowledged")
		assert.Equal(t, StateCloseWait, srv.State())
		assert.Equal(t, 10, srv.Readable())
	})
	t.Run("bare FIN out of order", func(t *testing.T) {
		s := establishedPair(t)
		srv := s.c[1]
		base := srv.rcvNxt
		handleOne(srv, s.now, &Segment{Seq: base + 5, Ack: srv.sndNxt, Flags: FlagACK | FlagFIN, Window: 1000})
		assert.Equal(t, StateEstablished, srv.State())
		out := handleOne(srv, s.now, &Segment{Seq: base, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("hello")})
		require.NotEmpty(t, out)
		assert.Equal(t, base+6, out[len(out)-1].Ack)
		assert.Equal(t, StateCloseWait, srv.State())
	})
	t.Run("FIN retransmitted in CLOSE-WAIT and TIME-WAIT", func(t *testing.T) {
		s := establishedPair(t)
		srv := s.c[1]
		fin := Segment{Seq: srv.rcvNxt, Ack: srv.sndNxt, Flags: FlagACK | FlagFIN, Window: 1000}
		handleOne(srv, s.now, &fin)
		require.Equal(t, StateCloseWait, srv.State())
		out := handleOne(srv, s.now, &fin)
		require.Len(t, out, 1, "re-ACK the retransmitted FIN")
		assert.Equal(t, srv.rcvNxt, out[0].Ack)
		// TIME-WAIT: the client closes first, the server's FIN comes and
		// is retransmitted: each copy is ACKed.
		s2 := establishedPair(t)
		s2.c[0].Close(s2.now)
		s2.flush(0)
		s2.runUntil(func() bool { return s2.c[1].State() == StateCloseWait }, time.Second)
		s2.c[1].Close(s2.now)
		s2.flush(1)
		s2.runUntil(func() bool { return s2.c[0].State() == StateTimeWait }, time.Second)
		var srvFin *Segment
		for i := range s2.sent[1] {
			if s2.sent[1][i].Flags&FlagFIN != 0 {
				srvFin = &s2.sent[1][i]
			}
		}
		require.NotNil(t, srvFin)
		again := *srvFin
		again.TSVal += 100
		out = handleOne(s2.c[0], s2.now.Add(time.Second), &again)
		require.Len(t, out, 1, "TIME-WAIT re-ACKs a retransmitted FIN")
		assert.Equal(t, s2.c[0].rcvNxt, out[0].Ack)
		assert.Equal(t, StateTimeWait, s2.c[0].State())
	})
}

// TestReview_KeepAlive: probes after the idle time, answered probes keep
// the connection, unanswered ones end it after KeepAliveCount.
func TestReview_KeepAlive(t *testing.T) {
	cfg := Config{KeepAlive: 10 * time.Second, KeepAliveInterval: 2 * time.Second, KeepAliveCount: 3}
	s := newSim(t, cfg, Config{}, issClient, issServer)
	n0 := len(s.sent[0])
	s.runFor(35 * time.Second)
	probes := 0
	for _, seg := range s.sent[0][n0:] {
		if len(seg.Payload) == 0 && seg.Seq == s.c[0].sndUna-1 {
			probes++
		}
	}
	assert.Equal(t, 3, probes, "one probe per idle period of 10 s")
	assert.Equal(t, StateEstablished, s.c[0].State())
	// Now the peer vanishes: 3 unanswered probes, then ErrTimeout.
	s.drop = func(int, *Segment) bool { return true }
	dead := s.now
	s.runUntil(func() bool { return s.c[0].State() == StateClosed }, time.Minute)
	assert.ErrorIs(t, s.c[0].Err(), ErrTimeout)
	el := s.now.Sub(dead)
	assert.LessOrEqual(t, el, 10*time.Second+3*2*time.Second+time.Second, "gave up after %v", el)
}

// TestReview_KeepAliveWithDataOutstanding: keepalive probes are for idle
// connections; with data in flight the retransmission timer watches the
// peer (Linux resets the keepalive timer while packets are out). A short
// keepalive must not end a connection that the RTO is still retrying.
func TestReview_KeepAliveWithDataOutstanding(t *testing.T) {
	cfg := Config{KeepAlive: 5 * time.Second, KeepAliveInterval: time.Second, KeepAliveCount: 2}
	s := newSim(t, cfg, Config{}, issClient, issServer)
	s.drop = func(from int, _ *Segment) bool { return true } // a 30 s outage
	_, _ = s.c[0].Write([]byte("data"))
	s.flush(0)
	s.runFor(30 * time.Second)
	assert.Equal(t, StateEstablished, s.c[0].State(), "err %v, retries %d", s.c[0].Err(), s.c[0].retries)
}

// TestReview_SACKGarbage: SACK blocks beyond SND.NXT, below SND.UNA,
// reversed or empty are ignored and never enter the scoreboard.
func TestReview_SACKGarbage(t *testing.T) {
	s := establishedPair(t)
	cl := s.c[0]
	_, _ = cl.Write(randomBytes(50, 10*1448))
	collect(cl, s.now)
	una, nxt := cl.sndUna, cl.sndNxt
	seg := &Segment{Seq: cl.rcvNxt, Ack: una, Flags: FlagACK, Window: 2000, WScale: -1, NumSACK: 4,
		SACK: [4]SACKBlock{{nxt, nxt + 100}, {una - 500, una - 100}, {una + 2000, una + 1000}, {una + 10, una + 10}}}
	handleOne(cl, s.now, seg)
	assert.Empty(t, cl.sacked, "garbage blocks entered the scoreboard")
	// A block straddling SND.UNA is clipped; one ending past SND.NXT is dropped.
	seg.SACK = [4]SACKBlock{{una - 100, una + 1448}, {una + 5000, nxt + 1}}
	seg.NumSACK = 2
	handleOne(cl, s.now, seg)
	assert.Equal(t, []seqRange{{una, una + 1448}}, cl.sacked)
	// Lots of distinct blocks: the scoreboard stays bounded.
	for i := range 500 {
		st := una + Seq(2*i+1)
		seg.SACK[0] = SACKBlock{st, st + 1}
		seg.NumSACK = 1
		cl.Handle(s.now, seg)
	}
	assert.LessOrEqual(t, len(cl.sacked), maxSACKRanges)
	assert.NotPanics(t, func() { collect(cl, s.now) })
}

// TestReview_OutOfWindowData: data wholly beyond the window or wholly
// old is not stored; it is answered by an ACK.
func TestReview_OutOfWindowData(t *testing.T) {
	s := newSim(t, Config{}, Config{ReceiveBufferSize: 4096}, issClient, issServer)
	srv := s.c[1]
	out := handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt + 100_000, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("far")})
	require.Len(t, out, 1)
	assert.Equal(t, srv.rcvNxt, out[0].Ack)
	assert.Empty(t, srv.ooo)
	out = handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt - 100_000, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("old")})
	require.Len(t, out, 1)
	assert.Zero(t, srv.Readable())
	// Straddling the right edge: the part inside is kept.
	w := srv.advertisedWindow()
	out = handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt + Seq(w) - 10, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: make([]byte, 100)})
	require.NotEmpty(t, out)
	require.Len(t, srv.ooo, 1)
	assert.Equal(t, uint32(10), srv.ooo[0].len())
}

// TestReview_PeerShrinksWindow: a peer that takes back window it offered.
// We must not send beyond the new right edge, nor stall once it reopens.
func TestReview_PeerShrinksWindow(t *testing.T) {
	s := establishedPair(t)
	cl := s.c[0]
	_, _ = cl.Write(randomBytes(51, 100_000))
	collect(cl, s.now)
	una, nxt := cl.sndUna, cl.sndNxt
	// The peer ACKs 1448 and offers a window ending before SND.NXT.
	ack := una + 1448
	require.True(t, ack.Add(100<<cl.sndShift).Less(nxt))
	cl.Handle(s.now, &Segment{Seq: cl.rcvNxt, Ack: ack, Flags: FlagACK, Window: 100, WScale: -1, HasTS: true, TSVal: cl.tsRecent + 1})
	out := collect(cl, s.now)
	for _, seg := range out {
		assert.Empty(t, seg.Payload, "new data sent beyond a shrunk window")
	}
	// It reopens the window (same ACK, a window update): new data follows
	// from SND.NXT.
	cl.Handle(s.now, &Segment{Seq: cl.rcvNxt, Ack: ack, Flags: FlagACK, Window: 0xffff, WScale: -1, HasTS: true, TSVal: cl.tsRecent + 1})
	out = collect(cl, s.now)
	require.NotEmpty(t, out, "stalled after the window reopened")
	assert.Equal(t, nxt, out[0].Seq)
	assert.NotEmpty(t, out[0].Payload)
}

// TestReview_NagleToggle: SetNoDelay(true) with a small segment held by
// Nagle — the core releases it on the next Output (SetNoDelay itself
// sends nothing: the owner calls Output).
func TestReview_NagleToggle(t *testing.T) {
	s := establishedPair(t)
	cl := s.c[0]
	_, _ = cl.Write([]byte("a"))
	require.Len(t, collect(cl, s.now), 1)
	_, _ = cl.Write([]byte("b"))
	require.Empty(t, collect(cl, s.now), "Nagle holds the second small write")
	cl.SetNoDelay(true)
	out := collect(cl, s.now)
	require.Len(t, out, 1)
	assert.Equal(t, "b", string(out[0].Payload))
	cl.SetNoDelay(false)
	_, _ = cl.Write([]byte("c"))
	assert.Empty(t, collect(cl, s.now), "Nagle again")
}

// TestReview_PersistBackoffCap: probe intervals double and stop at MaxRTO.
func TestReview_PersistBackoffCap(t *testing.T) {
	s := newSim(t, Config{MaxRTO: 8 * time.Second}, Config{ReceiveBufferSize: 4096}, issClient, issServer)
	s.autoRead[1] = false
	_, _ = s.c[0].Write(randomBytes(52, 10000))
	s.flush(0)
	s.runFor(5 * time.Minute)
	// Probes are segments from the client with seq SND.UNA-1; their
	// times come from TSVal (milliseconds).
	var last uint32
	var gaps []uint32
	for _, seg := range s.sent[0] {
		if len(seg.Payload) == 0 && seg.Seq == s.c[0].sndUna-1 {
			if last != 0 {
				gaps = append(gaps, seg.TSVal-last)
			}
			last = seg.TSVal
		}
	}
	require.NotEmpty(t, gaps)
	for i := 1; i < len(gaps); i++ {
		assert.LessOrEqual(t, gaps[i], uint32(8000+50), "gap %d ms beyond MaxRTO", gaps[i])
		assert.GreaterOrEqual(t, gaps[i]+50, min(2*gaps[i-1], 8000), "gaps %v", gaps)
	}
	assert.Equal(t, StateEstablished, s.c[0].State())
}

// TestReview_TinyMSS: MSS 88 (the minimum Validate allows), with loss,
// both ways.
func TestReview_TinyMSS(t *testing.T) {
	cfg := Config{MSS: 88}
	s := newSim(t, cfg, cfg, issClient, issServer)
	assert.Equal(t, 76, s.c[0].MSS())
	s.drop = lossy(53, 0.03)
	s.send(0, randomBytes(54, 100_000), 10*time.Minute)
	s.send(1, randomBytes(55, 100_000), 10*time.Minute)
	for _, segs := range s.sent {
		for _, seg := range segs {
			assert.LessOrEqual(t, len(seg.Payload), 76)
			assert.LessOrEqual(t, seg.OptionsLen(), 40)
		}
	}
}

// TestReview_ZeroWindowTinyBuffer: a 4 KiB receive buffer with a reader
// that reads in bursts; the transfer completes and the receiver never
// holds more than its buffer.
func TestReview_ZeroWindowTinyBuffer(t *testing.T) {
	cfg := Config{ReceiveBufferSize: 4096, MSS: 88}
	s := newSim(t, Config{MSS: 88}, cfg, issClient, issServer)
	s.autoRead[1] = false
	data := randomBytes(56, 50_000)
	rest := data
	var got []byte
	buf := make([]byte, 4096)
	for i := 0; len(got) < len(data); i++ {
		require.Less(t, i, 100_000, "stalled at %d", len(got))
		if len(rest) > 0 {
			n, _ := s.c[0].Write(rest)
			rest = rest[n:]
			s.flush(0)
		}
		s.runFor(50 * time.Millisecond)
		require.LessOrEqual(t, s.c[1].Readable(), 4096)
		if i%20 == 0 {
			n := s.c[1].Read(buf)
			got = append(got, buf[:n]...)
			s.flush(1)
		}
	}
	assert.Equal(t, data, got)
}

// TestReview_WrapAllWays: transfers across 2^32 from several ISS choices,
// with loss and reordering.
func TestReview_WrapAllWays(t *testing.T) {
	for _, iss := range [][2]Seq{{0xffffffff, 0xfffffffe}, {0x7fffffff, 0x80000000}, {0, 0xffff0000}} {
		s := newSim(t, Config{}, Config{}, iss[0], iss[1])
		s.drop = lossy(uint64(iss[0]), 0.02)
		s.send(0, randomBytes(57, 300_000), 5*time.Minute)
		s.send(1, randomBytes(58, 300_000), 5*time.Minute)
	}
}

// TestReview_CloseWithUnreadDataResets: Close with received bytes the
// application never read resets the connection (RFC 2525 2.17); with
// none it sends a FIN, and what arrives later is acknowledged and dropped.
func TestReview_CloseWithUnreadDataResets(t *testing.T) {
	s := establishedPair(t)
	srv := s.c[1]
	s.autoRead[1] = false
	_, err := s.c[0].Write([]byte("unread"))
	require.NoError(t, err)
	s.flush(0)
	s.runUntil(func() bool { return srv.Readable() == 6 }, time.Second)
	srv.Close(s.now)
	out := collect(srv, s.now)
	require.Len(t, out, 1)
	assert.Equal(t, FlagRST|FlagACK, out[0].Flags)
	assert.Equal(t, StateClosed, srv.State())
	assert.ErrorIs(t, srv.Err(), ErrAborted)

	s = establishedPair(t)
	srv = s.c[1]
	srv.Close(s.now)
	out = collect(srv, s.now)
	require.Len(t, out, 1)
	assert.Equal(t, FlagFIN|FlagACK, out[0].Flags)
	base := srv.rcvNxt
	out = handleOne(srv, s.now, &Segment{Seq: base, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("late")})
	assert.Zero(t, srv.Readable(), "bytes kept after Close")
	require.NotEmpty(t, out)
	assert.Equal(t, base+4, out[len(out)-1].Ack)
}

// TestReview_ZeroWindowAckOfOurFIN: with our receive window at zero, a
// segment the window cannot take still has its ACK processed in full,
// state changes included: an ACK of our FIN on the peer's window probe
// (Linux's sits one below RCV.NXT) moves FIN-WAIT-1 to FIN-WAIT-2 and
// LAST-ACK to CLOSED. A probe carrying a byte gets an ACK.
func TestReview_ZeroWindowAckOfOurFIN(t *testing.T) {
	for _, tc := range []struct {
		name       string
		data       int
		peerCloses bool
		before     State
		after      State
	}{
		{"FIN-WAIT-1", 10000, false, StateFinWait1, StateFinWait2},
		{"LAST-ACK", 4095, true, StateLastAck, StateClosed}, // the FIN fills the window
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{}, Config{ReceiveBufferSize: 4096}, issClient, issServer)
			srv := s.c[1]
			s.autoRead[1] = false
			_, err := s.c[0].Write(randomBytes(46, tc.data))
			require.NoError(t, err)
			if tc.peerCloses {
				s.c[0].CloseWrite(s.now)
			}
			s.flush(0)
			s.runUntil(func() bool { return srv.Readable() == min(tc.data, 4096) && srv.peerFin == tc.peerCloses }, 10*time.Second)
			require.Zero(t, srv.advertisedWindow())
			srv.CloseWrite(s.now)
			require.NotEmpty(t, collect(srv, s.now)) // the FIN
			require.Equal(t, tc.before, srv.State())
			// A byte probing the window is answered, and the caller's
			// segment is left as it was.
			probe := Segment{Seq: srv.rcvNxt, Ack: srv.sndUna, Flags: FlagACK, Window: 1000, Payload: []byte{1}}
			out := handleOne(srv, s.now, &probe)
			assert.Len(t, probe.Payload, 1, "Handle changed the caller's segment")
			require.Len(t, out, 1, "window probe not answered")
			assert.Equal(t, srv.rcvNxt, out[0].Ack)
			srv.Handle(s.now, &Segment{Seq: srv.rcvNxt - 1, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000})
			assert.Equal(t, tc.after, srv.State(), "in %v", srv.State())
			assert.NoError(t, srv.Err())
		})
	}
}
