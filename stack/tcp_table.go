package stack

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zppratt/rfsis/internal/bytequeue"
	"github.com/zppratt/rfsis/link"
	"github.com/zppratt/rfsis/stack/tcp"
	"github.com/zppratt/rfsis/stack/wire"
)

// This file binds the sans-I/O TCP of stack/tcp to the stack: it owns the
// table of connections and listeners, demultiplexes arriving segments,
// serialises what connections emit into IPv4 datagrams, and drives each
// connection's timers from the wall clock.
//
// Locking: each endpoint has a mutex that serialises every call into its
// tcp.Conn; the table's mutex guards only the maps. The order is
// endpoint, then table (never the reverse while calling into a Conn), then
// the IP layer's locks below.

// TCPStats counts TCP events; see Stack.TCPStats.
type TCPStats struct {
	SegmentsIn, SegmentsOut uint64
	BadChecksum, Malformed  uint64
	ResetsSent              uint64 // for segments that matched no connection
	SYNBacklogDrops         uint64 // SYNs dropped: a listener's SYN backlog was full
	AcceptQueueDrops        uint64 // handshakes reset: the accept queue was full
	Diverged                uint64 // hot-standby writes that differed from the main's output
	ActiveOpens             uint64
	PassiveOpens            uint64
	CurrentConnections      uint64
	// SendErrors counts segments the connection emitted that never
	// reached the device (too big for the MTU, no route, the address
	// gone). TCP's retransmission copes with one; a steady count is a
	// bug, and invisible without it.
	SendErrors uint64
}

type tcpCounters struct {
	segmentsIn, segmentsOut, badChecksum, malformed, resetsSent,
	synBacklogDrops, acceptQueueDrops, activeOpens, passiveOpens, diverged, sendErrors atomic.Uint64
}

type tcpTable struct {
	s   *Stack
	cfg tcp.Config
	isn *tcp.ISNGenerator

	mu        sync.Mutex
	conns     map[tcp.FourTuple]*endpoint
	listeners map[netip.AddrPort]*Listener // an invalid Addr means any of ours
	closed    bool

	n    tcpCounters
	hook atomic.Pointer[hookBox]
}

func newTCPTable(s *Stack, cfg tcp.Config) *tcpTable {
	return &tcpTable{
		s:         s,
		cfg:       cfg,
		isn:       tcp.NewISNGenerator(),
		conns:     make(map[tcp.FourTuple]*endpoint),
		listeners: make(map[netip.AddrPort]*Listener),
	}
}

// handleTCP is the stack's transport hook: it runs on the read goroutine.
func (t *tcpTable) handleTCP(src, dst netip.Addr, b []byte, trusted bool) {
	t.n.segmentsIn.Add(1)
	if !trusted && wire.Checksum(b, wire.PseudoHeaderChecksum(src, dst, wire.ProtoTCP, uint16(len(b)))) != 0xffff {
		t.n.badChecksum.Add(1)
		return
	}
	var seg tcp.Segment
	if err := tcp.Parse(b, &seg); err != nil {
		t.n.malformed.Add(1)
		return
	}
	id := tcp.FourTuple{LocalAddr: dst, LocalPort: seg.DstPort, RemoteAddr: src, RemotePort: seg.SrcPort}
	t.mu.Lock()
	ep := t.conns[id]
	t.mu.Unlock()
	if ep != nil {
		ep.mu.Lock()
		// The clock is read under the lock: every call into a connection
		// then sees time move forward, and so do its timestamps.
		now := time.Now()
		ep.c.Handle(now, &seg)
		ep.afterLocked(now)
		notify, una := ep.ackedLocked()
		ep.mu.Unlock()
		if notify != nil {
			notify(una)
		}
		return
	}
	if seg.Flags&(tcp.FlagSYN|tcp.FlagACK|tcp.FlagRST) == tcp.FlagSYN && seg.Flags&tcp.FlagFIN == 0 {
		if l := t.listenerFor(dst, seg.DstPort); l != nil {
			t.passiveOpen(l, id, &seg, time.Now())
			return
		}
	}
	t.sendReset(id, &seg)
}

func (t *tcpTable) listenerFor(addr netip.Addr, port uint16) *Listener {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.listeners[netip.AddrPortFrom(addr, port)]; l != nil {
		return l
	}
	return t.listeners[netip.AddrPortFrom(netip.Addr{}, port)]
}

func (t *tcpTable) passiveOpen(l *Listener, id tcp.FourTuple, syn *tcp.Segment, now time.Time) {
	if !l.reserveHalfOpen() {
		t.n.synBacklogDrops.Add(1)
		return // the client retransmits its SYN; a flood costs us nothing
	}
	c := tcp.NewPassive(l.cfg, id, t.isn.ISN(id, now), syn, now)
	ep := newEndpoint(t, c)
	ep.listener = l
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		l.releaseHalfOpen()
		return
	}
	t.conns[id] = ep
	t.mu.Unlock()
	t.n.passiveOpens.Add(1)
	ep.mu.Lock()
	if hb := t.hook.Load(); hb != nil {
		// Replicated: the SYN-ACK waits for the backup (invariant 1).
		ep.replica = &Replica{ep: ep}
		c.SetGate(tcp.Gate{Enabled: true, AckLimit: c.ReceivedEnd(), SendLimit: c.WrittenEnd()})
		hb.h.Opened(ep.replica, c.Snapshot())
	}
	ep.afterLocked(now)
	ep.mu.Unlock()
}

// sendReset answers a segment that matched nothing (RFC 9293 3.10.7.1).
func (t *tcpTable) sendReset(id tcp.FourTuple, seg *tcp.Segment) {
	rst, ok := tcp.ResetFor(seg)
	if !ok {
		return
	}
	t.n.resetsSent.Add(1)
	t.send(id, &rst, 0)
}

// send serialises seg into a datagram from id's local to its remote end.
// mss is the connection's segment payload size: a longer payload goes out
// as one super-segment for the device to cut (offloads only).
func (t *tcpTable) send(id tcp.FourTuple, seg *tcp.Segment, mss int) {
	p := t.s.newPacket()
	hl := tcp.HeaderLen + seg.OptionsLen()
	n := hl + len(seg.Payload)
	ph := wire.PseudoHeaderChecksum(id.LocalAddr, id.RemoteAddr, wire.ProtoTCP, uint16(n))
	if t.s.offload == nil {
		seg.Marshal(p.payload(), ph, wire.Checksum)
	} else {
		// Leave the checksum to the kernel: it finishes it from the
		// pseudo-header sum, per segment when it cuts a super-segment.
		b := p.payload()
		seg.Marshal(b, 0, nil)
		b[16], b[17] = byte(ph>>8), byte(ph)
		p.off = link.Offload{NeedsCsum: true, CsumStart: headroom, CsumOffset: 16}
		if len(seg.Payload) > mss {
			p.off.GSOSize = uint16(mss)
			p.off.HdrLen = uint16(headroom + hl)
		}
	}
	if err := t.s.sendIPv4(p, id.LocalAddr, id.RemoteAddr, wire.ProtoTCP, n); err != nil {
		t.n.sendErrors.Add(1)
	} else {
		t.n.segmentsOut.Add(1)
	}
}

func (t *tcpTable) remove(ep *endpoint) {
	t.mu.Lock()
	if t.conns[ep.id] == ep {
		delete(t.conns, ep.id)
	}
	t.mu.Unlock()
}

// ephemeralPort picks a free local port for an active open from the
// range Linux uses, at random (RFC 6056).
func (t *tcpTable) ephemeralPort(local, remote netip.AddrPort) (uint16, error) {
	const lo, hi = 32768, 60999
	start := rand.IntN(hi - lo + 1)
	for i := range hi - lo + 1 {
		port := uint16(lo + (start+i)%(hi-lo+1))
		id := tcp.FourTuple{LocalAddr: local.Addr(), LocalPort: port, RemoteAddr: remote.Addr(), RemotePort: remote.Port()}
		if _, used := t.conns[id]; !used && t.listeners[netip.AddrPortFrom(netip.Addr{}, port)] == nil {
			return port, nil
		}
	}
	return 0, errors.New("no free local port")
}

func (t *tcpTable) dial(ctx context.Context, local netip.Addr, remote netip.AddrPort, cfg tcp.Config) (*Conn, error) {
	now := time.Now()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, ErrClosed
	}
	port, err := t.ephemeralPort(netip.AddrPortFrom(local, 0), remote)
	if err != nil {
		t.mu.Unlock()
		return nil, err
	}
	id := tcp.FourTuple{LocalAddr: local, LocalPort: port, RemoteAddr: remote.Addr(), RemotePort: remote.Port()}
	ep := newEndpoint(t, tcp.NewActive(cfg, id, t.isn.ISN(id, now), now))
	t.conns[id] = ep
	t.mu.Unlock()
	t.n.activeOpens.Add(1)
	ep.mu.Lock()
	ep.afterLocked(now)
	ep.mu.Unlock()
	select {
	case <-ep.established:
		return newConn(ep), nil
	case <-ep.done:
		return nil, connError(ep.err())
	case <-ctx.Done():
		ep.abort()
		return nil, ctx.Err()
	}
}

// close aborts every connection and listener: the stack is going away.
func (t *tcpTable) close() {
	t.mu.Lock()
	t.closed = true
	eps := make([]*endpoint, 0, len(t.conns))
	for _, ep := range t.conns {
		eps = append(eps, ep)
	}
	ls := make([]*Listener, 0, len(t.listeners))
	for _, l := range t.listeners {
		ls = append(ls, l)
	}
	t.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, ep := range eps {
		ep.abort()
	}
}

func (t *tcpTable) stats() TCPStats {
	t.mu.Lock()
	cur := uint64(len(t.conns))
	t.mu.Unlock()
	return TCPStats{
		SegmentsIn: t.n.segmentsIn.Load(), SegmentsOut: t.n.segmentsOut.Load(),
		BadChecksum: t.n.badChecksum.Load(), Malformed: t.n.malformed.Load(),
		ResetsSent: t.n.resetsSent.Load(), SYNBacklogDrops: t.n.synBacklogDrops.Load(),
		AcceptQueueDrops: t.n.acceptQueueDrops.Load(), ActiveOpens: t.n.activeOpens.Load(),
		PassiveOpens: t.n.passiveOpens.Load(), CurrentConnections: cur, Diverged: t.n.diverged.Load(),
		SendErrors: t.n.sendErrors.Load(),
	}
}

// endpoint is one connection in the table.
type endpoint struct {
	t  *tcpTable
	id tcp.FourTuple

	mu       sync.Mutex
	c        *tcp.Conn
	emitFn   func(*tcp.Segment) // ep.emit, bound once: no allocation per output
	timer    *time.Timer
	timerAt  time.Time
	listener *Listener // until accepted or gone
	gone     bool
	// lastData is when new in-order bytes (or the peer's FIN) last
	// arrived (Unix ns), read without the lock (Conn.LastDataReceived).
	lastData atomic.Int64
	// goneErr says why a standby connection left the table before the
	// main's copy ended (see Standby), nil otherwise.
	goneErr error
	replica *Replica // when replicated (main)
	// onAcked, if set (Conn.OnAcked), hears of every advance of SND.UNA
	// past lastUna.
	onAcked func(tcp.Seq)
	lastUna tcp.Seq
	// onRead, if set (Standby.OnRead), hears of every application read
	// that took bytes.
	onRead  func()
	held    bytequeue.Queue // a hot standby application's writes beyond the main's
	appNext tcp.Seq         // where the hot standby application's next byte goes
	// skipOut counts the bytes a connection that went live while its
	// application was behind the main's output will write again: they
	// are compared and dropped, not sent (skipWrittenLocked).
	skipOut int
	// A hot standby application's Close or CloseWrite, held until the
	// connection goes live (the main's close is the one the client gets).
	appClosed, appWriteClosed bool
	cmpBuf                    []byte
	// outQ is the main's output a hot standby has not applied yet because
	// it knows the first of it only by checksum (Standby.WrittenSum):
	// the application's held writes are checked against it as they come.
	// outQueued counts the output bytes it stands for.
	outQ      []outEntry
	outQueued int
	// onChecked, if set (Standby.OnChecked), hears of the standby's
	// application catching up with checksummed output.
	onChecked func(end tcp.Seq, err error)
	// The application's last checkpoint (main), or the state a resumed
	// standby's application starts from (checkpoint.go).
	ckpt      *checkpoint
	resumed   []byte
	isResumed bool

	// Wake-ups: buffered channels of one, signalled without blocking.
	readable, writable chan struct{}
	established        chan struct{} // closed once the handshake completes
	done               chan struct{} // closed when the connection ends
}

func newEndpoint(t *tcpTable, c *tcp.Conn) *endpoint {
	ep := &endpoint{
		t: t, id: c.ID(), c: c,
		readable:    make(chan struct{}, 1),
		writable:    make(chan struct{}, 1),
		established: make(chan struct{}),
		done:        make(chan struct{}),
	}
	ep.emitFn = ep.emit
	return ep
}

func (ep *endpoint) emit(seg *tcp.Segment) { ep.t.send(ep.id, seg, ep.c.MSS()) }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// afterLocked runs after every call into the Conn: it sends what the
// connection wants to send, wakes waiters, and re-arms the timer.
func (ep *endpoint) afterLocked(now time.Time) {
	if (ep.held.Len() > 0 || ep.appClosed || ep.appWriteClosed) && !ep.c.Standby() {
		ep.flushHeldLocked(now)
	}
	if ep.replica != nil {
		// Before any output and before the application can read: the
		// hook ships what is new, so nothing escapes unreplicated.
		if hb := ep.t.hook.Load(); hb != nil {
			hb.h.Changed(ep.replica)
		}
	}
	ep.c.Output(now, ep.emitFn)
	ev := ep.c.TakeEvents()
	if ev&tcp.EventEstablished != 0 {
		close(ep.established)
		if l := ep.listener; l != nil {
			ep.listener = nil
			l.releaseHalfOpen()
			if !l.enqueue(ep) {
				ep.t.n.acceptQueueDrops.Add(1)
				ep.goneErr = ErrAcceptQueueFull
				ep.c.Abort(now)
				ep.c.Output(now, ep.emitFn)
				ev |= ep.c.TakeEvents()
			}
		}
	}
	if ev&tcp.EventReadable != 0 {
		if ev&tcp.EventClosed == 0 {
			// New bytes or the peer's FIN, not the end of the connection
			// (which a silent peer's timeout reports as readable too).
			ep.lastData.Store(now.UnixNano())
		}
		signal(ep.readable)
	}
	if ev&tcp.EventWritable != 0 {
		signal(ep.writable)
	}
	if ev&tcp.EventClosed != 0 && !ep.gone {
		ep.gone = true
		ep.releaseListener()
		if ep.timer != nil {
			ep.timer.Stop()
		}
		ep.t.remove(ep)
		if ep.replica != nil {
			if hb := ep.t.hook.Load(); hb != nil {
				hb.h.Gone(ep.replica)
				ep.c.Output(now, ep.emitFn) // an abort's RST, if Gone let it go
			}
		}
		close(ep.done)
		signal(ep.readable)
		signal(ep.writable)
		return
	}
	if d := ep.c.NextDeadline(); !d.Equal(ep.timerAt) {
		ep.timerAt = d
		switch {
		case d.IsZero():
			if ep.timer != nil {
				ep.timer.Stop()
			}
		case ep.timer == nil:
			ep.timer = time.AfterFunc(d.Sub(now), ep.onTimer)
		default:
			ep.timer.Reset(d.Sub(now))
		}
	}
}

// ackedLocked returns the OnAcked callback and the new SND.UNA when the
// peer's acknowledgements moved since the last call (nil otherwise), to
// call once the lock is released.
func (ep *endpoint) ackedLocked() (func(tcp.Seq), tcp.Seq) {
	if ep.onAcked == nil {
		return nil, 0
	}
	una := ep.c.SndUna()
	if una == ep.lastUna {
		return nil, 0
	}
	ep.lastUna = una
	return ep.onAcked, una
}

// releaseListener gives back the SYN backlog place of a connection that
// ends before its handshake completes.
func (ep *endpoint) releaseListener() {
	if l := ep.listener; l != nil {
		ep.listener = nil
		l.releaseHalfOpen()
	}
}

func (ep *endpoint) onTimer() {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.gone {
		return
	}
	now := time.Now()
	if d := ep.c.NextDeadline(); !d.IsZero() && now.Before(d) {
		// Fired early for a deadline that moved: re-arm.
		ep.timerAt = d
		ep.timer.Reset(d.Sub(now))
		return
	}
	ep.timerAt = time.Time{}
	ep.c.Tick(now)
	ep.afterLocked(now)
}

func (ep *endpoint) abort() {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.gone {
		return
	}
	now := time.Now()
	ep.c.Abort(now)
	ep.outQ, ep.outQueued = nil, 0 // nothing left to check
	ep.afterLocked(now)
}

func (ep *endpoint) err() error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.c.Err()
}

// Listener accepts TCP connections: a net.Listener.
type Listener struct {
	t     *tcpTable
	key   netip.AddrPort
	cfg   tcp.Config
	queue chan *endpoint

	mu       sync.Mutex
	halfOpen int
	backlog  int
	closed   bool
	done     chan struct{}
}

// ListenConfig tunes a listener.
type ListenConfig struct {
	// Backlog bounds the connections that completed the handshake but
	// were not yet accepted; default 128 (Linux's somaxconn was 128 for
	// long). SYNBacklog bounds the half-open ones; default 256.
	Backlog, SYNBacklog int
	// TCP is the configuration of accepted connections, completed as
	// DialTCPConfig's is.
	TCP tcp.Config
}

// ListenTCP listens on addr; an invalid (zero) address in addr means
// every address of the stack, including ones added later.
func (s *Stack) ListenTCP(addr netip.AddrPort, lc ListenConfig) (*Listener, error) {
	t := s.tcp
	if lc.Backlog <= 0 {
		lc.Backlog = 128
	}
	if lc.SYNBacklog <= 0 {
		lc.SYNBacklog = 256
	}
	cfg, err := t.connConfig(lc.TCP)
	if err != nil {
		return nil, err
	}
	if addr.Port() == 0 {
		return nil, fmt.Errorf("listen: port 0: %w", errBadPort)
	}
	l := &Listener{t: t, key: addr, cfg: cfg, queue: make(chan *endpoint, lc.Backlog), backlog: lc.SYNBacklog, done: make(chan struct{})}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	if t.listeners[addr] != nil {
		return nil, fmt.Errorf("listen on %v: %w", addr, errAddrInUse)
	}
	t.listeners[addr] = l
	return l, nil
}

// connConfig completes a connection's TCP configuration: the zero Config
// means the stack's own (Config.TCP, with the MSS and GSOMaxSize the stack
// derived from its device); in any other, a zero MSS or GSOMaxSize takes
// the stack's value and the other zero fields take package tcp's
// defaults. The result is validated.
func (t *tcpTable) connConfig(c tcp.Config) (tcp.Config, error) {
	if c == (tcp.Config{}) {
		return t.cfg, nil // validated in New
	}
	if c.MSS == 0 {
		c.MSS = t.cfg.MSS
	}
	if c.GSOMaxSize == 0 {
		c.GSOMaxSize = t.cfg.GSOMaxSize
	}
	if err := c.Validate(); err != nil {
		return tcp.Config{}, err
	}
	return c, nil
}

var (
	errBadPort   = errors.New("invalid port")
	errAddrInUse = errors.New("address already in use")
)

func (l *Listener) reserveHalfOpen() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.halfOpen >= l.backlog {
		return false
	}
	l.halfOpen++
	return true
}

func (l *Listener) releaseHalfOpen() {
	l.mu.Lock()
	l.halfOpen--
	l.mu.Unlock()
}

func (l *Listener) enqueue(ep *endpoint) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	select {
	case l.queue <- ep:
		return true
	default:
		return false
	}
}

// DialTCP opens a connection from local (one of the stack's addresses) to
// remote, waiting for the handshake until ctx is done.
func (s *Stack) DialTCP(ctx context.Context, local netip.Addr, remote netip.AddrPort) (*Conn, error) {
	return s.DialTCPConfig(ctx, local, remote, tcp.Config{})
}

// DialTCPConfig is DialTCP with the connection's TCP configuration: the
// zero Config means the stack's (Config.TCP); in any other, a zero MSS or
// GSOMaxSize takes the stack's value and the other zero fields take
// package tcp's defaults. An invalid configuration is an error wrapping
// tcp.ErrInvalidConfig.
func (s *Stack) DialTCPConfig(ctx context.Context, local netip.Addr, remote netip.AddrPort, cfg tcp.Config) (*Conn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Source: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0)),
			Addr: net.TCPAddrFromAddrPort(remote), Err: err}
	}
	cfg, err := s.tcp.connConfig(cfg)
	if err != nil {
		return nil, opErr(err)
	}
	if !s.HasAddress(local) {
		return nil, opErr(ErrAddrNotOwned)
	}
	c, err := s.tcp.dial(ctx, local, remote, cfg)
	if err != nil {
		return nil, opErr(err)
	}
	return c, nil
}

// TCPStats returns a snapshot of the TCP counters.
func (s *Stack) TCPStats() TCPStats { return s.tcp.stats() }
