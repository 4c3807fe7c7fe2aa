//go:build linux

package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/link"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Each test runs in its own namespace (netns.NewNS), so they may all use
// the same subnet: the kernel side of the TAP is .1, the made-up host .2.
var (
	kernelIP = netip.MustParseAddr("10.77.251.1")
	ourIP    = netip.MustParseAddr("10.77.251.2")
	ourMAC   = net.HardwareAddr{0x02, 0x77, 0x00, 0x00, 0x00, 0x02} // locally administered
)

// openIn opens a TAP inside ns; TUNSETIFF creates or finds the interface in
// the calling thread's namespace.
func openIn(tb testing.TB, ns *netns.NS, name string) *Device {
	tb.Helper()
	var d *Device
	if err := ns.Do(func() (err error) {
		d, err = Open(Config{Name: name})
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// kernelSide gives the TAP's kernel side kernelIP/24 and returns its MAC.
func kernelSide(tb testing.TB, ns *netns.NS, name string) net.HardwareAddr {
	tb.Helper()
	if out, err := ns.Run("ip", "addr", "add", kernelIP.String()+"/24", "dev", name); err != nil {
		tb.Fatalf("%v\n%s", err, out)
	}
	var mac net.HardwareAddr
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			mac = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	return mac
}

// arpRequest builds the 42-byte broadcast "who has target? tell ourIP".
func arpRequest(target netip.Addr) []byte {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], ourMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0806) // ARP
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], ourMAC)
	ip := ourIP.As4()
	copy(a[14:18], ip[:])
	// a[18:24], target MAC, stays zero.
	ip = target.As4()
	copy(a[24:28], ip[:])
	return f
}

// isARPReply reports whether f is an ARP reply from sender (at senderMAC) to
// us, as the kernel answers arpRequest.
func isARPReply(f []byte, sender netip.Addr, senderMAC net.HardwareAddr) bool {
	if len(f) < 42 || !bytes.Equal(f[0:6], ourMAC) || !bytes.Equal(f[6:12], senderMAC) ||
		binary.BigEndian.Uint16(f[12:]) != 0x0806 {
		return false
	}
	a := f[14:]
	s, d := sender.As4(), ourIP.As4()
	return binary.BigEndian.Uint16(a[6:]) == 2 &&
		bytes.Equal(a[8:14], senderMAC) && bytes.Equal(a[14:18], s[:]) &&
		bytes.Equal(a[18:24], ourMAC) && bytes.Equal(a[24:28], d[:])
}

// readReply reads frames until the kernel's ARP reply; it gives up, closing
// d to unblock ReadFrame, after a few seconds.
func readReply(t *testing.T, d *Device, kernelMAC net.HardwareAddr) {
	t.Helper()
	timer := time.AfterFunc(5*time.Second, func() { d.Close() })
	defer timer.Stop()
	buf := make([]byte, 2048)
	for {
		n, err := d.ReadFrame(buf)
		if err != nil {
			t.Fatalf("no ARP reply from the kernel: %v", err)
		}
		if isARPReply(buf[:n], kernelIP, kernelMAC) {
			return
		}
		t.Logf("skipping frame % x", buf[:n])
	}
}

func TestARPWithKernel(t *testing.T) {
	ns := netns.NewNS(t)
	d := openIn(t, ns, "rt0")
	if d.Name() != "rt0" || !d.Created() || d.MTU() != 1500 {
		t.Errorf("Name %q Created %v MTU %d, want rt0 true 1500", d.Name(), d.Created(), d.MTU())
	}
	kmac := kernelSide(t, ns, d.Name())

	// Frames written by the Device reach the kernel, which answers.
	if err := d.WriteFrame(arpRequest(kernelIP)); err != nil {
		t.Fatal(err)
	}
	readReply(t, d, kmac)

	// A short buffer gets the frame's head, and n never exceeds it.
	if err := d.WriteFrame(arpRequest(kernelIP)); err != nil {
		t.Fatal(err)
	}
	small := make([]byte, 20)
	n, err := d.ReadFrame(small)
	if err != nil || n != len(small) || !bytes.Equal(small[:6], ourMAC) {
		t.Errorf("ReadFrame(20-byte buf) = %d, %v, % x", n, err, small)
	}

	// Too short for Ethernet: the kernel refuses it, and says so.
	if err := d.WriteFrame(make([]byte, 10)); err == nil || errors.Is(err, link.ErrClosed) {
		t.Errorf("WriteFrame(10 bytes) = %v, want an EINVAL error", err)
	}
}

func TestConcurrentWriters(t *testing.T) {
	ns := netns.NewNS(t)
	d := openIn(t, ns, "rt0")
	kmac := kernelSide(t, ns, d.Name())
	const writers, each = 4, 50
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			req := arpRequest(kernelIP)
			for range each {
				if err := d.WriteFrame(req); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for range writers * each {
		readReply(t, d, kmac)
	}
}

func TestPremadeTAPSurvives(t *testing.T) {
	ns := netns.NewNS(t)
	if out, err := ns.Run("ip", "tuntap", "add", "dev", "tap0", "mode", "tap"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for round := range 2 {
		d := openIn(t, ns, "tap0")
		if d.Created() {
			t.Errorf("round %d: Created() = true for a pre-made TAP", round)
		}
		out, err := ns.Run("ip", "-o", "link", "show", "tap0")
		if err != nil || !strings.Contains(out, ",UP") {
			t.Errorf("round %d: tap0 not up after Open (err %v): %s", round, err, out)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		out, err = ns.Run("ip", "-d", "-o", "link", "show", "tap0")
		if err != nil || !strings.Contains(out, "persist on") {
			t.Fatalf("round %d: pre-made tap0 after Close (err %v): %s", round, err, out)
		}
	}
}

func TestCreatedTAPGone(t *testing.T) {
	ns := netns.NewNS(t)
	d := openIn(t, ns, "rt1")
	if !d.Created() {
		t.Error("Created() = false for a new TAP")
	}
	if out, err := ns.Run("ip", "-d", "-o", "link", "show", "rt1"); err != nil || !strings.Contains(out, "persist off") {
		t.Fatalf("rt1 while open (err %v): %s", err, out)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.Run("ip", "link", "show", "rt1"); err == nil {
		t.Errorf("rt1 still there after Close:\n%s", out)
	}

	// With no name the kernel picks one, and the TAP is ours.
	d = openIn(t, ns, "")
	if !d.Created() || !strings.HasPrefix(d.Name(), "tap") {
		t.Errorf("unnamed TAP: Name %q Created %v", d.Name(), d.Created())
	}
}

func TestOpenErrors(t *testing.T) {
	ns := netns.NewNS(t)
	if out, err := ns.Run("ip", "link", "add", "notap", "type", "bridge"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	err := ns.Do(func() error {
		d, err := Open(Config{Name: "notap"})
		if err == nil {
			d.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "not a TAP") {
		t.Errorf("Open(bridge) = %v, want a not-a-TAP error", err)
	}
	if _, err := Open(Config{Name: "a-name-longer-than-15"}); err == nil {
		t.Error("Open accepted a 21-byte name")
	}
}

func TestCloseUnblocksReadFrame(t *testing.T) {
	ns := netns.NewNS(t)
	d := openIn(t, ns, "rt0") // no address, no IPv6: the kernel sends nothing
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		_, err := d.ReadFrame(buf)
		errc <- err
	}()
	select {
	case err := <-errc:
		t.Fatalf("ReadFrame returned before Close: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	start := time.Now()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, link.ErrClosed) {
			t.Errorf("blocked ReadFrame returned %v, want link.ErrClosed", err)
		}
		t.Logf("ReadFrame unblocked %v after Close", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("Close did not unblock ReadFrame within a second")
	}
	if _, err := d.ReadFrame(make([]byte, 64)); !errors.Is(err, link.ErrClosed) {
		t.Errorf("ReadFrame after Close = %v", err)
	}
	if err := d.WriteFrame(arpRequest(kernelIP)); !errors.Is(err, link.ErrClosed) {
		t.Errorf("WriteFrame after Close = %v", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestZeroAllocs guards the per-frame paths against allocation creep; the
// benchmarks below show the same as allocs/op.
func TestZeroAllocs(t *testing.T) {
	ns := netns.NewNS(t)
	d := openIn(t, ns, "rt0")
	kmac := kernelSide(t, ns, d.Name())
	req := arpRequest(kernelIP)
	buf := make([]byte, 2048)
	// Warm up: the first round trip makes the kernel's neighbour entry.
	if err := d.WriteFrame(req); err != nil {
		t.Fatal(err)
	}
	readReply(t, d, kmac)
	allocs := testing.AllocsPerRun(200, func() {
		if err := d.WriteFrame(req); err != nil {
			panic(err)
		}
		for {
			n, err := d.ReadFrame(buf)
			if err != nil {
				panic(err)
			}
			if isARPReply(buf[:n], kernelIP, kmac) {
				return
			}
		}
	})
	if allocs != 0 {
		t.Errorf("WriteFrame+ReadFrame allocate %v times per frame, want 0", allocs)
	}
}

// BenchmarkWriteFrame writes frames the kernel drops at once (unicast to a
// MAC that is not its own, with an experimental EtherType).
func BenchmarkWriteFrame(b *testing.B) {
	ns := netns.NewNS(b)
	d := openIn(b, ns, "rt0")
	f := make([]byte, 60)
	copy(f[0:6], []byte{0x02, 0x77, 0, 0, 0, 0x99})
	copy(f[6:12], ourMAC)
	binary.BigEndian.PutUint16(f[12:], 0x88b5) // IEEE local experimental
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	for b.Loop() {
		if err := d.WriteFrame(f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkARPRoundTrip is one WriteFrame (an ARP request to the kernel) and
// one ReadFrame (its reply) per op: the whole read and write path.
func BenchmarkARPRoundTrip(b *testing.B) {
	ns := netns.NewNS(b)
	d := openIn(b, ns, "rt0")
	kmac := kernelSide(b, ns, d.Name())
	req := arpRequest(kernelIP)
	buf := make([]byte, 2048)
	b.ReportAllocs()
	for b.Loop() {
		if err := d.WriteFrame(req); err != nil {
			b.Fatal(err)
		}
		for {
			n, err := d.ReadFrame(buf)
			if err != nil {
				b.Fatal(err)
			}
			if isARPReply(buf[:n], kernelIP, kmac) {
				break
			}
		}
	}
}
