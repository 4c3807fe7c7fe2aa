package tcp

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestQuickACK: with Config.QuickACK every in-order data segment is
// acknowledged in the Output that follows it, with no delayed-ACK timer;
// without it (the same script) the first and third segments' ACKs are
// delayed (the second is acknowledged as every second segment is). The
// connection's initial quick ACKs are used up first, as in
// TestDelayedACK, so only the option can explain an immediate ACK.
func TestQuickACK(t *testing.T) {
	for _, quick := range []bool{false, true} {
		t.Run(fmt.Sprintf("QuickACK=%v", quick), func(t *testing.T) {
			s := newSim(t, Config{}, Config{QuickACK: quick}, issClient, issServer)
			srv := s.c[1]
			srv.quickAcks = 0
			for i, p := range []string{"one", "two", "three"} {
				out := handleOne(srv, s.now, &Segment{Seq: srv.rcvNxt, Ack: srv.sndNxt, Flags: FlagACK, Window: 1000, Payload: []byte(p)})
				if quick || i == 1 {
					require.Len(t, out, 1, "segment %d (%q): ACK at once", i, p)
					assert.Equal(t, FlagACK, out[0].Flags)
					assert.Equal(t, srv.rcvNxt, out[0].Ack, "segment %d acknowledges everything received", i)
					assert.Empty(t, out[0].Payload)
				} else {
					assert.Empty(t, out, "segment %d (%q): ACK delayed without QuickACK", i, p)
					assert.Equal(t, s.now.Add(40*time.Millisecond), srv.NextDeadline(), "delayed-ACK timer armed")
				}
			}
			if quick {
				// Nothing left to acknowledge: the delayed-ACK timer does
				// not fire an extra ACK.
				srv.Tick(s.now.Add(40 * time.Millisecond))
				var out []Segment
				srv.Output(s.now.Add(40*time.Millisecond), func(s *Segment) { out = append(out, *s) })
				assert.Empty(t, out, "no further ACK after QuickACK acknowledged each segment")
			}
		})
	}
}
