package stack

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zppratt/rfsis/link"
	"github.com/zppratt/rfsis/link/pipe"
	"github.com/zppratt/rfsis/stack/wire"
)

func TestConfigValidate(t *testing.T) {
	good := testConfig(t)
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	cases := []struct {
		field string
		mod   func(*Config)
	}{
		{"Config.Addr", func(c *Config) { c.Addr = netip.Addr{} }},
		{"Config.Addr", func(c *Config) { c.Addr = netip.MustParseAddr("fe80::1") }},
		{"Config.Addr", func(c *Config) { c.Addr = netip.MustParseAddr("224.0.0.1") }},
		{"Config.Addr", func(c *Config) { c.Addr = netip.MustParseAddr("10.77.2.1") }},
		{"Config.Addr", func(c *Config) { c.Addr = netip.MustParseAddr("10.77.1.255") }},
		{"Config.Prefix", func(c *Config) { c.Prefix = netip.Prefix{} }},
		{"Config.MAC", func(c *Config) { c.MAC = net.HardwareAddr{1, 2, 3} }},
		{"Config.MAC", func(c *Config) { c.MAC = net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1} }},
		{"Config.MAC", func(c *Config) { c.MAC = make(net.HardwareAddr, 6) }},
		{"Config.Gateway", func(c *Config) { c.Gateway = netip.MustParseAddr("10.78.0.1") }},
		{"Config.Gateway", func(c *Config) { c.Gateway = stackIP }},
		{"Config.ARP.Lifetime", func(c *Config) { c.ARP.Lifetime = -1 }},
		{"Config.ARP.RetryInterval", func(c *Config) { c.ARP.RetryInterval = -1 }},
		{"Config.ARP.Retries", func(c *Config) { c.ARP.Retries = -1 }},
		{"Config.ARP.QueueLen", func(c *Config) { c.ARP.QueueLen = -1 }},
		{"Config.ARP.MaxEntries", func(c *Config) { c.ARP.MaxEntries = -1 }},
	}
	for _, c := range cases {
		cfg := good
		c.mod(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.field+" ") {
			t.Errorf("want an error naming %s, got %v", c.field, err)
		}
	}
	// Host bits in the prefix are fine, and a /31 has no broadcast address.
	cfg := good
	cfg.Prefix = netip.MustParsePrefix("10.77.1.2/24")
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
	cfg.Prefix, cfg.Addr = netip.MustParsePrefix("10.77.1.0/31"), netip.MustParseAddr("10.77.1.1")
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
	d := Default()
	if d.ARP.Lifetime <= 0 || d.ARP.Retries <= 0 || d.ARP.QueueLen <= 0 || d.ARP.MaxEntries <= 0 || d.ARP.RetryInterval <= 0 {
		t.Errorf("Default: %+v", d.ARP)
	}
}

func TestNewRejectsBadMTU(t *testing.T) {
	a, b := pipe.New(60)
	defer a.Close()
	defer b.Close()
	if _, err := New(a, testConfig(t)); err == nil {
		t.Fatal("accepted an MTU of 60")
	}
}

// offloadPipe is a pipe end that claims offloads, as a TAP does.
type offloadPipe struct {
	*pipe.Device
	offload  bool
	maxFrame int
}

func (d *offloadPipe) Offload() bool { return d.offload }
func (d *offloadPipe) MaxFrame() int { return d.maxFrame }
func (d *offloadPipe) ReadFrameOffload(buf []byte) (int, link.Offload, error) {
	n, err := d.ReadFrame(buf)
	return n, link.Offload{}, err
}
func (d *offloadPipe) WriteFrameOffload(frame []byte, _ link.Offload) error {
	return d.WriteFrame(frame)
}

// TestOffloadDetection: the stack uses a link.OffloadDevice's offloads
// only when Offload says so, sized by its MaxFrame.
func TestOffloadDetection(t *testing.T) {
	for _, tc := range []struct {
		offload         bool
		maxFrame, maxIP int // maxIP 0: New fails
	}{
		{false, 14 + 9000, 1500},
		{true, 14 + 9000, 9000},
		{true, 14 + 1<<20, wire.IPv4MaxLen},
		{true, 14 + 1000, 0},
	} {
		a, b := pipe.New(1500)
		t.Cleanup(func() { a.Close(); b.Close() })
		s, err := New(&offloadPipe{Device: a, offload: tc.offload, maxFrame: tc.maxFrame}, testConfig(t))
		if tc.maxIP == 0 {
			if err == nil {
				s.Close()
				t.Errorf("%+v: accepted offload frames below the MTU", tc)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if (s.offload != nil) != tc.offload || s.maxIP != tc.maxIP {
			t.Errorf("%+v: offload %v, maxIP %d", tc, s.offload != nil, s.maxIP)
		}
	}
}

func TestCloseIdempotent(t *testing.T) {
	a, b := pipe.New(1500)
	defer b.Close()
	s, err := New(a, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteFrame([]byte{1}); !errors.Is(err, link.ErrClosed) {
		t.Fatal("Close did not close the device")
	}
	p := s.newPacket()
	if err := s.sendIPv4(p, stackIP, peerIP, wire.ProtoTCP, 0); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("send after Close: %v", err)
	}
	if err := s.SendGratuitousARP(stackIP, 1, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("gratuitous ARP after Close: %v", err)
	}
}

// TestConcurrentClose: Close calls racing one another all return nil and
// close the stack once.
func TestConcurrentClose(t *testing.T) {
	cfg := testConfig(t)
	cfg.Logger = nil
	for range 300 {
		a, b := pipe.New(1500)
		t.Cleanup(func() { b.Close() })
		s, err := New(a, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		// Listeners to close make the first Close take a while.
		for port := range uint16(32) {
			l, err := s.ListenTCP(netip.AddrPortFrom(stackIP, 1000+port), ListenConfig{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}
		start := make(chan struct{})
		errs := make(chan error, 8)
		for range cap(errs) {
			go func() {
				<-start
				errs <- s.Close()
			}()
		}
		close(start)
		for range cap(errs) {
			if err := <-errs; err != nil {
				t.Fatalf("Close: %v", err)
			}
		}
	}
}

func TestARPRequestForUs(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, stackIP))
	e, a := h.recvARP()
	if e.Dst() != peerMAC || e.Src() != stackMAC {
		t.Fatalf("Ethernet %v -> %v", e.Src(), e.Dst())
	}
	if a.Op() != wire.ARPReply || a.SenderMAC() != stackMAC || a.SenderIP() != stackIP ||
		a.TargetMAC() != peerMAC || a.TargetIP() != peerIP {
		t.Fatalf("reply %v %v %v %v %d", a.SenderMAC(), a.SenderIP(), a.TargetMAC(), a.TargetIP(), a.Op())
	}
	// The request taught us the peer: sending goes out at once, no ARP.
	if err := h.sendData(stackIP, peerIP, wire.ProtoUDP, []byte("x")); err != nil {
		t.Fatal(err)
	}
	e, p := h.recvIPv4()
	if e.Dst() != peerMAC || p.Dst() != peerIP {
		t.Fatal("IPv4 not sent straight to the learned MAC")
	}
	h.expectStats(func(st Stats) bool {
		return st.ARPRequestsIn == 1 && st.ARPRepliesOut == 1 && st.ARPRequestsOut == 0 && st.IPv4Out == 1
	})
}

func TestARPRequestForOtherIsIgnored(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, otherIP))
	h.quiet(50 * time.Millisecond)
	// Not the target, so the peer was not learned: sending must resolve.
	h.sendData(stackIP, peerIP, wire.ProtoUDP, nil)
	e, a := h.recvARP()
	if e.Dst() != wire.BroadcastMAC || a.Op() != wire.ARPRequest || a.TargetIP() != peerIP {
		t.Fatal("want a broadcast request for the peer")
	}
}

func TestARPResolveAndFlushInOrder(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	for i := range 5 {
		if err := h.sendData(stackIP, peerIP, wire.ProtoUDP, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	e, a := h.recvARP()
	if e.Dst() != wire.BroadcastMAC || e.Src() != stackMAC || a.Op() != wire.ARPRequest ||
		a.SenderMAC() != stackMAC || a.SenderIP() != stackIP || a.TargetMAC() != (wire.MAC{}) || a.TargetIP() != peerIP {
		t.Fatalf("request %v->%v op %d %v/%v asks %v/%v", e.Src(), e.Dst(), a.Op(), a.SenderMAC(), a.SenderIP(), a.TargetMAC(), a.TargetIP())
	}
	h.quiet(20 * time.Millisecond) // one request for five packets, nothing else yet
	h.send(arpFrame(stackMAC, wire.ARPReply, peerMAC, peerIP, stackMAC, stackIP))
	for i := range 5 {
		e, p := h.recvIPv4()
		if e.Dst() != peerMAC || e.Src() != stackMAC || p.Src() != stackIP || p.Dst() != peerIP ||
			!bytes.Equal(p.Payload(), []byte{byte(i)}) {
			t.Fatalf("packet %d: %v -> %v payload %v", i, p.Src(), p.Dst(), p.Payload())
		}
	}
	h.expectStats(func(st Stats) bool {
		return st.ARPRequestsOut == 1 && st.ARPRepliesIn == 1 && st.IPv4Out == 5
	})
}

func TestARPTimeoutDropsQueued(t *testing.T) {
	cfg := testConfig(t)
	cfg.ARP.RetryInterval = 20 * time.Millisecond
	cfg.ARP.Retries = 3
	h := newHarness(t, cfg, nil)
	for range 4 {
		h.sendData(stackIP, otherIP, wire.ProtoUDP, nil)
	}
	for i := range 3 {
		if _, a := h.recvARP(); a.TargetIP() != otherIP {
			t.Fatalf("request %d for %v", i, a.TargetIP())
		}
	}
	waitFor(t, "queued packets to be dropped", func() bool { return h.s.Stats().ARPResolveFailed == 4 })
	h.quiet(100 * time.Millisecond) // no fourth request
	h.expectStats(func(st Stats) bool {
		return st.ARPRequestsOut == 3 && st.IPv4Out == 0
	})
	// A later packet starts a fresh resolution.
	h.sendData(stackIP, otherIP, wire.ProtoUDP, nil)
	h.recvARP()
}

func TestARPQueueBounded(t *testing.T) {
	cfg := testConfig(t)
	cfg.ARP.QueueLen = 4
	h := newHarness(t, cfg, nil)
	for i := range 7 {
		h.sendData(stackIP, peerIP, wire.ProtoUDP, []byte{byte(i)})
	}
	h.recvARP()
	if st := h.s.Stats(); st.ARPQueueDrops != 3 {
		t.Fatalf("queue drops %d, want 3", st.ARPQueueDrops)
	}
	h.send(arpFrame(stackMAC, wire.ARPReply, peerMAC, peerIP, stackMAC, stackIP))
	for i := 3; i < 7; i++ { // the newest four survive
		if _, p := h.recvIPv4(); p.Payload()[0] != byte(i) {
			t.Fatalf("got packet %d, want %d", p.Payload()[0], i)
		}
	}
	h.quiet(20 * time.Millisecond)
}

func TestARPTableFull(t *testing.T) {
	cfg := testConfig(t)
	cfg.ARP.MaxEntries = 2
	h := newHarness(t, cfg, nil)
	for i := range 3 {
		h.sendData(stackIP, netip.AddrFrom4([4]byte{10, 77, 1, byte(10 + i)}), wire.ProtoUDP, nil)
	}
	h.recvARP()
	h.recvARP()
	h.expectStats(func(st Stats) bool {
		return st.ARPTableFull == 1 && st.ARPRequestsOut == 2
	})
}

func TestARPExpiryAndRefresh(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	cfg.ARP = ARPConfig{Lifetime: 30 * time.Second, RetryInterval: time.Second, Retries: 3}
	h := newHarness(t, cfg, clk.Now)
	h.introduce()

	clk.Advance(20 * time.Second) // fresh: no refresh yet
	h.sendData(stackIP, peerIP, wire.ProtoUDP, nil)
	if e, _ := h.recvIPv4(); e.Dst() != peerMAC {
		t.Fatal("not sent to the cached MAC")
	}
	h.quiet(20 * time.Millisecond)

	clk.Advance(8 * time.Second) // 28s: in the refresh window, still valid
	h.sendData(stackIP, peerIP, wire.ProtoUDP, nil)
	var gotProbe, gotData bool
	for range 2 {
		e := h.recv()
		switch e.EtherType() {
		case wire.EtherTypeARP:
			a, _ := wire.ParseARP(e.Payload())
			// A unicast probe to the cached MAC.
			if e.Dst() != peerMAC || a.Op() != wire.ARPRequest || a.TargetIP() != peerIP {
				t.Fatalf("probe to %v for %v", e.Dst(), a.TargetIP())
			}
			gotProbe = true
		case wire.EtherTypeIPv4:
			gotData = e.Dst() == peerMAC
		}
	}
	if !gotProbe || !gotData {
		t.Fatalf("probe %v data %v", gotProbe, gotData)
	}
	// A second packet within RetryInterval does not probe again.
	h.sendData(stackIP, peerIP, wire.ProtoUDP, nil)
	h.recvIPv4()
	h.quiet(20 * time.Millisecond)

	// The peer answers the probe: the mapping is good for another lifetime.
	h.send(arpFrame(stackMAC, wire.ARPReply, peerMAC, peerIP, stackMAC, stackIP))
	waitFor(t, "probe reply", func() bool { return h.s.Stats().ARPRepliesIn == 1 })
	clk.Advance(25 * time.Second)
	h.sendData(stackIP, peerIP, wire.ProtoUDP, nil)
	if e, _ := h.recvIPv4(); e.Dst() != peerMAC {
		t.Fatal("refreshed mapping not used")
	}

	// No answer any more: past its lifetime the mapping is gone and sending
	// goes back to a broadcast request.
	clk.Advance(6 * time.Second)
	h.sendData(stackIP, peerIP, wire.ProtoUDP, nil)
	e, a := h.recvARP()
	if e.Dst() != wire.BroadcastMAC || a.TargetIP() != peerIP {
		t.Fatal("expired mapping still used")
	}
}

func TestARPMergeUpdatesMAC(t *testing.T) {
	// A neighbour's gratuitous ARP (its own failover) moves our mapping at
	// once, without our being its target.
	h := newHarness(t, testConfig(t), nil)
	h.introduce()
	newMAC := wire.MAC{0x02, 0x52, 0x46, 0, 0, 0x77}
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, newMAC, peerIP, wire.MAC{}, peerIP))
	waitFor(t, "gratuitous ARP", func() bool { return h.s.Stats().ARPRequestsIn == 2 })
	h.sendData(stackIP, peerIP, wire.ProtoUDP, nil)
	if e, _ := h.recvIPv4(); e.Dst() != newMAC {
		t.Fatalf("sent to %v, want the announced %v", e.Dst(), newMAC)
	}
	// An unsolicited reply to us creates no entry either.
	h.send(arpFrame(stackMAC, wire.ARPReply, newMAC, otherIP, stackMAC, stackIP))
	// A gratuitous ARP for an address we have no entry for creates none.
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, newMAC, otherIP, wire.MAC{}, otherIP))
	waitFor(t, "second gratuitous ARP", func() bool { return h.s.Stats().ARPIn == 4 })
	h.sendData(stackIP, otherIP, wire.ProtoUDP, nil)
	h.recvARP()
}

func TestARPIgnoresBogusSenders(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	// Multicast sender MAC: malformed, no reply, not learned.
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, wire.MAC{0x01, 0, 0x5e, 0, 0, 1}, peerIP, wire.MAC{}, stackIP))
	// Another station claiming our own address: a conflict.
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, stackIP, wire.MAC{}, stackIP))
	// Not Ethernet/IPv4.
	bad := arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, stackIP)
	bad[wire.EthernetHeaderLen+5] = 16
	h.send(bad)
	waitFor(t, "drops", func() bool {
		st := h.s.Stats()
		return st.ARPMalformed == 2 && st.ARPConflicts == 1
	})
	h.quiet(20 * time.Millisecond)
	// An RFC 5227 probe (sender 0.0.0.0) for our address is answered.
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, netip.IPv4Unspecified(), wire.MAC{}, stackIP))
	if _, a := h.recvARP(); a.Op() != wire.ARPReply || a.SenderIP() != stackIP || a.TargetMAC() != peerMAC {
		t.Fatal("probe not answered")
	}
}

func TestGratuitousARP(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	if err := h.s.SendGratuitousARP(svcIP, 1, 0); !errors.Is(err, ErrAddrNotOwned) {
		t.Fatalf("unowned address: %v", err)
	}
	if err := h.s.AddAddress(svcIP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := h.s.SendGratuitousARP(svcIP, 3, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		e, a := h.recvARP()
		if e.Dst() != wire.BroadcastMAC || e.Src() != stackMAC || a.Op() != wire.ARPRequest ||
			a.SenderMAC() != stackMAC || a.SenderIP() != svcIP || a.TargetIP() != svcIP || a.TargetMAC() != (wire.MAC{}) {
			t.Fatalf("announcement %d: %x", i, []byte(a))
		}
	}
	if el := time.Since(start); el < 55*time.Millisecond {
		t.Fatalf("three announcements in %v: not spaced", el)
	}
	h.quiet(60 * time.Millisecond)
	h.expectStats(func(st Stats) bool {
		return st.ARPGratuitousOut == 3
	})
	// Giving the address up stops pending announcements.
	h.s.SendGratuitousARP(svcIP, 10, 20*time.Millisecond)
	h.recvARP()
	h.s.RemoveAddress(svcIP)
	time.Sleep(30 * time.Millisecond)
	for len(h.rx) > 0 { // at most one may have raced the removal
		<-h.rx
	}
	h.quiet(60 * time.Millisecond)
}

func TestAddRemoveAddress(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	if err := h.s.AddAddress(svcIP); err != nil {
		t.Fatal(err)
	}
	if err := h.s.AddAddress(svcIP); err != nil {
		t.Fatal("adding twice:", err)
	}
	if got := h.s.Addresses(); len(got) != 2 || got[0] != stackIP || got[1] != svcIP {
		t.Fatalf("Addresses %v", got)
	}
	// ARP for the service address is answered with our MAC.
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, svcIP))
	if _, a := h.recvARP(); a.Op() != wire.ARPReply || a.SenderIP() != svcIP || a.SenderMAC() != stackMAC {
		t.Fatal("no reply for the service address")
	}
	// Pings to it are answered from it.
	h.send(pingFrame(svcIP, 1, 1, []byte("svc")))
	if _, p := h.recvIPv4(); p.Src() != svcIP || p.Dst() != peerIP {
		t.Fatalf("reply %v -> %v", p.Src(), p.Dst())
	}
	if err := h.sendData(svcIP, peerIP, wire.ProtoTCP, nil); err != nil {
		t.Fatal(err)
	}
	h.recvIPv4()

	if err := h.s.RemoveAddress(svcIP); err != nil {
		t.Fatal(err)
	}
	if err := h.s.RemoveAddress(stackIP); err == nil {
		t.Fatal("removed the primary address")
	}
	if err := h.s.AddAddress(netip.MustParseAddr("::1")); err == nil {
		t.Fatal("added an IPv6 address")
	}
	if h.s.HasAddress(svcIP) || !h.s.HasAddress(stackIP) {
		t.Fatal("HasAddress")
	}
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, svcIP))
	h.send(pingFrame(svcIP, 1, 2, nil))
	if err := h.sendData(svcIP, peerIP, wire.ProtoTCP, nil); !errors.Is(err, ErrAddrNotOwned) {
		t.Fatalf("send from a removed address: %v", err)
	}
	h.quiet(50 * time.Millisecond)
}

func TestICMPEcho(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	payload := []byte("abcdefghijklmnopqrstuvwabcdefghi-odd")
	// The peer is unknown: the stack must resolve it before replying.
	h.send(pingFrame(stackIP, 0x4242, 7, payload))
	_, a := h.recvARP()
	if a.TargetIP() != peerIP {
		t.Fatal("did not resolve the pinger")
	}
	h.send(arpFrame(stackMAC, wire.ARPReply, peerMAC, peerIP, stackMAC, stackIP))
	e, p := h.recvIPv4()
	if e.Dst() != peerMAC || p.Src() != stackIP || p.Dst() != peerIP || p.Protocol() != wire.ProtoICMP || p.TTL() != 64 {
		t.Fatalf("reply header: %v -> %v proto %d ttl %d", p.Src(), p.Dst(), p.Protocol(), p.TTL())
	}
	m, err := wire.ParseICMP(p.Payload()) // verifies the ICMP checksum
	if err != nil {
		t.Fatal(err)
	}
	if m.Type() != wire.ICMPEchoReply || m.Code() != 0 || m.ID() != 0x4242 || m.Seq() != 7 || !bytes.Equal(m.Body(), payload) {
		t.Fatalf("reply: type %d id %#x seq %d body %q", m.Type(), m.ID(), m.Seq(), m.Body())
	}
	// Now resolved: the next echo is answered at once.
	h.send(pingFrame(stackIP, 0x4242, 8, nil))
	if _, p := h.recvIPv4(); wire.ICMP(p.Payload()).Seq() != 8 {
		t.Fatal("second reply")
	}
	// Other ICMP types are counted, not answered.
	reply := echoRequest(1, 1, nil)
	wire.EncodeICMPEcho(reply, wire.ICMPEchoReply, 1, 1, nil)
	h.send(ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4,
		ipv4Packet(wire.IPv4Header{Protocol: wire.ProtoICMP, Src: peerIP, Dst: stackIP}, reply)))
	waitFor(t, "other ICMP", func() bool { return h.s.Stats().ICMPOtherIn == 1 })
	h.quiet(20 * time.Millisecond)
	h.expectStats(func(st Stats) bool {
		return st.ICMPEchoRequests == 2 && st.ICMPEchoReplies == 2 && st.ICMPIn == 3
	})
}

func TestInputDrops(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	h.s.setTransport(nil) // the TCP case below checks the no-handler count
	h.introduce()
	ping := func(mod func(*wire.IPv4Header)) []byte {
		ih := wire.IPv4Header{Protocol: wire.ProtoICMP, Src: peerIP, Dst: stackIP}
		if mod != nil {
			mod(&ih)
		}
		return ipv4Packet(ih, echoRequest(1, 1, []byte("payload!")))
	}
	badIPChecksum := ping(nil)
	badIPChecksum[10] ^= 0xff
	badICMPChecksum := ping(nil)
	badICMPChecksum[len(badICMPChecksum)-1] ^= 1
	badVersion := ping(nil)
	badVersion[0] = 0x65
	cases := []struct {
		name  string
		frame []byte
		stat  func(Stats) uint64
	}{
		{"short frame", []byte{1, 2, 3}, func(s Stats) uint64 { return s.DropShortFrame }},
		{"other MAC", ethFrame(wire.MAC{2, 0, 0, 0, 0, 0x99}, peerMAC, wire.EtherTypeIPv4, ping(nil)), func(s Stats) uint64 { return s.DropOtherMAC }},
		{"multicast MAC", ethFrame(wire.MAC{1, 0, 0x5e, 0, 0, 1}, peerMAC, wire.EtherTypeIPv4, ping(nil)), func(s Stats) uint64 { return s.DropOtherMAC }},
		{"IPv6", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv6, make([]byte, 40)), func(s Stats) uint64 { return s.DropEtherType }},
		{"MF fragment", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.MoreFragments = true })), func(s Stats) uint64 { return s.IPv4Fragments }},
		{"offset fragment", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.FragmentOffset = 1480 })), func(s Stats) uint64 { return s.IPv4Fragments }},
		{"IP checksum", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, badIPChecksum), func(s Stats) uint64 { return s.IPv4BadChecksum }},
		{"IP version", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, badVersion), func(s Stats) uint64 { return s.IPv4Malformed }},
		{"ICMP checksum", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, badICMPChecksum), func(s Stats) uint64 { return s.ICMPMalformed }},
		{"not ours", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.Dst = otherIP })), func(s Stats) uint64 { return s.IPv4NotOurs }},
		{"IP broadcast", ethFrame(wire.BroadcastMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.Dst = netip.MustParseAddr("10.77.1.255") })), func(s Stats) uint64 { return s.IPv4NotOurs }},
		{"link broadcast", ethFrame(wire.BroadcastMAC, peerMAC, wire.EtherTypeIPv4, ping(nil)), func(s Stats) uint64 { return s.IPv4LinkBroadcast }},
		{"source multicast", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.Src = netip.MustParseAddr("224.0.0.1") })), func(s Stats) uint64 { return s.IPv4BadSource }},
		{"source ours", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.Src = stackIP })), func(s Stats) uint64 { return s.IPv4BadSource }},
		{"source subnet broadcast", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.Src = netip.MustParseAddr("10.77.1.255") })), func(s Stats) uint64 { return s.IPv4BadSource }},
		{"UDP", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.Protocol = wire.ProtoUDP })), func(s Stats) uint64 { return s.IPv4UnknownProto }},
		{"TCP, no handler", ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, ping(func(h *wire.IPv4Header) { h.Protocol = wire.ProtoTCP })), func(s Stats) uint64 { return s.TCPNoHandler }},
	}
	for _, c := range cases {
		before := c.stat(h.s.Stats())
		h.s.input(c.frame)
		if got := c.stat(h.s.Stats()); got != before+1 {
			t.Errorf("%s: counter went %d -> %d", c.name, before, got)
		}
	}
	h.quiet(50 * time.Millisecond)
	// A well-formed ping still works, padded to the Ethernet minimum.
	f := append(pingFrame(stackIP, 9, 9, nil), make([]byte, 20)...)
	h.send(f)
	if _, p := h.recvIPv4(); len(p.Payload()) != 8 {
		t.Fatalf("padding echoed: %d bytes of ICMP", len(p.Payload()))
	}
}

type tcpRecorder struct {
	mu   sync.Mutex
	segs []recordedSeg
}

type recordedSeg struct {
	src, dst netip.Addr
	seg      []byte
}

func (r *tcpRecorder) handleTCP(src, dst netip.Addr, segment []byte, _ bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.segs = append(r.segs, recordedSeg{src, dst, bytes.Clone(segment)})
}

func (r *tcpRecorder) get() []recordedSeg {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recordedSeg(nil), r.segs...)
}

func TestTCPHandOff(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	rec := &tcpRecorder{}
	h.s.setTransport(rec)
	h.s.AddAddress(svcIP)
	seg := []byte("a fake TCP segment, 20+ bytes long")
	for _, dst := range []netip.Addr{stackIP, svcIP} {
		f := ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4,
			ipv4Packet(wire.IPv4Header{Protocol: wire.ProtoTCP, Src: peerIP, Dst: dst}, seg))
		h.send(append(f, 0, 0, 0, 0)) // link padding must not reach TCP
	}
	waitFor(t, "segments", func() bool { return len(rec.get()) == 2 })
	for i, want := range []netip.Addr{stackIP, svcIP} {
		r := rec.get()[i]
		if r.src != peerIP || r.dst != want || !bytes.Equal(r.seg, seg) {
			t.Fatalf("segment %d: %v -> %v %q", i, r.src, r.dst, r.seg)
		}
	}
	h.s.setTransport(nil)
	h.s.input(ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4,
		ipv4Packet(wire.IPv4Header{Protocol: wire.ProtoTCP, Src: peerIP, Dst: stackIP}, seg)))
	h.expectStats(func(st Stats) bool {
		return st.TCPIn == 2 && st.TCPNoHandler == 1
	})
}

func TestSendIPv4(t *testing.T) {
	cfg := testConfig(t)
	h := newHarness(t, cfg, nil)
	h.introduce()
	payload := bytes.Repeat([]byte{0xa5}, 1480)
	if err := h.sendData(stackIP, peerIP, wire.ProtoTCP, payload); err != nil {
		t.Fatal(err)
	}
	e, p := h.recvIPv4()
	if len(e) != 1514 || p.TotalLen() != 1500 || !p.DontFragment() || p.TTL() != 64 || p.Protocol() != wire.ProtoTCP ||
		!bytes.Equal(p.Payload(), payload) {
		t.Fatalf("full-size TCP datagram: len %d total %d DF %v", len(e), p.TotalLen(), p.DontFragment())
	}
	id := p.ID()
	h.sendData(stackIP, peerIP, wire.ProtoICMP, nil)
	if _, p := h.recvIPv4(); p.DontFragment() || p.ID() == id {
		t.Fatalf("ICMP: DF %v, ID %d after %d", p.DontFragment(), p.ID(), id)
	}

	for _, c := range []struct {
		name     string
		src, dst netip.Addr
		n        int
		want     error
	}{
		{"too big", stackIP, peerIP, 1481, ErrTooBig},
		{"negative", stackIP, peerIP, -1, ErrTooBig},
		{"unowned source", otherIP, peerIP, 0, ErrAddrNotOwned},
		{"off-link, no gateway", stackIP, netip.MustParseAddr("192.0.2.1"), 0, ErrNoRoute},
		{"broadcast", stackIP, netip.MustParseAddr("10.77.1.255"), 0, ErrNoRoute},
		{"ourselves", stackIP, stackIP, 0, ErrNoRoute},
		{"IPv6", stackIP, netip.MustParseAddr("2001:db8::1"), 0, ErrNoRoute},
	} {
		p := h.s.newPacket()
		if err := h.s.sendIPv4(p, c.src, c.dst, wire.ProtoTCP, c.n); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v want %v", c.name, err, c.want)
		}
	}
	h.quiet(20 * time.Millisecond)
}

func TestGatewayRoute(t *testing.T) {
	cfg := testConfig(t)
	cfg.Gateway = peerIP
	h := newHarness(t, cfg, nil)
	far := netip.MustParseAddr("192.0.2.7")
	h.sendData(stackIP, far, wire.ProtoTCP, nil)
	if _, a := h.recvARP(); a.TargetIP() != peerIP {
		t.Fatalf("resolved %v, want the gateway", a.TargetIP())
	}
	h.send(arpFrame(stackMAC, wire.ARPReply, peerMAC, peerIP, stackMAC, stackIP))
	if e, p := h.recvIPv4(); e.Dst() != peerMAC || p.Dst() != far {
		t.Fatal("not sent through the gateway")
	}
}

// templates are well-formed frames of each kind the stack parses.
func templates() [][]byte {
	opts := ipv4Packet(wire.IPv4Header{Protocol: wire.ProtoTCP, Src: peerIP, Dst: stackIP}, make([]byte, 24))
	opts[0] = 0x46 // claim a 4-byte option; checksum left as is
	return [][]byte{
		arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, stackIP),
		arpFrame(stackMAC, wire.ARPReply, peerMAC, peerIP, stackMAC, stackIP),
		pingFrame(stackIP, 1, 2, []byte("0123456789abcdef0123456789abcdef")),
		ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4,
			ipv4Packet(wire.IPv4Header{Protocol: wire.ProtoTCP, Src: peerIP, Dst: stackIP}, make([]byte, 40))),
		ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4, opts),
	}
}

func TestTruncatedAndRandomFramesNeverPanic(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	h.s.setTransport(&tcpRecorder{})
	for _, tpl := range templates() {
		for n := 0; n <= max(60, len(tpl)); n++ {
			f := make([]byte, n)
			copy(f, tpl)
			h.s.input(f)
		}
	}
	r := rand.New(rand.NewPCG(5, 6))
	for range 20000 {
		f := make([]byte, r.IntN(80))
		for i := range f {
			f[i] = byte(r.Uint32())
		}
		if len(f) >= 14 && r.IntN(2) == 0 { // make it reach the parsers
			copy(f, stackMAC[:])
			f[12], f[13] = 0x08, byte(r.IntN(2)*6)
			if len(f) > 14 && f[13] == 0 {
				f[14] = 0x45
			}
		}
		h.s.input(f)
	}
}

func TestSteadyStateAllocatesNothing(t *testing.T) {
	cfg := testConfig(t)
	cfg.Logger = nil
	h := newHarnessReader(t, cfg, nil, false)
	buf := make([]byte, 1514)
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, stackIP))
	h.dev.ReadFrame(buf) // the ARP reply

	send := testing.AllocsPerRun(1000, func() {
		p := h.s.newPacket()
		if err := h.s.sendIPv4(p, stackIP, peerIP, wire.ProtoTCP, 1000); err != nil {
			t.Fatal(err)
		}
		h.dev.ReadFrame(buf)
	})
	if send != 0 {
		t.Errorf("sendIPv4: %v allocs per packet", send)
	}

	ping := pingFrame(stackIP, 1, 1, make([]byte, 56))
	echo := testing.AllocsPerRun(1000, func() {
		h.s.input(ping)
		h.dev.ReadFrame(buf)
	})
	if echo != 0 {
		t.Errorf("echo: %v allocs per request", echo)
	}
}

// TestTCPSteadyStateAllocatesNothing moves bulk data over a real TCP
// connection between two stacks, as BenchmarkTCPBulkPipe does: once
// buffers and windows have grown, the whole path of both stacks (segments
// both ways, ACKs, timers, wake-ups) allocates nothing.
func TestTCPSteadyStateAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's sync.Pool drops pooled buffers at random")
	}
	p := newPair(t)
	l := p.listen(t, 5002)
	c := p.dial(t, 5002)
	sc := p.accept(t, l)
	buf, got := make([]byte, 64<<10), make([]byte, 64<<10)
	round := func() {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(sc, got); err != nil {
			t.Fatal(err)
		}
	}
	for range 64 { // warm up: buffers and windows reach their steady size
		round()
	}
	if n := testing.AllocsPerRun(200, round); n != 0 {
		t.Errorf("TCP: %v allocs per 64 KiB written and read", n)
	}
}

type countingTransport struct{ n int }

func (c *countingTransport) handleTCP(src, dst netip.Addr, segment []byte, _ bool) {
	c.n += len(segment)
}

// benchStack is a stack with the peer resolved and a discarding logger; the
// caller reads the peer's end.
func benchStack(b *testing.B) (*Stack, *pipe.Device) {
	x, y := pipe.New(1500)
	cfg := testConfig(b)
	cfg.Logger = nil
	s, err := New(x, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(); y.Close() })
	s.input(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, stackIP))
	y.ReadFrame(make([]byte, 1514))
	return s, y
}

func BenchmarkSendIPv4(b *testing.B) {
	s, peer := benchStack(b)
	buf := make([]byte, 1514)
	b.ReportAllocs()
	b.SetBytes(1460)
	for b.Loop() {
		p := s.newPacket()
		if err := s.sendIPv4(p, stackIP, peerIP, wire.ProtoTCP, 1460); err != nil {
			b.Fatal(err)
		}
		peer.ReadFrame(buf)
	}
}

func BenchmarkInputTCP(b *testing.B) {
	s, _ := benchStack(b)
	s.setTransport(&countingTransport{})
	f := ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4,
		ipv4Packet(wire.IPv4Header{Protocol: wire.ProtoTCP, Src: peerIP, Dst: stackIP}, make([]byte, 1460)))
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	for b.Loop() {
		s.input(f)
	}
}

func BenchmarkInputICMPEcho(b *testing.B) {
	s, peer := benchStack(b)
	f := pingFrame(stackIP, 1, 1, make([]byte, 56))
	buf := make([]byte, 1514)
	b.ReportAllocs()
	for b.Loop() {
		s.input(f)
		peer.ReadFrame(buf)
	}
}

func TestAccessors(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	if h.s.MTU() != 1500 || h.s.Addr() != stackIP {
		t.Fatalf("MTU %d Addr %v", h.s.MTU(), h.s.Addr())
	}
	mac := h.s.MAC()
	if !bytes.Equal(mac, stackMAC[:]) {
		t.Fatalf("MAC %v", mac)
	}
	mac[0] = 0xff // a copy: the stack's own address must not change
	if !bytes.Equal(h.s.MAC(), stackMAC[:]) {
		t.Fatal("MAC returned the stack's own storage")
	}
	addrs := h.s.Addresses()
	addrs[0] = otherIP
	if !h.s.HasAddress(stackIP) || h.s.HasAddress(otherIP) {
		t.Fatal("Addresses returned the stack's own storage")
	}
}
