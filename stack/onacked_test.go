package stack

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/stack/tcp"
)

// readN reads exactly n bytes from c, failing the test after 5s.
func readN(t *testing.T, c *Conn, n int) []byte {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	require.NoError(t, err)
	return b
}

// pattern is n recognisable bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// TestOnAckedReportsSndUna: the callback registered on the dialler hears
// every advance of SND.UNA as the peer acknowledges the bytes written,
// ending at start+N, never going backwards; it runs without the
// connection's lock held (it may call the connection's methods); after
// OnAcked(nil) further writes, once acknowledged, cause no calls.
func TestOnAckedReportsSndUna(t *testing.T) {
	p := newPair(t)
	l := p.listen(t, 21)
	c := p.dial(t, 21)
	sc := p.accept(t, l)

	var (
		mu    sync.Mutex
		seen  []tcp.Seq
		calls atomic.Int64
	)
	start := c.OnAcked(func(una tcp.Seq) {
		// Would deadlock if the callback ran under the connection's lock.
		c.ReadPos()
		mu.Lock()
		seen = append(seen, una)
		mu.Unlock()
		calls.Add(1)
	})
	last := func() (tcp.Seq, bool) {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return 0, false
		}
		return seen[len(seen)-1], true
	}

	const n = 20000 // several segments, so several acknowledgements
	data := pattern(n, 1)
	_, err := c.Write(data)
	require.NoError(t, err)
	assert.Equal(t, data, readN(t, sc, n))
	want := start.Add(n)
	require.Eventually(t, func() bool {
		una, ok := last()
		return ok && una == want
	}, 10*time.Second, time.Millisecond, "the callback never reported SND.UNA = start+%d", n)

	mu.Lock()
	got := append([]tcp.Seq(nil), seen...)
	mu.Unlock()
	prev := start
	for i, una := range got {
		assert.True(t, una.Greater(prev), "call %d: SND.UNA %d not past %d", i, una, prev)
		assert.True(t, una.LessEq(want), "call %d: SND.UNA %d beyond the data's end %d", i, una, want)
		prev = una
	}

	// Stop the calls; OnAcked(nil) returns the present SND.UNA.
	assert.Equal(t, want, c.OnAcked(nil))
	before := calls.Load()
	const m = 5000
	more := pattern(m, 2)
	_, err = c.Write(more)
	require.NoError(t, err)
	assert.Equal(t, more, readN(t, sc, m))
	// Wait until the new bytes are acknowledged (OnAcked(nil) reports
	// SND.UNA without registering anything), then no call may have come.
	require.Eventually(t, func() bool { return c.OnAcked(nil) == want.Add(m) }, 10*time.Second, time.Millisecond,
		"the later bytes were never acknowledged")
	assert.Equal(t, before, calls.Load(), "callback called after OnAcked(nil)")
}

// TestReadPos: bytes that arrived but are unread lie between read and
// arrived; reading them moves read up to arrived.
func TestReadPos(t *testing.T) {
	p := newPair(t)
	l := p.listen(t, 22)
	c := p.dial(t, 22)
	sc := p.accept(t, l)

	read0, arrived0 := sc.ReadPos()
	require.Equal(t, read0, arrived0, "nothing arrived yet")

	const n = 3000
	data := pattern(n, 3)
	_, err := c.Write(data)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, arrived := sc.ReadPos()
		return arrived == arrived0.Add(n)
	}, 10*time.Second, time.Millisecond, "the %d bytes never arrived", n)
	read, arrived := sc.ReadPos()
	assert.Equal(t, read0, read, "nothing read yet")
	assert.Equal(t, uint32(n), arrived.Sub(read), "arrived - read")

	const k = 1000
	b := readN(t, sc, k)
	read, arrived = sc.ReadPos()
	assert.Equal(t, read0.Add(k), read, "read moves with what is read")
	assert.Equal(t, uint32(n-k), arrived.Sub(read), "arrived - read after a partial read")

	b = append(b, readN(t, sc, n-k)...)
	assert.True(t, bytes.Equal(data, b), "bytes differ")
	read, arrived = sc.ReadPos()
	assert.Equal(t, arrived, read, "everything read")
	assert.Equal(t, arrived0.Add(n), arrived)
}
