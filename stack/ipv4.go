package stack

import (
	"errors"
	"net/netip"

	"github.com/zppratt/rfsis/link"

	"github.com/zppratt/rfsis/stack/wire"
)

// This file is the stack's IPv4 layer and its boundary with the transport
// (TCP) above it.
//
// Output, for the transport:
//
//	p := s.newPacket()                 // pooled, no allocation in steady state
//	seg := p.payload()                 // maxIP-20 bytes: write the TCP header+data here
//	n := encodeSegment(seg, ...)       // the TCP checksum uses wire.PseudoHeaderChecksum
//	err := s.sendIPv4(p, src, dst, wire.ProtoTCP, n)
//
// sendIPv4 always takes p back, whatever it returns: do not touch p after
// the call. A nil error means the datagram was written to the device, or
// is waiting for ARP (it is dropped and counted if resolution fails), or
// was dropped because its source address is held (Hold) or its lease
// lapsed and was not renewed (SetLease), counted in HeldDrops: each is a
// lost packet the transport's retransmission covers.
//
// Input, from the transport: set a transportHandler with setTransport. The
// read goroutine calls handleTCP for every TCP datagram addressed to one of
// our addresses; segment is the IP payload (padding removed) and is valid
// only during the call, since the read buffer is reused. handleTCP may call
// sendIPv4 (to answer at once), but must not block for long: the whole
// receive path waits for it.

// headroom is the space in front of the transport payload: Ethernet and a
// 20-byte IPv4 header (the stack sends no IP options).
const headroom = wire.EthernetHeaderLen + wire.IPv4MinHeaderLen

// defaultTTL is the TTL of every datagram we send (Linux's default).
const defaultTTL = 64

// packet is a pooled outbound frame buffer of EthernetHeaderLen+maxIP
// bytes: the MTU, or up to 64 KiB with offloads.
type packet struct {
	buf []byte
	n   int          // frame length, once headers are written
	off link.Offload // offload metadata, for devices that take it
}

// payload is the room for the transport's header and data: maxIP-20 bytes.
func (p *packet) payload() []byte { return p.buf[headroom:] }

// newPacket takes a buffer from the pool. Its contents are undefined.
func (s *Stack) newPacket() *packet {
	p := s.pool.Get().(*packet)
	p.off = link.Offload{}
	return p
}

func (s *Stack) putPacket(p *packet) { s.pool.Put(p) }

// transportHandler receives the transport layer's datagrams.
type transportHandler interface {
	// handleTCP gets a TCP segment (the IP payload) from src to dst, one of
	// our addresses. segment is valid only during the call.
	// trusted says the device vouches for the checksum, which may then be
	// partial (offloads): do not verify it.
	handleTCP(src, dst netip.Addr, segment []byte, trusted bool)
}

// transportBox lets an interface value live in an atomic.Pointer.
type transportBox struct{ h transportHandler }

// setTransport installs h (nil removes it). Safe at any time; without a
// handler TCP datagrams are dropped and counted in TCPNoHandler.
func (s *Stack) setTransport(h transportHandler) {
	if h == nil {
		s.transport.Store(nil)
		return
	}
	s.transport.Store(&transportBox{h: h})
}

// sendIPv4 sends the n bytes at p.payload() as an IPv4 datagram of protocol
// proto from src (which must be one of our addresses) to dst. It writes the
// IPv4 header (TTL 64, a fresh ID, DF for TCP) and the Ethernet header,
// resolves the next hop (dst on-link, else the gateway) through the ARP
// cache, and writes the frame, or queues it until ARP answers. It always
// consumes p.
func (s *Stack) sendIPv4(p *packet, src, dst netip.Addr, proto uint8, n int) error {
	if n >= 0 && n <= len(p.payload()) && s.heldOutput(src, proto, p.payload()[:n]) {
		s.putPacket(p)
		return nil // as if lost on the wire: TCP retransmits later
	}
	hop, err := s.prepareIPv4(p, src, dst, proto, n)
	if err != nil {
		s.putPacket(p)
		return err
	}
	return s.output(p, hop)
}

// prepareIPv4 checks the datagram, writes its headers but the Ethernet
// destination, and returns the next hop to resolve.
func (s *Stack) prepareIPv4(p *packet, src, dst netip.Addr, proto uint8, n int) (hop netip.Addr, err error) {
	if s.closed.Load() {
		return hop, ErrClosed
	}
	if n < 0 || n > s.maxIP-wire.IPv4MinHeaderLen {
		return hop, ErrTooBig
	}
	if !s.HasAddress(src) {
		return hop, ErrAddrNotOwned
	}
	if hop, err = s.nextHop(dst); err != nil {
		s.stats.IPv4NoRoute.Add(1)
		return hop, err
	}
	h := wire.IPv4Header{
		ID:           uint16(s.ipID.Add(1)),
		DontFragment: proto == wire.ProtoTCP, // TCP does path MTU discovery
		TTL:          defaultTTL,
		Protocol:     proto,
		Src:          src,
		Dst:          dst,
	}
	if _, err := wire.EncodeIPv4(p.buf[wire.EthernetHeaderLen:], h, n); err != nil {
		return hop, err
	}
	// The destination MAC is filled in when the next hop is resolved.
	wire.EncodeEthernet(p.buf, wire.MAC{}, s.mac, wire.EtherTypeIPv4)
	p.n = headroom + n
	return hop, nil
}

// nextHop picks the address to resolve for dst.
func (s *Stack) nextHop(dst netip.Addr) (netip.Addr, error) {
	if !dst.Is4() || !isUnicast(dst) || isDirectedBroadcast(s.prefix, dst) || s.HasAddress(dst) {
		return netip.Addr{}, ErrNoRoute
	}
	if s.prefix.Contains(dst) {
		return dst, nil
	}
	if s.gw.IsValid() {
		return s.gw, nil
	}
	return netip.Addr{}, ErrNoRoute
}

// output sends a prepared frame to hop's MAC, or holds it for ARP.
func (s *Stack) output(p *packet, hop netip.Addr) error {
	now := s.now()
	s.arpMu.Lock()
	mac, ok, probe := s.arp.lookup(hop, now)
	if ok {
		s.arpMu.Unlock()
		if probe {
			s.sendARPProbe(hop, mac)
		}
		return s.sendHeld(p, mac)
	}
	request, dropped := s.arp.hold(hop, p, now)
	if request {
		s.sendARPRequest(hop)
	}
	s.arpMu.Unlock()
	switch {
	case dropped == p:
		s.drop(&s.stats.ARPTableFull, "ARP table full", nil)
		s.putPacket(p)
	case dropped != nil:
		s.drop(&s.stats.ARPQueueDrops, "ARP queue full", nil)
		s.putPacket(dropped)
	}
	return nil
}

// sendHeld writes a prepared packet to mac, its next hop's address, and
// takes p back. For packets that waited for ARP it is called with arpMu
// held, so that they leave in order, ahead of any sent after resolution.
func (s *Stack) sendHeld(p *packet, mac wire.MAC) error {
	copy(p.buf[0:6], mac[:])
	err := s.writeFrameOffload(p.buf[:p.n], p.off)
	if err == nil {
		s.stats.IPv4Out.Add(1)
	}
	s.putPacket(p)
	return err
}

// failHeld drops a packet whose next hop never answered.
func (s *Stack) failHeld(p *packet) {
	s.drop(&s.stats.ARPResolveFailed, "ARP resolution failed", nil)
	s.putPacket(p)
}

// handleIPv4 validates a received datagram and hands it up. bcast reports
// that the frame was sent to the Ethernet broadcast address.
func (s *Stack) handleIPv4(b []byte, bcast, trusted bool) {
	ip, err := wire.ParseIPv4(b)
	if err != nil {
		if errors.Is(err, wire.ErrBadChecksum) {
			s.drop(&s.stats.IPv4BadChecksum, "bad IPv4 header checksum", nil)
		} else {
			s.drop(&s.stats.IPv4Malformed, "malformed IPv4", err)
		}
		return
	}
	dst := ip.Dst()
	if !s.HasAddress(dst) {
		s.drop(&s.stats.IPv4NotOurs, "IPv4 not addressed to us", nil)
		return
	}
	// RFC 1122 3.3.6: a unicast datagram in a link broadcast is discarded.
	if bcast {
		s.drop(&s.stats.IPv4LinkBroadcast, "unicast IPv4 in link broadcast", nil)
		return
	}
	src := ip.Src()
	if !isUnicast(src) || isDirectedBroadcast(s.prefix, src) || s.HasAddress(src) {
		s.drop(&s.stats.IPv4BadSource, "bad IPv4 source", nil)
		return
	}
	// See the package doc: fragments are never reassembled.
	if ip.IsFragment() {
		s.drop(&s.stats.IPv4Fragments, "IPv4 fragment", nil)
		return
	}
	s.stats.IPv4In.Add(1)
	switch ip.Protocol() {
	case wire.ProtoTCP:
		t := s.transport.Load()
		if t == nil {
			s.drop(&s.stats.TCPNoHandler, "TCP without a handler", nil)
			return
		}
		s.stats.TCPIn.Add(1)
		t.h.handleTCP(src, dst, ip.Payload(), trusted)
	case wire.ProtoICMP:
		s.handleICMP(src, dst, ip.Payload())
	default:
		s.drop(&s.stats.IPv4UnknownProto, "unsupported IP protocol", nil)
	}
}
