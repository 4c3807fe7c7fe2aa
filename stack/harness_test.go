package stack

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/zppratt/rfsis/link/pipe"
	"github.com/zppratt/rfsis/stack/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	stackMAC = wire.MAC{0x02, 0x52, 0x46, 0, 0, 0x02}
	peerMAC  = wire.MAC{0x02, 0x52, 0x46, 0, 0, 0x01}
	stackIP  = netip.MustParseAddr("10.77.1.2")
	peerIP   = netip.MustParseAddr("10.77.1.1")
	otherIP  = netip.MustParseAddr("10.77.1.9")
	svcIP    = netip.MustParseAddr("10.77.1.100")
	testNet  = netip.MustParsePrefix("10.77.1.0/24")
)

// testLogWriter sends the stack's logs to t.Log, shown with -v or on failure.
type testLogWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testLogWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(&testLogWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func testConfig(t testing.TB) Config {
	return Config{Addr: stackIP, Prefix: testNet, MAC: net.HardwareAddr(stackMAC[:]), Logger: testLogger(t)}
}

// fakeClock is a scripted clock for the stack's ARP timers.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is a stack on one end of a pipe and a scripted peer on the other:
// the test writes hand-built frames and reads what the stack sends.
type harness struct {
	t    *testing.T
	s    *Stack
	dev  *pipe.Device // the peer's end
	rx   chan []byte
	stop chan struct{}
	done chan struct{}
}

func newHarness(t *testing.T, cfg Config, clock func() time.Time) *harness {
	t.Helper()
	return newHarnessReader(t, cfg, clock, true)
}

// newHarnessReader is newHarness; without reader, nothing reads the peer's
// end and the test reads h.dev itself (h.recv and friends do not work).
func newHarnessReader(t *testing.T, cfg Config, clock func() time.Time, reader bool) *harness {
	t.Helper()
	a, b := pipe.New(1500)
	if clock == nil {
		clock = time.Now
	}
	s, err := start(a, cfg, clock)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, s: s, dev: b, rx: make(chan []byte, 1024), stop: make(chan struct{}), done: make(chan struct{})}
	if !reader {
		close(h.done)
	} else {
		go h.read()
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		close(h.stop)
		b.Close()
		<-h.done
	})
	return h
}

// read copies the stack's frames into h.rx.
func (h *harness) read() {
	defer close(h.done)
	buf := make([]byte, 1514)
	for {
		n, err := h.dev.ReadFrame(buf)
		if err != nil {
			return
		}
		select {
		case h.rx <- bytes.Clone(buf[:n]):
		case <-h.stop:
			return
		}
	}
}

func (h *harness) send(frame []byte) {
	h.t.Helper()
	if err := h.dev.WriteFrame(frame); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) recv() wire.Ethernet {
	h.t.Helper()
	select {
	case f := <-h.rx:
		e, err := wire.ParseEthernet(f)
		if err != nil {
			h.t.Fatalf("stack sent a bad frame: %v", err)
		}
		return e
	case <-time.After(5 * time.Second):
		h.t.Fatal("no frame from the stack within 5s")
		return nil
	}
}

func (h *harness) recvARP() (wire.Ethernet, wire.ARP) {
	h.t.Helper()
	e := h.recv()
	if e.EtherType() != wire.EtherTypeARP {
		h.t.Fatalf("want ARP, got EtherType %#04x", e.EtherType())
	}
	a, err := wire.ParseARP(e.Payload())
	if err != nil {
		h.t.Fatal(err)
	}
	return e, a
}

func (h *harness) recvIPv4() (wire.Ethernet, wire.IPv4) {
	h.t.Helper()
	e := h.recv()
	if e.EtherType() != wire.EtherTypeIPv4 {
		h.t.Fatalf("want IPv4, got EtherType %#04x", e.EtherType())
	}
	p, err := wire.ParseIPv4(e.Payload())
	if err != nil {
		h.t.Fatal(err)
	}
	return e, p
}

// quiet checks that the stack sends nothing for d.
func (h *harness) quiet(d time.Duration) {
	h.t.Helper()
	select {
	case f := <-h.rx:
		h.t.Fatalf("unexpected frame from the stack: %x", f)
	case <-time.After(d):
	}
}

// introduce makes the stack learn the peer, as when the peer ARPs for it,
// and consumes the reply.
func (h *harness) introduce() {
	h.t.Helper()
	h.send(arpFrame(wire.BroadcastMAC, wire.ARPRequest, peerMAC, peerIP, wire.MAC{}, stackIP))
	_, a := h.recvARP()
	if a.Op() != wire.ARPReply {
		h.t.Fatal("no ARP reply")
	}
}

// sendData sends payload from src to dst through sendIPv4.
func (h *harness) sendData(src, dst netip.Addr, proto uint8, payload []byte) error {
	p := h.s.newPacket()
	n := copy(p.payload(), payload)
	return h.s.sendIPv4(p, src, dst, proto, n)
}

// waitFor polls cond until it holds, failing after 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(time.Millisecond):
		}
	}
}

func ethFrame(dst, src wire.MAC, typ uint16, payload []byte) []byte {
	b := make([]byte, wire.EthernetHeaderLen+len(payload))
	wire.EncodeEthernet(b, dst, src, typ)
	copy(b[wire.EthernetHeaderLen:], payload)
	return b
}

// arpFrame is an ARP packet from the peer's MAC, padded to 60 bytes as on a
// real wire.
func arpFrame(ethDst wire.MAC, op uint16, sha wire.MAC, spa netip.Addr, tha wire.MAC, tpa netip.Addr) []byte {
	b := make([]byte, 46)
	wire.EncodeARP(b, op, sha, spa, tha, tpa)
	return ethFrame(ethDst, sha, wire.EtherTypeARP, b)
}

func ipv4Packet(h wire.IPv4Header, payload []byte) []byte {
	if h.TTL == 0 {
		h.TTL = 64
	}
	b := make([]byte, wire.IPv4MinHeaderLen+len(payload))
	if _, err := wire.EncodeIPv4(b, h, len(payload)); err != nil {
		panic(err)
	}
	copy(b[wire.IPv4MinHeaderLen:], payload)
	return b
}

func echoRequest(id, seq uint16, payload []byte) []byte {
	b := make([]byte, wire.ICMPHeaderLen+len(payload))
	wire.EncodeICMPEcho(b, wire.ICMPEchoRequest, id, seq, payload)
	return b
}

// pingFrame is an echo request from the peer to dst.
func pingFrame(dst netip.Addr, id, seq uint16, payload []byte) []byte {
	return ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4,
		ipv4Packet(wire.IPv4Header{Protocol: wire.ProtoICMP, Src: peerIP, Dst: dst}, echoRequest(id, seq, payload)))
}

// expectStats waits until ok holds for the stack's counters: the stack
// counts a frame just after writing it, so the peer may see it first.
func (h *harness) expectStats(ok func(Stats) bool) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := h.s.Stats()
		if ok(st) {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("stats not as expected: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
}
