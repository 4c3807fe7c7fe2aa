package tcp

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReview_GateInvariantsUnderLoss runs a lossy, reordering transfer
// both ways while the server's gate lags: the "backup" catches up only
// every few steps. Every segment the server emits is checked against the
// gate in force when it was emitted (DESIGN.md invariants 2 to 4):
// ACK and SACK never beyond AckLimit, no byte at or beyond SendLimit,
// no FIN or RST before CloseOK.
func TestReview_GateInvariantsUnderLoss(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		loss float64
	}{
		{"sack", Config{}, 0.03},
		{"newreno", Config{DisableSACK: true}, 0.03},
		{"no-ts", Config{DisableTimestamps: true}, 0.05},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, tc.cfg, tc.cfg, issClient, issServer)
			srv := s.c[1]
			g := Gate{Enabled: true, OpenOK: true, AckLimit: srv.rcvNxt, SendLimit: srv.sndNxt}
			srv.SetGate(g)
			checked := 0
			violations := 0
			// Each segment is checked as it is emitted, against the gate
			// in force then: a later catch-up must not hide a bypass.
			check := func(g Gate, seg *Segment) {
				checked++
				bad := ""
				if seg.Flags&FlagACK != 0 && seg.Ack.Greater(g.AckLimit) {
					bad = "ACK beyond AckLimit"
				}
				for i := range int(seg.NumSACK) {
					if seg.SACK[i].End.Greater(g.AckLimit) {
						bad = "SACK beyond AckLimit"
					}
				}
				if len(seg.Payload) > 0 && seg.Seq.Add(uint32(len(seg.Payload))).Greater(g.SendLimit) {
					bad = "data beyond SendLimit"
				}
				if seg.Flags&(FlagFIN|FlagRST) != 0 && !g.CloseOK {
					bad = "FIN/RST before CloseOK"
				}
				if bad != "" {
					violations++
					if violations <= 5 {
						t.Errorf("%s: %v (gate ack<=%d send<%d)", bad, seg.String(), g.AckLimit, g.SendLimit)
					}
				}
			}
			drop := lossy(61, tc.loss)
			s.drop = func(from int, seg *Segment) bool {
				if from == 1 {
					check(srv.Gate(), seg)
				}
				return drop(from, seg)
			}
			r := lossy(62, 0.3)
			s.reorder = func(int, *Segment) time.Duration {
				if r(0, nil) {
					return 3 * time.Millisecond
				}
				return 0
			}
			up, down := randomBytes(63, 300_000), randomBytes(64, 300_000)
			restUp, restDown := up, down
			end := s.now.Add(5 * time.Minute)
			closed := false
			nextSync := s.now
			for steps := 0; s.recv[1].Len() < len(up) || s.recv[0].Len() < len(down) || !closed; steps++ {
				if !s.now.Before(end) {
					cl := s.c[0]
					t.Fatalf("stalled: up %d down %d; client %v una %d nxt %d rexmit %d wnd %d cwnd %d retries %d rto %v; server %v rcvnxt %d ack-limit %d adv %d sndUna %d sndNxt %d",
						s.recv[1].Len(), s.recv[0].Len(), cl.State(), cl.sndUna, cl.sndNxt, cl.rexmitNxt, cl.sndWnd, cl.cwnd, cl.retries, cl.rto,
						srv.State(), srv.rcvNxt, g.AckLimit, srv.rcvAdvEdge, srv.sndUna, srv.sndNxt)
				}
				if len(restUp) > 0 {
					k, _ := s.c[0].Write(restUp)
					restUp = restUp[k:]
					s.flush(0)
				}
				if len(restDown) > 0 {
					k, _ := srv.Write(restDown)
					restDown = restDown[k:]
					s.flush(1)
				}
				if len(restDown) == 0 && s.recv[1].Len() == len(up) && !srv.finQueued {
					srv.Close(s.now)
					s.flush(1)
				}
				if !s.now.Before(nextSync) {
					// Every 2 ms the backup catches up with what the main has.
					nextSync = s.now.Add(2 * time.Millisecond)
					g.AckLimit = srv.rcvNxt
					g.SendLimit = srv.dataEnd()
					g.CloseOK = srv.finQueued
					srv.SetGate(g)
					s.flush(1)
				}
				if !s.step() {
					s.flush(1)
				}
				closed = srv.finSent && srv.sndUna == srv.sndNxt
			}
			assert.Zero(t, violations, "of %d segments", checked)
			assert.Equal(t, up, s.recv[1].Bytes())
			assert.Equal(t, down, s.recv[0].Bytes())
		})
	}
}

// TestReview_GateHoldsSynAckAndAbort: no SYN-ACK before OpenOK, also not
// on a retransmitted SYN or an RTO; no RST from Abort before CloseOK.
func TestReview_GateHoldsSynAckAndAbort(t *testing.T) {
	now := time.Unix(1000, 0)
	syn := &Segment{Seq: 7000, Flags: FlagSYN, Window: 65535, WScale: -1, MSS: 1460}
	c := NewPassive(Config{}, reverse(clientID()), 100, syn, now)
	c.SetGate(Gate{Enabled: true, AckLimit: 7001})
	assert.Empty(t, collect(c, now))
	assert.Empty(t, handleOne(c, now, syn), "retransmitted SYN")
	c.Tick(now.Add(10 * time.Second))
	assert.Empty(t, collect(c, now.Add(10*time.Second)))
	c.SetGate(Gate{Enabled: true, OpenOK: true, AckLimit: 7001})
	out := collect(c, now.Add(10*time.Second))
	require.Len(t, out, 1)
	assert.Equal(t, FlagSYN|FlagACK, out[0].Flags)
	// Established, then aborted with the gate closed.
	c.Handle(now, &Segment{Seq: 7001, Ack: 101, Flags: FlagACK, Window: 1000})
	require.Equal(t, StateEstablished, c.State())
	c.Abort(now)
	assert.Empty(t, collect(c, now), "RST before CloseOK")
	c.SetGate(Gate{Enabled: true, OpenOK: true, CloseOK: true, AckLimit: 7001})
	out = collect(c, now)
	require.Len(t, out, 1)
	assert.Equal(t, FlagRST|FlagACK, out[0].Flags)
}

// TestReview_GateRaiseSendsHeldACK: when the backup catches up and the
// owner raises AckLimit, the ACK the gate held back goes out on the next
// Output (at the latest with the delayed ACK). The gated ACK already
// emitted owes nothing more, so without this the peer would learn the
// new ACK only from a later segment, or retransmit after its RTO (200 ms+
// on Linux) for the tail of every burst.
func TestReview_GateRaiseSendsHeldACK(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	srv := s.c[1]
	base := srv.rcvNxt
	srv.SetGate(Gate{Enabled: true, OpenOK: true, AckLimit: base, SendLimit: srv.sndNxt})
	out := handleOne(srv, s.now, &Segment{Seq: base, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, WScale: -1, Payload: []byte("request")})
	for _, o := range out {
		require.Equal(t, base, o.Ack, "the gate holds the ACK")
	}
	srv.SetGate(Gate{Enabled: true, OpenOK: true, AckLimit: base + 7, SendLimit: srv.sndNxt})
	out = collect(srv, s.now)
	if len(out) == 0 && !srv.delackAt.IsZero() {
		srv.Tick(srv.delackAt)
		out = collect(srv, srv.delackAt)
	}
	require.NotEmpty(t, out, "no ACK sent after the gate opened")
	assert.Equal(t, base+7, out[len(out)-1].Ack)
}
