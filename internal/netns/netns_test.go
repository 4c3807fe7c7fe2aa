//go:build linux

package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary act as a test process that dies without
// running its cleanups (see TestKilledTestBinaryLeavesNothing).
const helperEnv = "RFSIS_NETNS_DIE_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

// nsInode is the inode identifying a network namespace file.
func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// threadNS reports the network namespace of a fresh OS-locked goroutine's
// thread, i.e. of a thread the scheduler hands out.
func threadNS(t *testing.T) uint64 {
	ch := make(chan uint64)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			panic(err)
		}
		ch <- st.Ino
	}()
	return <-ch
}

func listNS(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	return string(out)
}

// echoServer accepts on l and echoes each connection until l closes.
func echoServer(t *testing.T, l net.Listener) {
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}
	}()
}

func echoOnce(ctx context.Context, from *NS, addr string) error {
	c, err := from.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo got %q", line)
	}
	return nil
}

func TestTopologyUp(t *testing.T) {
	tp := New(t, Options{Nodes: 2, NodeKernelAddrs: true})
	list := listNS(t)
	for _, ns := range []*NS{tp.Switch(), tp.Client(), tp.Node(0), tp.Node(1)} {
		if !strings.Contains(list, ns.Name()) {
			t.Errorf("namespace %s missing from ip netns list:\n%s", ns.Name(), list)
		}
		if !strings.HasPrefix(ns.Name(), tp.Prefix()) {
			t.Errorf("namespace %s lacks prefix %s", ns.Name(), tp.Prefix())
		}
	}
	if got, want := tp.ClientAddr(), tp.Addr(10); got != want || tp.Client().Addr() != want {
		t.Errorf("ClientAddr = %v, Client().Addr() = %v, want %v", got, tp.Client().Addr(), want)
	}
	if !tp.Subnet().Contains(tp.ServiceAddr()) || tp.ServiceAddr().As4()[3] != 1 || tp.NodeAddr(1).As4()[3] != 3 {
		t.Errorf("addresses: service %v node1 %v subnet %v", tp.ServiceAddr(), tp.NodeAddr(1), tp.Subnet())
	}
	if a := tp.Subnet().Addr().As4(); a[0] != 10 || a[1] != 77 {
		t.Errorf("subnet %v outside 10.77.0.0/16", tp.Subnet())
	}

	// The node holds br0 with the uplink and the TAP as ports.
	out, err := tp.Node(0).Run("ip", "-o", "link", "show", "master", NodeBridge)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{NodeUplink + "@", NodeTAP + ":"} {
		if !strings.Contains(out, want) {
			t.Errorf("br0 ports lack %q:\n%s", want, out)
		}
	}
	// IPv6 is off by default: no link-local addresses chattering.
	if out, err := tp.Client().Run("ip", "-6", "addr"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("client has IPv6 addresses (err %v):\n%s", err, out)
	}

	// Client -> switch -> node uplink -> br0 (kernel address on the bridge).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range tp.Nodes() {
		l, err := tp.Node(i).Listen("tcp", netip.AddrPortFrom(tp.NodeKernelAddr(i), 7).String())
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, l)
		if err := echoOnce(ctx, tp.Client(), l.Addr().String()); err != nil {
			t.Errorf("client -> node%d kernel: %v", i, err)
		}
	}

	// A plain server host, as benchmarks use.
	srv := tp.AddHost("server", 200)
	if srv.Addr() != tp.Addr(200) {
		t.Errorf("server addr %v", srv.Addr())
	}
	l, err := srv.Listen("tcp", netip.AddrPortFrom(srv.Addr(), 7).String())
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	if err := echoOnce(ctx, tp.Client(), l.Addr().String()); err != nil {
		t.Errorf("client -> server host: %v", err)
	}
	// The listener really is inside the server namespace. (Do not check by
	// dialling from the host namespace: that would send traffic out through
	// the host's default route.)
	if out, err := srv.Run("ss", "-Hltn"); err != nil || !strings.Contains(out, l.Addr().String()) {
		t.Errorf("ss in the server namespace (err %v) lacks %v:\n%s", err, l.Addr(), out)
	}
}

func TestDo(t *testing.T) {
	ns := NewNS(t)
	host := threadNS(t)
	want := nsInode(t, "/run/netns/"+ns.Name())
	if want == host {
		t.Fatal("new namespace has the host's inode")
	}
	var inside uint64
	err := ns.Do(func() error {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		inside = st.Ino
		return errors.New("boom")
	})
	if err == nil || err.Error() != "boom" {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if inside != want {
		t.Errorf("fn ran in namespace %d, want %d", inside, want)
	}
	// The scheduler's threads must all still be in the host namespace.
	for range 20 {
		if got := threadNS(t); got != host {
			t.Fatalf("a thread was left in namespace %d", got)
		}
	}

	func() {
		defer func() {
			if v := recover(); v == nil || !strings.Contains(fmt.Sprint(v), "oops") {
				t.Errorf("recovered %v, want Do to re-raise fn's panic", v)
			}
		}()
		ns.Do(func() error { panic("oops") })
	}()
	if got := threadNS(t); got != host {
		t.Fatalf("after a panic a thread was left in namespace %d", got)
	}
}

func TestDoAfterCleanup(t *testing.T) {
	var ns *NS
	t.Run("build", func(t *testing.T) { ns = NewNS(t) })
	if err := ns.Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Do after cleanup: %v, want ErrClosed", err)
	}
	if _, err := ns.Start(context.Background(), "true"); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after cleanup: %v, want ErrClosed", err)
	}
	if _, err := ns.Run("true"); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after cleanup: %v, want ErrClosed", err)
	}
}

// procState is the state letter in /proc/PID/stat (S sleeping, T stopped).
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return f[0]
}

func waitState(t *testing.T, pid int, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for procState(t, pid) != want {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d state %s, want %s", pid, procState(t, pid), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStart(t *testing.T) {
	ns := NewNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := ns.Start(ctx, "sh", "-c", "echo ready; echo oops >&2; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitOutput(ctx, "oops"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.Output(), "ready") {
		t.Errorf("output %q lacks stdout", p.Output())
	}
	// ip netns exec execs the program: the pid is the program's own, and
	// it lives in the namespace.
	deadline := time.Now().Add(5 * time.Second)
	for {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.Pid()))
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d is %q, want sleep", p.Pid(), comm)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got, want := nsInode(t, fmt.Sprintf("/proc/%d/ns/net", p.Pid())), nsInode(t, "/run/netns/"+ns.Name()); got != want {
		t.Errorf("process in namespace %d, want %d", got, want)
	}

	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	waitState(t, p.Pid(), "T")
	if err := p.Cont(); err != nil {
		t.Fatal(err)
	}
	waitState(t, p.Pid(), "S")
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if err := p.Wait(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("Wait = %v, want killed by SIGKILL", err)
	}
	if err := p.Kill(); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Kill after exit: %v, want os.ErrProcessDone", err)
	}

	// An early exit is reported by WaitOutput rather than waited out.
	q, err := ns.Start(ctx, "sh", "-c", "echo bye; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if err := q.WaitOutput(ctx, "never printed"); err == nil || !strings.Contains(err.Error(), "bye") {
		t.Errorf("WaitOutput on an exited process: %v", err)
	}

	out, err := ns.Run("ip", "-o", "link")
	if err != nil || !strings.Contains(out, "lo:") {
		t.Errorf("Run ip link: %v\n%s", err, out)
	}
	if _, err := ns.Run("sh", "-c", "echo failing; exit 1"); err == nil || !strings.Contains(err.Error(), "failing") {
		t.Errorf("Run error %v lacks the output", err)
	}
}

// udpLoss sends n datagrams from the client to node0's kernel and returns
// how many arrived.
func udpLoss(t *testing.T, tp *Topology, rx net.PacketConn, n int) int {
	t.Helper()
	tx, err := tp.Client().Dial(context.Background(), "udp", rx.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			rx.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, _, err := rx.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	for i := range n {
		if _, err := tx.Write([]byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	<-done
	return int(got.Load())
}

func TestLoss(t *testing.T) {
	RequireTools(t, "nft")
	tp := New(t, Options{Nodes: 1, NodeKernelAddrs: true})
	rx, err := tp.Node(0).ListenPacket("udp", netip.AddrPortFrom(tp.NodeKernelAddr(0), 9).String())
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	// Resolve ARP before losses start, so only datagrams are dropped.
	if got := udpLoss(t, tp, rx, 5); got != 5 {
		t.Fatalf("without loss %d/5 datagrams arrived", got)
	}

	const n = 200
	if err := tp.SetLoss(50); err != nil {
		t.Fatal(err)
	}
	got := udpLoss(t, tp, rx, n)
	t.Logf("SetLoss(50): %d/%d datagrams arrived", got, n)
	if got < n*20/100 || got > n*80/100 {
		t.Errorf("SetLoss(50): %d/%d arrived, want 20%%..80%%", got, n)
	}

	if err := tp.SetLoss(100); err != nil {
		t.Fatal(err)
	}
	if got := udpLoss(t, tp, rx, 20); got != 0 {
		t.Errorf("SetLoss(100): %d/20 arrived", got)
	}

	if err := tp.ClearLoss(); err != nil {
		t.Fatal(err)
	}
	if got := udpLoss(t, tp, rx, n); got != n {
		t.Errorf("after ClearLoss: %d/%d arrived", got, n)
	}
	if err := tp.SetLoss(101); err == nil {
		t.Error("SetLoss(101) accepted")
	}
}

// reachable reports whether the client can open a TCP connection to addr
// within d.
func reachable(tp *Topology, addr string, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return echoOnce(ctx, tp.Client(), addr) == nil
}

// eventually polls cond for up to 10s: carrier changes reach the bridge
// through the kernel's linkwatch, which may delay them by up to a second.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// gone reports whether pid no longer runs: it does not exist, or it is a
// zombie its new parent has not reaped yet (not every container's pid 1
// reaps orphans promptly).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] == "Z"
}

func TestLinkDownUp(t *testing.T) {
	tp := New(t, Options{Nodes: 1, NodeKernelAddrs: true})
	l, err := tp.Node(0).Listen("tcp", netip.AddrPortFrom(tp.NodeKernelAddr(0), 7).String())
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	addr := l.Addr().String()
	if !reachable(tp, addr, 5*time.Second) {
		t.Fatal("node unreachable before LinkDown")
	}
	if err := tp.LinkDown(tp.Node(0)); err != nil {
		t.Fatal(err)
	}
	if reachable(tp, addr, 500*time.Millisecond) {
		t.Error("node reachable after LinkDown")
	}
	out, err := tp.Node(0).Run("ip", "-o", "link", "show", NodeUplink)
	if err != nil || !strings.Contains(out, "NO-CARRIER") {
		t.Errorf("uplink after LinkDown (err %v): %s", err, out)
	}
	if err := tp.LinkUp(tp.Node(0)); err != nil {
		t.Fatal(err)
	}
	if !eventually(func() bool { return reachable(tp, addr, 500*time.Millisecond) }) {
		t.Error("node unreachable after LinkUp")
	}
	if err := tp.LinkDown(NewNS(t)); err == nil {
		t.Error("LinkDown accepted a namespace outside the topology")
	}
}

func TestPartition(t *testing.T) {
	RequireTools(t, "nft")
	tp := New(t, Options{Nodes: 2, NodeKernelAddrs: true})
	var addrs []string
	for i := range 2 {
		l, err := tp.Node(i).Listen("tcp", netip.AddrPortFrom(tp.NodeKernelAddr(i), 7).String())
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, l)
		addrs = append(addrs, l.Addr().String())
	}
	if err := tp.Partition(tp.Client(), tp.Node(0)); err != nil {
		t.Fatal(err)
	}
	if reachable(tp, addrs[0], 500*time.Millisecond) {
		t.Error("node0 reachable across the partition")
	}
	if !reachable(tp, addrs[1], 5*time.Second) {
		t.Error("node1 unreachable, but only node0 was partitioned")
	}
	if err := tp.Heal(); err != nil {
		t.Fatal(err)
	}
	if !eventually(func() bool { return reachable(tp, addrs[0], 500*time.Millisecond) }) {
		t.Error("node0 unreachable after Heal")
	}
}

func TestCleanup(t *testing.T) {
	var (
		prefix string
		p      *Process
	)
	t.Run("build", func(t *testing.T) {
		tp := New(t, Options{Nodes: 2})
		prefix = tp.Prefix()
		var err error
		if p, err = tp.Node(1).Start(context.Background(), "sleep", "60"); err != nil {
			t.Fatal(err)
		}
		if err := p.Stop(); err != nil { // a stopped process must die too
			t.Fatal(err)
		}
	})
	if list := listNS(t); strings.Contains(list, prefix) {
		t.Errorf("namespaces with prefix %s remain:\n%s", prefix, list)
	}
	select {
	case <-p.Done():
	default:
		t.Fatalf("process %d still running after cleanup", p.Pid())
	}
	if err := unix.Kill(p.Pid(), 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("pid %d still exists after cleanup: %v", p.Pid(), err)
	}
}

// TestKilledTestBinaryLeavesNothing runs a copy of this test binary that
// builds a namespace, starts a process in it and exits without cleanups (as
// a test timeout does). The process must die with it (Pdeathsig), and the
// next sweep must remove the stale namespace.
func TestKilledTestBinaryLeavesNothing(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		ns := NewNS(t)
		p, err := ns.Start(context.Background(), "sleep", "60")
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(2)
		}
		fmt.Printf("pid=%d ns=%s\n", p.Pid(), ns.Name())
		os.Exit(3) // no cleanups
	}
	requireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledTestBinaryLeavesNothing$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, _ := cmd.CombinedOutput()
	var (
		pid  int
		name string
	)
	for _, line := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(line, "pid=%d ns=%s", &pid, &name); err == nil {
			break
		}
	}
	if pid == 0 {
		t.Fatalf("helper output:\n%s", out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if !eventually(func() bool { return gone(pid) }) {
		t.Errorf("process %d outlived the test binary that started it", pid)
	}
	if list := listNS(t); !strings.Contains(list, name) {
		t.Fatalf("helper's namespace %s is not there to sweep:\n%s", name, list)
	}
	sweepStale(t)
	if list := listNS(t); strings.Contains(list, name) {
		t.Errorf("sweep left stale namespace %s", name)
	}
}
