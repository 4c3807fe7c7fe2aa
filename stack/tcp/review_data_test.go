package tcp

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Review tests for the data path: retransmission, windows, timers.

// TestReview_RetransmitBeyondSndNxt: retransmissions never carry bytes
// at or beyond SND.NXT (everything sent), only up to it, also when the
// last segment in flight was short (Nagle, a window, or the gate's
// SendLimit cut it) and more data is queued. A go-back-N after a timeout
// that sent a full MSS from there would send new bytes past the gate
// (replication invariant 3), the peer's window and the congestion
// window, and the peer's ACK for them would be dropped as "acks unsent
// data".
func TestReview_RetransmitBeyondSndNxt(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	limit := srv.sndNxt.Add(100)
	srv.SetGate(Gate{Enabled: true, OpenOK: true, CloseOK: true, AckLimit: srv.rcvNxt, SendLimit: limit})
	_, err := srv.Write(randomBytes(41, 5000))
	require.NoError(t, err)
	s.drop = func(from int, _ *Segment) bool { return from == 1 } // the first copy is lost
	s.flush(1)
	require.Equal(t, limit, srv.sndNxt, "100 bytes sent, up to the gate")
	// Let the RTO fire; the retransmission gets through.
	s.drop = nil
	n0 := len(s.sent[1])
	s.runUntil(func() bool { return len(s.sent[1]) > n0 }, 5*time.Second)
	for _, seg := range s.sent[1][n0:] {
		end := seg.Seq.Add(uint32(len(seg.Payload)))
		assert.True(t, end.LessEq(limit), "retransmission %v ends at %d, beyond the gate's SendLimit %d (SND.NXT %d)",
			seg.String(), end, limit, srv.sndNxt)
	}
	// And the peer must not come to ACK more than we think we sent.
	s.runFor(time.Second)
	assert.True(t, s.c[0].rcvNxt.LessEq(srv.sndNxt), "client RCV.NXT %d beyond server SND.NXT %d", s.c[0].rcvNxt, srv.sndNxt)
}

// TestReview_FinWait2TimeoutKillsHalfClosedReader: after CloseWrite
// (shutdown(SHUT_WR)) the application goes on reading, and the peer may
// send for as long as it likes: the FIN-WAIT-2 timer must not end the
// connection in the middle of a download. Linux applies tcp_fin_timeout
// only to orphaned sockets (closed by the application).
func TestReview_FinWait2TimeoutKillsHalfClosedReader(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	s.c[0].CloseWrite(s.now)
	s.flush(0)
	s.runUntil(func() bool { return s.c[0].State() == StateFinWait2 }, time.Second)
	// The server streams for two minutes, a chunk every second.
	for range 120 {
		if s.c[0].State() != StateFinWait2 {
			break
		}
		_, err := s.c[1].Write([]byte("still sending"))
		require.NoError(t, err)
		s.flush(1)
		s.runFor(time.Second)
	}
	assert.Equal(t, StateFinWait2, s.c[0].State(), "half-closed reader killed by the FIN-WAIT-2 timer, %d bytes in", s.recv[0].Len())
}

// TestReview_FinWait2TimeoutAfterFullClose: the timer does apply once the
// application has closed both directions (orphaned socket).
func TestReview_FinWait2TimeoutAfterFullClose(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	s.c[0].CloseRead()
	s.c[0].Close(s.now)
	s.flush(0)
	s.runUntil(func() bool { return s.c[0].State() == StateFinWait2 }, time.Second)
	s.runUntil(func() bool { return s.c[0].State() == StateClosed }, 2*time.Minute)
	assert.NoError(t, s.c[0].Err())
}

// TestReview_ReceiverSWSFromZeroWindow: RFC 9293 3.8.6.2.2 — a receiver
// must not open its window by less than min(RCV.BUFF/2, MSS), from a zero
// window too. Opened by whatever the reader freed (here 10 bytes), it
// would let the sender, with nothing in flight, send 10-byte segments:
// silly window syndrome between two of our own stacks.
func TestReview_ReceiverSWSFromZeroWindow(t *testing.T) {
	s := newSim(t, Config{}, Config{ReceiveBufferSize: 4096}, issClient, issServer)
	s.autoRead[1] = false
	_, err := s.c[0].Write(randomBytes(42, 20000))
	require.NoError(t, err)
	s.flush(0)
	s.runUntil(func() bool { return s.c[1].Readable() == 4096 && s.c[0].sndWnd == 0 }, 10*time.Second)
	// The application reads a little, often: 10 bytes every 100 ms.
	buf := make([]byte, 10)
	n0 := len(s.sent[0])
	end := s.now.Add(30 * time.Second)
	for s.now.Before(end) {
		s.c[1].Read(buf)
		s.flush(1)
		s.runFor(100 * time.Millisecond)
	}
	small := 0
	for _, seg := range s.sent[0][n0:] {
		if len(seg.Payload) > 0 && len(seg.Payload) < 1000 {
			small++
		}
	}
	// (A residue below the MSS can still go when nothing is in flight, as
	// on Linux; what must not happen is a stream of them.)
	assert.Less(t, small, 5, "tiny segments sent into a window reopened by a few bytes at a time")
	// Each time the receiver moves its right edge, it moves it by at
	// least min(RCV.BUFF/2, MSS) = 1448 bytes.
	var prev Seq
	have := false
	for _, seg := range s.sent[1] {
		if seg.Flags&FlagSYN != 0 {
			continue
		}
		edge := seg.Ack.Add(uint32(seg.Window) << s.c[1].rcvShift)
		if have && edge.Greater(prev) && edge.Sub(prev) < 1448 {
			t.Errorf("receiver opened its window by %d bytes: %v", edge.Sub(prev), seg.String())
			break
		}
		if !have || edge.Greater(prev) {
			prev, have = edge, true
		}
	}
}

// TestReview_WireWindowEdgeNeverMovesLeft: the right edge the peer sees
// (SEG.ACK + SEG.WND<<scale) must never move left (RFC 9293 3.8.6.2.2;
// RFC 7323 2.4 says the scaled window makes this possible, and Linux
// rounds the window up to the scale granularity to avoid it). With a
// stalled reader, a window field rounded down would make each ACK of a
// 1448-byte segment advertise an edge up to 2^scale-1 bytes left of the
// previous one.
func TestReview_WireWindowEdgeNeverMovesLeft(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	s.autoRead[1] = false
	_, err := s.c[0].Write(randomBytes(43, 200_000))
	require.NoError(t, err)
	s.flush(0)
	end := s.now.Add(2 * time.Second)
	for s.now.Before(end) && s.step() {
	}
	srv := s.c[1]
	var prev Seq
	have := false
	for _, seg := range s.sent[1] {
		if seg.Flags&FlagSYN != 0 || seg.Flags&FlagACK == 0 {
			continue
		}
		edge := seg.Ack.Add(uint32(seg.Window) << srv.rcvShift)
		if have && edge.Less(prev) {
			t.Errorf("advertised right edge moved left by %d: %v", prev.Sub(edge), seg.String())
			break
		}
		prev, have = edge, true
	}
}

// TestReview_ShrunkZeroWindowDoesNotTimeOut: a peer that shrinks its
// window to zero with our data in flight, but keeps answering. RFC 9293
// 3.8.6: the sender "SHOULD NOT time out the connection if data beyond
// the right window edge is not acknowledged"; Linux's retransmit timer
// does not count such timeouts against tcp_retries2 while the peer keeps
// ACKing. The live connection must outlast MaxRetries such RTOs.
func TestReview_ShrunkZeroWindowDoesNotTimeOut(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	cl := s.c[0]
	now := s.now
	_, err := cl.Write(randomBytes(44, 3000))
	require.NoError(t, err)
	out := collect(cl, now)
	require.NotEmpty(t, out)
	// The peer answers everything with ACK=SND.UNA and window 0.
	peerAck := func(at time.Time) {
		cl.Handle(at, &Segment{Seq: cl.rcvNxt, Ack: cl.sndUna, Flags: FlagACK, Window: 0, WScale: -1,
			HasTS: true, TSVal: cl.tsRecent + 1, TSEcr: cl.tsLast})
	}
	peerAck(now)
	collect(cl, now)
	end := now.Add(2 * time.Hour)
	for now.Before(end) && cl.State() == StateEstablished {
		d := cl.NextDeadline()
		require.False(t, d.IsZero(), "no timer armed")
		now = d
		cl.Tick(now)
		if len(collect(cl, now)) > 0 {
			peerAck(now.Add(10 * time.Millisecond)) // the peer is alive
			collect(cl, now)
		}
	}
	assert.Equal(t, StateEstablished, cl.State(), "err %v", cl.Err())
}

// TestReview_PersistProbesGiveUpOnDeadPeer: the converse. A peer that
// advertised a zero window and then vanished is not probed forever: the
// persist timer gives up after MaxRetries unanswered probes (Linux after
// tcp_retries2), so the connection and its buffers are freed.
func TestReview_PersistProbesGiveUpOnDeadPeer(t *testing.T) {
	s := newSim(t, Config{}, Config{ReceiveBufferSize: 4096}, issClient, issServer)
	s.autoRead[1] = false
	_, err := s.c[0].Write(randomBytes(45, 10000))
	require.NoError(t, err)
	s.flush(0)
	s.runUntil(func() bool { return s.c[0].sndWnd == 0 && s.c[0].sndUna == s.c[0].sndNxt }, 10*time.Second)
	s.drop = func(int, *Segment) bool { return true } // the peer is gone
	end := s.now.Add(24 * time.Hour)
	for s.now.Before(end) && s.c[0].State() == StateEstablished && s.step() {
	}
	assert.Equal(t, StateClosed, s.c[0].State(), "still probing a dead peer after a day")
}

// TestReview_ReadShutdownMergesOOO: after CloseRead, in-order data is
// acknowledged and dropped, and the out-of-order list is merged as ever:
// the ACK covers the SACKed range behind the hole (stopping at the hole's
// end, it would leave the peer to resend SACKed data after its RTO), and
// no stale range stays below RCV.NXT (every later Snapshot would fail
// Validate, "out-of-order range").
func TestReview_ReadShutdownMergesOOO(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	srv.CloseRead()
	base := srv.rcvNxt
	handleOne(srv, s.now, &Segment{Seq: base + 1000, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, WScale: -1, Payload: make([]byte, 500)})
	out := handleOne(srv, s.now, &Segment{Seq: base, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, WScale: -1, Payload: make([]byte, 1000)})
	// Data taken after CloseRead is acknowledged, at once or by the
	// delayed ACK: else the peer would have to time out and resend.
	if srv.delackAt.IsZero() {
		require.NotEmpty(t, out, "data accepted after CloseRead but no ACK sent or scheduled")
	} else {
		srv.Tick(srv.delackAt)
		out = collect(srv, srv.delackAt)
	}
	require.NotEmpty(t, out)
	assert.Equal(t, base+1500, out[len(out)-1].Ack, "ACK should cover the out-of-order range")
	snap := srv.Snapshot()
	assert.NoError(t, snap.Validate())
}

// TestReview_RestoreSndBufSeqAheadOfUna: SndBufSeq = SndUna+1 is meant
// for the SYN states. In ESTABLISHED with data in flight, the RTO's
// go-back-N would resend from SND.UNA, one byte before the send buffer
// (a peek at offset -1 of an empty ring divides by zero). Validate may
// refuse such a snapshot; one it passes must never crash Restore, Tick
// or Output.
func TestReview_RestoreSndBufSeqAheadOfUna(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	snap := s.c[1].Snapshot()
	snap.SndBufSeq = snap.SndUna + 1
	snap.SndNxt = snap.SndUna + 1
	snap.SendData = nil
	if err := snap.Validate(); err != nil {
		return // rejected: fine
	}
	c, err := Restore(snap, s.now)
	require.NoError(t, err)
	noPanic(t, func() {
		now := s.now.Add(10 * time.Second)
		c.Tick(now)
		collect(c, now)
	})
}
