package stack

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/zppratt/rfsis/internal/bytequeue"
	"github.com/zppratt/rfsis/stack/tcp"
)

// This file is rejoin through checkpoints (DESIGN.md, "The application
// contract"). A backup that joins while connections are open cannot copy
// them from their opening: the bytes since are gone, and so is the
// application's state. An application that calls Conn.Checkpoint says
// where it could be resumed from: its state at that point, given the
// bytes it had read and written. The stack then keeps the bytes the
// application reads after the checkpoint, so that a returning backup can
// be handed the connection as it is now plus everything needed to rebuild
// the application's side of it: the checkpoint's state, the input since
// it, and the position of the output since it (which the backup's own
// handler regenerates and which is checked against the main's, as for any
// hot standby).

// MaxCheckpointState bounds the state one checkpoint may carry: it
// travels to the backup in one frame with the connection's buffers.
const MaxCheckpointState = 64 << 10

// maxSinceCheckpoint bounds the inbound bytes a connection keeps since
// its application's last checkpoint. Past it the connection cannot rejoin
// until the next checkpoint, and keeps nothing more until then.
const maxSinceCheckpoint = 256 << 10

// maxRejoinData bounds the buffered bytes (input since the checkpoint,
// unread input, unacknowledged output) of a connection offered for a
// rejoin: they travel in one frame of the sync channel.
const maxRejoinData = 512 << 10

// ErrCheckpointTooLarge is returned by Conn.Checkpoint for a state over
// MaxCheckpointState bytes.
var ErrCheckpointTooLarge = errors.New("stack: checkpoint state too large")

// checkpoint is the last checkpoint of a connection's application.
type checkpoint struct {
	read, written tcp.Seq // the ends of what the application had read and written
	state         []byte
	since         bytequeue.Queue // bytes the application read since
	overflow      bool            // since overflowed: no rejoin until the next checkpoint
}

// Checkpoint records that the application's state for this connection,
// given every byte it has read and written on it so far, is state (nil
// for a handler that keeps none between messages, such as an echo or a
// request/response handler at a message boundary). A backup that joins
// later can take the connection over from here: its handler starts with
// Resumed returning state, reads what the client sent after this point,
// and writes what this handler wrote after it (which is checked against
// this node's output, not sent twice). Until the first call a connection
// cannot rejoin; each call replaces the last.
//
// Call it only where the state is complete: after acting on every byte
// read so far. It copies state. On a hot-standby copy it does nothing (its
// main's checkpoints are the ones that count).
func (c *Conn) Checkpoint(state []byte) error {
	if len(state) > MaxCheckpointState {
		return c.opError("checkpoint", fmt.Errorf("%w: %d bytes, at most %d", ErrCheckpointTooLarge, len(state), MaxCheckpointState))
	}
	if c.isClosed() {
		return c.opError("checkpoint", net.ErrClosed)
	}
	ep := c.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.c.Standby() {
		return nil
	}
	ck := ep.ckpt
	if ck == nil {
		ck = new(checkpoint)
		ep.ckpt = ck
	}
	ck.read = ep.c.ReceivedEnd() - tcp.Seq(ep.c.Readable())
	// The application's own position: on a connection that went live
	// from a standby it may still be behind the output (skipOut) or ahead
	// of it (held).
	ck.written = ep.c.WrittenEnd() - tcp.Seq(ep.skipOut) + tcp.Seq(ep.held.Len())
	ck.state = append(ck.state[:0], state...)
	ck.since.Reset()
	ck.overflow = false
	// A backup that joined before this connection could rejoin may take
	// it now.
	if hb := ep.t.hook.Load(); hb != nil {
		ep.rejoinLocked(hb.h)
	}
	return nil
}

// Resumed returns the state of the checkpoint this connection was resumed
// from, and true, when it is a returning backup's copy of a connection
// that was open before the backup joined (see Checkpoint). On any other
// connection it returns nil and false: its handler starts from nothing.
func (c *Conn) Resumed() ([]byte, bool) {
	ep := c.ep
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.resumed, ep.isResumed
}

// keepReadLocked keeps bytes the application just read for a rejoin
// (see Checkpoint). The caller holds ep.mu.
func (ep *endpoint) keepReadLocked(p []byte) {
	ck := ep.ckpt
	if ck == nil || ck.overflow {
		return
	}
	if ck.since.Len()+len(p) > maxSinceCheckpoint {
		ck.overflow = true
		ck.since = bytequeue.Queue{}
		return
	}
	ck.since.Append(p)
}

// Rejoin is what a ReplicationHook gets to replicate a connection that was
// open before the hook was installed (RejoinHook.Rejoined).
type Rejoin struct {
	// Snapshot is the connection as it is now, except that its receive
	// side starts at the checkpoint's read position: RcvRead is there and
	// RecvData holds the bytes since.
	Snapshot tcp.Snapshot
	// Written is where the application's output stood at the checkpoint.
	Written tcp.Seq
	// State is the checkpoint's state.
	State []byte
}

// RejoinHook is a ReplicationHook that can also replicate connections
// opened before it was installed, from their application's checkpoints.
type RejoinHook interface {
	ReplicationHook
	// Rejoined offers an established connection that has a checkpoint
	// and may not be replicated (or no longer is): the hook knows, and
	// returns false for one it replicates. The connection is locked, as in the other callbacks.
	// To take it, the hook installs the gate (SetGateLocked), ships rj
	// and returns true; from then on Changed and Gone follow as for any
	// replicated connection. It returns false to leave the connection
	// unprotected; it is offered again at its next checkpoint.
	Rejoined(r *Replica, rj Rejoin) bool
}

// RejoinAll offers every established connection with a checkpoint to the
// installed hook, if it is a RejoinHook (a backup just joined), and
// returns how many it took.
func (s *Stack) RejoinAll() int {
	hb := s.tcp.hook.Load()
	if hb == nil {
		return 0
	}
	if _, ok := hb.h.(RejoinHook); !ok {
		return 0
	}
	t := s.tcp
	t.mu.Lock()
	eps := make([]*endpoint, 0, len(t.conns))
	for _, ep := range t.conns {
		eps = append(eps, ep)
	}
	t.mu.Unlock()
	n := 0
	for _, ep := range eps {
		ep.mu.Lock()
		if ep.rejoinLocked(hb.h) {
			n++
		}
		ep.mu.Unlock()
	}
	return n
}

// rejoinLocked offers the connection to h if it can rejoin, and reports
// whether h took it. The caller holds ep.mu.
func (ep *endpoint) rejoinLocked(h ReplicationHook) bool {
	rh, ok := h.(RejoinHook)
	ck := ep.ckpt
	switch {
	case !ok, ck == nil, ck.overflow, ep.gone, ep.c.Standby(), ep.c.State() != tcp.StateEstablished:
		return false
	case ep.c.Gate().Enabled:
		return false // replicated now: a hook that lets a connection go opens its gate
	case ep.held.Len() > 0, ep.skipOut > 0:
		return false // just gone live, its application not yet level with its output
	case ep.c.WrittenEnd().Sub(ck.written) > maxRejoinData:
		return false // the backup's application would have too much to write again
	case ck.since.Len()+ep.c.Readable()+int(ep.c.WrittenEnd().Sub(ep.c.SndUna())) > maxRejoinData:
		return false // too much in flight for one frame; try at the next checkpoint
	}
	snap := ep.c.Snapshot()
	if snap.ReadShutdown {
		// CloseRead dropped input the checkpoint's replay needs.
		ck.overflow = true
		return false
	}
	since := ck.since.Bytes()
	if len(since)+len(snap.RecvData) > snap.Config.ReceiveBufferSize {
		return false // the backup's buffer could not hold it; try at the next checkpoint
	}
	snap.RcvRead = ck.read
	snap.RecvData = append(bytes.Clone(since), snap.RecvData...)
	if ep.replica == nil {
		ep.replica = &Replica{ep: ep}
	}
	if !rh.Rejoined(ep.replica, Rejoin{Snapshot: snap, Written: ck.written, State: bytes.Clone(ck.state)}) {
		return false
	}
	ep.afterLocked(time.Now())
	return true
}

// AdoptResumed is AdoptStandby for a connection the main replicates from
// an application checkpoint (Rejoin): rj.Snapshot is the connection as
// it is now, with its receive side starting at the checkpoint, and the
// backup's application, accepting it, gets rj.State from Conn.Resumed;
// its output is compared with the main's from rj.Written on. Only an
// established connection can be resumed.
func (s *Stack) AdoptResumed(rj Rejoin, l *Listener) (*Standby, error) {
	snap := rj.Snapshot
	switch {
	case snap.State != tcp.StateEstablished:
		return nil, fmt.Errorf("stack: resume %v: %w: state %v", snap.ID, tcp.ErrBadSnapshot, snap.State)
	case len(rj.State) > MaxCheckpointState:
		return nil, fmt.Errorf("stack: resume %v: %w", snap.ID, ErrCheckpointTooLarge)
	case rj.Written.Greater(snap.SndBufSeq.Add(uint32(len(snap.SendData)))):
		return nil, fmt.Errorf("stack: resume %v: %w: checkpoint output at %d beyond the output %d",
			snap.ID, tcp.ErrBadSnapshot, rj.Written, snap.SndBufSeq.Add(uint32(len(snap.SendData))))
	case snap.SndBufSeq.Add(uint32(len(snap.SendData))).Sub(rj.Written) > maxRejoinData:
		// More than the main offers (rejoinLocked): a hostile or corrupt
		// position, which the application could never catch up with.
		return nil, fmt.Errorf("stack: resume %v: %w: checkpoint output at %d, more than %d bytes before the output's end",
			snap.ID, tcp.ErrBadSnapshot, rj.Written, maxRejoinData)
	}
	return s.adoptStandby(snap, l, func(ep *endpoint) {
		ep.appNext = rj.Written
		ep.resumed, ep.isResumed = bytes.Clone(rj.State), true
	})
}
