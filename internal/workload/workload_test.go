package workload

import (
	"context"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zppratt/rfsis/internal/bench"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// echoServer serves handle on a loopback listener until the test ends and
// returns a dial function for it.
func echoServer(t *testing.T, handle func(net.Conn)) DialFunc {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go bench.Serve(l, handle)
	return func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp4", l.Addr().String())
	}
}

func echo(c net.Conn) { io.Copy(c, c) }

var small = Config{Steady: 4, LineSize: 32, Interval: 5 * time.Millisecond, BulkRate: 1 << 20, Life: 10 * time.Second}

func TestWorkloadCleanEcho(t *testing.T) {
	w, err := Start(context.Background(), echoServer(t, echo), small)
	require.NoError(t, err)
	time.Sleep(150 * time.Millisecond)
	mid := time.Now()
	time.Sleep(100 * time.Millisecond)
	rs, err := w.Finish(5 * time.Second)
	require.NoError(t, err)
	require.Len(t, rs, small.Steady+1)
	total, err := Verify(rs, mid)
	require.NoError(t, err)
	var sent int64
	for _, r := range rs {
		assert.Equal(t, r.Sent, r.Recv, r.Name)
		require.Len(t, r.Echoed, len(r.Times), r.Name)
		require.NotEmpty(t, r.Echoed, r.Name)
		assert.Equal(t, r.Recv, r.Echoed[len(r.Echoed)-1], r.Name)
		sent += r.Sent
	}
	assert.Equal(t, sent, total)
	assert.Contains(t, rs[len(rs)-1].Name, "bulk")
}

// A server that corrupts one byte must make the workload fail, naming
// where.
func TestWorkloadDetectsCorruption(t *testing.T) {
	corrupt := func(c net.Conn) {
		buf := make([]byte, 4096)
		var n int64
		for {
			k, err := c.Read(buf)
			if k > 0 {
				if n < 40 && n+int64(k) > 40 {
					buf[40-n] ^= 0xff
				}
				n += int64(k)
				if _, err := c.Write(buf[:k]); err != nil {
					return
				}
			}
			if err != nil {
				c.(*net.TCPConn).CloseWrite()
				return
			}
		}
	}
	w, err := Start(context.Background(), echoServer(t, corrupt), Config{Steady: 1, LineSize: 32, Interval: 5 * time.Millisecond, Life: 10 * time.Second})
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond)
	rs, _ := w.Finish(5 * time.Second)
	_, err = Verify(rs, time.Time{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "line 1: got")
}

// A server that swallows the client's half-close never sends EOF: Finish
// must cut the connections after the drain time and say so.
func TestWorkloadFinishCutsHungConnections(t *testing.T) {
	hang := func(c net.Conn) {
		io.Copy(io.Discard, c)
		time.Sleep(2 * time.Second)
	}
	w, err := Start(context.Background(), echoServer(t, hang), Config{Steady: 2, LineSize: 32, Interval: 5 * time.Millisecond, Life: 10 * time.Second})
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond)
	rs, err := w.Finish(200 * time.Millisecond)
	require.ErrorIs(t, err, ErrDrain)
	_, err = Verify(rs, time.Time{})
	require.Error(t, err)
	w.Abort() // after Finish: harmless
}

func TestStartFailsWhenDialFails(t *testing.T) {
	n := 0
	dial := func(ctx context.Context) (net.Conn, error) {
		n++
		if n == 3 {
			return nil, syscall.ECONNREFUSED
		}
		return echoServer(t, echo)(ctx)
	}
	_, err := Start(context.Background(), dial, small)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	assert.Contains(t, err.Error(), "steady02")
}

func TestShortConn(t *testing.T) {
	r := ShortConn(context.Background(), echoServer(t, echo), 7, 32)
	require.NoError(t, r.Err)
	assert.False(t, r.Refused)
	assert.GreaterOrEqual(t, r.Took, r.Connect)

	refused := ShortConn(context.Background(), func(context.Context) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	}, 1, 32)
	assert.True(t, refused.Refused)
	assert.NoError(t, refused.Err)

	// An echo that drops the last line is an error, not a success.
	short := ShortConn(context.Background(), echoServer(t, func(c net.Conn) {
		io.CopyN(c, c, 64)
	}), 1, 32)
	require.Error(t, short.Err)
	assert.True(t, strings.Contains(short.Err.Error(), "line 2"), short.Err)
}

func TestLineHasItsPosition(t *testing.T) {
	l := Line(3, 42, 32)
	assert.Len(t, l, 32)
	assert.True(t, strings.HasPrefix(string(l), "conn 03 line 0000042 "))
	assert.Equal(t, byte('\n'), l[31])
	assert.NotEqual(t, Line(3, 42, 32), Line(3, 43, 32))
}

func TestComputeStall(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms ...int) []time.Time {
		var ts []time.Time
		for _, m := range ms {
			ts = append(ts, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return ts
	}
	fault := t0.Add(100 * time.Millisecond)
	rs := []*ConnResult{
		{Name: "a", Times: at(0, 10, 20, 90, 160, 170)}, // 70 ms gap before the fault, 70 across it
		{Name: "b", Times: at(0, 95, 105, 115)},         // 95 ms before; 10 ms after
		{Name: "c", Times: at(0, 50, 99, 250, 260)},     // 151 ms across the fault
	}
	s := ComputeStall(rs, fault)
	assert.Equal(t, 151*time.Millisecond, s.Max)
	assert.Equal(t, "c", s.MaxConn)
	assert.Equal(t, 150*time.Millisecond, s.MaxAt)
	assert.Equal(t, 70*time.Millisecond, s.Median)
	assert.Equal(t, 95*time.Millisecond, s.Before)
	assert.Equal(t, "b", s.BeforeConn)
	assert.Equal(t, 5*time.Millisecond, s.BeforeAt)
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 20; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	assert.Equal(t, 10*time.Millisecond, Percentile(ds, 0.5))
	assert.Equal(t, 20*time.Millisecond, Percentile(ds, 0.99))
	assert.Equal(t, 20*time.Millisecond, Percentile(ds, 1))
	assert.Equal(t, 1*time.Millisecond, Percentile(ds, 0))
	assert.Equal(t, time.Duration(0), Percentile(nil, 0.5))
	assert.Equal(t, 20*time.Millisecond, ds[0], "Percentile must not sort its argument")
	assert.Equal(t, "20ms 19ms", Durations(ds[:2]))
}
