package wire

import (
	"bytes"
	"testing"
)

// Each target checks that the parser never panics, that accessors stay in
// bounds on anything it accepts, and that encoding the parsed fields gives a
// packet that parses to the same fields.

func FuzzEthernet(f *testing.F) {
	f.Add(benchFrame(f)[:60])
	f.Add(make([]byte, 13))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEthernet(b)
		if err != nil {
			return
		}
		out := make([]byte, EthernetHeaderLen+len(e.Payload()))
		if _, err := EncodeEthernet(out, e.Dst(), e.Src(), e.EtherType()); err != nil {
			t.Fatal(err)
		}
		copy(out[EthernetHeaderLen:], e.Payload())
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip changed the frame:\n got %x\nwant %x", out, b)
		}
	})
}

func FuzzARP(f *testing.F) {
	b := make([]byte, ARPLen)
	EncodeARP(b, ARPRequest, macA, ipA, MAC{}, ipB)
	f.Add(b)
	f.Add(append(bytes.Clone(b), make([]byte, 18)...))
	f.Add(b[:20])
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseARP(b)
		if err != nil {
			return
		}
		out := make([]byte, ARPLen)
		if _, err := EncodeARP(out, a.Op(), a.SenderMAC(), a.SenderIP(), a.TargetMAC(), a.TargetIP()); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, b[:ARPLen]) {
			t.Fatalf("round trip:\n got %x\nwant %x", out, b[:ARPLen])
		}
	})
}

func FuzzIPv4(f *testing.F) {
	f.Add(benchFrame(f)[EthernetHeaderLen : EthernetHeaderLen+60])
	f.Add(buildIPv4(f, IPv4Header{MoreFragments: true, FragmentOffset: 64, TTL: 1, Protocol: ProtoICMP, Src: ipA, Dst: ipB}, []byte("abc"), 3))
	f.Add([]byte{0x46, 0, 0, 24, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 1, 1, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseIPv4(b)
		if err != nil {
			return
		}
		if p.TotalLen() != len(p) || p.HeaderLen() < 20 || p.HeaderLen() > len(p) {
			t.Fatalf("view bounds: total %d header %d len %d", p.TotalLen(), p.HeaderLen(), len(p))
		}
		_ = p.Options()
		h := IPv4Header{
			TOS: p.TOS(), ID: p.ID(), DontFragment: p.DontFragment(), MoreFragments: p.MoreFragments(),
			FragmentOffset: p.FragmentOffset(), TTL: p.TTL(), Protocol: p.Protocol(), Src: p.Src(), Dst: p.Dst(),
		}
		out := make([]byte, IPv4MinHeaderLen+len(p.Payload()))
		if _, err := EncodeIPv4(out, h, len(p.Payload())); err != nil {
			t.Fatal(err)
		}
		copy(out[IPv4MinHeaderLen:], p.Payload())
		q, err := ParseIPv4(out)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		g := IPv4Header{
			TOS: q.TOS(), ID: q.ID(), DontFragment: q.DontFragment(), MoreFragments: q.MoreFragments(),
			FragmentOffset: q.FragmentOffset(), TTL: q.TTL(), Protocol: q.Protocol(), Src: q.Src(), Dst: q.Dst(),
		}
		if g != h || !bytes.Equal(q.Payload(), p.Payload()) {
			t.Fatalf("round trip: %+v != %+v", g, h)
		}
		// Without options and with no reserved flag set, the bytes match too.
		if p.HeaderLen() == IPv4MinHeaderLen && b[6]&0x80 == 0 && !bytes.Equal(out, p) {
			t.Fatalf("bytes differ:\n got %x\nwant %x", out, []byte(p))
		}
	})
}

func FuzzICMP(f *testing.F) {
	b := make([]byte, 16)
	EncodeICMPEcho(b, ICMPEchoRequest, 1, 2, []byte("pingping"))
	f.Add(b)
	f.Add(b[:9])
	f.Add([]byte{3, 3, 0xfc, 0xfc, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseICMP(b)
		if err != nil {
			return
		}
		_, _, _ = m.Code(), m.Checksum(), m.Body()
		if m.Type() != ICMPEchoRequest && m.Type() != ICMPEchoReply {
			return
		}
		out := make([]byte, len(b))
		if _, err := EncodeICMPEcho(out, m.Type(), m.ID(), m.Seq(), m.Body()); err != nil {
			t.Fatal(err)
		}
		q, err := ParseICMP(out)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if q.Type() != m.Type() || q.ID() != m.ID() || q.Seq() != m.Seq() || !bytes.Equal(q.Body(), m.Body()) {
			t.Fatal("round trip changed fields")
		}
		// Echo code is 0 on encode, so the bytes match only for code 0.
		// The checksum field may legitimately differ as 0x0000 vs 0xffff.
		if m.Code() == 0 && !bytes.Equal(out[4:], b[4:]) {
			t.Fatal("round trip changed bytes")
		}
	})
}
