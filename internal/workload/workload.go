// Package workload is the client side of the failover measurements: the
// traffic that the acceptance tests of internal/takeover and the
// comparison benchmark of internal/failbench run against a service while
// a fault hits it, the byte-for-byte check of what came back, and the
// statistics of the client-visible stall.
//
// It owns the workload shape (Config, Default), running it (Start,
// Workload.Finish, Workload.Abort), one-off connections (ShortConn), the
// verification (Verify, ConnResult) and the stall figures (ComputeStall,
// Percentile). It knows nothing of namespaces, nodes or testing.T: the
// caller passes a dial function (which decides where the connections come
// from and go to) and gets errors and results back, so a test turns them
// into assertions and a benchmark into a report.
//
// The traffic is Steady connections each echoing one LineSize-byte line
// every Interval, plus one bulk connection streaming a seeded byte stream
// at BulkRate bytes per second. Every byte is checked: exactly once, in
// order, then a clean EOF after the client's half-close. Every echo's
// arrival time is recorded, so the largest gap that spans a fault, per
// connection, is the stall that connection's user saw.
package workload

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Config shapes the client traffic.
type Config struct {
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
	// instead of hanging its caller.
	Life time.Duration
}

// Default is the failover issue's workload: 50 connections at one 32-byte
// line every 10 ms, plus a 1 MiB/s bulk stream.
var Default = Config{
	Steady:   50,
	LineSize: 32,
	Interval: 10 * time.Millisecond,
	BulkRate: 1 << 20,
	Life:     60 * time.Second,
}

// BulkChunk is the bulk connection's write and read size.
const BulkChunk = 8 << 10

// dialTimeout bounds each connect of Start and ShortConn: long enough for
// two SYN retransmissions of the client (at 1 s and 3 s).
const dialTimeout = 10 * time.Second

// DialFunc opens one client connection to the service under test. It
// decides where from (a namespace) and where to (the service address).
type DialFunc func(ctx context.Context) (net.Conn, error)

// ConnResult is what one client connection saw.
type ConnResult struct {
	Name string
	// Times are the arrival times of the echoes: one per line for a
	// steady connection, one per successful read for the bulk one.
	Times []time.Time
	// Echoed is, for each of Times, the bytes echoed and verified so far
	// on this connection (so a timeline can count bytes, not reads).
	Echoed []int64
	Sent   int64 // bytes written
	Recv   int64 // bytes echoed and verified
	Err    error // nil: every byte came back once, in order, then EOF
}

// Workload is running client traffic.
type Workload struct {
	stop     chan struct{} // closed: writers send no more and half-close
	stopOnce sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
	results  []*ConnResult
}

// Start dials every connection with dial (all must connect: the service
// is up) and starts their traffic. On error it closes what it opened.
// The caller must end the workload with Finish or Abort.
func Start(ctx context.Context, dial DialFunc, cfg Config) (*Workload, error) {
	w := &Workload{stop: make(chan struct{})}
	open := func(name string) (*net.TCPConn, *ConnResult, error) {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		c, err := dial(dctx)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: dial: %w", name, err)
		}
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			return nil, nil, fmt.Errorf("%s: dial returned a %T, want a *net.TCPConn (the workload half-closes)", name, c)
		}
		if err := tc.SetDeadline(time.Now().Add(cfg.Life)); err != nil {
			tc.Close()
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		// The client port in the name finds the connection in a capture.
		r := &ConnResult{Name: fmt.Sprintf("%s(:%d)", name, tc.LocalAddr().(*net.TCPAddr).Port)}
		w.mu.Lock()
		w.conns = append(w.conns, tc)
		w.results = append(w.results, r)
		w.mu.Unlock()
		return tc, r, nil
	}
	// Dial everything first, then start the traffic together: the opening
	// records replicate one by one, and lines sent meanwhile would make the
	// baseline (the gaps before the fault) about connection set-up.
	steady := make([]*net.TCPConn, cfg.Steady)
	steadyRes := make([]*ConnResult, cfg.Steady)
	for i := range steady {
		var err error
		if steady[i], steadyRes[i], err = open(fmt.Sprintf("steady%02d", i)); err != nil {
			w.Abort()
			return nil, err
		}
	}
	var bulk *net.TCPConn
	var bulkRes *ConnResult
	if cfg.BulkRate != 0 {
		var err error
		if bulk, bulkRes, err = open("bulk"); err != nil {
			w.Abort()
			return nil, err
		}
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
	return w, nil
}

// ErrDrain is Finish's error when connections were still busy after the
// drain time and were cut.
var ErrDrain = errors.New("workload: connections still busy after the writers stopped; cut")

// Finish tells every writer to stop, waits for every echo and EOF, and
// returns the results. drain bounds the wait; connections still running
// then are cut (deadline now), fail, and Finish also returns ErrDrain.
func (w *Workload) Finish(drain time.Duration) ([]*ConnResult, error) {
	w.halt()
	done := make(chan struct{})
	go func() {
		w.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-time.After(drain):
		err = fmt.Errorf("%w (waited %v)", ErrDrain, drain)
		w.Abort()
		<-done
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.conns {
		c.Close()
	}
	return w.results, err
}

// Abort unblocks and closes every connection and waits for their
// goroutines. It may be called after Finish, and more than once.
func (w *Workload) Abort() {
	w.halt()
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

// halt tells the writers to stop.
func (w *Workload) halt() { w.stopOnce.Do(func() { close(w.stop) }) }

// Line is line k of steady connection id: its position is in its text, so
// a lost, duplicated or reordered line shows which one.
func Line(id, k, size int) []byte {
	b := fmt.Appendf(make([]byte, 0, size), "conn %02d line %07d ", id, k)
	for len(b) < size-1 {
		b = append(b, byte('a'+(k+len(b))%26))
	}
	return append(b[:size-1], '\n')
}

// runSteady writes one line per cfg.Interval until stop, then half-closes;
// it reads every echo concurrently, checks it against what was sent and
// records when it arrived, and expects EOF right after the last one.
func runSteady(c *net.TCPConn, r *ConnResult, id int, cfg Config, stop <-chan struct{}) error {
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
			if _, err := c.Write(Line(id, k, cfg.LineSize)); err != nil {
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
		if want := Line(id, k, cfg.LineSize); !bytes.Equal(got, want) {
			rerr = fmt.Errorf("line %d: got %q, want %q", k, got, want)
			break
		}
		r.Recv += int64(cfg.LineSize)
		r.Times = append(r.Times, time.Now())
		r.Echoed = append(r.Echoed, r.Recv)
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
// half-closes; it reads and checks the echo concurrently, recording when
// each read returned, and expects EOF right after the last byte.
func runBulk(c *net.TCPConn, r *ConnResult, seed uint64, rate int, stop <-chan struct{}) error {
	wres := make(chan writeResult, 1)
	go func() {
		src := stream(seed)
		buf := make([]byte, BulkChunk)
		var total int64
		tick := time.NewTicker(time.Duration(float64(time.Second) * BulkChunk / float64(rate)))
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
	exp := make([]byte, BulkChunk)
	got := make([]byte, BulkChunk)
	var rerr error
	for {
		n, err := c.Read(got)
		if n > 0 {
			want.Read(exp[:n])
			if !bytes.Equal(exp[:n], got[:n]) {
				i := 0
				for exp[i] == got[i] {
					i++
				}
				rerr = fmt.Errorf("echo differs at stream offset %d: sent %#02x, got %#02x", r.Recv+int64(i), exp[i], got[i])
				break
			}
			r.Recv += int64(n)
			r.Times = append(r.Times, time.Now())
			r.Echoed = append(r.Echoed, r.Recv)
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

// Verify checks that every connection echoed every byte exactly once and
// in order and ended with a clean EOF, and that each got echoes after the
// fault (so it really lived through it). It returns the bytes echoed and
// verified over all connections, and an error naming every connection
// that failed.
func Verify(rs []*ConnResult, fault time.Time) (int64, error) {
	var bad []error
	var total int64
	for _, r := range rs {
		total += r.Recv
		switch {
		case r.Err != nil:
			bad = append(bad, fmt.Errorf("%s: %w", r.Name, r.Err))
		case len(r.Times) == 0 || !r.Times[len(r.Times)-1].After(fault):
			bad = append(bad, fmt.Errorf("%s: no echo after the fault", r.Name))
		}
	}
	if len(bad) > 0 {
		return total, fmt.Errorf("%d of %d connections failed: %w", len(bad), len(rs), errors.Join(bad...))
	}
	return total, nil
}
