package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// naiveChecksum is RFC 1071 written the obvious way: 16-bit words, an odd
// byte padded with zero, end-around carry after every addition.
func naiveChecksum(b []byte, initial uint16) uint16 {
	sum := uint32(initial)
	for i := 0; i < len(b); i += 2 {
		w := uint32(b[i]) << 8
		if i+1 < len(b) {
			w |= uint32(b[i+1])
		}
		sum += w
		if sum > 0xffff {
			sum = sum&0xffff + 1
		}
	}
	return uint16(sum)
}

func TestChecksumMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 2100)
	for n := 0; n <= len(buf); n++ {
		for _, fill := range []string{"random", "ff", "zero"} {
			b := buf[:n]
			for i := range b {
				switch fill {
				case "random":
					b[i] = byte(r.Uint32())
				case "ff":
					b[i] = 0xff
				default:
					b[i] = 0
				}
			}
			for _, init := range []uint16{0, 1, 0xfffe, 0xffff, uint16(r.Uint32())} {
				if got, want := Checksum(b, init), naiveChecksum(b, init); got != want {
					t.Fatalf("len %d fill %s initial %#x: got %#04x want %#04x", n, fill, init, got, want)
				}
			}
		}
	}
}

func TestChecksumKnownVector(t *testing.T) {
	// The example of RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := Checksum(b, 0); got != 0xddf2 {
		t.Fatalf("got %#04x want 0xddf2", got)
	}
	// Odd length: the last byte counts as the high byte of a word.
	if got := Checksum([]byte{0x12}, 0); got != 0x1200 {
		t.Fatalf("odd byte: got %#04x want 0x1200", got)
	}
}

func TestChecksumChaining(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		n := r.IntN(300)
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		whole := Checksum(b, 0)
		// Split at up to three even points; only the last piece may be odd.
		sum := uint16(0)
		rest := b
		for range 3 {
			if len(rest) < 2 {
				break
			}
			k := r.IntN(len(rest)/2+1) * 2
			sum = Checksum(rest[:k], sum)
			rest = rest[k:]
		}
		sum = Checksum(rest, sum)
		if sum != whole {
			t.Fatalf("len %d: chained %#04x whole %#04x", n, sum, whole)
		}
	}
}

func TestPseudoHeaderChecksum(t *testing.T) {
	src := netip.MustParseAddr("10.77.250.1")
	dst := netip.MustParseAddr("192.168.255.254")
	var ph [12]byte
	s, d := src.As4(), dst.As4()
	copy(ph[0:4], s[:])
	copy(ph[4:8], d[:])
	ph[9] = ProtoTCP
	binary.BigEndian.PutUint16(ph[10:], 1480)
	if got, want := PseudoHeaderChecksum(src, dst, ProtoTCP, 1480), naiveChecksum(ph[:], 0); got != want {
		t.Fatalf("got %#04x want %#04x", got, want)
	}
}

var (
	macA = MAC{0x02, 0, 0, 0, 0, 0x0a}
	macB = MAC{0x02, 0, 0, 0, 0, 0x0b}
	ipA  = netip.MustParseAddr("10.77.1.1")
	ipB  = netip.MustParseAddr("10.77.1.2")
)

func TestMAC(t *testing.T) {
	if s := (MAC{0x02, 0xab, 0, 0x10, 0xff, 0x01}).String(); s != "02:ab:00:10:ff:01" {
		t.Fatalf("String: %q", s)
	}
	if !BroadcastMAC.IsBroadcast() || !BroadcastMAC.IsMulticast() || macA.IsMulticast() || !(MAC{0x01}).IsMulticast() {
		t.Fatal("broadcast/multicast predicates")
	}
	if !(MAC{}).IsZero() || macA.IsZero() {
		t.Fatal("IsZero")
	}
	if m, ok := MACFromSlice([]byte{1, 2, 3, 4, 5, 6}); !ok || m != (MAC{1, 2, 3, 4, 5, 6}) {
		t.Fatal("MACFromSlice")
	}
	if _, ok := MACFromSlice([]byte{1, 2, 3}); ok {
		t.Fatal("MACFromSlice accepted 3 bytes")
	}
}

func TestEthernet(t *testing.T) {
	b := make([]byte, 20)
	n, err := EncodeEthernet(b, macB, macA, EtherTypeARP)
	if err != nil || n != EthernetHeaderLen {
		t.Fatalf("encode: %d %v", n, err)
	}
	e, err := ParseEthernet(b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Dst() != macB || e.Src() != macA || e.EtherType() != EtherTypeARP || len(e.Payload()) != 6 {
		t.Fatalf("fields: %v %v %#x %d", e.Dst(), e.Src(), e.EtherType(), len(e.Payload()))
	}
	if _, err := ParseEthernet(b[:13]); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short frame: %v", err)
	}
	if _, err := EncodeEthernet(b[:13], macB, macA, 1); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short buffer: %v", err)
	}
}

func TestARP(t *testing.T) {
	b := make([]byte, 46) // as it arrives: padded to the Ethernet minimum
	n, err := EncodeARP(b, ARPReply, macA, ipA, macB, ipB)
	if err != nil || n != ARPLen {
		t.Fatalf("encode: %d %v", n, err)
	}
	a, err := ParseARP(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != ARPLen || a.Op() != ARPReply || a.SenderMAC() != macA || a.SenderIP() != ipA ||
		a.TargetMAC() != macB || a.TargetIP() != ipB {
		t.Fatalf("fields: %d %d %v %v %v %v", len(a), a.Op(), a.SenderMAC(), a.SenderIP(), a.TargetMAC(), a.TargetIP())
	}
	// Byte layout against RFC 826 for Ethernet/IPv4.
	want := []byte{0, 1, 8, 0, 6, 4, 0, 2, 2, 0, 0, 0, 0, 0x0a, 10, 77, 1, 1, 2, 0, 0, 0, 0, 0x0b, 10, 77, 1, 2}
	if !bytes.Equal(b[:ARPLen], want) {
		t.Fatalf("layout\n got %x\nwant %x", b[:ARPLen], want)
	}
	if _, err := ParseARP(b[:27]); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short: %v", err)
	}
	for _, i := range []int{1, 3, 4, 5} { // htype, ptype, hlen, plen
		c := bytes.Clone(b)
		c[i]++
		if _, err := ParseARP(c); !errors.Is(err, ErrUnsupported) {
			t.Fatalf("byte %d changed: %v", i, err)
		}
	}
	if _, err := EncodeARP(b, ARPRequest, macA, netip.MustParseAddr("::1"), macB, ipB); !errors.Is(err, ErrInvalid) {
		t.Fatalf("IPv6 sender: %v", err)
	}
	if _, err := EncodeARP(b[:27], ARPRequest, macA, ipA, macB, ipB); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short buffer: %v", err)
	}
}

// buildIPv4 returns a datagram with the given payload and trailing padding.
func buildIPv4(t testing.TB, h IPv4Header, payload []byte, pad int) []byte {
	t.Helper()
	b := make([]byte, IPv4MinHeaderLen+len(payload)+pad)
	if _, err := EncodeIPv4(b, h, len(payload)); err != nil {
		t.Fatal(err)
	}
	copy(b[IPv4MinHeaderLen:], payload)
	return b
}

func TestIPv4RoundTrip(t *testing.T) {
	h := IPv4Header{TOS: 0x10, ID: 0xbeef, DontFragment: true, TTL: 64, Protocol: ProtoTCP, Src: ipA, Dst: ipB}
	payload := []byte("hello, world")
	b := buildIPv4(t, h, payload, 6)
	p, err := ParseIPv4(b)
	if err != nil {
		t.Fatal(err)
	}
	if p.HeaderLen() != 20 || p.TOS() != 0x10 || p.TotalLen() != 32 || p.ID() != 0xbeef || !p.DontFragment() ||
		p.MoreFragments() || p.FragmentOffset() != 0 || p.IsFragment() || p.TTL() != 64 ||
		p.Protocol() != ProtoTCP || p.Src() != ipA || p.Dst() != ipB || len(p.Options()) != 0 {
		t.Fatalf("fields wrong: % x", []byte(p))
	}
	if !bytes.Equal(p.Payload(), payload) {
		t.Fatalf("payload %q: padding not stripped", p.Payload())
	}
	if Checksum(b[:20], 0) != 0xffff || p.Checksum() == 0 {
		t.Fatal("header checksum does not verify")
	}

	h.DontFragment, h.MoreFragments, h.FragmentOffset = false, true, 1480
	p, err = ParseIPv4(buildIPv4(t, h, payload, 0))
	if err != nil {
		t.Fatal(err)
	}
	if !p.MoreFragments() || p.FragmentOffset() != 1480 || !p.IsFragment() || p.DontFragment() {
		t.Fatal("fragment fields")
	}
	h.MoreFragments = false
	p, _ = ParseIPv4(buildIPv4(t, h, payload, 0))
	if !p.IsFragment() {
		t.Fatal("last fragment (offset only) not reported as a fragment")
	}
}

func TestIPv4Options(t *testing.T) {
	h := IPv4Header{TTL: 1, Protocol: ProtoICMP, Src: ipA, Dst: ipB}
	b := make([]byte, 24+4)
	if _, err := EncodeIPv4(b, h, 8); err != nil {
		t.Fatal(err)
	}
	// Grow the header to IHL 6 with a NOP-padded option word.
	copy(b[24:], "data")
	b[0] = 0x46
	copy(b[20:24], []byte{1, 1, 1, 0})
	binary.BigEndian.PutUint16(b[2:], 28)
	b[10], b[11] = 0, 0
	binary.BigEndian.PutUint16(b[10:], ^Checksum(b[:24], 0))
	p, err := ParseIPv4(b)
	if err != nil {
		t.Fatal(err)
	}
	if p.HeaderLen() != 24 || !bytes.Equal(p.Options(), []byte{1, 1, 1, 0}) || string(p.Payload()) != "data" {
		t.Fatalf("options %x payload %q", p.Options(), p.Payload())
	}
}

func TestIPv4Errors(t *testing.T) {
	good := buildIPv4(t, IPv4Header{TTL: 64, Protocol: ProtoTCP, Src: ipA, Dst: ipB}, make([]byte, 20), 0)
	fix := func(b []byte) []byte {
		b[10], b[11] = 0, 0
		hl := int(b[0]&0xf) * 4
		if hl >= 20 && hl <= len(b) {
			binary.BigEndian.PutUint16(b[10:], ^Checksum(b[:hl], 0))
		}
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"19 bytes", good[:19], ErrTruncated},
		{"version 6", fix(func() []byte { b := bytes.Clone(good); b[0] = 0x65; return b }()), ErrBadVersion},
		{"IHL 4", func() []byte { b := bytes.Clone(good); b[0] = 0x44; return b }(), ErrBadHeaderLen},
		{"IHL beyond data", fix(func() []byte { b := bytes.Clone(good[:24]); b[0] = 0x47; return b }()), ErrTruncated},
		{"total < IHL", fix(func() []byte { b := bytes.Clone(good); binary.BigEndian.PutUint16(b[2:], 19); return b }()), ErrBadLength},
		{"total > data", fix(func() []byte { b := bytes.Clone(good); binary.BigEndian.PutUint16(b[2:], 41); return b }()), ErrTruncated},
		{"checksum", func() []byte { b := bytes.Clone(good); b[8]--; return b }(), ErrBadChecksum},
	}
	for _, c := range cases {
		if _, err := ParseIPv4(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v want %v", c.name, err, c.want)
		}
	}
	if _, err := ParseIPv4(good); err != nil {
		t.Fatalf("good packet: %v", err)
	}

	h := IPv4Header{Src: ipA, Dst: ipB}
	b := make([]byte, 20)
	if _, err := EncodeIPv4(b[:19], h, 0); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("short buffer: %v", err)
	}
	if _, err := EncodeIPv4(b, IPv4Header{Src: ipA}, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("no dst: %v", err)
	}
	if _, err := EncodeIPv4(b, h, 65516); !errors.Is(err, ErrInvalid) {
		t.Errorf("too long: %v", err)
	}
	if _, err := EncodeIPv4(b, h, 65515); err != nil {
		t.Errorf("longest: %v", err)
	}
	for _, off := range []int{-8, 4, 65536} {
		h.FragmentOffset = off
		if _, err := EncodeIPv4(b, h, 0); !errors.Is(err, ErrInvalid) {
			t.Errorf("offset %d: %v", off, err)
		}
	}
}

func TestICMPEcho(t *testing.T) {
	for _, payload := range [][]byte{nil, []byte("x"), []byte("abcdefghijklmnopqrstuvwabcdefghi")} {
		b := make([]byte, ICMPHeaderLen+len(payload))
		n, err := EncodeICMPEcho(b, ICMPEchoRequest, 0x1234, 7, payload)
		if err != nil || n != len(b) {
			t.Fatalf("encode: %d %v", n, err)
		}
		m, err := ParseICMP(b)
		if err != nil {
			t.Fatalf("payload %q: %v", payload, err)
		}
		if m.Type() != ICMPEchoRequest || m.Code() != 0 || m.ID() != 0x1234 || m.Seq() != 7 || !bytes.Equal(m.Body(), payload) {
			t.Fatalf("fields: % x", b)
		}
		if naiveChecksum(b, 0) != 0xffff {
			t.Fatal("checksum does not verify with the reference")
		}
		// In place: the reply is written over the request.
		if _, err := EncodeICMPEcho(b, ICMPEchoReply, m.ID(), m.Seq(), m.Body()); err != nil {
			t.Fatal(err)
		}
		r, err := ParseICMP(b)
		if err != nil || r.Type() != ICMPEchoReply || !bytes.Equal(r.Body(), payload) {
			t.Fatalf("in-place reply: %v", err)
		}
		b[len(b)-1] ^= 0x40
		if _, err := ParseICMP(b); !errors.Is(err, ErrBadChecksum) {
			t.Fatalf("corrupted: %v", err)
		}
	}
	if _, err := ParseICMP(make([]byte, 7)); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short: %v", err)
	}
	if _, err := ParseICMP(make([]byte, 8)); !errors.Is(err, ErrBadChecksum) {
		t.Fatalf("all-zero message: %v", err)
	}
	if _, err := EncodeICMPEcho(make([]byte, 8), ICMPDestUnreachable, 0, 0, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("type 3: %v", err)
	}
	if _, err := EncodeICMPEcho(make([]byte, 9), ICMPEchoReply, 0, 0, []byte("ab")); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short buffer: %v", err)
	}
}

func TestErrorsAreWrapped(t *testing.T) {
	_, err := ParseIPv4(nil)
	if err.Error() != "ipv4: packet shorter than its header: truncated" {
		t.Fatalf("message %q", err)
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	frame := benchFrame(t)
	bad := bytes.Clone(frame)
	bad[EthernetHeaderLen+8]-- // bad IPv4 checksum
	allocs := testing.AllocsPerRun(100, func() {
		for _, f := range [][]byte{frame, bad} {
			e, _ := ParseEthernet(f)
			if p, err := ParseIPv4(e.Payload()); err == nil {
				_ = p.Src()
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocs per parse", allocs)
	}
}

// benchFrame is an Ethernet frame carrying a 1460-byte TCP-sized payload.
func benchFrame(t testing.TB) []byte {
	f := make([]byte, EthernetHeaderLen+1500)
	EncodeEthernet(f, macB, macA, EtherTypeIPv4)
	if _, err := EncodeIPv4(f[EthernetHeaderLen:], IPv4Header{ID: 1, DontFragment: true, TTL: 64, Protocol: ProtoTCP, Src: ipA, Dst: ipB}, 1480); err != nil {
		t.Fatal(err)
	}
	return f
}

var sinkAddr netip.Addr
var sinkInt int

func BenchmarkParseEthernetIPv4(b *testing.B) {
	frame := benchFrame(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		e, err := ParseEthernet(frame)
		if err != nil || e.EtherType() != EtherTypeIPv4 || e.Dst() != macB {
			b.Fatal("ethernet")
		}
		p, err := ParseIPv4(e.Payload())
		if err != nil || p.IsFragment() {
			b.Fatal(err)
		}
		sinkAddr = p.Src()
		sinkAddr = p.Dst()
		sinkInt = len(p.Payload()) + int(p.Protocol())
	}
}

func BenchmarkEncodeIPv4(b *testing.B) {
	buf := make([]byte, 20)
	h := IPv4Header{DontFragment: true, TTL: 64, Protocol: ProtoTCP, Src: ipA, Dst: ipB}
	b.ReportAllocs()
	for b.Loop() {
		h.ID++
		if _, err := EncodeIPv4(buf, h, 1460); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkChecksum1500(b *testing.B) {
	buf := make([]byte, 1500)
	for i := range buf {
		buf[i] = byte(i)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		sinkInt = int(Checksum(buf, 0))
	}
}
