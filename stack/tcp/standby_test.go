package tcp

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// replica is the backup's copy of the server side (side 1) of a sim,
// replicated the way package failover does it: the main ships every
// inbound byte the moment it is in order (before its application can read
// it) and every outbound byte the moment it is written; the backup applies
// them later (lag), and the main's gates follow what the backup applied.
type replica struct {
	t             *testing.T
	main, standby *Conn
	shippedIn     Seq    // end of the inbound bytes shipped
	shippedOut    Seq    // end of the outbound bytes shipped
	pendingIn     []byte // shipped, not yet applied by the backup
	pendingOut    []byte
	progress      Progress
	r             *rand.Rand
	lag           float64
	appRead       bytes.Buffer // what the standby's application read
}

// ship copies what is new on the main into the channel to the backup.
func (rp *replica) ship() {
	m := rp.main
	var err error
	rp.pendingIn, err = m.AppendReceived(rp.pendingIn, rp.shippedIn)
	require.NoError(rp.t, err)
	rp.shippedIn = m.ReceivedEnd()
	rp.pendingOut, err = m.AppendWritten(rp.pendingOut, rp.shippedOut)
	require.NoError(rp.t, err)
	rp.shippedOut = m.WrittenEnd()
	rp.progress = m.Progress()
}

// apply is the backup catching up, some of the time.
func (rp *replica) apply() {
	if rp.r.Float64() < rp.lag {
		return
	}
	sb := rp.standby
	n, err := sb.StandbyReceive(sb.ReceivedEnd(), rp.pendingIn)
	require.NoError(rp.t, err)
	rp.pendingIn = rp.pendingIn[:copy(rp.pendingIn, rp.pendingIn[n:])]
	var b [8192]byte
	for k := sb.Read(b[:]); k > 0; k = sb.Read(b[:]) {
		rp.appRead.Write(b[:k]) // the hot standby's application reads
	}
	n, err = sb.StandbyWritten(sb.WrittenEnd(), rp.pendingOut)
	require.NoError(rp.t, err)
	rp.pendingOut = rp.pendingOut[:copy(rp.pendingOut, rp.pendingOut[n:])]
	require.NoError(rp.t, sb.StandbyProgress(rp.progress))
}

// gate opens the main's output up to what the backup holds.
func (rp *replica) gate() {
	sb := rp.standby
	ackLimit := sb.ReceivedEnd()
	if sb.peerFin {
		ackLimit++ // the FIN
	}
	rp.main.SetGate(Gate{Enabled: true, OpenOK: true, AckLimit: ackLimit, SendLimit: sb.WrittenEnd(), CloseOK: sb.finQueued})
}

func (rp *replica) replicate() {
	rp.ship()
	rp.apply()
	rp.gate()
}

// TestStandbyTakesOver replicates the server side of a two-way transfer
// to a standby, kills the main at a random moment, turns the standby live
// after a pause, and checks both directions complete byte for byte: the
// whole failover design in miniature, with scripted loss.
func TestStandbyTakesOver(t *testing.T) {
	for trial := range 12 {
		t.Run(fmt.Sprintf("trial%d", trial), func(t *testing.T) { standbyTrial(t, uint64(trial)) })
	}
}

func standbyTrial(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 77))
	s := &sim{t: t, now: time.Unix(1_000_000, 0), delay: 5 * time.Millisecond, autoRead: [2]bool{true, true}}
	s.c[0] = NewActive(Config{}, clientID(), issClient, s.now)
	s.flush(0)
	p := s.inflight[0]
	s.inflight = nil
	s.now = p.at
	var syn Segment
	require.NoError(t, Parse(p.buf, &syn))
	main := NewPassive(Config{}, reverse(clientID()), issServer, &syn, s.now)
	// The opening record: the backup restores it before the SYN-ACK goes.
	snap := main.Snapshot()
	enc, err := snap.MarshalBinary()
	require.NoError(t, err)
	var dec Snapshot
	require.NoError(t, dec.UnmarshalBinary(enc))
	sb, err := RestoreStandby(dec, s.now)
	require.NoError(t, err)
	rp := &replica{t: t, main: main, standby: sb, shippedIn: main.ReceivedEnd(), shippedOut: main.WrittenEnd(), r: r, lag: 0.3}
	main.SetGate(Gate{Enabled: true, OpenOK: true, AckLimit: main.rcvNxt, SendLimit: main.WrittenEnd()})
	s.c[1] = main
	live := main
	s.preFlush = func(i int) {
		if i == 1 && s.c[1] == main {
			rp.replicate()
		}
	}
	s.drop = lossy(seed+100, 0.01)
	s.flush(1)

	up := randomBytes(seed+1, 2_000_000)   // client to server
	down := randomBytes(seed+2, 2_000_000) // server to client
	restUp := up
	killAt := s.now.Add(time.Duration(15+r.IntN(150)) * time.Millisecond)
	var resumeAt time.Time
	end := s.now.Add(5 * time.Minute)
	for s.recv[0].Len() < len(down) || rp.appRead.Len() < len(up) {
		if !s.now.Before(end) {
			c, v := s.c[0], live
			t.Fatalf("stalled: client got %d/%d, server app %d/%d\nserver %v una=%d nxt=%d end=%d wnd=%d cwnd=%d rto=%v rexmit=%d high=%d fin=%v/%v\nclient %v rcvnxt=%d una=%d nxt=%d",
				s.recv[0].Len(), len(down), rp.appRead.Len(), len(up),
				v.state, v.sndUna, v.sndNxt, v.dataEnd(), v.sndWnd, v.cwnd, v.rtoAt, v.rexmitNxt, v.rtoRecoveryHigh, v.finQueued, v.finSent,
				c.state, c.rcvNxt, c.sndUna, c.sndNxt)
		}
		if len(restUp) > 0 && s.c[0].State() == StateEstablished {
			n, err := s.c[0].Write(restUp)
			require.NoError(t, err)
			restUp = restUp[n:]
			s.flush(0)
		}
		// The server application writes the next bytes: on the main,
		// then, after takeover, on the standby from where it holds.
		if st := live.State(); s.c[1] == live && (st == StateEstablished || st == StateCloseWait) {
			off := int(live.WrittenEnd().Sub(issServer + 1))
			if off < len(down) {
				if _, err := live.Write(down[off:]); err != nil {
					require.ErrorIs(t, err, ErrStandby)
				}
				s.flush(1)
			}
		}
		if resumeAt.IsZero() && !s.now.Before(killAt) {
			// kill -9: the main vanishes; segments to the service address
			// are lost until the backup claims it.
			s.c[1] = nil
			s.preFlush = nil
			resumeAt = s.now.Add(30 * time.Millisecond)
			s.drop = func(from int, seg *Segment) bool { return from == 0 }
		}
		if !resumeAt.IsZero() && s.c[1] == nil && !s.now.Before(resumeAt) {
			// What the backup holds is all the main can have sent.
			require.NoError(t, sb.GoLive(s.now, sb.WrittenEnd(), 5))
			s.c[1] = sb
			live = sb
			s.autoRead[1] = false
			s.drop = lossy(seed+200, 0.01)
			s.flush(1)
		}
		if s.c[1] == sb {
			var b [8192]byte
			for k := sb.Read(b[:]); k > 0; k = sb.Read(b[:]) {
				rp.appRead.Write(b[:k])
			}
		}
		if !s.stepDead() {
			if s.c[1] == nil {
				s.now = resumeAt // nothing else happens until the takeover
				continue
			}
			t.Fatalf("nothing left to happen")
		}
	}
	require.True(t, bytes.Equal(down, s.recv[0].Bytes()), "client received different bytes")
	require.True(t, bytes.Equal(up, rp.appRead.Bytes()), "standby application read different bytes")
	require.False(t, resumeAt.IsZero(), "the main was never killed")
}

// stepDead is step, tolerating a dead server: segments to it are lost.
func (s *sim) stepDead() bool {
	if s.c[1] != nil {
		return s.step()
	}
	next, pi := time.Time{}, -1
	for i, p := range s.inflight {
		if next.IsZero() || p.at.Before(next) {
			next, pi = p.at, i
		}
	}
	d := s.c[0].NextDeadline()
	if pi < 0 && d.IsZero() {
		return false
	}
	if pi >= 0 && (d.IsZero() || !d.Before(next)) {
		p := s.inflight[pi]
		s.inflight = append(s.inflight[:pi], s.inflight[pi+1:]...)
		if next.After(s.now) {
			s.now = next
		}
		if p.to == 0 {
			var seg Segment
			require.NoError(s.t, Parse(p.buf, &seg))
			s.c[0].Handle(s.now, &seg)
			s.after(0)
		}
		return true
	}
	if d.After(s.now) {
		s.now = d
	}
	s.c[0].Tick(s.now)
	s.after(0)
	return true
}

// TestStandbyFollowsCloseStates: a standby given the main's progress
// passes through the main's closing states, whether the progress comes
// after every step or only now and then, and a standby that goes live
// in TIME-WAIT ends when it is over.
func TestStandbyFollowsCloseStates(t *testing.T) {
	activeClose := func(late bool) func(s *sim, follow func()) {
		return func(s *sim, follow func()) {
			s.c[1].Close(s.now)
			s.flush(1)
			follow() // FIN-WAIT-1
			s.runUntil(func() bool { return s.c[1].State() == StateFinWait2 }, time.Second)
			if !late { // else FIN-WAIT-2 and TIME-WAIT arrive in one
				follow()
			}
			s.c[0].Close(s.now)
			s.flush(0)
			s.runUntil(func() bool { return s.c[1].State() == StateTimeWait }, time.Second)
		}
	}
	for _, tc := range []struct {
		name  string
		close func(s *sim, follow func())
		want  State
	}{
		{"active close", activeClose(false), StateTimeWait},
		{"active close, progress late", activeClose(true), StateTimeWait},
		{"simultaneous close", func(s *sim, follow func()) {
			s.c[0].Close(s.now)
			s.c[1].Close(s.now)
			collect(s.c[1], s.now) // the server's FIN is lost
			s.flush(0)
			s.runUntil(func() bool { return s.c[1].State() == StateClosing }, time.Second)
			follow()
			s.runUntil(func() bool { return s.c[1].State() == StateTimeWait }, 5*time.Second)
		}, StateTimeWait},
		{"passive close", func(s *sim, follow func()) {
			s.c[0].Close(s.now)
			s.flush(0)
			s.runUntil(func() bool { return s.c[1].State() == StateCloseWait }, time.Second)
			follow()
			s.c[1].Close(s.now)
			follow() // LAST-ACK
			s.flush(1)
			s.runUntil(func() bool { return s.c[1].State() == StateClosed }, time.Second)
		}, StateClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{}, Config{}, issClient, issServer)
			main := s.c[1]
			sb, err := RestoreStandby(main.Snapshot(), s.now)
			require.NoError(t, err)
			follow := func() {
				t.Helper()
				require.NoError(t, sb.StandbyProgress(main.Progress()))
				require.Equal(t, main.State(), sb.State(), "standby %v, main %v", sb.State(), main.State())
			}
			tc.close(s, follow)
			require.Equal(t, tc.want, main.State())
			follow()
			assert.Zero(t, sb.NextDeadline(), "a standby runs no timers")
			if tc.want == StateClosed {
				assert.NotZero(t, sb.TakeEvents()&EventClosed)
				assert.NoError(t, sb.Err())
				return
			}
			require.NoError(t, sb.GoLive(s.now, sb.sendEnd(), 0))
			d := sb.NextDeadline()
			require.False(t, d.IsZero(), "live in %v without a timer", sb.State())
			sb.Tick(d)
			assert.Equal(t, StateClosed, sb.State())
			assert.NoError(t, sb.Err())
		})
	}
}
