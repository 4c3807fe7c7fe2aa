package wire

import (
	"encoding/binary"
	"net/netip"
)

// Checksum adds b to the running one's-complement sum initial (RFC 1071) and
// returns the folded 16-bit sum, not yet complemented. Chain calls to sum
// discontiguous pieces; every piece but the last must have even length.
func Checksum(b []byte, initial uint16) uint16 {
	sum := uint64(initial)
	// Eight bytes at a time: the carries collect in the upper half of sum.
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		sum += v >> 32
		sum += v & 0xffffffff
		b = b[8:]
	}
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return uint16(sum)
}

// PseudoHeaderChecksum is the partial sum of the IPv4 pseudo-header that
// TCP and UDP checksums cover (RFC 9293 section 3.1).
func PseudoHeaderChecksum(src, dst netip.Addr, proto uint8, length uint16) uint16 {
	s, d := src.As4(), dst.As4()
	sum := uint32(binary.BigEndian.Uint16(s[0:])) + uint32(binary.BigEndian.Uint16(s[2:])) +
		uint32(binary.BigEndian.Uint16(d[0:])) + uint32(binary.BigEndian.Uint16(d[2:])) +
		uint32(proto) + uint32(length)
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return uint16(sum)
}
