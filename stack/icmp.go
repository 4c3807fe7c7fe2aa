package stack

import (
	"net/netip"

	"github.com/zppratt/rfsis/stack/wire"
)

// handleICMP answers echo requests; other messages are counted and ignored.
func (s *Stack) handleICMP(src, dst netip.Addr, b []byte) {
	m, err := wire.ParseICMP(b)
	if err != nil {
		s.drop(&s.stats.ICMPMalformed, "malformed ICMP", err)
		return
	}
	s.stats.ICMPIn.Add(1)
	if m.Type() != wire.ICMPEchoRequest {
		s.stats.ICMPOtherIn.Add(1)
		return
	}
	s.stats.ICMPEchoRequests.Add(1)
	p := s.newPacket()
	n, err := wire.EncodeICMPEcho(p.payload(), wire.ICMPEchoReply, m.ID(), m.Seq(), m.Body())
	if err != nil { // cannot happen: the request fit the same MTU
		s.putPacket(p)
		return
	}
	// Reply from the address the request was sent to.
	if s.sendIPv4(p, dst, src, wire.ProtoICMP, n) == nil {
		s.stats.ICMPEchoReplies.Add(1)
	}
}
