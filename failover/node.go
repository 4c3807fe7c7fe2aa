package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zppratt/rfsis/config"
	"github.com/zppratt/rfsis/stack"
	"github.com/zppratt/rfsis/stack/tcp"
)

// This file drives everything else: it owns the sync connection between
// the two nodes, feeds the role machine, ships connections from the main
// (through the stack's ReplicationHook) and applies them on the backup
// (as stack.Standby connections), and carries out the role machine's
// decisions: claim the service address, hold it, or stand down.

// ErrStoodDown is returned by Node.Run when this node learned that the
// other node serves in a higher epoch: the process must exit (and be
// restarted, when it comes back as a backup).
var ErrStoodDown = errors.New("failover: stood down: the other node serves")

// PlaceholderKey is the sync_key of the shipped example configurations:
// a node using it warns at start.
const PlaceholderKey = "change-this-shared-secret"

// Node is one node of a failover pair.
type Node struct {
	cfg  config.Config
	log  *slog.Logger
	st   *stack.Stack
	svc  netip.Addr // the service address
	own  netip.Addr // this node's own stack address
	peer netip.Addr // the other node's own address
	key  Key

	mu        sync.Mutex
	rm        *RoleMachine
	kick      chan struct{} // wakes the driver: the role machine has news
	sess      *session      // the live sync session, or nil
	listeners map[uint16]*stack.Listener
	mains     map[tcp.FourTuple]*mainConn
	standbys  map[tcp.FourTuple]*backupConn
	waiting   map[*backupConn]struct{} // standbys with inbound bytes held (retryLoop)
	stoodDown atomic.Bool
	// ignoredRepl counts replication messages not applied: from a peer
	// that is not the main, or for a copy this backup dropped.
	ignoredRepl atomic.Uint64
	// testBeforeBatch, set by tests only (export_test.go), runs in the
	// session reader after each read, before what it read is handled.
	testBeforeBatch atomic.Pointer[func()]

	stats Stats
	// bg counts the goroutines Run waits for besides its own (rejoinAll).
	bg sync.WaitGroup
}

// Stats counts what the failover layer did and saw.
type Stats struct {
	Takeovers, StandDowns                    atomic.Uint64
	FramesIn, FramesOut, BadFrames, Sessions atomic.Uint64
	ConnsReplicated, StandbysAdopted         atomic.Uint64
	// ConnsRejoined counts connections replicated from an application
	// checkpoint when a backup joined after they opened (also counted in
	// ConnsReplicated).
	ConnsRejoined atomic.Uint64
	// ConnsDropped counts connections one node stopped replicating (see
	// CloseDropped); they went on unprotected.
	ConnsDropped atomic.Uint64
	// OutputSummed counts the output bytes the main shipped as checksums
	// (OUTSUM) rather than as bytes.
	OutputSummed atomic.Uint64
}

// NewNode prepares a node on a running stack. The stack must own the
// node's own address (backup_addr or main_addr). On the main, NewNode
// adds the service address, held until the role machine says it may
// serve.
func NewNode(cfg config.Config, st *stack.Stack, log *slog.Logger, now time.Time) (*Node, error) {
	if err := cfg.RequireSyncKey(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:       cfg,
		log:       log,
		st:        st,
		svc:       cfg.IPv4Addr,
		own:       cfg.OwnAddr(),
		peer:      cfg.PeerAddr(),
		key:       DeriveKey(cfg.SyncKey),
		rm:        NewRoleMachine(NewRoleConfig(cfg), now),
		kick:      make(chan struct{}, 1),
		listeners: make(map[uint16]*stack.Listener),
		mains:     make(map[tcp.FourTuple]*mainConn),
		standbys:  make(map[tcp.FourTuple]*backupConn),
		waiting:   make(map[*backupConn]struct{}),
	}
	if cfg.SyncKey == PlaceholderKey {
		log.Warn("sync_key is the placeholder shipped in conf/: anyone can forge sync messages; set your own secret on both nodes")
	}
	if cfg.Insecure && cfg.SyncKey == "" {
		log.Warn("sync channel is not authenticated: insecure is set and sync_key is empty")
	}
	if !cfg.Backup {
		if !st.HasAddress(n.svc) {
			if err := st.AddAddress(n.svc); err != nil {
				return nil, fmt.Errorf("failover: service address: %w", err)
			}
		}
		n.holdService()
	}
	if n.own == n.svc {
		log.Warn("main_addr is not set: the main's sync channel uses the service address, so a frozen main that wakes up cannot reach its peer before it must decide; set main_addr")
	}
	return n, nil
}

// Stats returns the node's counters.
func (n *Node) Stats() *Stats { return &n.stats }

// Role returns the node's current role and epoch.
func (n *Node) Role() (Role, uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rm.Role(), n.rm.Epoch()
}

// Serves registers the application's listener on the service address:
// on the backup, standby connections for its port are queued on it.
func (n *Node) Serves(l *stack.Listener) {
	ap, err := netip.ParseAddrPort(l.Addr().String())
	if err != nil {
		return
	}
	n.mu.Lock()
	n.listeners[ap.Port()] = l
	n.mu.Unlock()
}

// PeerUp reports whether a sync session with the peer is live.
func (n *Node) PeerUp() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sess != nil
}

// ReplicationLag is how long the oldest update shipped to the backup has
// waited for its acknowledgement (0 when none waits).
func (n *Node) ReplicationLag() time.Duration {
	n.mu.Lock()
	s := n.sess
	n.mu.Unlock()
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.effects) == 0 {
		return 0
	}
	return time.Since(s.effects[0].at)
}

// ProtectedConns counts the connections a live backup holds.
func (n *Node) ProtectedConns() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rm.Role() != RoleMain {
		return 0
	}
	return len(n.mains)
}

func (n *Node) wake() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// renewLease is the stack's lease callback for the service address: the
// role machine sees the time now, before anything leaves.
func (n *Node) renewLease(now time.Time) (time.Time, bool) {
	n.tick(now)
	n.mu.Lock()
	lease := n.rm.OutputLease()
	n.mu.Unlock()
	n.wake() // whatever the tick decided, the driver carries out
	return lease, !lease.IsZero() && now.Before(lease)
}

// tick tells the role machine the time, after what the sync connection
// says of the peer.
func (n *Node) tick(now time.Time) {
	// Whether the reader has caught up is read outside n.mu: nothing
	// calls into a connection while holding it (lock order,
	// replicate.go). It may be stale by the time n.mu is held again; a
	// reader that catches up meanwhile only defers a takeover one tick.
	n.mu.Lock()
	s := n.sess
	n.mu.Unlock()
	behind := s != nil && !s.caughtUp()
	n.mu.Lock()
	defer n.mu.Unlock()
	if s != nil && s == n.sess {
		// Bytes the reader has not got to yet prove the peer alive, and
		// so do its acknowledgements of ours: a backup busy applying a
		// bulk transfer may be late with its heartbeats, not with them.
		if at := s.c.LastDataReceived(); !at.IsZero() {
			n.rm.PeerActivity(now, at)
		}
		if ns := s.ackedAt.Load(); ns != 0 {
			n.rm.PeerActivity(now, time.Unix(0, ns))
		}
		if behind {
			// Bytes it has not applied may be replication the main
			// counts as held: no takeover before they are applied.
			n.rm.PeerUnapplied(now)
		}
	}
	n.rm.Tick(now)
}

// Run drives the node until ctx ends or it stands down.
func (n *Node) Run(ctx context.Context) error {
	n.st.SetLease(n.svc, n.renewLease)
	defer n.st.SetLease(n.svc, nil)
	n.applyReady(time.Now()) // the initial hold
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		wg.Wait()
		n.bg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.connectLoop(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.retryLoop(ctx)
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		n.tick(now)
		if err := n.applyReady(now); err != nil {
			return err
		}
		n.mu.Lock()
		d := n.rm.NextDeadline()
		n.mu.Unlock()
		wait := time.Hour
		if !d.IsZero() {
			wait = max(time.Until(d), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-n.kick:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
	}
}

// applyReady carries out what the role machine decided.
func (n *Node) applyReady(now time.Time) error {
	n.mu.Lock()
	if !n.rm.HasReady() && n.rm.Role() != RoleJoining {
		hold := n.rm.HoldOutput()
		n.mu.Unlock()
		n.setHold(hold)
		return nil
	}
	rd := n.rm.Ready()
	n.rm.Advance()
	sess := n.sess
	n.mu.Unlock()

	if rd.ConfigError != nil {
		n.log.Error("failover misconfiguration", "err", rd.ConfigError)
	}
	if rd.StandDown {
		n.stats.StandDowns.Add(1)
		n.stoodDown.Store(true)
		if sess != nil {
			sess.c.Close() // nothing queued may leave now
		}
		n.st.Hold(n.svc, 0)
		n.st.RemoveAddress(n.svc)
		n.log.Error("standing down: the other node serves in a higher epoch; exiting", "epoch", rd.Epoch)
		return ErrStoodDown
	}
	if rd.TakeOver {
		n.takeOver(now, rd.Epoch, rd.Silence)
	}
	if rd.Unprotected {
		n.unprotect(rd.Silence)
	}
	if rd.Protected {
		n.protect()
	}
	n.setHold(rd.HoldOutput)
	if sess != nil {
		if rd.Ping != 0 {
			sess.send(Message{Type: MsgHeartbeat, Sent: now.UnixNano(), Ping: rd.Ping, Role: uint8(rd.Role), StartAsBackup: n.cfg.Backup}, effect{})
		}
		if rd.Pong != 0 {
			sess.send(Message{Type: MsgHeartbeat, Sent: now.UnixNano(), Pong: rd.Pong, Role: uint8(rd.Role), StartAsBackup: n.cfg.Backup}, effect{})
		}
	}
	return nil
}

// holdService silences the service address. When it is also the node's
// own address (no main_addr), the sync port stays open: the node must
// still hear its peer to learn whether it may serve.
func (n *Node) holdService() {
	exempt := uint16(0)
	if n.own == n.svc {
		exempt = n.cfg.SyncPort
	}
	n.st.Hold(n.svc, exempt)
}

// setHold holds or releases the service address, when this node has it.
func (n *Node) setHold(hold bool) {
	if !n.st.HasAddress(n.svc) {
		return
	}
	was := n.st.Held(n.svc)
	switch {
	case hold && !was:
		n.holdService()
		n.log.Info("holding the service address", "addr", n.svc)
	case !hold && was:
		n.st.Unhold()
		n.log.Info("serving the service address", "addr", n.svc)
		if err := n.st.SendGratuitousARP(n.svc, 3, 100*time.Millisecond); err != nil {
			n.log.Warn("gratuitous ARP", "err", err)
		}
	}
}

// takeOver is the backup becoming the server (doc.go, "Takeover").
func (n *Node) takeOver(now time.Time, epoch uint64, silence time.Duration) {
	n.stats.Takeovers.Add(1)
	start := time.Now()
	if err := n.st.AddAddress(n.svc); err != nil && !n.st.HasAddress(n.svc) {
		n.log.Error("takeover: claim the service address", "err", err)
	}
	n.st.Unhold()
	if err := n.st.SendGratuitousARP(n.svc, 3, 50*time.Millisecond); err != nil {
		n.log.Warn("takeover: gratuitous ARP", "err", err)
	}
	n.mu.Lock()
	sbs := n.takeStandbysLocked()
	n.mu.Unlock()
	live := 0
	for _, b := range sbs {
		b.mu.Lock()
		// Anything held back by a full buffer goes in now, and the last
		// progress again: a FIN it places after output checked since
		// (checked) must not be missed.
		b.progNew = true
		n.deliverLocked(b)
		b.mu.Unlock()
		if err := b.sb.GoLive(b.sb.WrittenEnd(), 5); err != nil {
			n.log.Warn("takeover: connection could not go live", "conn", b.sb.ID(), "err", err)
			continue
		}
		live++
	}
	n.log.Warn("took over the service", "addr", n.svc, "epoch", epoch, "connections", live, "took", time.Since(start), "main_silent", silence)
}

// unprotect: the backup is gone; the main serves alone, gates open.
// silence is how long the backup had been silent.
func (n *Node) unprotect(silence time.Duration) {
	n.st.SetReplicationHook(nil)
	n.mu.Lock()
	mains := n.mains
	n.mains = make(map[tcp.FourTuple]*mainConn)
	sess := n.sess
	n.mu.Unlock()
	attrs := []any{"connections", len(mains), "backup_silent", silence}
	if sess != nil {
		// What the sync connection looked like says whether the backup
		// was gone or only slow (its window shut, say).
		now := time.Now()
		attrs = append(attrs, "sync", sess.c.Info().String())
		if at := sess.c.LastDataReceived(); !at.IsZero() {
			attrs = append(attrs, "sync_last_data", now.Sub(at))
		}
		if ns := sess.ackedAt.Load(); ns != 0 {
			attrs = append(attrs, "sync_last_ack", now.Sub(time.Unix(0, ns)))
		}
		// A backup that comes back must start a new session, in which it
		// drops its copies of connections that now run unprotected.
		sess.c.Close()
	}
	for _, m := range mains {
		m.detach()
	}
	n.log.Warn("backup lost: serving unprotected", attrs...)
}

// protect: a backup joined; replicate to it from now on.
func (n *Node) protect() {
	n.st.SetReplicationHook((*mainHook)(n))
	n.log.Info("backup joined: new connections are protected, and open ones from their checkpoints")
	// Connections already open rejoin from their applications'
	// checkpoints (stack.Conn.Checkpoint); the others stay unprotected
	// until they end.
	n.rejoinAll()
}

// rejoinAll offers the open connections to the backup (stack.RejoinAll)
// on a goroutine of its own: snapshotting and encoding them must not hold
// up the role loop or the session reader, and so the heartbeats.
func (n *Node) rejoinAll() {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		if k := n.st.RejoinAll(); k > 0 {
			n.log.Info("open connections rejoined from their checkpoints", "connections", k)
		}
	}()
}

// --- The sync connection ---

// syncTCP is the sync connection's TCP configuration. Heartbeats share it
// with replication, so a lost frame must be resent in a few milliseconds,
// not after Linux-like 200 ms minimum timeouts: the detection window can
// be 30 ms. Both ends are ours and sit on one LAN, so LAN timers are safe.
var syncTCP = tcp.Config{
	NoDelay:    true,
	QuickACK:   true, // the main's gates open on our acknowledgements
	MinRTO:     5 * time.Millisecond,
	InitialRTO: 50 * time.Millisecond,
	DelayedACK: time.Millisecond,
}

// connectLoop keeps one sync session up: the node configured as backup
// dials, the other listens.
func (n *Node) connectLoop(ctx context.Context) {
	if n.cfg.Backup {
		for ctx.Err() == nil {
			dctx, cancel := context.WithTimeout(ctx, max(n.cfg.HeartbeatTimer*time.Duration(n.cfg.HeartbeatMisses), time.Second))
			c, err := n.st.DialTCPConfig(dctx, n.own, netip.AddrPortFrom(n.peer, n.cfg.SyncPort), syncTCP)
			cancel()
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(min(n.cfg.HeartbeatTimer, 200*time.Millisecond)):
				}
				continue
			}
			c.SetNoDelay(true)
			n.runSession(ctx, c)
		}
		return
	}
	lcfg := syncTCP
	lcfg.MSS = 0 // the stack's
	l, err := n.st.ListenTCP(netip.AddrPortFrom(n.own, n.cfg.SyncPort), stack.ListenConfig{Backlog: 4, TCP: lcfg})
	if err != nil {
		n.log.Error("sync listener", "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			return
		}
		if c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap() != n.peer {
			c.Close() // only the configured peer may sync with us
			continue
		}
		c.SetNoDelay(true)
		n.runSession(ctx, c)
	}
}

// session is one sync connection.
//
// Messages are encoded (and MAC'd) when they are sent, by the goroutine
// that sends them, into out; the writer goroutine only writes out to the
// connection. A hook callback so ships a change straight from its scratch
// copy, and the order of the frames is the order of the sends.
type session struct {
	n        *Node
	c        *stack.Conn
	codec    *Session
	mu       sync.Mutex
	cond     *sync.Cond
	gateCond *sync.Cond // gateLoop waits on it
	done     bool
	out      []byte // encoded frames, waiting for the writer
	spare    []byte // the writer's previous buffer, reused
	// frames counts the frames in out.
	frames int
	// queued counts the bytes of the stream encoded so far (the HELLO
	// included); acked, those the peer's TCP has acknowledged, and
	// lastUna is the SND.UNA that count stands at.
	queued, acked uint64
	lastUna       tcp.Seq
	ackedAt       atomic.Int64 // when the peer last acknowledged new bytes (Unix ns)
	// Effects of frames we sent, applied when the peer acknowledges them.
	effects []effect
	// onAcked's and the gate goroutine's scratch spaces for applyEffects.
	inline, bg gateScratch
	// offloaded are acknowledged effects too many to apply in the input
	// goroutine, waiting for the gate goroutine (gateLoop).
	offloaded []effect
	// handled is the end of the stream the reader has read and handled
	// (a tcp.Seq, see caughtUp).
	handled atomic.Uint32
	// What the peer said of itself in this session's heartbeats.
	peerRole   Role
	peerBackup bool
}

// effect is what a replication frame's acknowledgement lets its
// connection do: its gate opens that far.
type effect struct {
	end  uint64    // the frame's end in the stream (session.queued)
	at   time.Time // when it was sent: the replication lag's start
	gate gateEffect
}

// gateEffect raises one connection's gate. The gate's fields only grow,
// so several effects on a connection merge into one update (one lock of
// the connection per acknowledgement, not per frame).
type gateEffect struct {
	r                   *stack.Replica
	openOK, closeOK     bool
	hasAck, hasSend     bool
	ackLimit, sendLimit tcp.Seq
	// hasNeed: the send limit waits for the backup's check to reach need
	// (OUT bytes behind output shipped by checksum).
	hasNeed bool
	need    tcp.Seq
	// sumHeld: the backup holds an OUTSUM; output waiting for its check
	// starts the stall clock (sumStall) if it is not running.
	sumHeld bool
}

func (g *gateEffect) merge(o gateEffect) {
	g.openOK = g.openOK || o.openOK
	g.closeOK = g.closeOK || o.closeOK
	g.sumHeld = g.sumHeld || o.sumHeld
	if o.hasAck && (!g.hasAck || g.ackLimit.Less(o.ackLimit)) {
		g.hasAck, g.ackLimit = true, o.ackLimit
	}
	// A later OUT needs at least the check an earlier one needs.
	if o.hasSend && (!g.hasSend || g.sendLimit.Less(o.sendLimit)) {
		g.hasSend, g.sendLimit, g.hasNeed, g.need = true, o.sendLimit, o.hasNeed, o.need
	}
}

func (g gateEffect) apply() {
	g.r.UpdateGate(func(gt *tcp.Gate) {
		gt.OpenOK = gt.OpenOK || g.openOK
		gt.CloseOK = gt.CloseOK || g.closeOK
		if g.hasAck && gt.AckLimit.Less(g.ackLimit) {
			gt.AckLimit = g.ackLimit
		}
		mc, _ := g.r.Value.Load().(*mainConn)
		if g.sumHeld && mc != nil && mc.checked != mc.sumEnd && mc.uncheckedSince.Load() == 0 {
			mc.uncheckedSince.Store(time.Now().UnixNano())
		}
		if !g.hasSend || !gt.SendLimit.Less(g.sendLimit) {
			return
		}
		if g.hasNeed && mc != nil && mc.checked.Less(g.need) {
			mc.blocked = append(mc.blocked, blockedOut{need: g.need, end: g.sendLimit})
			return
		}
		gt.SendLimit = g.sendLimit
	})
}

// send encodes m (stamped with our epoch) for the writer; eff, if it
// names a connection, takes effect when the peer has applied m. A main's
// replication is not sent once this node is no longer the main: the peer
// must not take it for a main's.
func (s *session) send(m Message, eff effect) {
	role, epoch := s.n.Role()
	if isReplication(&m) && role != RoleMain {
		return
	}
	s.sendAs(epoch, m, eff)
}

// sendAs is send for a caller that has just read the role and epoch (the
// replication hooks, through liveSession).
func (s *session) sendAs(epoch uint64, m Message, eff effect) {
	m.Epoch = epoch
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return
	}
	out, err := s.codec.Enc.AppendFrame(s.out, &m)
	if err != nil {
		// A bug (the message was built here): say so and end the session
		// rather than send a stream the peer cannot follow.
		s.done = true
		s.cond.Broadcast()
		s.gateCond.Broadcast()
		s.mu.Unlock()
		s.n.log.Error("sync: encode", "msg", m.String(), "err", err)
		s.c.Close()
		return
	}
	s.queued += uint64(len(out) - len(s.out))
	s.out = out
	s.frames++
	if eff.gate.r != nil {
		eff.end, eff.at = s.queued, time.Now()
		s.effects = append(s.effects, eff)
	}
	s.cond.Signal()
	s.mu.Unlock()
}

func (n *Node) runSession(ctx context.Context, c *stack.Conn) {
	n.stats.Sessions.Add(1)
	s := &session{n: n, c: c, codec: NewSession(n.key, NewNonce())}
	s.cond = sync.NewCond(&s.mu)
	s.gateCond = sync.NewCond(&s.mu)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()

	n.mu.Lock()
	role := n.rm.Role()
	epoch := n.rm.Epoch()
	n.mu.Unlock()
	hello, err := s.codec.Enc.AppendFrame(nil, &Message{Type: MsgHello, Epoch: epoch, Role: uint8(role)})
	if err != nil {
		return
	}
	// The peer acknowledges what it holds with its TCP acknowledgements
	// (doc.go, "Acknowledgements"); they count from here.
	s.lastUna = c.OnAcked(s.onAcked)
	defer c.OnAcked(nil)
	s.queued = uint64(len(hello))
	read, _ := c.ReadPos()
	s.handled.Store(uint32(read))
	if write(c, hello) != nil {
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.writeLoop()
	}()
	go func() {
		defer wg.Done()
		s.gateLoop()
	}()
	s.readLoop()
	s.mu.Lock()
	s.done = true
	s.cond.Broadcast()
	s.gateCond.Broadcast()
	s.mu.Unlock()
	c.Close()
	wg.Wait()
	n.mu.Lock()
	if n.sess == s {
		n.sess = nil
	}
	n.rm.PeerDisconnected(time.Now())
	n.mu.Unlock()
	n.wake()
}

func write(c *stack.Conn, b []byte) error {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Write(b)
	return err
}

func (s *session) writeLoop() {
	for {
		s.mu.Lock()
		for len(s.out) == 0 && !s.done {
			s.cond.Wait()
		}
		if s.done {
			s.mu.Unlock()
			return
		}
		buf, frames := s.out, s.frames
		s.out, s.spare, s.frames = s.spare[:0], nil, 0
		s.mu.Unlock()
		if s.n.stoodDown.Load() {
			s.c.Close() // a stood-down node sends nothing more
			return
		}
		if err := write(s.c, buf); err != nil {
			s.c.Close()
			return
		}
		s.n.stats.FramesOut.Add(uint64(frames))
		s.mu.Lock()
		if s.spare == nil && cap(buf) <= maxSpare {
			s.spare = buf
		}
		s.mu.Unlock()
	}
}

// maxSpare bounds the write buffer a session keeps for reuse.
const maxSpare = 4 << 20

// isReplication reports whether m is a main's replication message (a
// backup's CLOSE DROPPED is not).
func isReplication(m *Message) bool {
	switch m.Type {
	case MsgOpen, MsgRejoin, MsgIn, MsgOut, MsgOutSum, MsgAcked:
		return true
	case MsgClose:
		return m.Close != CloseDropped
	}
	return false
}

func (s *session) readLoop() {
	n := s.n
	for {
		_, err := s.codec.Dec.Fill(s.c)
		if hook := n.testBeforeBatch.Load(); hook != nil {
			(*hook)()
		}
		if err != nil {
			if s.codec.Dec.Err() != nil {
				n.stats.BadFrames.Add(1)
				n.log.Warn("sync: rejected frame; dropping the connection", "err", s.codec.Dec.Err())
			}
			return
		}
		for {
			m, ok, err := s.codec.Next()
			if err != nil {
				n.stats.BadFrames.Add(1)
				n.log.Warn("sync: rejected frame; dropping the connection", "err", err)
				return
			}
			if !ok {
				break
			}
			n.stats.FramesIn.Add(1)
			if err := s.handle(&m); err != nil {
				n.log.Warn("sync: cannot apply message; dropping the connection", "msg", m.String(), "err", err)
				return
			}
		}
		read, _ := s.c.ReadPos() // only this goroutine reads
		s.handled.Store(uint32(read))
		n.wake()
	}
}

// handle applies one authenticated message from the peer.
func (s *session) handle(m *Message) error {
	n := s.n
	now := time.Now()
	if m.Type == MsgHello {
		// A HELLO is MAC'd without session nonces, so an old one can be
		// replayed: it says nothing about the peer now. Answer with a
		// heartbeat (which proves us live to the peer) and wait for the
		// peer's first frame under the session's nonces.
		n.mu.Lock()
		role := n.rm.Role()
		n.mu.Unlock()
		s.send(Message{Type: MsgHeartbeat, Sent: now.UnixNano(), Role: uint8(role), StartAsBackup: n.cfg.Backup}, effect{})
		return nil
	}
	if !s.codec.Live() {
		return fmt.Errorf("%v before the peer proved itself live", m.Type)
	}
	n.mu.Lock()
	if m.Type == MsgHeartbeat {
		s.peerRole = Role(m.Role)
		s.peerBackup = m.StartAsBackup
	}
	var stale []*backupConn
	var detached []*mainConn
	if n.sess != s {
		n.sess = s
		n.rm.PeerConnected(now)
		// A new session starts from nothing: the backup drops the copies
		// of the old one, and the main stops replicating connections it
		// opened before (they carry on unprotected until they rejoin from
		// a checkpoint, protect); those opened from now on are replicated.
		stale = n.takeStandbysLocked()
		for _, m := range n.mains {
			detached = append(detached, m)
		}
		n.mains = make(map[tcp.FourTuple]*mainConn)
	}
	if s.peerRole.Valid() {
		n.rm.PeerMessage(now, PeerMsg{Epoch: m.Epoch, Role: s.peerRole, StartAsBackup: s.peerBackup, Ping: m.Ping, Pong: m.Pong})
	}
	role := n.rm.Role()
	n.mu.Unlock()
	for _, b := range stale {
		b.sb.Drop()
	}
	for _, m := range detached {
		m.detach()
	}
	if len(detached) > 0 && role == RoleMain {
		// Still the main, with a new session: protect() will not run
		// again, so the connections just detached rejoin from their
		// checkpoints now.
		n.rejoinAll()
	}

	switch m.Type {
	case MsgSyncAck:
		// Acknowledgements are the sync connection's own (onAcked); an
		// older peer's SYNCACK says nothing more.
	case MsgChecked:
		if role == RoleMain {
			n.checkedByBackup(m)
		}
	case MsgOpen, MsgRejoin, MsgIn, MsgOut, MsgOutSum, MsgAcked, MsgClose:
		if m.Type == MsgClose && m.Close == CloseDropped && role == RoleMain {
			n.backupDropped(m.Conn)
			return nil
		}
		if role != RoleBackup {
			// The peer still believes it is the main (it was frozen, say):
			// ignore its replication, but keep the session, so that our
			// heartbeats reach it and it stands down rather than, hearing
			// nothing, resuming.
			if n.ignoredRepl.Add(1) == 1 {
				n.log.Warn("ignoring replication from a peer that is not the main", "msg", m.String(), "role", role)
			}
			return nil
		}
		if err := n.applyReplication(s, m); err != nil {
			n.dropStandby(s, m, err)
		}
	}
	return nil
}

// onAcked is the sync connection's OnAcked callback: the peer's TCP holds
// the stream up to una, so the effects of the frames before it apply. It
// runs in the stack's input goroutine, without a hop to another one:
// this is the latency of every replicated round trip.
func (s *session) onAcked(una tcp.Seq) {
	s.ackedAt.Store(time.Now().UnixNano())
	s.mu.Lock()
	s.acked += uint64(una.Sub(s.lastUna))
	s.lastUna = una
	i := 0
	for i < len(s.effects) && s.effects[i].end <= s.acked {
		i++
	}
	// Later sends append after s.effects[i:], never over done.
	done := s.effects[:i]
	s.effects = s.effects[i:]
	if len(done) > maxInlineEffects {
		// A bulk transfer's worth: the gate goroutine applies it, on
		// the other core, while this one goes on with the input.
		s.offloaded = append(s.offloaded, done...)
		s.gateCond.Signal()
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.inline.apply(done)
}

// maxInlineEffects is the most acknowledged effects onAcked applies
// itself. A request/response round trip has one or two, and applying them
// at once is the point; a bulk transfer's acknowledgement can cover
// dozens, and applying those in the input goroutine held up the input.
// The order does not matter: a gate only grows.
const maxInlineEffects = 4

// gateLoop applies the effects onAcked offloads.
func (s *session) gateLoop() {
	var done []effect
	for {
		s.mu.Lock()
		for len(s.offloaded) == 0 && !s.done {
			s.gateCond.Wait()
		}
		if s.done {
			s.mu.Unlock()
			return
		}
		done, s.offloaded = s.offloaded, done[:0]
		s.mu.Unlock()
		s.bg.apply(done)
		clear(done) // drop the references to the connections
	}
}

// caughtUp reports whether the reader has handled everything that has
// arrived on the sync connection.
func (s *session) caughtUp() bool {
	_, arrived := s.c.ReadPos()
	return uint32(arrived) == s.handled.Load()
}

// gateScratch is the reusable space of one goroutine that applies
// effects (onAcked's, in the input goroutine, or gateLoop's).
type gateScratch struct {
	gates []gateEffect
	index map[*stack.Replica]int
}

// apply applies acknowledged effects with one gate update per connection.
func (g *gateScratch) apply(done []effect) {
	if g.index == nil {
		g.index = make(map[*stack.Replica]int)
	}
	gates := g.gates[:0]
	for _, e := range done {
		if i, ok := g.index[e.gate.r]; ok {
			gates[i].merge(e.gate)
		} else {
			g.index[e.gate.r] = len(gates)
			gates = append(gates, e.gate)
		}
	}
	for _, ge := range gates {
		ge.apply()
	}
	clear(g.index)
	clear(gates) // drop the references to the connections
	g.gates = gates[:0]
}
