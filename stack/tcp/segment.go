package tcp

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Flags are the TCP control bits.
type Flags uint8

// The control bits we act on (RFC 9293; URG is parsed but unused).
const (
	FlagFIN Flags = 1 << iota
	FlagSYN
	FlagRST
	FlagPSH
	FlagACK
	FlagURG
)

func (f Flags) String() string {
	const names = "FSRPAU"
	b := make([]byte, 0, 6)
	for i := range 6 {
		if f&(1<<i) != 0 {
			b = append(b, names[i])
		}
	}
	if len(b) == 0 {
		return "-"
	}
	return string(b)
}

// Option kinds (RFC 9293, 7323, 2018).
const (
	optEnd           = 0
	optNOP           = 1
	optMSS           = 2
	optWindowScale   = 3
	optSACKPermitted = 4
	optSACK          = 5
	optTimestamps    = 8
)

// HeaderLen is the length of a TCP header without options.
const HeaderLen = 20

// MaxSACKBlocks is the most SACK blocks a segment carries here: three fit
// beside the timestamp option in the 40 bytes of option space.
const MaxSACKBlocks = 4

// SACKBlock is one received range [Start, End) reported by a SACK option.
type SACKBlock struct{ Start, End Seq }

// Segment is a parsed TCP segment: the fields the state machine uses and
// a payload that aliases the buffer it was parsed from.
type Segment struct {
	SrcPort, DstPort uint16
	Seq, Ack         Seq
	Flags            Flags
	Window           uint16 // as on the wire: not yet scaled
	Urgent           uint16

	// Options. MSS 0 and WScale -1 mean absent.
	MSS           uint16
	WScale        int8
	SACKPermitted bool
	HasTS         bool
	TSVal, TSEcr  uint32
	NumSACK       uint8
	SACK          [MaxSACKBlocks]SACKBlock

	Payload []byte
}

// Len is the sequence space the segment occupies: payload plus SYN and FIN.
func (s *Segment) Len() uint32 {
	n := uint32(len(s.Payload))
	if s.Flags&FlagSYN != 0 {
		n++
	}
	if s.Flags&FlagFIN != 0 {
		n++
	}
	return n
}

func (s *Segment) String() string {
	return fmt.Sprintf("%d>%d [%v] seq=%d ack=%d win=%d len=%d", s.SrcPort, s.DstPort, s.Flags, s.Seq, s.Ack, s.Window, len(s.Payload))
}

// Errors returned by Parse. They are sentinels for errors.Is.
var (
	ErrTruncated = errors.New("tcp: segment truncated")
	ErrBadOffset = errors.New("tcp: bad data offset")
	ErrBadOption = errors.New("tcp: malformed option")
)

// Parse decodes b, a whole TCP segment (the IP payload). It does not verify
// the checksum: that needs the IP layer's pseudo-header, so the caller
// does it (wire.Checksum). The payload aliases b.
func Parse(b []byte, s *Segment) error {
	if len(b) < HeaderLen {
		return fmt.Errorf("%w: %d bytes", ErrTruncated, len(b))
	}
	off := int(b[12]>>4) * 4
	if off < HeaderLen || off > len(b) {
		return fmt.Errorf("%w: %d in %d bytes", ErrBadOffset, off, len(b))
	}
	*s = Segment{
		SrcPort: binary.BigEndian.Uint16(b[0:]),
		DstPort: binary.BigEndian.Uint16(b[2:]),
		Seq:     Seq(binary.BigEndian.Uint32(b[4:])),
		Ack:     Seq(binary.BigEndian.Uint32(b[8:])),
		Flags:   Flags(b[13] & 0x3f),
		Window:  binary.BigEndian.Uint16(b[14:]),
		Urgent:  binary.BigEndian.Uint16(b[18:]),
		WScale:  -1,
		Payload: b[off:],
	}
	return parseOptions(b[HeaderLen:off], s)
}

func parseOptions(o []byte, s *Segment) error {
	for len(o) > 0 {
		kind := o[0]
		if kind == optEnd {
			return nil
		}
		if kind == optNOP {
			o = o[1:]
			continue
		}
		if len(o) < 2 || int(o[1]) < 2 || int(o[1]) > len(o) {
			return fmt.Errorf("%w: kind %d", ErrBadOption, kind)
		}
		l := int(o[1])
		body := o[2:l]
		switch kind {
		case optMSS:
			if l != 4 {
				return fmt.Errorf("%w: MSS length %d", ErrBadOption, l)
			}
			s.MSS = binary.BigEndian.Uint16(body)
		case optWindowScale:
			if l != 3 {
				return fmt.Errorf("%w: window scale length %d", ErrBadOption, l)
			}
			// RFC 7323 2.3: a shift above 14 is used as 14.
			s.WScale = int8(min(body[0], 14))
		case optSACKPermitted:
			if l != 2 {
				return fmt.Errorf("%w: SACK-permitted length %d", ErrBadOption, l)
			}
			s.SACKPermitted = true
		case optTimestamps:
			if l != 10 {
				return fmt.Errorf("%w: timestamps length %d", ErrBadOption, l)
			}
			s.HasTS = true
			s.TSVal = binary.BigEndian.Uint32(body)
			s.TSEcr = binary.BigEndian.Uint32(body[4:])
		case optSACK:
			if (l-2)%8 != 0 {
				return fmt.Errorf("%w: SACK length %d", ErrBadOption, l)
			}
			for i := 0; i+8 <= len(body) && int(s.NumSACK) < MaxSACKBlocks; i += 8 {
				s.SACK[s.NumSACK] = SACKBlock{
					Start: Seq(binary.BigEndian.Uint32(body[i:])),
					End:   Seq(binary.BigEndian.Uint32(body[i+4:])),
				}
				s.NumSACK++
			}
		}
		// Unknown options are skipped by their length (RFC 9293 3.2).
		o = o[l:]
	}
	return nil
}

// OptionsLen is the option bytes Marshal writes for s, padded to 4.
func (s *Segment) OptionsLen() int {
	n := 0
	if s.MSS != 0 {
		n += 4
	}
	if s.WScale >= 0 {
		n += 4 // NOP + 3
	}
	switch {
	case s.SACKPermitted && s.HasTS:
		n += 12 // SACK-permitted packed beside timestamps, as Linux does
	case s.SACKPermitted:
		n += 4 // NOP NOP + 2
	case s.HasTS:
		n += 12 // NOP NOP + 10
	}
	if k := s.sackFit(n); k > 0 {
		n += 4 + 8*k // NOP NOP + 2 + blocks
	}
	return n
}

// sackFit is how many of the SACK blocks fit in the 40 bytes of option
// space beside n bytes of other options; the rest are left out (RFC 2018
// section 3), never the header length overflowed.
func (s *Segment) sackFit(n int) int {
	k := int(s.NumSACK)
	for k > 0 && n+4+8*k > 40 {
		k--
	}
	return k
}

// Marshal writes the header, options and payload of s into b and returns
// the length written. b must hold HeaderLen+OptionsLen()+len(Payload)
// bytes. When checksum is not nil, the checksum field is filled in from
// checksum(segment, pseudo), a one's-complement sum such as wire.Checksum,
// with pseudo the pseudo-header's partial sum from the IP layer (see
// wire.PseudoHeaderChecksum); when it is nil the field is left zero.
func (s *Segment) Marshal(b []byte, pseudo uint16, checksum func([]byte, uint16) uint16) int {
	optLen := s.OptionsLen()
	hl := HeaderLen + optLen
	binary.BigEndian.PutUint16(b[0:], s.SrcPort)
	binary.BigEndian.PutUint16(b[2:], s.DstPort)
	binary.BigEndian.PutUint32(b[4:], uint32(s.Seq))
	binary.BigEndian.PutUint32(b[8:], uint32(s.Ack))
	b[12] = byte(hl/4) << 4
	b[13] = byte(s.Flags)
	binary.BigEndian.PutUint16(b[14:], s.Window)
	b[16], b[17] = 0, 0
	binary.BigEndian.PutUint16(b[18:], s.Urgent)
	o := b[HeaderLen:hl]
	if s.MSS != 0 {
		o[0], o[1] = optMSS, 4
		binary.BigEndian.PutUint16(o[2:], s.MSS)
		o = o[4:]
	}
	if s.SACKPermitted && s.HasTS {
		// The common SYN layout: SACK-permitted then timestamps, 12 bytes.
		o[0], o[1] = optSACKPermitted, 2
		o[2], o[3] = optTimestamps, 10
		binary.BigEndian.PutUint32(o[4:], s.TSVal)
		binary.BigEndian.PutUint32(o[8:], s.TSEcr)
		o = o[12:]
	} else {
		if s.SACKPermitted {
			o[0], o[1], o[2], o[3] = optNOP, optNOP, optSACKPermitted, 2
			o = o[4:]
		}
		if s.HasTS {
			o[0], o[1], o[2], o[3] = optNOP, optNOP, optTimestamps, 10
			binary.BigEndian.PutUint32(o[4:], s.TSVal)
			binary.BigEndian.PutUint32(o[8:], s.TSEcr)
			o = o[12:]
		}
	}
	if s.WScale >= 0 {
		o[0], o[1], o[2], o[3] = optNOP, optWindowScale, 3, byte(s.WScale)
		o = o[4:]
	}
	if k := len(o) / 8; k > 0 {
		o[0], o[1], o[2], o[3] = optNOP, optNOP, optSACK, byte(2+8*k)
		o = o[4:]
		for i := range k {
			binary.BigEndian.PutUint32(o[0:], uint32(s.SACK[i].Start))
			binary.BigEndian.PutUint32(o[4:], uint32(s.SACK[i].End))
			o = o[8:]
		}
	}
	n := hl + copy(b[hl:], s.Payload)
	if checksum != nil {
		binary.BigEndian.PutUint16(b[16:], ^checksum(b[:n], pseudo))
	}
	return n
}
