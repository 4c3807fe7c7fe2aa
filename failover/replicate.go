package failover

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/zppratt/rfsis/stack"
	"github.com/zppratt/rfsis/stack/tcp"
)

// Lock order: a connection's lock (held in the hook callbacks), then
// Node.mu, then a session's mu. Nothing calls into a connection while
// holding Node.mu.

// mainConn is the main's record of one replicated connection.
type mainConn struct {
	r       *stack.Replica
	in, out tcp.Seq // ends of the inbound and outbound bytes shipped
	prog    tcp.Progress
	buf     []byte
}

// mainHook is the Node seen as the stack's ReplicationHook.
type mainHook Node

func (h *mainHook) node() *Node { return (*Node)(h) }

func (n *Node) liveSession() *session {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rm.Role() != RoleMain {
		return nil
	}
	return n.sess
}

// Opened ships the opening record; the SYN-ACK waits for its
// acknowledgement (invariant 1).
func (h *mainHook) Opened(r *stack.Replica, snap tcp.Snapshot) {
	n := h.node()
	s := n.liveSession()
	if s == nil {
		r.SetGateLocked(tcp.Gate{}) // no backup: serve unprotected
		return
	}
	mc := &mainConn{r: r, in: r.ReceivedEndLocked(), out: r.WrittenEndLocked(), prog: r.ProgressLocked()}
	r.Value.Store(mc)
	n.mu.Lock()
	n.mains[r.ID()] = mc
	n.mu.Unlock()
	n.stats.ConnsReplicated.Add(1)
	s.send(Message{Type: MsgOpen, Conn: r.ID(), Snapshot: &snap}, effect{gate: gateEffect{r: r, openOK: true}})
}

// outWindow bounds the output bytes of one connection shipped to the
// backup and not yet acknowledged. The client cannot have them before the
// backup does anyway, and without a bound one bulk connection could queue
// megabytes on the sync connection, ahead of every other connection's
// updates and of the heartbeats. The inbound side needs no bound of its
// own: the client's window bounds it.
const outWindow = 256 << 10

// ackedSlack is how far the client's acknowledgements may run ahead of
// what the backup was told before an ACKED goes out on their account
// alone. The backup uses them to trim the output it keeps for
// retransmission (a stale position only means retransmitting a little
// the client already has, which it ignores), so a bulk transfer need not
// ship one ACKED per acknowledgement. FINs, and a client that has
// acknowledged everything, are shipped at once.
const ackedSlack = 64 << 10

// The standby's send buffer allows for the slack.
var _ [tcp.StandbySendSlack - ackedSlack]struct{}

// Changed ships what is new: inbound bytes (the ACK on the wire waits,
// invariant 2), outbound bytes (they wait, invariant 3), and the client's
// progress and closes (a FIN waits, invariant 4). The bytes go from the
// connection's buffers into the encoded frame through one scratch buffer.
func (h *mainHook) Changed(r *stack.Replica) {
	mc, _ := r.Value.Load().(*mainConn)
	if mc == nil {
		return
	}
	n := h.node()
	s := n.liveSession()
	if s == nil {
		return // the gates hold until the role machine decides
	}
	var err error
	if mc.buf, err = r.AppendReceivedLocked(mc.buf[:0], mc.in); err != nil {
		n.stopReplicatingLocked(s, r, fmt.Errorf("inbound bytes: %w", err))
		return
	}
	mc.in = shipData(s, r, MsgIn, mc.in, mc.buf)
	// Output goes at most outWindow ahead of what the backup holds; the
	// backup's acknowledgement calls Changed again for the rest.
	room := outWindow - int(mc.out.Sub(r.GateLocked().SendLimit))
	if mc.buf, err = r.AppendWrittenLocked(mc.buf[:0], mc.out, room); err != nil {
		n.stopReplicatingLocked(s, r, fmt.Errorf("outbound bytes: %w", err))
		return
	}
	mc.out = shipData(s, r, MsgOut, mc.out, mc.buf)
	if cap(mc.buf) > outWindow {
		mc.buf = nil // a large burst's buffer is not kept for an idle connection
	}
	p := r.ProgressLocked()
	if p == mc.prog || !progressWorthShipping(mc.prog, p) {
		return
	}
	mc.prog = p
	g := gateEffect{r: r, closeOK: p.FinQueued}
	if p.PeerFin {
		g.hasAck, g.ackLimit = true, p.ReceivedEnd+1 // the FIN
	}
	s.send(Message{Type: MsgAcked, Conn: r.ID(), Progress: p}, effect{gate: g})
}

// shipData sends data, the bytes from seq, as IN or OUT messages and
// returns the end of what it shipped.
func shipData(s *session, r *stack.Replica, t MsgType, seq tcp.Seq, data []byte) tcp.Seq {
	for len(data) > 0 {
		k := min(len(data), MaxData)
		end := seq.Add(uint32(k))
		g := gateEffect{r: r}
		if t == MsgIn {
			g.hasAck, g.ackLimit = true, end
		} else {
			g.hasSend, g.sendLimit = true, end
		}
		s.send(Message{Type: t, Conn: r.ID(), DataSeq: seq, Data: data[:k]}, effect{gate: g})
		seq, data = end, data[k:]
	}
	return seq
}

// progressWorthShipping reports whether the client's progress moved
// enough since what the backup last heard (old) to ship now (see
// ackedSlack).
func progressWorthShipping(old, p tcp.Progress) bool {
	switch {
	case p.PeerFin != old.PeerFin, p.FinQueued != old.FinQueued:
		return true
	case p.SndUna == p.WrittenEnd && p.SndUna != old.SndUna:
		return true // everything acknowledged: the connection may go quiet now
	case p.SndUna.Sub(old.SndUna) >= ackedSlack:
		return true
	}
	return false
}

// Gone tells the backup to drop its copy.
func (h *mainHook) Gone(r *stack.Replica) {
	n := h.node()
	n.mu.Lock()
	delete(n.mains, r.ID())
	n.mu.Unlock()
	if s := n.liveSession(); s != nil {
		s.send(Message{Type: MsgClose, Conn: r.ID(), Close: CloseGone}, effect{})
	}
}

// stopReplicatingLocked gives up on one connection the main cannot ship
// (a bug, not a condition of the network): it goes on unprotected and
// the backup drops its copy. Called from a hook callback.
func (n *Node) stopReplicatingLocked(s *session, r *stack.Replica, why error) {
	n.log.Error("replication: cannot ship a connection's changes; it goes on unprotected", "conn", r.ID(), "err", why)
	n.mu.Lock()
	delete(n.mains, r.ID())
	n.mu.Unlock()
	r.Value.Store((*mainConn)(nil))
	r.SetGateLocked(tcp.Gate{})
	n.stats.ConnsDropped.Add(1)
	s.send(Message{Type: MsgClose, Conn: r.ID(), Close: CloseDropped}, effect{})
}

// backupDropped: the backup could not apply a connection's changes and
// dropped its copy; the main serves that connection unprotected.
func (n *Node) backupDropped(id tcp.FourTuple) {
	n.mu.Lock()
	mc := n.mains[id]
	delete(n.mains, id)
	n.mu.Unlock()
	if mc == nil {
		return
	}
	n.log.Warn("the backup dropped its copy of a connection; it goes on unprotected", "conn", id)
	n.stats.ConnsDropped.Add(1)
	mc.r.Value.Store((*mainConn)(nil))
	mc.r.UpdateGate(func(g *tcp.Gate) { *g = tcp.Gate{} })
}

// dropStandby handles a replication message the backup cannot apply: it
// drops that connection's copy and tells the main, which then serves the
// connection unprotected. The session and every other copy carry on: a
// dropped session would look like a dead main.
func (n *Node) dropStandby(s *session, m *Message, why error) {
	n.log.Warn("sync: cannot apply a message; dropping that connection's copy", "msg", m.String(), "err", why)
	n.mu.Lock()
	b := n.standbys[m.Conn]
	delete(n.standbys, m.Conn)
	n.mu.Unlock()
	if b != nil {
		b.sb.Drop()
	}
	n.stats.ConnsDropped.Add(1)
	s.send(Message{Type: MsgClose, Conn: m.Conn, Close: CloseDropped}, effect{})
}

// backupConn is the backup's record of one standby connection.
type backupConn struct {
	sb      *stack.Standby
	mu      sync.Mutex // the reader and the retry loop both deliver
	pending []byte     // inbound bytes held, waiting for buffer space
	prog    tcp.Progress
	hasProg bool
}

// deliver moves held inbound bytes into the standby connection as its
// buffer allows, then applies the latest progress (which may place a FIN
// after them).
func (b *backupConn) deliver() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deliverLocked()
}

func (b *backupConn) deliverLocked() error {
	if len(b.pending) > 0 {
		k, err := b.sb.Receive(b.sb.ReceivedEnd(), b.pending)
		if errors.Is(err, stack.ErrStandbyGone) {
			return err
		}
		if err == nil {
			b.pending = b.pending[:copy(b.pending, b.pending[k:])]
		}
	}
	if b.hasProg {
		if err := b.sb.Progress(b.prog); errors.Is(err, stack.ErrStandbyGone) {
			return err
		}
	}
	return nil
}

// applyReplication applies one replication message on the backup. The
// bytes are held (in the standby connection or, when its buffer is full,
// beside it) before the message counts as applied.
func (n *Node) applyReplication(m *Message) error {
	n.mu.Lock()
	b := n.standbys[m.Conn]
	l := n.listeners[m.Conn.LocalPort]
	n.mu.Unlock()
	switch m.Type {
	case MsgOpen:
		if b != nil {
			return fmt.Errorf("OPEN for %v twice", m.Conn)
		}
		sb, err := n.st.AdoptStandby(*m.Snapshot, l)
		if err != nil {
			return err
		}
		n.stats.StandbysAdopted.Add(1)
		n.mu.Lock()
		n.standbys[m.Conn] = &backupConn{sb: sb}
		n.mu.Unlock()
		return nil
	}
	if b == nil {
		// A copy dropped (dropStandby) while the main's messages for it
		// were in flight, or one that ended: nothing to apply.
		n.stats.Ignored.Add(1)
		return nil
	}
	switch m.Type {
	case MsgIn:
		b.mu.Lock()
		defer b.mu.Unlock()
		if want := b.sb.ReceivedEnd().Add(uint32(len(b.pending))); m.DataSeq != want {
			return fmt.Errorf("IN at %d, expected %d", m.DataSeq, want)
		}
		b.pending = append(b.pending, m.Data...)
		return b.deliverLocked()
	case MsgOut:
		k, err := b.sb.Written(m.DataSeq, m.Data)
		switch {
		case errors.Is(err, stack.ErrDiverged):
			n.stats.Diverged.Add(1)
			n.log.Warn("hot standby output differs from the main's", "conn", m.Conn)
		case err != nil:
			return err
		}
		if k < len(m.Data) {
			// Cannot happen while the main reports progress within
			// ackedSlack (the standby's buffer allows for it).
			return fmt.Errorf("OUT of %d bytes: only %d fit in the standby's send buffer", len(m.Data), k)
		}
	case MsgAcked:
		b.mu.Lock()
		defer b.mu.Unlock()
		b.prog, b.hasProg = m.Progress, true
		return b.deliverLocked()
	case MsgClose:
		n.mu.Lock()
		delete(n.standbys, m.Conn)
		n.mu.Unlock()
		b.sb.Drop()
	}
	return nil
}

// retryLoop delivers held inbound bytes as standby applications read.
func (n *Node) retryLoop(ctx interface{ Done() <-chan struct{} }) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		waiting := make([]*backupConn, 0, len(n.standbys))
		for _, b := range n.standbys {
			waiting = append(waiting, b)
		}
		n.mu.Unlock()
		for _, b := range waiting {
			b.deliver()
		}
	}
}
