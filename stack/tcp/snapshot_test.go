package tcp

import (
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSnapshotResumesMidTransfer moves the server side of a lossy
// transfer in both directions into a new Conn through an encoded snapshot
// (as a backup taking over would) and checks that the transfer finishes
// byte for byte.
func TestSnapshotResumesMidTransfer(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	s.drop = lossy(11, 0.08)
	up := randomBytes(21, 600_000)
	down := randomBytes(22, 600_000)
	restUp, restDown := up, down
	moved := false
	end := s.now.Add(5 * time.Minute)
	for s.recv[1].Len() < len(up) || s.recv[0].Len() < len(down) {
		require.True(t, s.now.Before(end), "stalled: up %d down %d", s.recv[1].Len(), s.recv[0].Len())
		for i, rest := range []*[]byte{&restUp, &restDown} {
			if len(*rest) > 0 {
				n, err := s.c[i].Write(*rest)
				require.NoError(t, err)
				*rest = (*rest)[n:]
				s.flush(i)
			}
		}
		if !moved && s.recv[1].Len() > len(up)/3 && len(s.c[1].ooo) > 0 && s.c[1].Unsent() > 0 {
			moved = true
			snap := s.c[1].Snapshot()
			enc, err := snap.MarshalBinary()
			require.NoError(t, err)
			var dec Snapshot
			require.NoError(t, dec.UnmarshalBinary(enc))
			requireSameSnapshot(t, snap, dec)
			c, err := Restore(dec, s.now)
			require.NoError(t, err)
			assert.Equal(t, snap.TSLastSent+1, c.tsNow(s.now), "timestamp clock continues")
			again := c.Snapshot()
			again.TSLastSent = snap.TSLastSent
			requireSameSnapshot(t, snap, again)
			s.c[1] = c
		}
		require.True(t, s.step(), "nothing left to happen")
	}
	require.True(t, moved, "the snapshot was never taken with data in flight and out of order")
	assert.Equal(t, up, s.recv[1].Bytes())
	assert.Equal(t, down, s.recv[0].Bytes())
}

// requireSameSnapshot compares field by field and names the fields that
// differ, rather than printing megabytes of buffer.
func requireSameSnapshot(t *testing.T, want, got Snapshot) {
	t.Helper()
	wv, gv := reflect.ValueOf(want), reflect.ValueOf(got)
	var diff []string
	for i := range wv.NumField() {
		if !reflect.DeepEqual(wv.Field(i).Interface(), gv.Field(i).Interface()) {
			diff = append(diff, wv.Type().Field(i).Name)
		}
	}
	require.Empty(t, diff, "snapshot fields differ")
}

func TestSnapshotValidateRejectsInconsistentState(t *testing.T) {
	s := newSim(t, Config{}, Config{}, issClient, issServer)
	_, _ = s.c[1].Write([]byte("pending"))
	good := s.c[1].Snapshot()
	require.NoError(t, good.Validate())
	for name, mutate := range map[string]func(*Snapshot){
		"version":        func(s *Snapshot) { s.Version = 99 },
		"state":          func(s *Snapshot) { s.State = 77 },
		"una after nxt":  func(s *Snapshot) { s.SndUna = s.SndNxt + 10 },
		"nxt past data":  func(s *Snapshot) { s.SndNxt = s.SndBufSeq + 1000 },
		"read after nxt": func(s *Snapshot) { s.RcvRead = s.RcvNxt + 1 },
		"missing bytes":  func(s *Snapshot) { s.RcvNxt += 100 },
		"bad shift":      func(s *Snapshot) { s.SndShift = 15 },
		"oversized send": func(s *Snapshot) { s.SendData = make([]byte, s.Config.SendBufferSize+1) },
		"bad ooo":        func(s *Snapshot) { s.OutOfOrder = []SeqRange{{s.RcvNxt + 10, s.RcvNxt + 5}} },
		"tiny mss":       func(s *Snapshot) { s.SendMSS = 1 },
		"zero rto":       func(s *Snapshot) { s.RTO = 0 },
		"ipv6 tuple":     func(s *Snapshot) { s.ID.RemoteAddr = mustV6() },
	} {
		snap := good
		snap.SendData = append([]byte(nil), good.SendData...)
		mutate(&snap)
		assert.ErrorIs(t, snap.Validate(), ErrBadSnapshot, name)
		_, err := Restore(snap, s.now)
		assert.Error(t, err, name)
	}
}
