package wire

import "encoding/binary"

// ICMPHeaderLen is the length of the ICMP header (type, code, checksum and
// the four type-specific bytes: identifier and sequence for echo).
const ICMPHeaderLen = 8

// ICMP types the stack knows by name.
const (
	ICMPEchoReply       uint8 = 0
	ICMPDestUnreachable uint8 = 3
	ICMPEchoRequest     uint8 = 8
)

var (
	errICMPTruncated   = wrap("icmp: message shorter than 8 bytes", ErrTruncated)
	errICMPChecksum    = wrap("icmp: checksum mismatch", ErrBadChecksum)
	errICMPShortBuffer = wrap("icmp: encode", ErrShortBuffer)
	errICMPType        = wrap("icmp: encode: not an echo type", ErrInvalid)
)

// ICMP is a view of an ICMP message: the whole IPv4 payload.
type ICMP []byte

// ParseICMP checks the length and the checksum (which covers the whole
// message) of the ICMP message b.
func ParseICMP(b []byte) (ICMP, error) {
	if len(b) < ICMPHeaderLen {
		return nil, errICMPTruncated
	}
	// A valid message sums to 0xffff. An all-zero message (an echo reply
	// whose checksum field was left 0) sums to 0 and is rejected too.
	if Checksum(b, 0) != 0xffff {
		return nil, errICMPChecksum
	}
	return ICMP(b), nil
}

// Type is the message type.
func (m ICMP) Type() uint8 { return m[0] }

// Code is the message code.
func (m ICMP) Code() uint8 { return m[1] }

// Checksum is the checksum field.
func (m ICMP) Checksum() uint16 { return binary.BigEndian.Uint16(m[2:4]) }

// ID is the echo identifier (bytes 4-5; meaningless for other types).
func (m ICMP) ID() uint16 { return binary.BigEndian.Uint16(m[4:6]) }

// Seq is the echo sequence number (bytes 6-7; meaningless for other types).
func (m ICMP) Seq() uint16 { return binary.BigEndian.Uint16(m[6:8]) }

// Body is the data after the 8-byte header: the echo payload, or the quoted
// datagram of an error message.
func (m ICMP) Body() []byte { return m[ICMPHeaderLen:] }

// EncodeICMPEcho writes an echo request or reply carrying payload into b,
// checksum included, and returns the message length. payload may overlap
// b[ICMPHeaderLen:] (an in-place reply).
func EncodeICMPEcho(b []byte, typ uint8, id, seq uint16, payload []byte) (int, error) {
	if typ != ICMPEchoRequest && typ != ICMPEchoReply {
		return 0, errICMPType
	}
	n := ICMPHeaderLen + len(payload)
	if len(b) < n {
		return 0, errICMPShortBuffer
	}
	copy(b[ICMPHeaderLen:n], payload)
	b[0] = typ
	b[1] = 0
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint16(b[4:6], id)
	binary.BigEndian.PutUint16(b[6:8], seq)
	binary.BigEndian.PutUint16(b[2:4], ^Checksum(b[:n], 0))
	return n, nil
}
