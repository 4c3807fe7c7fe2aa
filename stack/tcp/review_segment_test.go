package tcp

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// reviewFullOptions is a legal 60-byte header whose 40 option bytes hold
// window scale (3), timestamps (10) and three SACK blocks (26) plus a NOP.
func reviewFullOptions() []byte {
	b := make([]byte, 60)
	binary.BigEndian.PutUint16(b[0:], 1)
	binary.BigEndian.PutUint16(b[2:], 2)
	b[12] = 15 << 4
	b[13] = byte(FlagACK)
	o := b[20:]
	o[0], o[1], o[2] = optWindowScale, 3, 7
	o[3], o[4] = optTimestamps, 10
	binary.BigEndian.PutUint32(o[5:], 111)
	binary.BigEndian.PutUint32(o[9:], 222)
	o[13], o[14] = optSACK, 26
	for i := range 6 {
		binary.BigEndian.PutUint32(o[15+4*i:], uint32(1000*(i+1)))
	}
	o[39] = optNOP
	return b
}

// TestReview_MarshalOptionsOverflow: Marshal keeps the options within the
// 40-byte option space. A segment Parse accepts (window scale +
// timestamps + 3 SACK blocks = 39 bytes) takes 44 bytes with each option
// padded to 4: written whole, the data offset nibble would overflow
// (64/4 = 16 -> 0) into an unparseable header. The stack itself never
// builds such a segment (3 SACK blocks with timestamps fit in 40 padded
// bytes, and MSS and window scale only go on SYNs), but FuzzParse's round
// trip does: Marshal leaves out the SACK blocks that do not fit.
func TestReview_MarshalOptionsOverflow(t *testing.T) {
	var s Segment
	require.NoError(t, Parse(reviewFullOptions(), &s))
	require.Equal(t, uint8(3), s.NumSACK)
	assert.LessOrEqual(t, s.OptionsLen(), 40, "options overflow the 40-byte option space")
	out := make([]byte, HeaderLen+s.OptionsLen()+len(s.Payload))
	n := s.Marshal(out, 0, nil)
	var s2 Segment
	assert.NoError(t, Parse(out[:n], &s2), "Marshal output does not parse")
}
