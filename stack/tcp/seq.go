package tcp

// Seq is a TCP sequence number. Comparisons are modulo 2^32 (RFC 9293
// section 3.4): a is before b when the signed distance from b to a is
// negative, which holds while the two are within 2^31 of each other.
type Seq uint32

// Add returns s advanced by n.
func (s Seq) Add(n uint32) Seq { return s + Seq(n) }

// Sub returns the distance from o up to s; s must not be before o.
func (s Seq) Sub(o Seq) uint32 { return uint32(s - o) }

// Less reports whether s comes before o.
func (s Seq) Less(o Seq) bool { return int32(s-o) < 0 }

// LessEq reports whether s comes before or equals o.
func (s Seq) LessEq(o Seq) bool { return int32(s-o) <= 0 }

// Greater reports whether s comes after o.
func (s Seq) Greater(o Seq) bool { return int32(s-o) > 0 }

// GreaterEq reports whether s comes after or equals o.
func (s Seq) GreaterEq(o Seq) bool { return int32(s-o) >= 0 }

// InWindow reports whether lo <= s < lo+n.
func (s Seq) InWindow(lo Seq, n uint32) bool { return uint32(s-lo) < n }

func seqMax(a, b Seq) Seq {
	if a.Less(b) {
		return b
	}
	return a
}

func seqMin(a, b Seq) Seq {
	if a.Less(b) {
		return a
	}
	return b
}
