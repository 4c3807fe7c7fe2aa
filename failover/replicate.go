package failover

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zppratt/rfsis/internal/bytequeue"
	"github.com/zppratt/rfsis/stack"
	"github.com/zppratt/rfsis/stack/tcp"
)

// Lock order: a connection's lock (held in the hook callbacks), then
// Node.mu, then a session's mu; on the backup, a backupConn's mu, then its
// standby connection's lock (the callbacks OnRead and OnChecked run
// after the connection's lock is released), then Node.mu. Nothing calls
// into a connection while holding Node.mu.

// mainConn is the main's record of one replicated connection.
type mainConn struct {
	r       *stack.Replica
	in, out tcp.Seq // ends of the inbound and outbound bytes shipped
	prog    tcp.Progress

	// Output by checksum (OUTSUM), under the connection's lock. sumOK:
	// the backup runs the application on its copy (its first CHECKED
	// said so), so long runs of output go as checksums. sumEnd is the end
	// of the last run shipped so, checked how far the backup has checked;
	// blocked are OUT bytes the backup holds that wait for a check.
	sumOK           bool
	sumEnd, checked tcp.Seq
	blocked         []blockedOut
	// uncheckedSince is when the backup last had nothing to check or
	// checked something, while output waits for its check (Unix
	// nanoseconds; 0 when none waits): see sumStall.
	uncheckedSince atomic.Int64
}

// blockedOut is an OUT acknowledged by the backup that follows output
// not yet checked: the gate opens to end once the check reaches need.
type blockedOut struct{ need, end tcp.Seq }

// newMainConn starts the record of r, called in one of its callbacks.
func newMainConn(r *stack.Replica) *mainConn {
	out := r.WrittenEndLocked()
	return &mainConn{r: r, in: r.ReceivedEndLocked(), out: out, prog: r.ProgressLocked(), sumEnd: out, checked: out}
}

// detach stops replicating the connection: it goes on unprotected.
// Called outside the connection's callbacks.
func (mc *mainConn) detach() {
	mc.r.UpdateGate(func(g *tcp.Gate) {
		// Under the connection's lock, so that a rejoin that took the
		// connection meanwhile (Rejoined) keeps its record and its gate.
		if cur, _ := mc.r.Value.Load().(*mainConn); cur == mc || cur == nil {
			mc.r.Value.Store((*mainConn)(nil))
			*g = tcp.Gate{}
		}
	})
}

// scratch holds the bytes of one change on their way from a connection's
// buffers into frames; pooled, so that neither a connection keeps one nor
// a change allocates one.
var scratch = sync.Pool{New: func() any { return new([]byte) }}

// mainHook is the Node seen as the stack's ReplicationHook.
type mainHook Node

func (h *mainHook) node() *Node { return (*Node)(h) }

// liveSession returns the session to replicate on and its epoch, nil if
// this node does not replicate now.
func (n *Node) liveSession() (*session, uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rm.Role() != RoleMain {
		return nil, 0
	}
	return n.sess, n.rm.Epoch()
}

// Opened ships the opening record; the SYN-ACK waits for its
// acknowledgement (invariant 1). Only the service's connections are
// replicated: one to the node's own address (the sync port, say) has no
// copy to take over.
func (h *mainHook) Opened(r *stack.Replica, snap tcp.Snapshot) {
	n := h.node()
	id := r.ID()
	mc := newMainConn(r)
	n.mu.Lock()
	s, epoch := n.sess, n.rm.Epoch()
	serve := n.rm.Role() == RoleMain && s != nil && id.LocalAddr == n.svc && n.listeners[id.LocalPort] != nil
	if serve {
		// Registered in the same hold as the session is read: a new
		// session, or the loss of this one, detaches it (and so opens
		// its gate) even if the OPEN below never leaves.
		n.mains[id] = mc
	}
	n.mu.Unlock()
	if !serve {
		r.SetGateLocked(tcp.Gate{}) // unprotected
		return
	}
	r.Value.Store(mc)
	n.stats.ConnsReplicated.Add(1)
	s.sendAs(epoch, Message{Type: MsgOpen, Conn: id, Snapshot: &snap}, effect{gate: gateEffect{r: r, openOK: true}})
}

// Rejoined takes a connection that was open before this backup joined,
// from its application's checkpoint (stack.Rejoin), unless it is
// replicated already. From the moment the backup acknowledges the REJOIN
// it holds everything the client has been told, and the gates hold what
// follows, as for a connection replicated from its opening; until then
// the connection is as unprotected as it was. So the gate opens at once
// as far as the connection has gone (what the snapshot carries).
func (h *mainHook) Rejoined(r *stack.Replica, rj stack.Rejoin) bool {
	if mc, _ := r.Value.Load().(*mainConn); mc != nil {
		return false // replicated already
	}
	n := h.node()
	id := r.ID()
	canTake := func() bool {
		return n.rm.Role() == RoleMain && n.sess != nil && id.LocalAddr == n.svc && n.listeners[id.LocalPort] != nil && n.mains[id] == nil
	}
	n.mu.Lock()
	ok := canTake()
	n.mu.Unlock()
	if !ok {
		return false // before encoding anything
	}
	msg := Message{Type: MsgRejoin, Conn: id, Snapshot: &rj.Snapshot, Written: rj.Written, State: rj.State}
	if b, err := marshalSnapshot(&msg); err != nil || len(b)+len(rj.State)+8 > MaxSnapshot {
		// Too much in flight to ship in one frame now; the next
		// checkpoint offers the connection again.
		return false
	}
	mc := newMainConn(r)
	n.mu.Lock()
	s, epoch := n.sess, n.rm.Epoch()
	take := canTake()
	if take {
		n.mains[id] = mc // see Opened
	}
	n.mu.Unlock()
	if !take {
		return false
	}
	r.SetGateLocked(tcp.Gate{Enabled: true, OpenOK: true, AckLimit: mc.in, SendLimit: mc.out, CloseOK: mc.prog.FinQueued})
	r.Value.Store(mc)
	n.stats.ConnsReplicated.Add(1)
	n.stats.ConnsRejoined.Add(1)
	s.sendAs(epoch, msg, effect{})
	return true
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
	// Output goes at most outWindow ahead of what the backup holds, or
	// sumWindow by checksum; the backup's acknowledgement or check calls
	// Changed again for the rest.
	unshipped := int(r.WrittenEndLocked().Sub(mc.out))
	bySum := mc.sumOK && unshipped >= sumMin
	room := outWindow
	if bySum {
		room = sumWindow
	}
	room -= int(mc.out.Sub(r.GateLocked().SendLimit))
	p := r.ProgressLocked()
	newIn := r.ReceivedEndLocked() != mc.in
	newOut := room > 0 && unshipped > 0
	newProg := progressWorthShipping(mc.prog, p)
	if !newIn && !newOut && !newProg {
		return
	}
	n := h.node()
	s, epoch := n.liveSession()
	if s == nil {
		return // the gates hold until the role machine decides
	}
	bp := scratch.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= outWindow {
			scratch.Put(bp)
		}
	}()
	var err error
	if newIn {
		if *bp, err = r.AppendReceivedLocked((*bp)[:0], mc.in); err != nil {
			n.stopReplicatingLocked(s, r, fmt.Errorf("inbound bytes: %w", err))
			return
		}
		mc.in = shipData(s, epoch, r, MsgIn, mc, mc.in, *bp)
	}
	if newOut && bySum {
		if mc.out, err = shipSums(s, epoch, r, mc, min(room, unshipped)); err != nil {
			n.stopReplicatingLocked(s, r, fmt.Errorf("outbound checksums: %w", err))
			return
		}
	} else if newOut {
		if *bp, err = r.AppendWrittenLocked((*bp)[:0], mc.out, room); err != nil {
			n.stopReplicatingLocked(s, r, fmt.Errorf("outbound bytes: %w", err))
			return
		}
		mc.out = shipData(s, epoch, r, MsgOut, mc, mc.out, *bp)
	}
	if !newProg {
		return
	}
	mc.prog = p
	g := gateEffect{r: r, closeOK: p.FinQueued}
	if p.PeerFin {
		g.hasAck, g.ackLimit = true, p.ReceivedEnd+1 // the FIN
	}
	s.sendAs(epoch, Message{Type: MsgAcked, Conn: r.ID(), Progress: p}, effect{gate: g})
}

// shipData sends data, the bytes from seq, as IN or OUT messages and
// returns the end of what it shipped.
func shipData(s *session, epoch uint64, r *stack.Replica, t MsgType, mc *mainConn, seq tcp.Seq, data []byte) tcp.Seq {
	for len(data) > 0 {
		k := min(len(data), MaxData)
		end := seq.Add(uint32(k))
		g := gateEffect{r: r}
		if t == MsgIn {
			g.hasAck, g.ackLimit = true, end
		} else {
			g.hasSend, g.sendLimit = true, end
			if mc.checked != mc.sumEnd {
				// Behind output the backup has not checked yet.
				g.hasNeed, g.need = true, mc.sumEnd
			}
		}
		s.sendAs(epoch, Message{Type: t, Conn: r.ID(), DataSeq: seq, Data: data[:k]}, effect{gate: g})
		seq, data = end, data[k:]
	}
	return seq
}

// sumMin is the shortest run of output shipped as checksums (OUTSUM)
// rather than bytes, and sumChunk the run one checksum covers. Short
// runs, the answers of request/response protocols, go as bytes: the
// backup's TCP acknowledgement releases those, one sync round trip,
// while a checksum waits for the backup's application as well. Long
// runs go as checksums, which halves the bytes on the sync channel of
// an echo-like service; chunks keep the checks streaming. sumWindow
// bounds the output shipped by checksum and not yet checked: a checksum
// costs the sync channel nothing to speak of, so the bound is the
// backup's queue (stack.Standby.WrittenSum), and it must cover the
// output a bulk transfer produces while a check makes its round trip
// through the backup's application.
const (
	sumMin    = 8 << 10
	sumChunk  = 64 << 10
	sumWindow = 1 << 20
)

// shipSums sends the next n bytes of output from mc.out as OUTSUMs and
// returns the end of what it shipped. The gate opens as the backup checks
// them (CHECKED, checkedByBackup).
func shipSums(s *session, epoch uint64, r *stack.Replica, mc *mainConn, n int) (tcp.Seq, error) {
	seq := mc.out
	for n > 0 {
		k := min(n, sumChunk)
		sum, err := r.WrittenChecksumLocked(seq, k)
		if err != nil {
			return seq, err
		}
		// The stall clock (sumStall) starts once the backup holds the
		// OUTSUM, not while it waits behind other traffic.
		s.sendAs(epoch, Message{Type: MsgOutSum, Conn: r.ID(), DataSeq: seq, SumLen: uint32(k), Sum: sum}, effect{gate: gateEffect{r: r, sumHeld: true}})
		s.n.stats.OutputSummed.Add(uint64(k))
		seq = seq.Add(uint32(k))
		mc.sumEnd = seq
		n -= k
	}
	return seq, nil
}

// checkedByBackup applies the backup's CHECKED: its copy's application
// wrote the output up to end and it matched the main's checksums, so the
// client may have it, and the OUT bytes behind it that the backup holds.
// The first CHECKED of a connection says that the backup can check (it
// runs the application): output goes by checksum from then on.
func (n *Node) checkedByBackup(m *Message) {
	n.mu.Lock()
	mc := n.mains[m.Conn]
	n.mu.Unlock()
	if mc == nil {
		n.ignoredRepl.Add(1) // gone, or no longer replicated
		return
	}
	var bad bool
	mc.r.UpdateGate(func(g *tcp.Gate) {
		if cur, _ := mc.r.Value.Load().(*mainConn); cur != mc {
			return
		}
		end := m.DataSeq
		if end.Greater(mc.sumEnd) {
			bad = true
			return
		}
		if end.Less(mc.checked) {
			return // overtaken: the backup's reader and its application both check
		}
		mc.sumOK = true
		mc.checked = end
		if end == mc.sumEnd {
			mc.uncheckedSince.Store(0)
		} else {
			mc.uncheckedSince.Store(time.Now().UnixNano())
		}
		if g.SendLimit.Less(end) {
			g.SendLimit = end
		}
		// Effects apply on two goroutines (onAcked), so blocked is not
		// sorted: look at all of it.
		still := mc.blocked[:0]
		for _, b := range mc.blocked {
			switch {
			case end.Less(b.need):
				still = append(still, b)
			case g.SendLimit.Less(b.end):
				g.SendLimit = b.end
			}
		}
		clear(mc.blocked[len(still):])
		mc.blocked = still
	})
	if bad {
		n.stats.BadFrames.Add(1)
		n.log.Warn("sync: the backup's CHECKED is outside the output shipped by checksum; ignored", "msg", m.String())
	}
}

// sumStall is how long output shipped by checksum may wait for the
// backup's check without any progress before the main stops replicating
// the connection, which then goes on unprotected: a standby application
// that does not write what the main's wrote (it waits for something only
// the main got, say) must not stall the client for good. It is far
// above a collection or a scheduling stall of a busy backup.
const sumStall = time.Second

// dropStalledChecks stops replicating the connections whose output has
// waited for the backup's check longer than sumStall.
func (n *Node) dropStalledChecks(now time.Time) {
	var stalled []*mainConn
	n.mu.Lock()
	for id, mc := range n.mains {
		if t := mc.uncheckedSince.Load(); t != 0 && now.Sub(time.Unix(0, t)) > sumStall {
			stalled = append(stalled, mc)
			delete(n.mains, id)
		}
	}
	s := n.sess
	n.mu.Unlock()
	for _, mc := range stalled {
		id := mc.r.ID()
		n.log.Warn("replication: the backup has not checked this connection's output for too long; it goes on unprotected", "conn", id, "after", sumStall)
		n.stats.ConnsDropped.Add(1)
		mc.detach()
		if s != nil {
			s.send(Message{Type: MsgClose, Conn: id, Close: CloseDropped}, effect{})
		}
	}
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

// Gone tells the backup to drop its copy. An abort's RST waits for that
// (invariant 4): the close's acknowledgement lets it go.
func (h *mainHook) Gone(r *stack.Replica) {
	n := h.node()
	n.mu.Lock()
	delete(n.mains, r.ID())
	n.mu.Unlock()
	s, epoch := n.liveSession()
	if !r.AbortHeldLocked() {
		if s != nil {
			s.sendAs(epoch, Message{Type: MsgClose, Conn: r.ID(), Close: CloseGone}, effect{})
		}
		return
	}
	if s == nil {
		// No backup to tell: the RST goes now. (The lock held here is the
		// connection's; UpdateGate would take it again.)
		r.SetGateLocked(tcp.Gate{})
		return
	}
	s.sendAs(epoch, Message{Type: MsgClose, Conn: r.ID(), Close: CloseRST}, effect{gate: gateEffect{r: r, closeOK: true}})
}

// stopReplicatingLocked gives up on one connection the main cannot ship
// (a bug, not a condition of the network): it goes on unprotected and
// the backup drops its copy. Called from a hook callback.
func (n *Node) stopReplicatingLocked(s *session, r *stack.Replica, why error) {
	// Not detach: the connection's lock is held here.
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
	mc.detach()
}

// dropStandby handles a replication message the backup cannot apply: it
// drops that connection's copy and tells the main, which then serves the
// connection unprotected. The session and every other copy carry on: a
// dropped session would look like a dead main.
func (n *Node) dropStandby(s *session, m *Message, why error) {
	n.log.Warn("sync: cannot apply a message; dropping that connection's copy", "msg", m.String(), "err", why)
	if b := n.forgetStandby(m.Conn, nil); b != nil {
		b.sb.Drop()
	}
	n.stats.ConnsDropped.Add(1)
	s.send(Message{Type: MsgClose, Conn: m.Conn, Close: CloseDropped}, effect{})
}

// checked tells the main that the standby's output is checked up to end
// (CHECKED), and applies the client's progress again: a FIN it places
// after that output can go in now. An error drops the copy: a standby
// that never had the main's bytes cannot continue the connection.
func (n *Node) checked(s *session, b *backupConn, end tcp.Seq, err error) {
	id := b.sb.ID()
	if err == nil {
		// The progress first: once the main hears of the check it may
		// send the FIN after that output (invariant 4).
		b.mu.Lock()
		b.progNew = true
		err = n.deliverLocked(b)
		b.mu.Unlock()
		if err == nil {
			s.send(Message{Type: MsgChecked, Conn: id, DataSeq: end}, effect{})
			return
		}
	}
	if n.forgetStandby(id, b) == nil {
		return // dropped already, or replaced by a newer copy
	}
	b.sb.Drop()
	if errors.Is(err, stack.ErrDiverged) {
		n.log.Warn("hot standby output differs from the main's checksum; dropping that connection's copy", "conn", id, "err", err)
	} else {
		n.log.Warn("sync: cannot apply the main's output; dropping that connection's copy", "conn", id, "err", err)
	}
	n.stats.ConnsDropped.Add(1)
	s.send(Message{Type: MsgClose, Conn: id, Close: CloseDropped}, effect{})
}

// backupConn is the backup's record of one standby connection.
type backupConn struct {
	sb *stack.Standby
	mu sync.Mutex // the reader, the application's reads and the retry loop deliver
	// pending are inbound bytes held, waiting for room in the standby's
	// buffer.
	pending bytequeue.Queue
	prog    tcp.Progress
	hasProg bool // prog holds an ACKED (IN can come first)
	// progNew: prog has not been applied since it arrived or since bytes
	// it may place a FIN after went in.
	progNew bool
}

// deliverLocked moves held inbound bytes into the standby connection as
// its buffer allows, then applies the latest progress (which may place a
// FIN after them), and keeps the node's list of copies with bytes held.
func (n *Node) deliverLocked(b *backupConn) error {
	if b.pending.Len() > 0 {
		k, err := b.sb.Receive(b.sb.ReceivedEnd(), b.pending.Bytes())
		if err != nil {
			return err
		}
		if k > 0 {
			b.pending.Consume(k)
			b.progNew = true
		}
	}
	n.mu.Lock()
	if b.pending.Len() > 0 {
		n.waiting[b] = struct{}{}
	} else {
		delete(n.waiting, b)
	}
	n.mu.Unlock()
	if b.progNew && b.hasProg {
		b.progNew = false
		return b.sb.Progress(b.prog)
	}
	return nil
}

// takeStandbysLocked empties the table of standby copies and returns
// them. The caller holds n.mu.
func (n *Node) takeStandbysLocked() []*backupConn {
	sbs := make([]*backupConn, 0, len(n.standbys))
	for _, b := range n.standbys {
		sbs = append(sbs, b)
	}
	n.standbys = make(map[tcp.FourTuple]*backupConn)
	clear(n.waiting)
	return sbs
}

// forgetStandby removes the copy of id from the node's tables and
// returns it (nil if it had none). With only set, it removes that copy
// alone: a newer one in its place stays.
func (n *Node) forgetStandby(id tcp.FourTuple, only *backupConn) *backupConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	b := n.standbys[id]
	if only != nil && b != only {
		return nil
	}
	delete(n.standbys, id)
	delete(n.waiting, b)
	return b
}

// applyReplication applies one replication message on the backup. The
// bytes are held (in the standby connection or, when its buffer is full,
// beside it) before the message counts as applied. A message for a
// connection the backup holds no copy of is ignored.
func (n *Node) applyReplication(s *session, m *Message) error {
	n.mu.Lock()
	b := n.standbys[m.Conn]
	l := n.listeners[m.Conn.LocalPort]
	n.mu.Unlock()
	switch m.Type {
	case MsgOpen, MsgRejoin:
		if b != nil {
			return fmt.Errorf("%v for %v twice", m.Type, m.Conn)
		}
		var sb *stack.Standby
		var err error
		if m.Type == MsgOpen {
			sb, err = n.st.AdoptStandby(*m.Snapshot, l)
		} else {
			sb, err = n.st.AdoptResumed(stack.Rejoin{Snapshot: *m.Snapshot, Written: m.Written, State: m.State}, l)
		}
		if err != nil {
			return err
		}
		n.stats.StandbysAdopted.Add(1)
		b := &backupConn{sb: sb}
		// Held bytes go in as soon as the application makes room.
		sb.OnRead(func() {
			b.mu.Lock()
			if b.pending.Len() > 0 {
				n.deliverLocked(b) // an error surfaces with the next message
			}
			b.mu.Unlock()
		})
		n.mu.Lock()
		n.standbys[m.Conn] = b
		n.mu.Unlock()
		if l != nil {
			// A hot standby: its application writes the output too, so
			// the main may ship checksums of it (OUTSUM). This first
			// CHECKED, at the output's end now, tells it so.
			sb.OnChecked(func(end tcp.Seq, err error) { n.checked(s, b, end, err) })
			s.send(Message{Type: MsgChecked, Conn: m.Conn, DataSeq: sb.WrittenEnd()}, effect{})
		}
		return nil
	}
	if b == nil {
		// A copy dropped (dropStandby) while the main's messages for it
		// were in flight: nothing to apply.
		n.ignoredRepl.Add(1)
		return nil
	}
	switch m.Type {
	case MsgIn:
		b.mu.Lock()
		defer b.mu.Unlock()
		if want := b.sb.ReceivedEnd().Add(uint32(b.pending.Len())); m.DataSeq != want {
			return fmt.Errorf("IN at %d, expected %d", m.DataSeq, want)
		}
		data := m.Data
		if b.pending.Len() == 0 {
			// Straight into the standby; only what does not fit waits.
			k, err := b.sb.Receive(m.DataSeq, data)
			if err != nil {
				return err
			}
			data = data[k:]
			b.progNew = b.progNew || k > 0
		}
		if b.pending.Len()+len(data) > maxHeldIn {
			return fmt.Errorf("%w: %d bytes held", errStandbyLags, b.pending.Len()+len(data))
		}
		b.pending.Append(data)
		return n.deliverLocked(b)
	case MsgOut:
		k, err := b.sb.Written(m.DataSeq, m.Data)
		switch {
		case errors.Is(err, stack.ErrDiverged):
			// Counted by the stack (TCPStats.Diverged).
			n.log.Warn("hot standby output differs from the main's", "conn", m.Conn)
		case err != nil:
			return err
		}
		if k < len(m.Data) {
			// Cannot happen while the main reports progress within
			// ackedSlack (the standby's buffer allows for it).
			return fmt.Errorf("OUT of %d bytes: only %d fit in the standby's send buffer", len(m.Data), k)
		}
	case MsgOutSum:
		end, ok, err := b.sb.WrittenSum(m.DataSeq, int(m.SumLen), m.Sum)
		if ok || err != nil {
			n.checked(s, b, end, err)
		}
	case MsgAcked:
		b.mu.Lock()
		defer b.mu.Unlock()
		b.prog, b.hasProg, b.progNew = m.Progress, true, true
		return n.deliverLocked(b)
	case MsgClose:
		n.forgetStandby(m.Conn, nil)
		b.sb.Drop()
	}
	return nil
}

// maxHeldIn bounds the inbound bytes held for one standby whose
// application lags behind the main's. Past it the copy is dropped (the
// connection goes on unprotected, dropStandby) rather than let a slow
// backup exhaust its memory; holding up the sync stream instead would
// hold up every connection and the heartbeats with it. (A variable for
// the tests.)
var maxHeldIn = 64 << 20

// errStandbyLags reports a standby dropped for lagging (maxHeldIn).
var errStandbyLags = errors.New("the standby's application lags too far behind the main's")

// retryLoop delivers held inbound bytes as standby applications read,
// should a read's own delivery (Standby.OnRead) have failed to take
// them: only the copies with bytes held, so that idle ones cost nothing.
// Every 100 ms it also looks for a main's connections whose output waits
// too long for the backup's check (dropStalledChecks).
func (n *Node) retryLoop(ctx interface{ Done() <-chan struct{} }) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	var waiting []*backupConn
	for tick := 0; ; tick++ {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
		if tick%20 == 0 {
			n.dropStalledChecks(now) // a main's connections, if any
		}
		n.mu.Lock()
		for b := range n.waiting {
			waiting = append(waiting, b)
		}
		n.mu.Unlock()
		for _, b := range waiting {
			b.mu.Lock()
			n.deliverLocked(b) // an error surfaces with the next message
			b.mu.Unlock()
		}
		clear(waiting)
		waiting = waiting[:0]
	}
}
