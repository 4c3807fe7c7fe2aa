package workload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// ShortResult is how one short connection went.
type ShortResult struct {
	Connect time.Duration // how long the connect took
	Took    time.Duration // the whole exchange, connect to EOF
	Refused bool          // the connect was refused (ECONNREFUSED): not an error
	Err     error         // any other failure
}

// shortLines is how many lines a short connection echoes.
const shortLines = 3

// shortLife bounds a short connection's exchange after its connect.
const shortLife = 10 * time.Second

// ShortConn opens one connection with dial, echoes three lineSize-byte
// lines (Line(id, k, lineSize)) and half-closes, expecting EOF after the
// echo. Every step is bounded: the connect by 10 s or ctx, whichever ends
// first (10 s is long enough for two SYN retransmissions of the client, at
// 1 s and 3 s), the rest by 10 s.
func ShortConn(ctx context.Context, dial DialFunc, id, lineSize int) ShortResult {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	start := time.Now()
	c, err := dial(ctx)
	r := ShortResult{Connect: time.Since(start)}
	if errors.Is(err, syscall.ECONNREFUSED) {
		r.Refused = true
		return r
	}
	if err != nil {
		r.Err = fmt.Errorf("connect (after %v): %w", r.Connect.Round(time.Millisecond), err)
		return r
	}
	defer c.Close()
	r.Err = shortExchange(c, id, lineSize)
	r.Took = time.Since(start)
	return r
}

// shortExchange is ShortConn's exchange on an open connection.
func shortExchange(c net.Conn, id, lineSize int) error {
	c.SetDeadline(time.Now().Add(shortLife))
	got := make([]byte, lineSize)
	for k := range shortLines {
		want := Line(id, k, lineSize)
		if _, err := c.Write(want); err != nil {
			return fmt.Errorf("write of line %d: %w", k, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("read of line %d: %w", k, err)
		}
		if string(got) != string(want) {
			return fmt.Errorf("line %d: got %q, want %q", k, got, want)
		}
	}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("a %T cannot half-close", c)
	}
	if err := cw.CloseWrite(); err != nil {
		return fmt.Errorf("CloseWrite: %w", err)
	}
	if n, err := c.Read(got); n != 0 || err != io.EOF {
		return fmt.Errorf("after the echo: read %d bytes, %v; want EOF", n, err)
	}
	return nil
}
