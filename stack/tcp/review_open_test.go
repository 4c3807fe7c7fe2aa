package tcp

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Review tests for the opening handshake (RFC 9293 3.5, RFC 7323 2.2).

// newCrossedSim builds a sim whose two sides are both active opens: their
// SYNs cross on the wire (RFC 9293 figure 8, simultaneous open).
func newCrossedSim(t testing.TB, cfgA, cfgB Config) *sim {
	s := &sim{t: t, now: time.Unix(1_000_000, 0), delay: 5 * time.Millisecond, autoRead: [2]bool{true, true}}
	s.c[0] = NewActive(cfgA, clientID(), issClient, s.now)
	s.c[1] = NewActive(cfgB, reverse(clientID()), issServer, s.now)
	s.flush(0)
	s.flush(1)
	return s
}

// TestReview_SimultaneousOpen: both sides open actively at once. Each
// goes SYN-SENT -> SYN-RECEIVED and sends a SYN-ACK; the SYN-ACK that
// arrives in SYN-RECEIVED must complete the handshake (its ACK is
// processed: RFC 9293 figure 8 line 5, Linux tcp_validate_incoming's
// "simultaneous connect" case). Found unacceptable (SEG.SEQ = RCV.NXT-1),
// it would only call for an ACK, which Output does not send in
// SYN-RECEIVED: both sides would retransmit SYN-ACKs until SynRetries ran
// out and the connections died with ErrTimeout.
func TestReview_SimultaneousOpen(t *testing.T) {
	s := newCrossedSim(t, Config{}, Config{})
	end := s.now.Add(3 * time.Minute)
	for !(s.c[0].State() == StateEstablished && s.c[1].State() == StateEstablished) {
		if s.now.After(end) || !s.step() {
			break
		}
	}
	require.Equal(t, StateEstablished, s.c[0].State(), "side 0 (err %v)", s.c[0].Err())
	require.Equal(t, StateEstablished, s.c[1].State(), "side 1 (err %v)", s.c[1].Err())
	s.send(0, randomBytes(31, 50_000), time.Minute)
	s.send(1, randomBytes(32, 50_000), time.Minute)
}

// TestReview_SynAckWindowNotScaled: RFC 7323 2.2 — the window field of a
// <SYN,ACK> is never scaled: handleSynSent takes it as it is, not shifted
// by the peer's scale.
func TestReview_SynAckWindowNotScaled(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewActive(Config{}, clientID(), 1000, now)
	c.Output(now, func(*Segment) {})
	c.Handle(now, &Segment{Seq: 5000, Ack: 1001, Flags: FlagSYN | FlagACK, Window: 1000, WScale: 7, MSS: 1460})
	require.Equal(t, StateEstablished, c.State())
	assert.Equal(t, uint32(1000), c.sndWnd, "SYN-ACK window must be taken unscaled")
	assert.Equal(t, uint32(1000), c.maxSndWnd)
	// Ten segments' worth of data queued: no more than the 1000-byte window goes.
	_, _ = c.Write(make([]byte, 20000))
	sent := 0
	c.Output(now, func(s *Segment) { sent += len(s.Payload) })
	assert.LessOrEqual(t, sent, 1000, "sent beyond the peer's offered window")
}

// TestReview_CloseWriteInSynReceived: a close before the handshake
// completes queues the FIN behind the SYN-ACK (RFC 9293 3.10.4, CLOSE in
// SYN-RECEIVED): the connection stays in SYN-RECEIVED, Output sends the
// SYN-ACK and no FIN, and the FIN follows once the handshake completes.
// (Moved straight to FIN-WAIT-1, Output would send a FIN instead of the
// SYN-ACK.)
func TestReview_CloseWriteInSynReceived(t *testing.T) {
	now := time.Unix(1000, 0)
	syn := &Segment{Seq: 7000, Flags: FlagSYN, Window: 65535, WScale: -1, MSS: 1460}
	c := NewPassive(Config{}, reverse(clientID()), 100, syn, now)
	c.CloseWrite(now)
	var out []Segment
	// (In FIN-WAIT-1 with SND.NXT still at ISS, outputNewData would send
	// the "byte" at ISS, dataEnd being ISS+1, and peek the empty send ring
	// at offset -1: an integer divide by zero.)
	require.True(t, noPanic(t, func() { out = collect(c, now) }))
	require.NotEmpty(t, out)
	assert.Equal(t, FlagSYN|FlagACK, out[0].Flags, "the SYN-ACK must go first")
	for _, s := range out {
		assert.Zero(t, s.Flags&FlagFIN, "FIN before the handshake completed")
	}
}

// TestReview_PassiveRTTFromHandshake: without timestamps, the SYN-ACK is
// timed (sendSYN sets rttTiming, rttSeq=ISS) and the passive side takes
// that sample when the handshake completes. Left pending, it would be
// taken at the first later ACK of data, measured from the SYN-ACK however
// long ago. Here the client is idle 10 s before its first request; the
// server's SRTT must stay near the 10 ms path RTT, not become ~10 s.
func TestReview_PassiveRTTFromHandshake(t *testing.T) {
	off := Config{DisableTimestamps: true}
	s := newSim(t, off, off, issClient, issServer)
	// Idle: let 10 s pass.
	s.now = s.now.Add(10 * time.Second)
	s.send(0, []byte("request"), time.Second)
	s.send(1, []byte("response"), time.Second)
	s.runUntil(func() bool { return s.c[1].sndUna == s.c[1].sndNxt }, time.Second)
	assert.Less(t, s.c[1].SRTT(), 500*time.Millisecond, "server SRTT %v", s.c[1].SRTT())
	assert.Less(t, s.c[1].RTO(), 2*time.Second, "server RTO %v", s.c[1].RTO())
}

// TestReview_DuplicateSynAckAfterEstablished: the server's SYN-ACK is
// retransmitted after the client is established: the client re-ACKs it.
func TestReview_DuplicateSynAckAfterEstablished(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	cl := s.c[0]
	dup := &Segment{Seq: issServer, Ack: issClient + 1, Flags: FlagSYN | FlagACK, Window: 65535, WScale: 5, MSS: 1460, SACKPermitted: true, HasTS: true, TSVal: cl.tsRecent + 1}
	out := handleOne(cl, s.now, dup)
	require.Len(t, out, 1)
	assert.Equal(t, FlagACK, out[0].Flags)
	assert.Equal(t, cl.rcvNxt, out[0].Ack)
	assert.Equal(t, StateEstablished, cl.State())
}

// TestReview_RetransmittedSynInSynReceived: the client's SYN is resent
// (our SYN-ACK was lost): the SYN-ACK goes again, same ISS.
func TestReview_RetransmittedSynInSynReceived(t *testing.T) {
	now := time.Unix(1000, 0)
	syn := &Segment{Seq: 7000, Flags: FlagSYN, Window: 65535, WScale: -1, MSS: 1460}
	c := NewPassive(Config{}, reverse(clientID()), 100, syn, now)
	c.Output(now, func(*Segment) {})
	out := handleOne(c, now.Add(time.Millisecond), syn)
	require.Len(t, out, 1)
	assert.Equal(t, FlagSYN|FlagACK, out[0].Flags)
	assert.Equal(t, Seq(100), out[0].Seq)
	assert.Equal(t, Seq(7001), out[0].Ack)
}

// TestReview_SimultaneousOpenWindowUnscaled: the SYN-ACK that completes a
// simultaneous open has its window taken as it is, a SYN's window never
// being scaled (RFC 7323 2.2), and the caller's segment is left as it
// arrived.
func TestReview_SimultaneousOpenWindowUnscaled(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewActive(Config{}, clientID(), 1000, now)
	collect(c, now) // the SYN
	c.Handle(now, &Segment{Seq: 5000, Flags: FlagSYN, Window: 1000, WScale: 7, MSS: 1460})
	require.Equal(t, StateSynReceived, c.State())
	collect(c, now) // the SYN-ACK
	synAck := Segment{Seq: 5000, Ack: 1001, Flags: FlagSYN | FlagACK, Window: 1000, WScale: 7, MSS: 1460}
	seg := synAck
	c.Handle(now, &seg)
	require.Equal(t, StateEstablished, c.State())
	assert.Equal(t, uint32(1000), c.sndWnd)
	assert.Equal(t, synAck, seg, "Handle changed the caller's segment")
}
