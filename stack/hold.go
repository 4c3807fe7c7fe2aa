package stack

import (
	"encoding/binary"
	"net/netip"

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
		return false
	}
	if proto == wire.ProtoTCP && h.exempt != 0 && len(payload) >= 2 && binary.BigEndian.Uint16(payload) == h.exempt {
		return false
	}
	s.stats.HeldDrops.Add(1)
	return true
}
