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
	s.send(Message{Type: MsgOpen, Conn: r.ID(), Snapshot: &snap}, func() {
		r.UpdateGate(func(g *tcp.Gate) { g.OpenOK = true })
	})
}

// Changed ships what is new: inbound bytes (the ACK on the wire waits,
// invariant 2), outbound bytes (they wait, invariant 3), and the client's
// progress and closes (a FIN waits, invariant 4).
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
	for b := mc.buf; len(b) > 0; {
		k := min(len(b), MaxData)
		seq := mc.in
		end := seq.Add(uint32(k))
		s.send(Message{Type: MsgIn, Conn: r.ID(), DataSeq: seq, Data: append([]byte(nil), b[:k]...)}, func() {
			r.UpdateGate(func(g *tcp.Gate) {
				if g.AckLimit.Less(end) {
					g.AckLimit = end
				}
			})
		})
		mc.in, b = end, b[k:]
	}
	if mc.buf, err = r.AppendWrittenLocked(mc.buf[:0], mc.out); err != nil {
		n.stopReplicatingLocked(s, r, fmt.Errorf("outbound bytes: %w", err))
		return
	}
	for b := mc.buf; len(b) > 0; {
		k := min(len(b), MaxData)
		seq := mc.out
		end := seq.Add(uint32(k))
		s.send(Message{Type: MsgOut, Conn: r.ID(), DataSeq: seq, Data: append([]byte(nil), b[:k]...)}, func() {
			r.UpdateGate(func(g *tcp.Gate) {
				if g.SendLimit.Less(end) {
					g.SendLimit = end
				}
			})
		})
		mc.out, b = end, b[k:]
	}
	if p := r.ProgressLocked(); p != mc.prog {
		mc.prog = p
		s.send(Message{Type: MsgAcked, Conn: r.ID(), Progress: p}, func() {
			r.UpdateGate(func(g *tcp.Gate) {
				if p.PeerFin && g.AckLimit.Less(p.ReceivedEnd+1) {
					g.AckLimit = p.ReceivedEnd + 1 // the FIN
				}
				if p.FinQueued {
					g.CloseOK = true
				}
			})
		})
	}
}

// Gone tells the backup to drop its copy.
func (h *mainHook) Gone(r *stack.Replica) {
	n := h.node()
	n.mu.Lock()
	delete(n.mains, r.ID())
	n.mu.Unlock()
	if s := n.liveSession(); s != nil {
		s.send(Message{Type: MsgClose, Conn: r.ID(), Close: CloseGone}, nil)
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
	s.send(Message{Type: MsgClose, Conn: r.ID(), Close: CloseDropped}, nil)
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
	s.send(Message{Type: MsgClose, Conn: m.Conn, Close: CloseDropped}, nil)
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
		if _, err := b.sb.Written(m.DataSeq, m.Data); errors.Is(err, stack.ErrDiverged) {
			n.stats.Diverged.Add(1)
			n.log.Warn("hot standby output differs from the main's", "conn", m.Conn)
		} else if err != nil {
			return err
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
