//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"time"
)

// Conn is a client connection: the kernel's *net.TCPConn, or an RFSIS
// stack's *stack.Conn when the client is a stack too (the stack-to-stack
// round trip of BenchmarkReplicated).
type Conn interface {
	net.Conn
	CloseWrite() error
	SetNoDelay(bool) error
}

// DialFunc connects a client (usually the client namespace's kernel TCP)
// to a port of the server under test.
type DialFunc func(ctx context.Context, port int) (Conn, error)

// grace is how long past its nominal duration a measurement may take (to
// drain buffers, wait for the sink's count, the echo's EOF) before it is
// declared stalled.
const grace = 30 * time.Second

// Sample is what one measurement saw from the client.
type Sample struct {
	Bytes   int64           // payload bytes moved (echo: bytes echoed back)
	Ops     int64           // request/response round trips
	Elapsed time.Duration   // from the first byte sent to the last one accounted for
	Lat     []time.Duration // round-trip latencies
	MaxGap  time.Duration   // longest wait for progress in a bulk transfer
}

// Add adds o to s, as the slices of one measurement add up: bytes, round
// trips and time are summed, the latencies kept sorted, and the longest
// gap is the longer one.
func (s *Sample) Add(o Sample) {
	s.Bytes += o.Bytes
	s.Ops += o.Ops
	s.Elapsed += o.Elapsed
	s.Lat = append(s.Lat, o.Lat...)
	slices.Sort(s.Lat)
	s.MaxGap = max(s.MaxGap, o.MaxGap)
}

// watch makes c's pending and future I/O fail once ctx is done (on
// interrupt); the returned function stops watching.
func watch(ctx context.Context, c net.Conn) func() bool {
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
}

// ioErr adds the interrupt as the cause of an I/O error it provoked.
func ioErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w (interrupted)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// gapTracker records the longest interval between progress events.
type gapTracker struct {
	last time.Time
	max  time.Duration
}

func (g *gapTracker) tick(now time.Time) {
	if d := now.Sub(g.last); d > g.max {
		g.max = d
	}
	g.last = now
}

// MeasureSink writes to the sink for d, half-closes, and waits for the
// server's count of the bytes it received: the elapsed time runs until that
// count arrives, so every byte counted has reached the server application.
func MeasureSink(ctx context.Context, dial DialFunc, d time.Duration) (Sample, error) {
	c, err := dial(ctx, SinkPort)
	if err != nil {
		return Sample{}, err
	}
	defer c.Close()
	defer watch(ctx, c)()
	buf := Pattern(BufSize)
	start := time.Now()
	end := start.Add(d)
	c.SetDeadline(end.Add(grace))
	g := gapTracker{last: start}
	var sent int64
	for now := start; now.Before(end); now = time.Now() {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			return Sample{}, ioErr(ctx, fmt.Sprintf("write after %d bytes", sent), err)
		}
		g.tick(time.Now())
	}
	if err := c.CloseWrite(); err != nil {
		return Sample{}, ioErr(ctx, "CloseWrite", err)
	}
	var reply [8]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return Sample{}, ioErr(ctx, fmt.Sprintf("read the sink's count after sending %d bytes", sent), err)
	}
	elapsed := time.Since(start)
	g.tick(time.Now())
	if got := int64(binary.BigEndian.Uint64(reply[:])); got != sent {
		return Sample{}, fmt.Errorf("sink received %d bytes, %d were sent", got, sent)
	}
	return Sample{Bytes: sent, Elapsed: elapsed, MaxGap: g.max}, nil
}

// MeasureSource asks the source for an endless stream, reads it for d, and
// leaves (closing with unread data, so the server's next write fails).
func MeasureSource(ctx context.Context, dial DialFunc, d time.Duration) (Sample, error) {
	c, err := dial(ctx, SourcePort)
	if err != nil {
		return Sample{}, err
	}
	defer c.Close()
	defer watch(ctx, c)()
	buf := make([]byte, BufSize)
	var req [8]byte // a count of 0: until we leave
	start := time.Now()
	end := start.Add(d)
	c.SetDeadline(end)
	if _, err := c.Write(req[:]); err != nil {
		return Sample{}, ioErr(ctx, "write the request", err)
	}
	g := gapTracker{last: start}
	var got int64
	for {
		n, err := c.Read(buf)
		got += int64(n)
		now := time.Now()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil && !now.Before(end) {
				g.tick(now)
				return Sample{Bytes: got, Elapsed: now.Sub(start), MaxGap: g.max}, nil
			}
			return Sample{}, ioErr(ctx, fmt.Sprintf("read after %d bytes", got), err)
		}
		g.tick(now)
	}
}

// MeasureEcho writes for d while reading the echo concurrently, then
// half-closes and reads the echo to EOF: the elapsed time runs until the
// last byte is back.
func MeasureEcho(ctx context.Context, dial DialFunc, d time.Duration) (Sample, error) {
	c, err := dial(ctx, EchoPort)
	if err != nil {
		return Sample{}, err
	}
	defer c.Close()
	defer watch(ctx, c)()
	start := time.Now()
	end := start.Add(d)
	c.SetDeadline(end.Add(grace))
	type wres struct {
		sent int64
		err  error
	}
	wc := make(chan wres, 1)
	go func() {
		buf := Pattern(BufSize)
		var sent int64
		for time.Now().Before(end) {
			n, err := c.Write(buf)
			sent += int64(n)
			if err != nil {
				wc <- wres{sent, ioErr(ctx, fmt.Sprintf("write after %d bytes", sent), err)}
				return
			}
		}
		if err := c.CloseWrite(); err != nil {
			wc <- wres{sent, ioErr(ctx, "CloseWrite", err)}
			return
		}
		wc <- wres{sent, nil}
	}()
	buf := make([]byte, BufSize)
	g := gapTracker{last: start}
	var got int64
	var rerr error
	for {
		n, err := c.Read(buf)
		got += int64(n)
		g.tick(time.Now())
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			rerr = ioErr(ctx, fmt.Sprintf("read after %d echoed bytes", got), err)
			c.SetDeadline(time.Now()) // unblock the writer
			break
		}
	}
	elapsed := time.Since(start)
	w := <-wc
	if rerr != nil || w.err != nil {
		return Sample{}, errors.Join(rerr, w.err)
	}
	if got != w.sent {
		return Sample{}, fmt.Errorf("echoed %d bytes, %d were sent", got, w.sent)
	}
	return Sample{Bytes: got, Elapsed: elapsed, MaxGap: g.max}, nil
}

// RRSize is the request and response size of the round-trip tests.
const RRSize = 64

// MeasureRR runs conns connections in parallel for d, each doing sequential
// RRSize-byte request / RRSize-byte response round trips against the echo
// service, with TCP_NODELAY on the client.
func MeasureRR(ctx context.Context, dial DialFunc, d time.Duration, conns int) (Sample, error) {
	cs := make([]Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := dial(ctx, EchoPort)
		if err != nil {
			return Sample{}, fmt.Errorf("connection %d of %d: %w", len(cs)+1, conns, err)
		}
		cs = append(cs, c)
		if err := c.SetNoDelay(true); err != nil {
			return Sample{}, err
		}
	}
	var wg sync.WaitGroup
	lats := make([][]time.Duration, conns)
	errs := make([]error, conns)
	finish := make([]time.Time, conns)
	start := time.Now()
	end := start.Add(d)
	for i, c := range cs {
		c.SetDeadline(end.Add(grace))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer watch(ctx, c)()
			req := Pattern(RRSize)
			resp := make([]byte, RRSize)
			lat := make([]time.Duration, 0, 1<<16)
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				if _, err := c.Write(req); err != nil {
					errs[i] = ioErr(ctx, fmt.Sprintf("connection %d: write after %d round trips", i, len(lat)), err)
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					errs[i] = ioErr(ctx, fmt.Sprintf("connection %d: read after %d round trips", i, len(lat)), err)
					return
				}
				lat = append(lat, time.Since(t0))
			}
			lats[i] = lat
			finish[i] = time.Now()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Sample{}, err
	}
	var s Sample
	last := start
	for i := range cs {
		s.Lat = append(s.Lat, lats[i]...)
		if finish[i].After(last) {
			last = finish[i]
		}
	}
	s.Ops = int64(len(s.Lat))
	s.Bytes = s.Ops * RRSize
	s.Elapsed = last.Sub(start)
	return s, nil
}
