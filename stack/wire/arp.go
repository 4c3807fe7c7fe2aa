package wire

import (
	"encoding/binary"
	"net/netip"
)

// ARPLen is the length of an ARP packet for Ethernet and IPv4 (RFC 826).
const ARPLen = 28

// ARP operations.
const (
	ARPRequest uint16 = 1
	ARPReply   uint16 = 2
)

const (
	arpHTypeEthernet = 1
	arpHLenEthernet  = 6
	arpPLenIPv4      = 4
)

var (
	errARPTruncated   = wrap("arp: packet shorter than 28 bytes", ErrTruncated)
	errARPUnsupported = wrap("arp: not Ethernet/IPv4", ErrUnsupported)
	errARPShortBuffer = wrap("arp: encode", ErrShortBuffer)
	errARPAddr        = wrap("arp: encode: protocol address is not IPv4", ErrInvalid)
)

// ARP is a view of an Ethernet/IPv4 ARP packet.
type ARP []byte

// ParseARP checks that b starts with an ARP packet for Ethernet hardware
// and IPv4 protocol addresses, the only kind this stack speaks, and returns a
// view bounded to ARPLen (trailing link padding is cut). The operation is not
// checked: RFC 826 merges sender addresses whatever it is.
func ParseARP(b []byte) (ARP, error) {
	if len(b) < ARPLen {
		return nil, errARPTruncated
	}
	if binary.BigEndian.Uint16(b[0:2]) != arpHTypeEthernet ||
		binary.BigEndian.Uint16(b[2:4]) != EtherTypeIPv4 ||
		b[4] != arpHLenEthernet || b[5] != arpPLenIPv4 {
		return nil, errARPUnsupported
	}
	return ARP(b[:ARPLen]), nil
}

// Op is the operation (ARPRequest, ARPReply, or another value).
func (a ARP) Op() uint16 { return binary.BigEndian.Uint16(a[6:8]) }

// SenderMAC is the sender hardware address (SHA).
func (a ARP) SenderMAC() MAC { return MAC(a[8:14]) }

// SenderIP is the sender protocol address (SPA).
func (a ARP) SenderIP() netip.Addr { return netip.AddrFrom4([4]byte(a[14:18])) }

// TargetMAC is the target hardware address (THA).
func (a ARP) TargetMAC() MAC { return MAC(a[18:24]) }

// TargetIP is the target protocol address (TPA).
func (a ARP) TargetIP() netip.Addr { return netip.AddrFrom4([4]byte(a[24:28])) }

// EncodeARP writes an Ethernet/IPv4 ARP packet into b[:ARPLen] and returns
// its length.
func EncodeARP(b []byte, op uint16, senderMAC MAC, senderIP netip.Addr, targetMAC MAC, targetIP netip.Addr) (int, error) {
	if len(b) < ARPLen {
		return 0, errARPShortBuffer
	}
	if !senderIP.Is4() || !targetIP.Is4() {
		return 0, errARPAddr
	}
	binary.BigEndian.PutUint16(b[0:2], arpHTypeEthernet)
	binary.BigEndian.PutUint16(b[2:4], EtherTypeIPv4)
	b[4] = arpHLenEthernet
	b[5] = arpPLenIPv4
	binary.BigEndian.PutUint16(b[6:8], op)
	copy(b[8:14], senderMAC[:])
	s := senderIP.As4()
	copy(b[14:18], s[:])
	copy(b[18:24], targetMAC[:])
	t := targetIP.As4()
	copy(b[24:28], t[:])
	return ARPLen, nil
}
