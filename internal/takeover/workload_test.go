//go:build linux

package takeover

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// workloadConfig shapes the client traffic of a test.
type workloadConfig struct {
	Steady   int           // connections echoing one line per Interval
	LineSize int           // bytes per line, newline included
	Interval time.Duration // between two lines of one connection
	// BulkRate is the bulk connection's pace in bytes per second; 0
	// means no bulk connection. Paced rather than as fast as it goes, so
	// that its reads arrive steadily and a gap in them is a stall, and so
	// that it does not starve the other connections on a two-core machine.
	BulkRate int
	// Life bounds every connection: the deadline set at dial time. A
	// connection that has not finished by then fails with a timeout
	// instead of hanging the test.
	Life time.Duration
}

// defaultWorkload is the workload: 50 connections at one 32-byte
// line every 10 ms, plus a 1 MiB/s bulk stream.
var defaultWorkload = workloadConfig{
	Steady:   50,
	LineSize: 32,
	Interval: 10 * time.Millisecond,
	BulkRate: 1 << 20,
	Life:     60 * time.Second,
}

// bulkChunk is the bulk connection's write and read size.
const bulkChunk = 8 << 10

// connResult is what one client connection saw.
type connResult struct {
	Name string
	// Times are the arrival times of the echoes: one per line for a
	// steady connection, one per successful read for the bulk one.
	Times []time.Time
	Sent  int64 // bytes written
	Recv  int64 // bytes echoed and verified
	Err   error // nil: every byte came back once, in order, then EOF
}

// workload is running client traffic.
type workload struct {
	stop    chan struct{} // closed: writers send no more and half-close
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	results []*connResult
}

// startWorkload dials every connection from the client namespace (all
// must connect: the pair is up) and starts their traffic.
func startWorkload(t *testing.T, p *pair, cfg workloadConfig) *workload {
	t.Helper()
	w := &workload{stop: make(chan struct{})}
	t.Cleanup(w.abort) // a test that fails half-way leaves nothing running
	dial := func(name string) (*net.TCPConn, *connResult) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := p.tp.Client().Dial(ctx, "tcp4", p.service())
		require.NoError(t, err, "%s: dial %s", name, p.service())
		require.NoError(t, c.SetDeadline(time.Now().Add(cfg.Life)))
		// The client port in the name finds the connection in a capture.
		r := &connResult{Name: fmt.Sprintf("%s(:%d)", name, c.LocalAddr().(*net.TCPAddr).Port)}
		w.mu.Lock()
		w.conns = append(w.conns, c)
		w.results = append(w.results, r)
		w.mu.Unlock()
		return c.(*net.TCPConn), r
	}
	// Dial everything first, then start the traffic together: the opening
	// records replicate one by one, and lines sent meanwhile would make the
	// baseline (the gaps before the fault) about connection set-up.
	steady := make([]*net.TCPConn, cfg.Steady)
	steadyRes := make([]*connResult, cfg.Steady)
	for i := range steady {
		steady[i], steadyRes[i] = dial(fmt.Sprintf("steady%02d", i))
	}
	var bulk *net.TCPConn
	var bulkRes *connResult
	if cfg.BulkRate != 0 {
		bulk, bulkRes = dial("bulk")
	}
	for i, c := range steady {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			steadyRes[i].Err = runSteady(c, steadyRes[i], i, cfg, w.stop)
		}()
	}
	if bulk != nil {
		seed := uint64(time.Now().UnixNano())
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			bulkRes.Err = runBulk(bulk, bulkRes, seed, cfg.BulkRate, w.stop)
			if bulkRes.Err != nil {
				bulkRes.Err = fmt.Errorf("seed %d: %w", seed, bulkRes.Err)
			}
		}()
	}
	return w
}

// finish tells every writer to stop, waits for every echo and EOF, and
// returns the results. drain bounds the wait; connections still running
// then are cut (deadline now) and fail.
func (w *workload) finish(t *testing.T, drain time.Duration) []*connResult {
	t.Helper()
	close(w.stop)
	done := make(chan struct{})
	go func() {
		w.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(drain):
		t.Errorf("workload: connections still busy %v after the writers stopped; cutting them", drain)
		w.abort()
		<-done
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.conns {
		c.Close()
	}
	return w.results
}

// abort unblocks and closes every connection.
func (w *workload) abort() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.mu.Lock()
	for _, c := range w.conns {
		c.SetDeadline(time.Now())
	}
	w.mu.Unlock()
	w.wg.Wait()
	w.mu.Lock()
	for _, c := range w.conns {
		c.Close()
	}
	w.mu.Unlock()
}

// line is line k of steady connection id: its position is in its text, so
// a lost, duplicated or reordered line shows which one.
func line(id, k, size int) []byte {
	b := fmt.Appendf(make([]byte, 0, size), "conn %02d line %07d ", id, k)
	for len(b) < size-1 {
		b = append(b, byte('a'+(k+len(b))%26))
	}
	return append(b[:size-1], '\n')
}

// runSteady writes one line per cfg.Interval until stop, then half-closes;
// it reads every echo concurrently, checks it against what was sent and
// records when it arrived, and expects EOF right after the last one.
func runSteady(c *net.TCPConn, r *connResult, id int, cfg workloadConfig, stop <-chan struct{}) error {
	wres := make(chan writeResult, 1)
	go func() {
		tick := time.NewTicker(cfg.Interval)
		defer tick.Stop()
		for k := 0; ; k++ {
			select {
			case <-stop:
				wres <- writeResult{int64(k), wrapErr("CloseWrite", c.CloseWrite())}
				return
			case <-tick.C:
			}
			if _, err := c.Write(line(id, k, cfg.LineSize)); err != nil {
				wres <- writeResult{int64(k), fmt.Errorf("write of line %d: %w", k, err)}
				return
			}
		}
	}()
	var w writeResult
	haveW := false
	got := make([]byte, cfg.LineSize)
	var rerr error
	for k := 0; ; k++ {
		n, err := io.ReadFull(c, got)
		if err == io.EOF {
			// EOF comes only after the writer's half-close.
			w, haveW = <-wres, true
			if int64(k) != w.n {
				rerr = fmt.Errorf("EOF after %d lines; %d were sent", k, w.n)
			}
			break
		}
		if err != nil {
			rerr = fmt.Errorf("read of line %d (%d of %d bytes): %w", k, n, cfg.LineSize, err)
			break
		}
		if want := line(id, k, cfg.LineSize); !bytes.Equal(got, want) {
			rerr = fmt.Errorf("line %d: got %q, want %q", k, got, want)
			break
		}
		r.Times = append(r.Times, time.Now())
		r.Recv += int64(cfg.LineSize)
	}
	if !haveW {
		c.SetDeadline(time.Now()) // unblock the writer
		w = <-wres
	}
	r.Sent = w.n * int64(cfg.LineSize)
	return errors.Join(rerr, w.err)
}

// writeResult is what a connection's writer did: lines or bytes written,
// and how it ended.
type writeResult struct {
	n   int64
	err error
}

func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}

// stream is a deterministic byte stream for the bulk connection.
func stream(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

// runBulk streams a seeded byte stream at rate bytes/s until stop, then
// half-closes; it reads and checks the echo
// concurrently, recording when each read returned, and expects EOF right
// after the last byte.
func runBulk(c *net.TCPConn, r *connResult, seed uint64, rate int, stop <-chan struct{}) error {
	wres := make(chan writeResult, 1)
	go func() {
		src := stream(seed)
		buf := make([]byte, bulkChunk)
		var total int64
		tick := time.NewTicker(time.Duration(float64(time.Second) * bulkChunk / float64(rate)))
		defer tick.Stop()
		for {
			select {
			case <-stop:
				wres <- writeResult{total, wrapErr("CloseWrite", c.CloseWrite())}
				return
			case <-tick.C:
			}
			src.Read(buf)
			n, err := c.Write(buf)
			total += int64(n)
			if err != nil {
				wres <- writeResult{total, fmt.Errorf("write at offset %d: %w", total, err)}
				return
			}
		}
	}()
	var w writeResult
	haveW := false
	want := stream(seed)
	exp := make([]byte, bulkChunk)
	got := make([]byte, bulkChunk)
	var rerr error
	for {
		n, err := c.Read(got)
		if n > 0 {
			want.Read(exp[:n])
			if i := firstDiff(exp[:n], got[:n]); i >= 0 {
				rerr = fmt.Errorf("echo differs at stream offset %d: sent %#02x, got %#02x", r.Recv+int64(i), exp[i], got[i])
				break
			}
			r.Recv += int64(n)
			r.Times = append(r.Times, time.Now())
		}
		if err == io.EOF {
			w, haveW = <-wres, true
			if r.Recv != w.n {
				rerr = fmt.Errorf("EOF after %d echoed bytes; %d were sent", r.Recv, w.n)
			}
			break
		}
		if err != nil {
			rerr = fmt.Errorf("read after %d echoed bytes: %w", r.Recv, err)
			break
		}
	}
	if !haveW {
		c.SetDeadline(time.Now()) // unblock the writer
		w = <-wres
	}
	r.Sent = w.n
	return errors.Join(rerr, w.err)
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// requireClean asserts that every connection echoed every byte exactly
// once and in order and ended with a clean EOF, and that each got echoes
// after the fault (so it really lived through it).
func requireClean(t *testing.T, rs []*connResult, fault time.Time) {
	t.Helper()
	var bad []string
	var total int64
	for _, r := range rs {
		total += r.Recv
		switch {
		case r.Err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", r.Name, r.Err))
		case len(r.Times) == 0 || !r.Times[len(r.Times)-1].After(fault):
			bad = append(bad, fmt.Sprintf("%s: no echo after the fault", r.Name))
		}
	}
	require.Empty(t, bad, "%d of %d connections failed", len(bad), len(rs))
	t.Logf("workload: %d connections, %d bytes echoed and verified", len(rs), total)
}

// stallStats summarises the client-visible stall of one trial.
type stallStats struct {
	Max     time.Duration // the largest gap ending after the fault, any connection
	MaxConn string        // which connection
	Median  time.Duration // the median over connections of each one's largest such gap
	MaxAt   time.Duration // when that gap ended, after the fault
	// Before is the largest gap before the fault (the baseline jitter),
	// BeforeConn its connection and BeforeAt when it ended, before the fault.
	Before     time.Duration
	BeforeConn string
	BeforeAt   time.Duration
}

func (s stallStats) String() string {
	return fmt.Sprintf("stall %v (%s, ending %v after the fault), median over connections %v; largest gap before the fault %v (%s, ending %v before it)",
		s.Max.Round(time.Millisecond), s.MaxConn, s.MaxAt.Round(time.Millisecond), s.Median.Round(time.Millisecond),
		s.Before.Round(time.Millisecond), s.BeforeConn, s.BeforeAt.Round(time.Millisecond))
}

// stall computes the client-visible stall: for each connection the largest
// gap between two consecutive echoes where the later one arrived after the
// fault (the gap that spans the fault, or any later hiccup it caused).
func stall(rs []*connResult, fault time.Time) stallStats {
	var s stallStats
	var per []time.Duration
	for _, r := range rs {
		var worst time.Duration
		var worstAt time.Time
		for i := 1; i < len(r.Times); i++ {
			gap := r.Times[i].Sub(r.Times[i-1])
			switch {
			case !r.Times[i].After(fault):
				if gap > s.Before {
					s.Before, s.BeforeConn, s.BeforeAt = gap, r.Name, fault.Sub(r.Times[i])
				}
			case gap > worst:
				worst, worstAt = gap, r.Times[i]
			}
		}
		per = append(per, worst)
		if worst > s.Max {
			s.Max, s.MaxConn, s.MaxAt = worst, r.Name, worstAt.Sub(fault)
		}
	}
	if len(per) > 0 {
		slices.Sort(per)
		s.Median = per[len(per)/2]
	}
	return s
}

// percentile returns the p-quantile (0..1) of ds by nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// durations formats ds rounded to the millisecond.
func durations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.Round(time.Millisecond).String()
	}
	return strings.Join(parts, " ")
}

// assertStall asserts the trial's stall is under bound.
func assertStall(t *testing.T, s stallStats, bound time.Duration) {
	t.Helper()
	assert.LessOrEqual(t, s.Max, bound, "client-visible stall over %v: %v", bound, s)
}
