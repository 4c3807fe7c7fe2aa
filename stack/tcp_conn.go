package stack

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/zppratt/rfsis/stack/tcp"
)

// Accept waits for the next connection: net.Listener.
func (l *Listener) Accept() (net.Conn, error) { return l.AcceptTCP() }

// AcceptTCP is Accept with the concrete type.
func (l *Listener) AcceptTCP() (*Conn, error) {
	for {
		select {
		case ep := <-l.queue:
			select {
			case <-ep.done:
				continue // reset before it was accepted
			default:
			}
			return newConn(ep), nil
		case <-l.done:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
		}
	}
}

// Close stops listening and resets connections not yet accepted. It is
// idempotent.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()
	l.t.mu.Lock()
	if l.t.listeners[l.key] == l {
		delete(l.t.listeners, l.key)
	}
	l.t.mu.Unlock()
	for {
		select {
		case ep := <-l.queue:
			ep.abort()
		default:
			return nil
		}
	}
}

// Addr returns the listening address.
func (l *Listener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.key) }

// Conn is a TCP connection of the stack: a net.Conn with the extras of
// *net.TCPConn that applications use (CloseWrite, CloseRead, SetNoDelay).
type Conn struct {
	ep            *endpoint
	laddr, raddr  *net.TCPAddr
	rdl, wdl      deadline
	rmu, wmu      sync.Mutex // one reader, one writer at a time
	closeOnce     sync.Once
	closed        chan struct{}
	readShut      bool // guarded by ep.mu
	writeShutOnce sync.Once
}

func newConn(ep *endpoint) *Conn {
	id := ep.id
	return &Conn{
		ep:     ep,
		laddr:  &net.TCPAddr{IP: id.LocalAddr.AsSlice(), Port: int(id.LocalPort)},
		raddr:  &net.TCPAddr{IP: id.RemoteAddr.AsSlice(), Port: int(id.RemotePort)},
		rdl:    newDeadline(),
		wdl:    newDeadline(),
		closed: make(chan struct{}),
	}
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.laddr, Addr: c.raddr, Err: err}
}

// connError maps a connection's end to the errno a kernel socket would
// report, keeping the tcp sentinel reachable through errors.Is too.
func connError(err error) error {
	var errno syscall.Errno
	switch {
	case err == nil:
		return io.EOF
	case errors.Is(err, tcp.ErrConnReset):
		errno = syscall.ECONNRESET
	case errors.Is(err, tcp.ErrRefused):
		errno = syscall.ECONNREFUSED
	case errors.Is(err, tcp.ErrTimeout):
		errno = syscall.ETIMEDOUT
	case errors.Is(err, tcp.ErrAborted):
		errno = syscall.ECONNABORTED
	default:
		return err
	}
	return &connErr{errno: errno, cause: err}
}

type connErr struct {
	errno syscall.Errno
	cause error
}

func (e *connErr) Error() string   { return e.errno.Error() }
func (e *connErr) Unwrap() []error { return []error{e.errno, e.cause} }

func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// Read reads received bytes: net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.isClosed() {
			return 0, c.opError("read", net.ErrClosed)
		}
		if c.rdl.expired() {
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		}
		if len(p) == 0 {
			return 0, nil
		}
		ep := c.ep
		ep.mu.Lock()
		n := ep.c.Read(p)
		if n > 0 {
			ep.keepReadLocked(p[:n])
			now := time.Now()
			ep.afterLocked(now)
			onRead := ep.onRead
			ep.mu.Unlock()
			if onRead != nil {
				onRead()
			}
			return n, nil
		}
		eof, gone, err, shut := ep.c.EOF(), ep.gone, ep.c.Err(), c.readShut
		ep.mu.Unlock()
		if eof || shut {
			return 0, io.EOF
		}
		if gone {
			if err == nil {
				return 0, io.EOF
			}
			return 0, c.opError("read", connError(err))
		}
		select {
		case <-ep.readable:
		case <-c.rdl.wait():
		case <-c.closed:
		}
	}
}

// Write sends p, blocking while the send buffer is full: net.Conn.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	for {
		if c.isClosed() {
			return total, c.opError("write", net.ErrClosed)
		}
		if c.wdl.expired() {
			return total, c.opError("write", os.ErrDeadlineExceeded)
		}
		ep := c.ep
		ep.mu.Lock()
		var n int
		var err error
		var notify func()
		switch {
		case ep.c.Standby():
			n, err = ep.holdStandbyWriteLocked(p[total:])
			if n > 0 && len(ep.outQ) > 0 {
				notify = ep.checkHeldLocked()
			}
		case ep.held.Len() > 0:
			// Gone live with bytes still held from the standby: these
			// wait behind them (flushHeldLocked).
		case ep.skipOut > 0:
			// Gone live while the application was behind the main's
			// output: what it writes again is not sent twice.
			n = ep.skipWrittenLocked(p[total:])
		default:
			n, err = ep.c.Write(p[total:])
			if n > 0 {
				ep.afterLocked(time.Now())
			}
		}
		ep.mu.Unlock()
		if notify != nil {
			notify()
		}
		total += n
		if err != nil {
			if errors.Is(err, tcp.ErrWriteClosed) || errors.Is(err, tcp.ErrNotOpen) {
				err = syscall.EPIPE
			} else {
				err = connError(err)
			}
			return total, c.opError("write", err)
		}
		if total == len(p) {
			return total, nil
		}
		if n > 0 {
			continue
		}
		select {
		case <-ep.writable:
		case <-c.wdl.wait():
		case <-c.closed:
		}
	}
}

// Close closes the connection: queued data is still delivered, then a
// FIN; unread received data makes it a reset instead (as Linux does). It
// is idempotent; later calls to the Conn return net.ErrClosed.
func (c *Conn) Close() error {
	first := false
	var notify func()
	c.closeOnce.Do(func() {
		first = true
		close(c.closed)
		ep := c.ep
		ep.mu.Lock()
		defer ep.mu.Unlock()
		if ep.gone {
			return
		}
		now := time.Now()
		if ep.c.Standby() || ep.held.Len() > 0 {
			// A hot standby's application closed: the main's close is the
			// one the client gets (it arrives as progress); this one is
			// held until the connection goes live, and then until its
			// held bytes are all in the send buffer (flushHeldLocked).
			ep.appClosed = true
			ep.discardReceivedLocked()
			if len(ep.outQ) > 0 {
				notify = ep.checkHeldLocked() // it will never write them
			}
			ep.afterLocked(now)
			return
		}
		ep.c.Close(now)
		ep.afterLocked(now)
	})
	if notify != nil {
		notify()
	}
	if !first {
		return c.opError("close", net.ErrClosed)
	}
	return nil
}

// CloseWrite sends a FIN after the queued data; reading goes on.
func (c *Conn) CloseWrite() error {
	if c.isClosed() {
		return c.opError("close", net.ErrClosed)
	}
	var notify func()
	c.writeShutOnce.Do(func() {
		ep := c.ep
		ep.mu.Lock()
		defer ep.mu.Unlock()
		if ep.gone {
			return
		}
		if ep.c.Standby() || ep.held.Len() > 0 {
			// Held, as Close is, and after a standby went live until its
			// held bytes are all in the send buffer (flushHeldLocked).
			ep.appWriteClosed = true
			if len(ep.outQ) > 0 {
				notify = ep.checkHeldLocked() // it will never write them
				ep.afterLocked(time.Now())
			}
			return
		}
		now := time.Now()
		ep.c.CloseWrite(now)
		ep.afterLocked(now)
	})
	if notify != nil {
		notify()
	}
	return nil
}

// CloseRead discards received and future data; reads return io.EOF.
func (c *Conn) CloseRead() error {
	if c.isClosed() {
		return c.opError("close", net.ErrClosed)
	}
	ep := c.ep
	ep.mu.Lock()
	c.readShut = true
	ep.c.CloseRead()
	ep.afterLocked(time.Now())
	ep.mu.Unlock()
	signal(ep.readable)
	return nil
}

// LocalAddr returns the local address: net.Conn.
func (c *Conn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr returns the peer's address: net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline sets both deadlines: net.Conn.
func (c *Conn) SetDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opError("set", net.ErrClosed)
	}
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

// SetReadDeadline sets the read deadline: net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opError("set", net.ErrClosed)
	}
	c.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the write deadline: net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opError("set", net.ErrClosed)
	}
	c.wdl.set(t)
	return nil
}

// deadline is a settable point in time with a channel closed when it
// passes, so blocked calls can select on it.
type deadline struct {
	mu    *sync.Mutex
	timer **time.Timer
	ch    *chan struct{}
}

func newDeadline() deadline {
	ch := make(chan struct{})
	var t *time.Timer
	return deadline{mu: new(sync.Mutex), timer: &t, ch: &ch}
}

func (d deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if *d.timer != nil && !(*d.timer).Stop() {
		// The old timer fired (or is firing): start from a fresh channel.
		*d.ch = make(chan struct{})
	}
	*d.timer = nil
	select {
	case <-*d.ch:
		*d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(*d.ch)
		return
	}
	ch := *d.ch
	*d.timer = time.AfterFunc(dur, func() { close(ch) })
}

func (d deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return *d.ch
}

func (d deadline) expired() bool {
	select {
	case <-d.wait():
		return true
	default:
		return false
	}
}

// LastDataReceived is when new bytes from the peer last arrived, whether
// or not they have been read yet (zero if none has). A reader that falls
// behind, say on a busy machine, can tell a silent peer from its own
// backlog: the failover layer's liveness check uses it.
func (c *Conn) LastDataReceived() time.Time {
	if ns := c.ep.lastData.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// OnAcked has fn called with the connection's new SND.UNA (the peer has
// acknowledged every byte before it) each time an arriving segment moves
// it, and returns the present SND.UNA, where fn's count starts. fn runs
// in the stack's input goroutine, in order, after the connection's lock
// is released; it must not block (it holds up all input). It lets a
// sender act on the peer's TCP acknowledgement without a goroutine hop:
// the failover main opens its client connections' gates on the sync
// connection's acknowledgements. OnAcked(nil) stops the calls.
func (c *Conn) OnAcked(fn func(una tcp.Seq)) tcp.Seq {
	ep := c.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.onAcked = fn
	ep.lastUna = ep.c.SndUna()
	return ep.lastUna
}

// ReadPos returns the end of what the application has read and the end of
// what has arrived in order (so read == arrived when nothing waits to be
// read). Sequence numbers, not counts: compare them with tcp.Seq's
// methods.
func (c *Conn) ReadPos() (read, arrived tcp.Seq) {
	ep := c.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	arrived = ep.c.ReceivedEnd()
	return arrived - tcp.Seq(ep.c.Readable()), arrived
}

// Info returns a snapshot of the connection's TCP state (tcp.Info).
func (c *Conn) Info() tcp.Info {
	ep := c.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.c.Info()
}

// SetNoDelay turns Nagle's algorithm off (true) or on.
func (c *Conn) SetNoDelay(noDelay bool) error {
	// The core takes its config at creation; Nagle is the one knob
	// applications flip later, so the Conn exposes it directly.
	ep := c.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.c.SetNoDelay(noDelay)
	if noDelay && !ep.gone {
		// As Linux's TCP_NODELAY does (tcp_push_pending_frames): a small
		// segment Nagle holds goes out now, not at the next ACK or RTO.
		ep.afterLocked(time.Now())
	}
	return nil
}
