package stack

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/zppratt/rfsis/internal/bytequeue"
	"github.com/zppratt/rfsis/stack/tcp"
)

// This file is the stack's side of replication (package failover does
// the rest). On the main, a ReplicationHook sees every change to every
// connection while the connection is locked, before the application can
// read what arrived, so nothing the client sent can be consumed without
// having been shipped; the hook's Gate decides what may go on the wire.
// On the backup, standby connections are adopted from the main's opening
// snapshots, fed what the main ships, and handed to the application's
// Accept (hot standby); at takeover they go live.

// ReplicationHook mirrors connections. Its methods run with the
// connection's lock held, on whatever goroutine changed it: they must
// copy what they need and return, never block.
type ReplicationHook interface {
	// Opened: a listener's connection was created from a SYN. snap is its
	// opening record; its SYN-ACK waits until the gate has OpenOK.
	Opened(r *Replica, snap tcp.Snapshot)
	// Changed: bytes arrived or were written, the client acknowledged, or
	// a side closed. Ship what is new (Replica.AppendReceived, ...).
	Changed(r *Replica)
	// Gone: the connection ended and left the table.
	Gone(r *Replica)
}

// Replica is the handle a ReplicationHook gets for one connection.
// Within the hook's callbacks use the *Locked methods; from elsewhere,
// the others.
type Replica struct {
	ep *endpoint
	// Value is the hook's own state for the connection.
	Value atomic.Value
}

// ID identifies the connection.
func (r *Replica) ID() tcp.FourTuple { return r.ep.id }

// ReceivedEndLocked and the other Locked methods expose the connection's
// replication view (see tcp.Conn) from inside a hook callback.
func (r *Replica) ReceivedEndLocked() tcp.Seq { return r.ep.c.ReceivedEnd() }

// WrittenEndLocked is the end of the bytes the application wrote.
func (r *Replica) WrittenEndLocked() tcp.Seq { return r.ep.c.WrittenEnd() }

// AppendReceivedLocked appends received bytes from seq to dst.
func (r *Replica) AppendReceivedLocked(dst []byte, from tcp.Seq) ([]byte, error) {
	return r.ep.c.AppendReceived(dst, from)
}

// AppendWrittenLocked appends at most max written bytes from seq to dst.
func (r *Replica) AppendWrittenLocked(dst []byte, from tcp.Seq, max int) ([]byte, error) {
	return r.ep.c.AppendWrittenMax(dst, from, max)
}

// WrittenChecksumLocked is the CRC-32C of the n written bytes from
// sequence number from (see tcp.Conn.WrittenChecksum).
func (r *Replica) WrittenChecksumLocked(from tcp.Seq, n int) (uint32, error) {
	return r.ep.c.WrittenChecksum(from, n)
}

// GateLocked returns the connection's gate.
func (r *Replica) GateLocked() tcp.Gate { return r.ep.c.Gate() }

// ProgressLocked returns the client's progress.
func (r *Replica) ProgressLocked() tcp.Progress { return r.ep.c.Progress() }

// SetGateLocked installs the gate from inside a callback.
func (r *Replica) SetGateLocked(g tcp.Gate) { r.ep.c.SetGate(g) }

// UpdateGate changes the gate from outside the callbacks (when the backup
// acknowledges) and sends whatever it now lets out.
func (r *Replica) UpdateGate(update func(*tcp.Gate)) {
	ep := r.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.gone && !ep.c.AbortHeld() {
		return
	}
	g := ep.c.Gate()
	update(&g)
	ep.c.SetGate(g)
	if ep.gone {
		// An aborted connection has left the table; its RST waited for
		// the backup (AbortHeldLocked) and may go now.
		ep.c.Output(time.Now(), ep.emitFn)
		return
	}
	ep.afterLocked(time.Now())
}

// AbortHeldLocked reports whether the connection was aborted and its RST
// waits for the gate's CloseOK (the backup must know first). Gone sees
// it: the hook then ships the close and raises CloseOK through UpdateGate,
// which sends the RST although the connection has left the table.
func (r *Replica) AbortHeldLocked() bool { return r.ep.c.AbortHeld() }

// SetReplicationHook installs h for connections accepted from now on
// (nil stops replicating new ones).
func (s *Stack) SetReplicationHook(h ReplicationHook) {
	if h == nil {
		s.tcp.hook.Store(nil)
		return
	}
	s.tcp.hook.Store(&hookBox{h})
}

type hookBox struct{ h ReplicationHook }

// --- The backup side ---

// Standby is a standby connection on the backup.
type Standby struct {
	ep *endpoint
}

// ErrDiverged is returned by Standby.Written when the main's output
// differs from what the backup's own application wrote.
var ErrDiverged = errors.New("stack: hot-standby output diverged from the main's")

// ErrAcceptQueueFull is returned by AdoptStandby when the application has
// not accepted the listener's earlier connections: the standby would not
// be served.
var ErrAcceptQueueFull = errors.New("stack: standby: accept queue full")

// ErrSYNBacklogFull is returned by AdoptStandby for a connection still in
// its handshake when the listener's SYN backlog is full or the listener is
// closed: the standby would not be served.
var ErrSYNBacklogFull = errors.New("stack: standby: SYN backlog full")

// ErrStandbyGone is returned by a Standby's methods once the stack has
// dropped the connection on its own (the accept queue was full when it
// completed its handshake): the failover layer must stop replicating it.
var ErrStandbyGone = errors.New("stack: standby connection dropped")

// goneLocked reports why the standby can take no more of the main's
// changes, nil while it can. A standby that ended with the main's copy
// (its FINs, a reset) takes late messages silently.
func (ep *endpoint) goneLocked() error {
	if ep.goneErr != nil {
		return fmt.Errorf("%w: %w", ErrStandbyGone, ep.goneErr)
	}
	return nil
}

// AdoptStandby creates a standby connection from the main's opening
// snapshot and queues it on l, the backup's listener for the connection's
// local port, so the backup's application accepts it like any connection;
// its reads get the replicated inbound bytes and its writes are held and
// compared with the main's output (hot standby). A standby still in its
// handshake takes a place in l's SYN backlog until the main reports it
// complete; with the backlog full (or l closed) it is not adopted and the
// error wraps ErrSYNBacklogFull. With l nil (no application listens on
// that port here) the connection is a cold standby: it keeps the state for
// takeover, and nobody accepts it. The connection sends nothing until
// GoLive.
func (s *Stack) AdoptStandby(snap tcp.Snapshot, l *Listener) (*Standby, error) {
	return s.adoptStandby(snap, l, nil)
}

// adoptStandby is AdoptStandby, with init run on the new endpoint before
// anyone can see it.
func (s *Stack) adoptStandby(snap tcp.Snapshot, l *Listener, init func(*endpoint)) (*Standby, error) {
	c, err := tcp.RestoreStandby(snap, time.Now())
	if err != nil {
		return nil, err
	}
	t := s.tcp
	ep := newEndpoint(t, c)
	ep.appNext = c.WrittenEnd()
	if init != nil {
		init(ep)
	}
	handshaking := c.State() == tcp.StateSynReceived
	if l != nil && handshaking {
		if !l.reserveHalfOpen() {
			return nil, fmt.Errorf("stack: standby %v: %w", ep.id, ErrSYNBacklogFull)
		}
		ep.listener = l // until the handshake completes (afterLocked)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		ep.releaseListener()
		return nil, ErrClosed
	}
	if _, dup := t.conns[ep.id]; dup {
		t.mu.Unlock()
		ep.releaseListener()
		return nil, fmt.Errorf("stack: standby %v: %w", ep.id, errAddrInUse)
	}
	t.conns[ep.id] = ep
	t.mu.Unlock()
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if handshaking {
		return &Standby{ep: ep}, nil
	}
	close(ep.established)
	if l != nil && !l.enqueue(ep) {
		// Leave no copy behind in the table: at takeover it would
		// swallow the client's segments instead of answering them.
		now := time.Now()
		ep.c.Abort(now)
		ep.afterLocked(now)
		return nil, ErrAcceptQueueFull
	}
	return &Standby{ep: ep}, nil
}

// ID identifies the connection.
func (sb *Standby) ID() tcp.FourTuple { return sb.ep.id }

// Receive applies inbound bytes the main shipped, from seq; it returns how
// many fitted (acknowledge only those to the main).
func (sb *Standby) Receive(seq tcp.Seq, data []byte) (int, error) {
	ep := sb.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if err := ep.goneLocked(); err != nil {
		return 0, err
	}
	n, err := ep.c.StandbyReceive(seq, data)
	if ep.appClosed {
		ep.discardReceivedLocked() // nobody will read it
	}
	ep.afterLocked(time.Now())
	return n, err
}

// discardReceivedLocked drops received bytes a closed hot-standby
// application will never read, so they do not fill the buffer.
func (ep *endpoint) discardReceivedLocked() {
	var b [4096]byte
	for ep.c.Read(b[:]) > 0 {
	}
}

// ReceivedEnd is the end of the inbound bytes the standby holds.
func (sb *Standby) ReceivedEnd() tcp.Seq {
	sb.ep.mu.Lock()
	defer sb.ep.mu.Unlock()
	return sb.ep.c.ReceivedEnd()
}

// WrittenEnd is the end of the outbound bytes the standby holds.
func (sb *Standby) WrittenEnd() tcp.Seq {
	sb.ep.mu.Lock()
	defer sb.ep.mu.Unlock()
	return sb.ep.c.WrittenEnd()
}

// Written applies outbound bytes the main's application wrote, from seq,
// and compares them with what the backup's own application wrote for the
// same place: a difference is ErrDiverged (the bytes are applied anyway:
// the main's output is what the client gets). Behind output known only by
// checksum (WrittenSum) the bytes are queued, and all of them are taken.
func (sb *Standby) Written(seq tcp.Seq, data []byte) (int, error) {
	ep := sb.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if err := ep.goneLocked(); err != nil {
		return 0, err
	}
	if len(ep.outQ) > 0 {
		if err := ep.queueOutLocked(outEntry{seq: seq, n: len(data), data: data}); err != nil {
			return 0, err
		}
		return len(data), nil
	}
	n, err := ep.writtenLocked(seq, data)
	ep.afterLocked(time.Now())
	return n, err
}

// writtenLocked is Written once nothing is queued. The caller holds ep.mu.
func (ep *endpoint) writtenLocked(seq tcp.Seq, data []byte) (int, error) {
	n, err := ep.c.StandbyWritten(seq, data)
	if err != nil {
		return n, err
	}
	var diverged error
	// held holds the application's bytes [appNext-len(held), appNext),
	// all beyond what the main had shipped when they were written.
	hs := ep.appNext - tcp.Seq(ep.held.Len())
	if end := seq.Add(uint32(n)); ep.held.Len() > 0 && end.Greater(hs) && !hs.Less(seq) {
		k := min(ep.held.Len(), int(end.Sub(hs)))
		off := int(hs.Sub(seq))
		if !bytes.Equal(ep.held.Bytes()[:k], data[off:off+k]) {
			diverged = ErrDiverged
			ep.t.n.diverged.Add(1)
		}
		ep.held.Consume(k)
	}
	return n, diverged
}

// MaxSummed bounds the output one checksum may cover (WrittenSum), and
// maxOutQueued and maxOutEntries the output a standby queues while it
// cannot check it yet: the main ships only so far ahead of what the
// backup checked, so only a hostile or broken main reaches them.
const (
	MaxSummed     = 256 << 10
	maxOutQueued  = 4 << 20
	maxOutEntries = 4096
)

// outEntry is a run of the main's output a standby has not applied: n
// bytes from seq, known by their CRC-32C (data nil) or carried in data.
type outEntry struct {
	seq  tcp.Seq
	n    int
	sum  uint32
	data []byte
}

// WrittenSum tells the standby that the main's application wrote n bytes
// from seq whose CRC-32C is sum, instead of shipping them: the standby's
// own application writes them too (hot standby), and the backup's check
// that its bytes match is what lets the main send them (invariant 3 of
// DESIGN.md in its hot-standby form). It returns how far the standby's
// output is now checked, with ok set if that advanced; when the
// application has not written them yet they are checked as it does, and
// OnChecked hears of it. A mismatch wraps ErrDiverged: the standby cannot
// continue the connection (it never had the main's bytes).
func (sb *Standby) WrittenSum(seq tcp.Seq, n int, sum uint32) (checked tcp.Seq, ok bool, err error) {
	ep := sb.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if err := ep.goneLocked(); err != nil {
		return 0, false, err
	}
	if n <= 0 || n > MaxSummed {
		return 0, false, fmt.Errorf("%w: a checksum over %d bytes (1..%d)", tcp.ErrStandby, n, MaxSummed)
	}
	if err := ep.queueOutLocked(outEntry{seq: seq, n: n, sum: sum}); err != nil {
		return 0, false, err
	}
	checked, ok, err = ep.drainOutLocked()
	ep.afterLocked(time.Now())
	return checked, ok, err
}

// queueOutLocked appends e to the queue after checking that it follows
// what the standby holds and queues; it keeps a copy of e.data. The
// caller holds ep.mu.
func (ep *endpoint) queueOutLocked(e outEntry) error {
	end := ep.c.WrittenEnd()
	if k := len(ep.outQ); k > 0 {
		end = ep.outQ[k-1].seq.Add(uint32(ep.outQ[k-1].n))
	}
	if e.seq != end {
		return fmt.Errorf("%w: outbound bytes at %d, expected %d", tcp.ErrStandby, e.seq, end)
	}
	if ep.outQueued+e.n > maxOutQueued {
		return fmt.Errorf("%w: %d bytes of output queued behind checksums", tcp.ErrStandby, ep.outQueued+e.n)
	}
	ep.outQueued += e.n
	if k := len(ep.outQ); k > 0 && e.data != nil && ep.outQ[k-1].data != nil {
		// Bytes after bytes make one run: a handler that writes a line at
		// a time behind a checksum costs one entry, not one per write.
		last := &ep.outQ[k-1]
		last.data = append(last.data, e.data...)
		last.n += e.n
		return nil
	}
	if len(ep.outQ) >= maxOutEntries {
		return fmt.Errorf("%w: %d runs of output queued behind checksums", tcp.ErrStandby, len(ep.outQ)+1)
	}
	if e.data != nil {
		e.data = bytes.Clone(e.data)
	}
	ep.outQ = append(ep.outQ, e)
	return nil
}

// drainOutLocked applies the queued output in order as far as the
// application's held writes allow, checking those known by checksum. It
// returns the end of the last checksummed run checked, ok if any was. On
// an error the queue is emptied: the copy cannot go on, and the error is
// reported once. The caller holds ep.mu.
func (ep *endpoint) drainOutLocked() (checked tcp.Seq, ok bool, err error) {
	checked, ok, err = ep.drainOutQueueLocked()
	if err != nil {
		ep.outQ, ep.outQueued = nil, 0
	}
	return checked, ok, err
}

func (ep *endpoint) drainOutQueueLocked() (checked tcp.Seq, ok bool, err error) {
	for len(ep.outQ) > 0 {
		e := ep.outQ[0]
		if e.data != nil {
			// A difference is counted (writtenLocked); the main's bytes
			// are applied anyway, as Written does.
			k, err := ep.writtenLocked(e.seq, e.data)
			if err != nil && !errors.Is(err, ErrDiverged) {
				return checked, ok, err
			}
			if k < e.n {
				return checked, ok, fmt.Errorf("%w: %d queued output bytes, %d fit in the send buffer", tcp.ErrStandby, e.n, k)
			}
		} else {
			// Held bytes start where the standby's output ends (they are
			// all beyond the main's), so they are this run's if enough.
			if ep.held.Len() < e.n {
				if ep.appClosed || ep.appWriteClosed {
					ep.t.n.diverged.Add(1)
					return checked, ok, fmt.Errorf("%w: the application closed before writing output %d+%d the main wrote", ErrDiverged, e.seq, e.n)
				}
				break
			}
			b := ep.held.Bytes()[:e.n]
			if tcp.OutputChecksum(b) != e.sum {
				ep.t.n.diverged.Add(1)
				return checked, ok, fmt.Errorf("%w: output %d+%d differs from the main's checksum", ErrDiverged, e.seq, e.n)
			}
			if k, err := ep.c.StandbyWritten(e.seq, b); err != nil {
				return checked, ok, err
			} else if k < e.n {
				return checked, ok, fmt.Errorf("%w: %d checked output bytes, %d fit in the send buffer", tcp.ErrStandby, e.n, k)
			}
			ep.held.Consume(e.n)
			checked, ok = e.seq.Add(uint32(e.n)), true
		}
		ep.outQueued -= e.n
		ep.outQ[0] = outEntry{}
		ep.outQ = ep.outQ[1:]
	}
	if len(ep.outQ) == 0 {
		ep.outQ = nil
	}
	return checked, ok, nil
}

// checkHeldLocked runs after a hot standby application's write while
// output waits in the queue: it returns the OnChecked call to make once
// ep.mu is released, nil if there is nothing to tell. The caller holds
// ep.mu.
func (ep *endpoint) checkHeldLocked() func() {
	checked, ok, err := ep.drainOutLocked()
	if fn := ep.onChecked; fn != nil && (ok || err != nil) {
		return func() { fn(checked, err) }
	}
	return nil
}

// OnChecked has fn called when the standby's application writes output
// that the main had shipped by checksum (WrittenSum): with the end of the
// output now checked, or with the ErrDiverged of a mismatch. fn runs in
// the application's goroutine, after the connection's lock is released.
func (sb *Standby) OnChecked(fn func(end tcp.Seq, err error)) {
	sb.ep.mu.Lock()
	defer sb.ep.mu.Unlock()
	sb.ep.onChecked = fn
}

// Progress applies the client's progress as the main saw it.
func (sb *Standby) Progress(p tcp.Progress) error {
	ep := sb.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if err := ep.goneLocked(); err != nil {
		return err
	}
	room := ep.c.Writable()
	err := ep.c.StandbyProgress(p)
	if ep.c.Writable() > room {
		// The client's acknowledgements made room for the application's
		// held writes (holdStandbyWriteLocked).
		signal(ep.writable)
	}
	ep.afterLocked(time.Now())
	return err
}

// GoLive turns the standby live at takeover (see tcp.Conn.GoLive): the
// bytes its application wrote beyond what the main shipped follow, then
// the application's held close (flushHeldLocked).
func (sb *Standby) GoLive(sent tcp.Seq, dupAcks int) error {
	ep := sb.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	now := time.Now()
	if err := ep.c.GoLive(now, sent, dupAcks); err != nil {
		return err
	}
	// Output still queued was never checked, so the main never sent it:
	// the application's own writes (held) go out instead.
	ep.outQ, ep.outQueued = nil, 0
	if end := ep.c.WrittenEnd(); ep.held.Len() == 0 && end.Greater(ep.appNext) {
		// The application is behind the main's output (it was adopted
		// from a checkpoint, or is slow): the bytes it will write up to
		// there are the client's already, or queued.
		ep.skipOut = int(end.Sub(ep.appNext))
	}
	ep.afterLocked(now)
	return nil
}

// skipWrittenLocked takes the first of p that a connection gone live
// behind the main's output has written already (skipOut), compares it
// with what is still buffered of the main's, and returns how much it
// took. The caller holds ep.mu.
func (ep *endpoint) skipWrittenLocked(p []byte) int {
	k := min(len(p), ep.skipOut)
	from := ep.c.WrittenEnd() - tcp.Seq(ep.skipOut)
	ep.compareWrittenLocked(from, p[:k])
	ep.skipOut -= k
	return k
}

// compareWrittenLocked compares p, the application's bytes for the
// output from seq from, with the main's output the connection still
// buffers there (the client's acknowledgements trim the oldest), and
// counts a difference as a divergence. The caller holds ep.mu.
func (ep *endpoint) compareWrittenLocked(from tcp.Seq, p []byte) {
	skip := 0
	if oldest := ep.c.WrittenEnd() - tcp.Seq(ep.c.Unsent()); oldest.Greater(from) {
		skip = min(int(oldest.Sub(from)), len(p))
	}
	if skip == len(p) {
		return
	}
	var err error
	ep.cmpBuf, err = ep.c.AppendWrittenMax(ep.cmpBuf[:0], from.Add(uint32(skip)), len(p)-skip)
	if err == nil && !bytes.Equal(ep.cmpBuf, p[skip:]) {
		ep.t.n.diverged.Add(1)
	}
}

// holdStandbyWriteLocked takes a hot-standby application's write. The
// part the main has already shipped is compared with the main's bytes
// (the standby's connection holds them); the rest is held until the
// main's bytes arrive (Standby.Written) or the standby goes live. Held
// bytes take room in the send buffer, as a live connection's writes do:
// it takes what fits and returns how much, zero when the buffer is full
// (wait for writable; the client's acknowledgements make room, see
// Standby.Progress), so everything held fits at GoLive. The caller holds
// ep.mu.
func (ep *endpoint) holdStandbyWriteLocked(p []byte) (int, error) {
	if ep.gone {
		// Dropped, or the stack closed: the application's writes fail as
		// a live connection's would.
		if err := ep.c.Err(); err != nil {
			return 0, err
		}
		return 0, tcp.ErrNotOpen
	}
	mainEnd := ep.c.WrittenEnd()
	covered := 0
	if ep.held.Len() == 0 && mainEnd.Greater(ep.appNext) {
		covered = min(len(p), int(mainEnd.Sub(ep.appNext)))
		ep.compareWrittenLocked(ep.appNext, p[:covered])
	}
	n := covered + min(len(p)-covered, max(ep.c.Writable()-ep.held.Len(), 0))
	ep.held.Append(p[covered:n])
	ep.appNext = ep.appNext.Add(uint32(n))
	return n, nil
}

// flushHeldLocked runs in afterLocked once a hot standby has gone live
// with held bytes or a held close: it moves the bytes into the send buffer
// as far as they fit (the rest follows as the client's acknowledgements
// make room; the application's new writes wait behind them), and applies
// the held close once they are all in (a closed application's reading
// ends at once). Bytes the connection no longer takes (it ended, or the
// main's close came first) are dropped: the client never gets them.
func (ep *endpoint) flushHeldLocked(now time.Time) {
	if ep.appClosed {
		ep.c.CloseRead() // nobody will read
	}
	if ep.held.Len() > 0 {
		n, err := ep.c.Write(ep.held.Bytes())
		if err != nil {
			n = ep.held.Len()
		}
		ep.held.Consume(n)
		if ep.held.Len() > 0 {
			return
		}
	}
	ep.held = bytequeue.Queue{} // it may have held megabytes
	switch {
	case ep.appClosed:
		ep.c.CloseRead()
		ep.c.Close(now)
	case ep.appWriteClosed:
		ep.c.CloseWrite(now)
	}
	ep.appClosed, ep.appWriteClosed = false, false
}

// OnRead has fn called each time the standby's application reads bytes,
// so room was made in its receive buffer: a caller holding inbound bytes
// that did not fit (Receive) can deliver them at once rather than poll.
// fn runs in the application's goroutine, after the connection's lock is
// released; it may call Receive. OnRead(nil) stops the calls.
func (sb *Standby) OnRead(fn func()) {
	sb.ep.mu.Lock()
	defer sb.ep.mu.Unlock()
	sb.ep.onRead = fn
}

// Drop ends a standby connection silently (the main's copy ended): its
// application sees the connection reset; nothing goes on the wire.
func (sb *Standby) Drop() { sb.ep.abort() }
