package wire

import (
	"encoding/binary"
	"errors"
)

// Sentinel errors. Parsers and encoders return them wrapped with the layer
// and the reason; test with errors.Is. The wrapped values are built once, so
// rejecting a malformed packet allocates nothing either.
var (
	ErrTruncated    = errors.New("truncated")
	ErrBadChecksum  = errors.New("bad checksum")
	ErrBadVersion   = errors.New("bad version")
	ErrBadHeaderLen = errors.New("bad header length")
	ErrBadLength    = errors.New("bad total length")
	ErrUnsupported  = errors.New("unsupported format")
	ErrShortBuffer  = errors.New("buffer too short")
	ErrInvalid      = errors.New("invalid field")
)

// wireError is a sentinel with context. Every instance is a package variable.
type wireError struct {
	msg string
	err error
}

func (e *wireError) Error() string { return e.msg + ": " + e.err.Error() }
func (e *wireError) Unwrap() error { return e.err }

func wrap(msg string, err error) error { return &wireError{msg: msg, err: err} }

// EthernetHeaderLen is the length of an Ethernet II header (no 802.1Q tag).
const EthernetHeaderLen = 14

// EtherTypes the stack knows by name.
const (
	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeARP  uint16 = 0x0806
	EtherTypeIPv6 uint16 = 0x86DD
)

// MAC is an Ethernet address held by value, so comparing, copying and using
// it as a map key cost nothing.
type MAC [6]byte

// BroadcastMAC is ff:ff:ff:ff:ff:ff.
var BroadcastMAC = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// MACFromSlice converts a 6-byte slice (a net.HardwareAddr, say).
func MACFromSlice(b []byte) (MAC, bool) {
	if len(b) != 6 {
		return MAC{}, false
	}
	return MAC(b), true
}

// IsBroadcast reports whether m is ff:ff:ff:ff:ff:ff.
func (m MAC) IsBroadcast() bool { return m == BroadcastMAC }

// IsMulticast reports whether the group bit is set (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 != 0 }

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

func (m MAC) String() string {
	const hex = "0123456789abcdef"
	var b [17]byte
	for i, v := range m {
		if i > 0 {
			b[i*3-1] = ':'
		}
		b[i*3] = hex[v>>4]
		b[i*3+1] = hex[v&0xf]
	}
	return string(b[:])
}

var errEthernetTruncated = wrap("ethernet: frame shorter than header", ErrTruncated)

// Ethernet is a view of an Ethernet II frame: header then payload, no FCS.
type Ethernet []byte

// ParseEthernet checks that b holds an Ethernet header and returns a view of
// it. The payload may include link padding; upper layers bound it by their
// own length fields.
func ParseEthernet(b []byte) (Ethernet, error) {
	if len(b) < EthernetHeaderLen {
		return nil, errEthernetTruncated
	}
	return Ethernet(b), nil
}

// Dst is the destination address.
func (e Ethernet) Dst() MAC { return MAC(e[0:6]) }

// Src is the source address.
func (e Ethernet) Src() MAC { return MAC(e[6:12]) }

// EtherType is the type of the payload.
func (e Ethernet) EtherType() uint16 { return binary.BigEndian.Uint16(e[12:14]) }

// Payload is everything after the header.
func (e Ethernet) Payload() []byte { return e[EthernetHeaderLen:] }

var errEthernetShortBuffer = wrap("ethernet: encode", ErrShortBuffer)

// EncodeEthernet writes an Ethernet II header into b[:EthernetHeaderLen] and
// returns its length.
func EncodeEthernet(b []byte, dst, src MAC, etherType uint16) (int, error) {
	if len(b) < EthernetHeaderLen {
		return 0, errEthernetShortBuffer
	}
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], etherType)
	return EthernetHeaderLen, nil
}
