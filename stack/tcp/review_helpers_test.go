package tcp

import (
	"runtime/debug"
	"testing"
	"time"
)

// noPanic runs f and turns a panic into a test failure, so that one
// failing review test does not abort the rest of the package's tests.
func noPanic(t testing.TB, f func()) (ok bool) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("panic: %v\n%s", r, debug.Stack())
			ok = false
		}
	}()
	f()
	return true
}

// collect runs Output and returns copies of the emitted segments.
func collect(c *Conn, now time.Time) []Segment {
	var out []Segment
	c.Output(now, func(s *Segment) {
		cp := *s
		cp.Payload = append([]byte(nil), s.Payload...)
		out = append(out, cp)
	})
	return out
}

// nextEvent is when the sim's next delivery or timer is due (zero: none).
func (s *sim) nextEvent() time.Time {
	var next time.Time
	for _, p := range s.inflight {
		if next.IsZero() || p.at.Before(next) {
			next = p.at
		}
	}
	for _, c := range s.c {
		if c == nil {
			continue
		}
		if d := c.NextDeadline(); !d.IsZero() && (next.IsZero() || d.Before(next)) {
			next = d
		}
	}
	return next
}

// runFor runs every event due within d of simulated time, then sets the
// clock to the end of that span.
func (s *sim) runFor(d time.Duration) {
	end := s.now.Add(d)
	for {
		n := s.nextEvent()
		if n.IsZero() || n.After(end) {
			break
		}
		s.step()
	}
	if s.now.Before(end) {
		s.now = end
	}
}
