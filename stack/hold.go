package stack

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/zppratt/rfsis/stack/wire"
)

// Holding an address keeps it silent: nothing leaves from it, and nobody
// is told that we have it. The failover layer holds the service address
// while it does not know whether it may serve (a main that has just
// started, or just woke from a freeze, and has not yet heard its peer):
// one frame from the service address could take it back from the node
// that now serves it. Connections carry on inside: their segments are
// dropped as if lost and retransmitted once the hold ends.

type holdSpec struct {
	addr   netip.Addr
	exempt uint16 // a TCP port still allowed (the sync channel's), or 0
}

// Hold silences addr (see above), except TCP from local port exempt
// (0: none). Unhold ends it. One address is held at a time.
func (s *Stack) Hold(addr netip.Addr, exempt uint16) {
	s.hold.Store(&holdSpec{addr: addr, exempt: exempt})
}

// Unhold ends a Hold.
func (s *Stack) Unhold() { s.hold.Store(nil) }

// Held reports whether addr is held.
func (s *Stack) Held(addr netip.Addr) bool {
	h := s.hold.Load()
	return h != nil && h.addr == addr
}

// heldOutput reports whether a datagram from src must be dropped: src is
// held and the datagram is not exempt TCP.
func (s *Stack) heldOutput(src netip.Addr, proto uint8, payload []byte) bool {
	h := s.hold.Load()
	if h == nil || h.addr != src {
		return s.leaseLapsed(src)
	}
	if proto == wire.ProtoTCP && h.exempt != 0 && len(payload) >= 2 && binary.BigEndian.Uint16(payload) == h.exempt {
		return false
	}
	s.stats.HeldDrops.Add(1)
	return true
}

// A lease bounds how long an address may send without the failover layer
// being asked again: when it has lapsed, the next datagram from the
// address first renews it through a callback. A node that was frozen
// (SIGSTOP) and wakes up thereby learns it was away before its first
// frame leaves, rather than after; a node that was merely slow renews at
// once and sends.
type leaseSpec struct {
	addr  netip.Addr
	until atomic.Int64 // Unix nanoseconds
	renew func(now time.Time) (until time.Time, ok bool)
}

// SetLease installs a lease for addr: renew is called when it has lapsed
// and returns the new end, or ok false to drop the datagram (the
// address must be held). renew runs on the sending goroutine, possibly
// with a connection's lock held: it must not call back into the stack.
// A nil renew removes the lease.
func (s *Stack) SetLease(addr netip.Addr, renew func(now time.Time) (time.Time, bool)) {
	if renew == nil {
		s.lease.Store(nil)
		return
	}
	s.lease.Store(&leaseSpec{addr: addr, renew: renew})
}

// leaseLapsed reports whether a datagram from src must be dropped because
// its lease lapsed and could not be renewed.
func (s *Stack) leaseLapsed(src netip.Addr) bool {
	l := s.lease.Load()
	if l == nil || l.addr != src {
		return false
	}
	now := time.Now()
	if now.UnixNano() <= l.until.Load() {
		return false
	}
	until, ok := l.renew(now)
	if !ok {
		s.stats.HeldDrops.Add(1)
		return true
	}
	l.until.Store(until.UnixNano())
	return false
}
