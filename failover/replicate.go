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
		n.log.Error("replication: inbound bytes lost to the replica", "conn", r.ID(), "err", err)
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
		n.log.Error("replication: outbound bytes lost to the replica", "conn", r.ID(), "err", err)
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

func (b *backupConn) deliverLocked() {
	if len(b.pending) > 0 {
		k, err := b.sb.Receive(b.sb.ReceivedEnd(), b.pending)
		if err == nil {
			b.pending = b.pending[:copy(b.pending, b.pending[k:])]
		}
	}
	if b.hasProg {
		b.sb.Progress(b.prog)
	}
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
		return fmt.Errorf("%v for unknown connection %v", m.Type, m.Conn)
	}
	switch m.Type {
	case MsgIn:
		b.mu.Lock()
		defer b.mu.Unlock()
		if want := b.sb.ReceivedEnd().Add(uint32(len(b.pending))); m.DataSeq != want {
			return fmt.Errorf("IN at %d, expected %d", m.DataSeq, want)
		}
		b.pending = append(b.pending, m.Data...)
		b.deliverLocked()
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
		b.deliverLocked()
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
