package tcp

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// latePeer makes the server's segments sent during [from, from+pause)
// arrive together at its end, in order, as a receiver's do when its
// process was descheduled for pause and then catches up: nothing is lost,
// but the sender hears nothing for longer than its RTO.
func latePeer(s *sim, from time.Time, pause time.Duration) {
	end := from.Add(pause)
	s.reorder = func(side int, _ *Segment) time.Duration {
		if side == 1 && !s.now.Before(from) && s.now.Before(end) {
			return end.Sub(s.now)
		}
		return 0
	}
}

// TestSpuriousTimeoutIsUndone: during a bulk transfer the receiver goes
// quiet for 50 ms (10 RTOs of 5 ms) and then acknowledges everything the
// sender sent before. With timestamps the first of those late ACKs echoes
// the original transmission's timestamp, so the sender knows its timeout
// was spurious (Eifel, RFC 3522): it restores its congestion window and
// stops resending what was in flight. Without timestamps (the control)
// nothing tells, and the sender resends what it had in flight.
func TestSpuriousTimeoutIsUndone(t *testing.T) {
	for _, ts := range []bool{true, false} {
		t.Run(fmt.Sprintf("timestamps=%v", ts), func(t *testing.T) {
			// LAN timers, as the sync connection's: a 40 ms delayed ACK
			// would outlast the RTO on its own.
			cfg := Config{MinRTO: 5 * time.Millisecond, DelayedACK: time.Millisecond, DisableTimestamps: !ts}
			s := newSim(t, cfg, cfg, issClient, issServer)
			s.delay = 500 * time.Microsecond
			s.send(0, randomBytes(11, 1<<20), time.Minute) // open the window
			before := s.c[0].Info()
			latePeer(s, s.now.Add(2*time.Millisecond), 50*time.Millisecond)
			s.send(0, randomBytes(12, 4<<20), time.Minute)
			after := s.c[0].Info()
			timeouts := after.Timeouts - before.Timeouts
			rexmits := after.RexmitSegs - before.RexmitSegs
			require.NotZero(t, timeouts, "the pause must outlast the RTO")
			if ts {
				assert.Equal(t, uint64(1), after.SpuriousTimeouts-before.SpuriousTimeouts, "the timeout was found spurious")
				// One resend per timeout of the episode, nothing more.
				assert.LessOrEqual(t, rexmits, timeouts, "resent beyond the timeouts' own probes")
				assert.Greater(t, after.Cwnd, uint32(10*s.c[0].MSS()), "congestion window restored")
			} else {
				assert.Zero(t, after.SpuriousTimeouts)
				assert.Greater(t, rexmits, 2*timeouts, "without timestamps the flight is resent")
			}
			t.Logf("timeouts %d, spurious %d, segments resent %d, cwnd %d", timeouts,
				after.SpuriousTimeouts-before.SpuriousTimeouts, rexmits, after.Cwnd)
		})
	}
}

// TestRealTimeoutIsNotUndone: a timeout that repaired a real loss is not
// undone: the first new ACK echoes the retransmission's timestamp.
func TestRealTimeoutIsNotUndone(t *testing.T) {
	cfg := Config{MinRTO: 5 * time.Millisecond}
	s := newSim(t, cfg, cfg, issClient, issServer)
	s.delay = 500 * time.Microsecond
	c := s.c[0]
	_, err := c.Write([]byte("lost once"))
	require.NoError(t, err)
	dropped := false
	s.drop = func(side int, seg *Segment) bool {
		if side == 0 && len(seg.Payload) > 0 && !dropped {
			dropped = true
			return true
		}
		return false
	}
	s.flush(0)
	require.True(t, dropped)
	s.runUntil(func() bool { return s.recv[1].Len() == len("lost once") && c.Unsent() == 0 }, time.Minute)
	info := c.Info()
	assert.Equal(t, uint64(1), info.Timeouts)
	assert.Zero(t, info.SpuriousTimeouts, "a needed retransmission is not undone")
}

// TestDuplicateIsDSACKed: a segment that arrives again is reported in the
// next ACK's first SACK block (a D-SACK, RFC 2883), below the ACK number,
// once; a partly new segment reports only its old part. Without SACK
// nothing is reported.
func TestDuplicateIsDSACKed(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	base := srv.rcvNxt
	data := func(seq Seq, p string) *Segment {
		return &Segment{Seq: seq, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte(p)}
	}
	out := handleOne(srv, s.now, data(base, "0123456789"))
	require.Len(t, out, 1)
	assert.Zero(t, out[0].NumSACK, "new data: no SACK")

	out = handleOne(srv, s.now, data(base, "0123456789"))
	require.Len(t, out, 1, "a duplicate is acknowledged at once")
	assert.Equal(t, base+10, out[0].Ack)
	require.Equal(t, uint8(1), out[0].NumSACK)
	assert.Equal(t, SACKBlock{base, base + 10}, out[0].SACK[0], "D-SACK for the whole duplicate")

	out = handleOne(srv, s.now, data(base+5, "56789abcde"))
	require.Len(t, out, 1)
	assert.Equal(t, base+15, out[0].Ack)
	require.Equal(t, uint8(1), out[0].NumSACK)
	assert.Equal(t, SACKBlock{base + 5, base + 10}, out[0].SACK[0], "D-SACK for the old part only")

	out = handleOne(srv, s.now, data(base+15, "fghij"))
	for _, seg := range out {
		assert.Zero(t, seg.NumSACK, "the D-SACK is reported once")
	}

	off := Config{DisableSACK: true}
	s = newSim(t, off, off, issClient, issServer)
	srv = s.c[1]
	base = srv.rcvNxt
	handleOne(srv, s.now, data(base, "0123456789"))
	out = handleOne(srv, s.now, data(base, "0123456789"))
	require.Len(t, out, 1)
	assert.Zero(t, out[0].NumSACK, "no SACK negotiated: no D-SACK")
}

// TestDSACKStaysBelowGatedAck: on a replicated connection the gate holds
// the ACK number below what arrived. A client's retransmission of bytes
// above that ACK number is a duplicate to us, but reporting it would tell
// the client they are received before the backup has them (invariant 2):
// only the part below the ACK number is D-SACKed.
func TestDSACKStaysBelowGatedAck(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	base := srv.rcvNxt
	srv.SetGate(Gate{Enabled: true, OpenOK: true, AckLimit: base + 4, SendLimit: srv.sndNxt})
	data := &Segment{Seq: base, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte("0123456789")}
	handleOne(srv, s.now, data)
	out := handleOne(srv, s.now, data) // the client's retransmission
	require.NotEmpty(t, out)
	last := out[len(out)-1]
	assert.Equal(t, base+4, last.Ack, "the gate holds the ACK number")
	require.Equal(t, uint8(1), last.NumSACK)
	assert.Equal(t, SACKBlock{base, base + 4}, last.SACK[0], "D-SACK only below the gated ACK number")

	srv.SetGate(Gate{Enabled: true, OpenOK: true, AckLimit: base, SendLimit: srv.sndNxt})
	for _, seg := range handleOne(srv, s.now, data) {
		assert.Zero(t, seg.NumSACK, "nothing below the ACK number: no D-SACK")
	}
}
