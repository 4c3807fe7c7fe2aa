package stack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zppratt/rfsis/stack/wire"
)

// TestKernelPing runs the stack on a real TAP device in a network namespace
// made for the test, and has the Linux kernel in that namespace ping it: the
// kernel's ARP must resolve the stack and its echo requests be answered.
// Traffic stays inside the namespace (10.77.250.0/24).
func TestKernelPing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and a TAP device")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2)")
	}
	ns := fmt.Sprintf("rfsis-stk-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("cannot create network namespace %s (no CAP_SYS_ADMIN?): %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v: %s", ns, err, out)
		}
	})

	const ifname = "rfsistap0"
	tapFD, icmpFD, err := inNamespace(ns, func() (int, int, error) {
		tap, err := openTAP(ifname)
		if err != nil {
			return -1, -1, err
		}
		// A raw ICMP socket of the namespace's kernel, our ping when the
		// ping binary is missing. Sockets stay in the namespace they were
		// made in.
		icmp, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			unix.Close(tap)
			return -1, -1, fmt.Errorf("raw ICMP socket: %w", err)
		}
		return tap, icmp, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(icmpFD)
	dev := newTestTAP(tapFD, ifname)
	for _, args := range [][]string{
		{"addr", "add", "10.77.250.1/24", "dev", ifname},
		{"link", "set", ifname, "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			dev.Close()
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}

	cfg := Config{
		Addr:   netip.MustParseAddr("10.77.250.2"),
		Prefix: netip.MustParsePrefix("10.77.250.0/24"),
		MAC:    net.HardwareAddr{0x02, 0x52, 0x46, 0x53, 0x00, 0x02},
		Logger: testLogger(t),
	}
	s, err := New(dev, cfg)
	if err != nil {
		dev.Close()
		t.Fatal(err)
	}
	defer s.Close()

	if _, err := exec.LookPath("ping"); err == nil {
		out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "3", "-W", "1", "10.77.250.2").CombinedOutput()
		t.Logf("ping:\n%s", out)
		if err != nil {
			t.Fatalf("ping from the kernel failed: %v", err)
		}
	} else {
		t.Log("no ping binary: pinging from a raw ICMP socket in the namespace")
		if err := rawPing(icmpFD, cfg.Addr, 3); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.ICMPEchoReplies < 3 || st.ARPRepliesOut < 1 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("stats: %d frames in, %d out, %d ARP replies, %d echo replies, %d dropped by EtherType",
		st.FramesIn, st.FramesOut, st.ARPRepliesOut, st.ICMPEchoReplies, st.DropEtherType)
}

// inNamespace runs f on an OS thread switched into namespace ns. The thread
// stays locked and is thrown away when the goroutine ends, so no other
// goroutine ever runs in the namespace.
func inNamespace(ns string, f func() (int, int, error)) (int, int, error) {
	type result struct {
		a, b int
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		fd, err := unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{-1, -1, fmt.Errorf("open namespace: %w", err)}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, -1, fmt.Errorf("setns: %w", err)}
			return
		}
		a, b, err := f()
		ch <- result{a, b, err}
	}()
	r := <-ch
	return r.a, r.b, r.err
}

// openTAP creates TAP interface name (no packet-info header) and returns its
// non-blocking descriptor.
func openTAP(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	return fd, nil
}

// testTAP is a minimal link.Device over a TAP descriptor, for this test
// only (link/tap is the real one). A non-blocking fd in an *os.File uses the
// runtime poller, so Close wakes a blocked Read.
type testTAP struct {
	f    *os.File
	name string
}

func newTestTAP(fd int, name string) *testTAP {
	return &testTAP{f: os.NewFile(uintptr(fd), "/dev/net/tun"), name: name}
}

func (d *testTAP) ReadFrame(b []byte) (int, error) { return d.f.Read(b) }
func (d *testTAP) WriteFrame(b []byte) error       { _, err := d.f.Write(b); return err }
func (d *testTAP) MTU() int                        { return 1500 }
func (d *testTAP) Name() string                    { return d.name }
func (d *testTAP) Close() error {
	if err := d.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}

// rawPing sends count echo requests to dst from the raw socket fd and
// waits for each reply, one second at most per request.
func rawPing(fd int, dst netip.Addr, count int) error {
	tv := unix.NsecToTimeval(int64(time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	const id = 0x5246
	msg := make([]byte, wire.ICMPHeaderLen+32)
	buf := make([]byte, 1500)
	var fails []string
	for seq := 1; seq <= count; seq++ {
		n, _ := wire.EncodeICMPEcho(msg, wire.ICMPEchoRequest, id, uint16(seq), []byte("rfsis kernel ping test payload!!"))
		if err := unix.Sendto(fd, msg[:n], 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			return fmt.Errorf("sendto: %w", err)
		}
		deadline := time.Now().Add(time.Second)
		got := false
		for !got && time.Now().Before(deadline) {
			m, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return fmt.Errorf("recvfrom: %w", err)
			}
			ip, err := wire.ParseIPv4(buf[:m]) // raw sockets deliver the IP header
			if err != nil || ip.Src() != dst {
				continue
			}
			r, err := wire.ParseICMP(ip.Payload())
			if err == nil && r.Type() == wire.ICMPEchoReply && r.ID() == id && r.Seq() == uint16(seq) &&
				string(r.Body()) == string(msg[wire.ICMPHeaderLen:n]) {
				got = true
			}
		}
		if !got {
			fails = append(fails, fmt.Sprint(seq))
		}
	}
	if len(fails) > 0 {
		return fmt.Errorf("no echo reply for seq %s", strings.Join(fails, ","))
	}
	return nil
}
