package wire

import (
	"encoding/binary"
	"net/netip"
)

// IPv4MinHeaderLen is the length of an IPv4 header without options.
const IPv4MinHeaderLen = 20

// IPv4MaxLen is the largest IPv4 datagram.
const IPv4MaxLen = 65535

// IP protocol numbers the stack knows by name.
const (
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
)

const (
	ipv4FlagDF      = 0x4000
	ipv4FlagMF      = 0x2000
	ipv4FragOffMask = 0x1fff
)

var (
	errIPv4Truncated   = wrap("ipv4: packet shorter than its header", ErrTruncated)
	errIPv4Version     = wrap("ipv4: version is not 4", ErrBadVersion)
	errIPv4HeaderLen   = wrap("ipv4: IHL below 5", ErrBadHeaderLen)
	errIPv4TotalShort  = wrap("ipv4: total length below header length", ErrBadLength)
	errIPv4TotalLong   = wrap("ipv4: total length beyond the bytes received", ErrTruncated)
	errIPv4Checksum    = wrap("ipv4: header checksum mismatch", ErrBadChecksum)
	errIPv4ShortBuffer = wrap("ipv4: encode", ErrShortBuffer)
	errIPv4Addr        = wrap("ipv4: encode: address is not IPv4", ErrInvalid)
	errIPv4TooLong     = wrap("ipv4: encode: payload too long", ErrInvalid)
	errIPv4FragOff     = wrap("ipv4: encode: fragment offset not a multiple of 8 below 65536", ErrInvalid)
)

// IPv4 is a view of an IPv4 datagram, header and payload, bounded to the
// header's total length.
type IPv4 []byte

// ParseIPv4 validates the header at the start of b (version, IHL, total
// length, header checksum) and returns a view cut to the total length, so
// that link padding after the datagram is not taken for payload.
func ParseIPv4(b []byte) (IPv4, error) {
	if len(b) < IPv4MinHeaderLen {
		return nil, errIPv4Truncated
	}
	if b[0]>>4 != 4 {
		return nil, errIPv4Version
	}
	hl := int(b[0]&0x0f) * 4
	if hl < IPv4MinHeaderLen {
		return nil, errIPv4HeaderLen
	}
	if len(b) < hl {
		return nil, errIPv4Truncated
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total < hl {
		return nil, errIPv4TotalShort
	}
	if total > len(b) {
		return nil, errIPv4TotalLong
	}
	// A correct header sums to 0xffff; the sum of a header with version 4
	// can never be the other zero, 0x0000.
	if Checksum(b[:hl], 0) != 0xffff {
		return nil, errIPv4Checksum
	}
	return IPv4(b[:total]), nil
}

// HeaderLen is the header length in bytes, options included.
func (p IPv4) HeaderLen() int { return int(p[0]&0x0f) * 4 }

// TOS is the type-of-service byte (DSCP and ECN).
func (p IPv4) TOS() uint8 { return p[1] }

// TotalLen is the datagram length from the header.
func (p IPv4) TotalLen() int { return int(binary.BigEndian.Uint16(p[2:4])) }

// ID is the identification field.
func (p IPv4) ID() uint16 { return binary.BigEndian.Uint16(p[4:6]) }

// DontFragment reports the DF flag.
func (p IPv4) DontFragment() bool { return binary.BigEndian.Uint16(p[6:8])&ipv4FlagDF != 0 }

// MoreFragments reports the MF flag.
func (p IPv4) MoreFragments() bool { return binary.BigEndian.Uint16(p[6:8])&ipv4FlagMF != 0 }

// FragmentOffset is the fragment offset in bytes (the field times 8).
func (p IPv4) FragmentOffset() int {
	return int(binary.BigEndian.Uint16(p[6:8])&ipv4FragOffMask) * 8
}

// IsFragment reports whether the datagram is a piece of a larger one
// (MF set or a non-zero offset).
func (p IPv4) IsFragment() bool {
	return binary.BigEndian.Uint16(p[6:8])&(ipv4FlagMF|ipv4FragOffMask) != 0
}

// TTL is the time to live.
func (p IPv4) TTL() uint8 { return p[8] }

// Protocol is the payload's protocol number.
func (p IPv4) Protocol() uint8 { return p[9] }

// Checksum is the header checksum field.
func (p IPv4) Checksum() uint16 { return binary.BigEndian.Uint16(p[10:12]) }

// Src is the source address.
func (p IPv4) Src() netip.Addr { return netip.AddrFrom4([4]byte(p[12:16])) }

// Dst is the destination address.
func (p IPv4) Dst() netip.Addr { return netip.AddrFrom4([4]byte(p[16:20])) }

// Options is the header's option bytes (usually empty).
func (p IPv4) Options() []byte { return p[IPv4MinHeaderLen:p.HeaderLen()] }

// Payload is the data after the header, up to the total length.
func (p IPv4) Payload() []byte { return p[p.HeaderLen():] }

// IPv4Header holds the fields EncodeIPv4 writes. The header it writes has no
// options.
type IPv4Header struct {
	TOS            uint8
	ID             uint16
	DontFragment   bool
	MoreFragments  bool
	FragmentOffset int // in bytes, a multiple of 8
	TTL            uint8
	Protocol       uint8
	Src, Dst       netip.Addr
}

// EncodeIPv4 writes a 20-byte header for a datagram carrying payloadLen bytes
// into b[:IPv4MinHeaderLen], checksum included, and returns its length. The
// payload itself is the caller's: it goes at b[IPv4MinHeaderLen:].
func EncodeIPv4(b []byte, h IPv4Header, payloadLen int) (int, error) {
	if len(b) < IPv4MinHeaderLen {
		return 0, errIPv4ShortBuffer
	}
	if !h.Src.Is4() || !h.Dst.Is4() {
		return 0, errIPv4Addr
	}
	if payloadLen < 0 || payloadLen > IPv4MaxLen-IPv4MinHeaderLen {
		return 0, errIPv4TooLong
	}
	if h.FragmentOffset < 0 || h.FragmentOffset%8 != 0 || h.FragmentOffset/8 > ipv4FragOffMask {
		return 0, errIPv4FragOff
	}
	flags := uint16(h.FragmentOffset / 8)
	if h.DontFragment {
		flags |= ipv4FlagDF
	}
	if h.MoreFragments {
		flags |= ipv4FlagMF
	}
	b[0] = 4<<4 | IPv4MinHeaderLen/4
	b[1] = h.TOS
	binary.BigEndian.PutUint16(b[2:4], uint16(IPv4MinHeaderLen+payloadLen))
	binary.BigEndian.PutUint16(b[4:6], h.ID)
	binary.BigEndian.PutUint16(b[6:8], flags)
	b[8] = h.TTL
	b[9] = h.Protocol
	b[10], b[11] = 0, 0
	s, d := h.Src.As4(), h.Dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:12], ^Checksum(b[:IPv4MinHeaderLen], 0))
	return IPv4MinHeaderLen, nil
}
