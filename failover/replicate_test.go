package failover

import (
	"testing"

	"github.com/zppratt/rfsis/stack/tcp"
)

// TestProgressWorthShipping: the client's progress goes to the backup on
// a FIN flag, when everything written is acknowledged, and every
// ackedSlack bytes of acknowledgements, and not on every acknowledgement.
func TestProgressWorthShipping(t *testing.T) {
	old := tcp.Progress{SndUna: 1000, WrittenEnd: 1000 + 4*ackedSlack, ReceivedEnd: 500}
	at := func(una tcp.Seq) tcp.Progress { p := old; p.SndUna = una; return p }
	for _, c := range []struct {
		name string
		p    tcp.Progress
		want bool
	}{
		{"unchanged", old, false},
		{"a little acknowledged", at(old.SndUna + 1448), false},
		{"just under the slack", at(old.SndUna + ackedSlack - 1), false},
		{"the slack acknowledged", at(old.SndUna + ackedSlack), true},
		{"everything acknowledged", at(old.WrittenEnd), true},
		{"window only", func() tcp.Progress { p := old; p.SndWnd = 9999; return p }(), false},
		{"client's FIN", func() tcp.Progress { p := old; p.PeerFin = true; return p }(), true},
		{"our FIN queued", func() tcp.Progress { p := old; p.FinQueued = true; return p }(), true},
	} {
		if got := progressWorthShipping(old, c.p); got != c.want {
			t.Errorf("%s: progressWorthShipping = %t, want %t", c.name, got, c.want)
		}
	}
	// Idle and all acknowledged: nothing new to ship.
	done := at(old.WrittenEnd)
	if progressWorthShipping(done, done) {
		t.Error("a quiet, fully acknowledged connection ships its progress again")
	}
}
