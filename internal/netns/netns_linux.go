package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace this package creates.
const Prefix = "rfsis-"

// Interface names used inside the namespaces.
const (
	SwitchBridge = "sw0"    // the bridge in the switch namespace
	NodeBridge   = "br0"    // the bridge in a node namespace
	NodeTAP      = "tap0"   // the persistent TAP in a node namespace
	NodeUplink   = "uplink" // a node's veth to the switch, enslaved to br0
	HostLink     = "eth0"   // the client's (and AddHost's) veth to the switch
)

// cmdTimeout bounds every helper command (ip, nft) so a wedged tool fails the
// test instead of hanging it until the global test timeout.
const cmdTimeout = 30 * time.Second

var (
	counter   atomic.Uint32
	sweepOnce sync.Once
)

// ErrClosed is returned by NS methods after the test's cleanup has run.
var ErrClosed = errors.New("netns: namespace already deleted")

// NS is one network namespace created by this package.
// Its methods are safe for concurrent use.
type NS struct {
	name string // full name, as `ip netns list` shows it
	role string // short name: "switch", "client", "node0", "ns", or an AddHost name
	port string // our veth's peer in the switch namespace; "" if none
	addr netip.Addr
	own  *owner

	mu   sync.RWMutex
	nsfd int // open fd of /run/netns/<name>; -1 once deleted
}

// owner is what a set of namespaces built together shares: the test, the
// processes started in them, and the cleanup.
type owner struct {
	t      testing.TB
	seq    uint32 // per-process counter, part of prefix
	prefix string

	mu     sync.Mutex
	closed bool
	nss    []*NS // creation order; deleted in reverse
	procs  []*Process
}

// Name is the namespace's full name, usable with `ip netns exec NAME` or
// `ip -n NAME` while the test runs.
func (ns *NS) Name() string { return ns.name }

// Role is the short name within its topology: "switch", "client", "node0",
// the name given to AddHost, or "ns" for NewNS.
func (ns *NS) Role() string { return ns.role }

// Addr is the kernel's IPv4 address in this namespace, if it has one
// (the client, AddHost hosts, nodes with Options.NodeKernelAddrs).
func (ns *NS) Addr() netip.Addr { return ns.addr }

func (ns *NS) String() string { return ns.name }

// NewNS creates a lone namespace holding only an up loopback (IPv6
// disabled, so nothing chatters on links added later), deleted at cleanup.
// It suits tests that build their own devices, such as a TAP test.
// It skips the test when not root or when `ip` is missing.
func NewNS(t testing.TB) *NS {
	t.Helper()
	own := newOwner(t)
	ns, err := own.add("ns", false)
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	return ns
}

// RequireTools skips the test unless each named program is on PATH, naming
// the Debian package that provides it.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	pkgs := map[string]string{"ip": "iproute2", "nft": "nftables", "bridge": "iproute2", "tcpdump": "tcpdump"}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			pkg := pkgs[tool]
			if pkg == "" {
				pkg = "the package providing " + tool
			}
			t.Skipf("netns: %q not found on PATH; install %s (apt-get install -y %s)", tool, pkg, pkg)
		}
	}
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netns: integration test needs root to create network namespaces; run as root (sudo go test ...)")
	}
	RequireTools(t, "ip")
}

func newOwner(t testing.TB) *owner {
	t.Helper()
	requireRoot(t)
	sweepOnce.Do(func() { sweepStale(t) })
	seq := counter.Add(1)
	own := &owner{t: t, seq: seq, prefix: fmt.Sprintf("%s%d-%d-", Prefix, os.Getpid(), seq)}
	t.Cleanup(own.cleanup)
	return own
}

// add creates the namespace own.prefix+role with loopback up.
func (own *owner) add(role string, ipv6 bool) (*NS, error) {
	own.mu.Lock()
	closed := own.closed
	own.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	name := own.prefix + role
	if _, err := command(context.Background(), nil, "ip", "netns", "add", name); err != nil {
		return nil, err
	}
	ns := &NS{name: name, role: role, own: own, nsfd: -1}
	// Register before anything else can fail, so cleanup deletes it.
	own.mu.Lock()
	own.nss = append(own.nss, ns)
	own.mu.Unlock()
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	ns.nsfd = fd
	if !ipv6 {
		// A fresh namespace has IPv6 on: every link that comes up would send
		// router solicitations, MLD reports and DAD probes, noise that a
		// stack test reading raw frames from a TAP does not want. "default"
		// covers links created later, "all" the ones that exist (lo).
		err = ns.Do(func() error {
			for _, f := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("disable IPv6 in %s: %w", name, err)
		}
	}
	if err := ns.ip("link set lo up"); err != nil {
		return nil, err
	}
	return ns, nil
}

// cleanup kills the processes started through own, then deletes its
// namespaces. It runs from t.Cleanup, so it reports with t.Errorf.
func (own *owner) cleanup() {
	own.mu.Lock()
	own.closed = true
	procs := own.procs
	nss := own.nss
	own.mu.Unlock()

	for _, p := range procs {
		p.kill()
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			own.t.Errorf("netns: process %d (%s) did not exit 10s after SIGKILL", p.Pid(), p.name)
		}
		if own.t.Failed() {
			own.t.Logf("netns: output of %s (pid %d) in %s:\n%s", p.name, p.Pid(), p.ns.name, p.tail(8<<10))
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		ns := nss[i]
		ns.mu.Lock()
		if ns.nsfd >= 0 {
			// Our fd holds the namespace alive: close it first so that
			// deleting the name really destroys it (and its links).
			unix.Close(ns.nsfd)
			ns.nsfd = -1
		}
		ns.mu.Unlock()
		// Virtual links (veth, bridge, tun) inside are destroyed with the
		// namespace; none of them is moved to the host namespace. A socket
		// or TAP fd the test leaked keeps the namespace alive, unnamed,
		// until it is closed.
		if _, err := command(context.Background(), nil, "ip", "netns", "del", ns.name); err != nil {
			own.t.Errorf("netns: cleanup: %v", err)
		}
	}
}

var staleName = regexp.MustCompile(`^` + regexp.QuoteMeta(Prefix) + `(\d+)-\d+-`)

// sweepStale deletes namespaces left by test processes that died without
// running their cleanups. Only names whose pid is gone are touched; a live
// pid (ours, a parallel test binary, or a reused pid) is left alone.
func sweepStale(t testing.TB) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || pid <= 0 {
			continue
		}
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			continue
		}
		if _, err := command(context.Background(), nil, "ip", "netns", "del", e.Name()); err == nil {
			t.Logf("netns: removed stale namespace %s (pid %d is gone)", e.Name(), pid)
		}
	}
}

// Do runs fn on an OS thread that has entered the namespace, and waits for
// it. Sockets, listeners and TAP devices that fn opens stay in the namespace
// for their whole life, whatever thread later uses them.
//
// Only fn's own goroutine is inside the namespace: goroutines it starts are
// not. fn must not call t.FailNow/t.Fatal (it does not run on the test
// goroutine); return an error instead. A panic in fn is re-raised by Do.
//
// The thread is returned to the Go scheduler only if it got back into its
// original namespace; otherwise it stays locked and the runtime destroys it
// when Do's goroutine exits, so no goroutine ever runs by accident in a
// namespace it did not ask for.
func (ns *NS) Do(fn func() error) error {
	ch := make(chan doResult, 1)
	go func() {
		runtime.LockOSThread()
		r := ns.enterAndRun(fn)
		if r.restored {
			runtime.UnlockOSThread()
		}
		ch <- r
	}()
	r := <-ch
	if r.stack != nil {
		panic(fmt.Sprintf("netns: panic in Do(%s): %v\n%s", ns.name, r.panicValue, r.stack))
	}
	return r.err
}

type doResult struct {
	err        error
	restored   bool // the thread is back in the namespace it started in
	panicValue any
	stack      []byte
}

// enterAndRun must run on a locked OS thread.
func (ns *NS) enterAndRun(fn func() error) (r doResult) {
	// The thread's namespace, not the process's: they can differ.
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return doResult{err: fmt.Errorf("netns: open current namespace: %w", err), restored: true}
	}
	defer unix.Close(orig)

	ns.mu.RLock()
	if ns.nsfd < 0 {
		ns.mu.RUnlock()
		return doResult{err: fmt.Errorf("netns %s: %w", ns.name, ErrClosed), restored: true}
	}
	err = unix.Setns(ns.nsfd, unix.CLONE_NEWNET)
	// Once inside, the namespace lives on even if cleanup closes nsfd.
	ns.mu.RUnlock()
	if err != nil {
		// restored stays false: after a failed setns we do not trust the
		// thread, it is discarded.
		return doResult{err: fmt.Errorf("netns: setns into %s: %w", ns.name, err)}
	}

	func() {
		defer func() {
			if v := recover(); v != nil {
				r.panicValue, r.stack = v, debug.Stack()
			}
		}()
		r.err = fn()
	}()

	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		r.err = errors.Join(r.err, fmt.Errorf("netns: setns back from %s: %w", ns.name, err))
		return r
	}
	r.restored = true
	return r
}

// Dial connects from inside the namespace, like net.Dialer.DialContext. Use
// IP literals: a host name would be resolved on other goroutines, outside
// the namespace.
func (ns *NS) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace, like net.Listen.
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket (UDP, say) inside the namespace,
// like net.ListenPacket.
func (ns *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := ns.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// Run runs a command inside the namespace (through `ip netns exec`) and
// returns its combined output. A failure's error includes the output.
// It gives up after 30 seconds; use RunContext for other limits.
func (ns *NS) Run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	return ns.RunContext(ctx, args...)
}

// RunContext is Run with a caller-chosen context.
func (ns *NS) RunContext(ctx context.Context, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("netns: Run: no command")
	}
	if err := ns.alive(); err != nil {
		return "", err
	}
	return command(ctx, nil, append([]string{"ip", "netns", "exec", ns.name}, args...)...)
}

func (ns *NS) alive() error {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	if ns.nsfd < 0 {
		return fmt.Errorf("netns %s: %w", ns.name, ErrClosed)
	}
	return nil
}

// ip runs `ip -n NAME -batch -` with one ip command per line, so building a
// namespace costs one process instead of a dozen.
func (ns *NS) ip(lines ...string) error {
	if err := ns.alive(); err != nil {
		return err
	}
	script := strings.Join(lines, "\n") + "\n"
	_, err := command(context.Background(), strings.NewReader(script), "ip", "-n", ns.name, "-batch", "-")
	if err != nil {
		return fmt.Errorf("%w\nscript:\n%s", err, script)
	}
	return nil
}

// nft feeds an nft script to `nft -f -` inside the namespace.
func (ns *NS) nft(script string) error {
	if err := ns.alive(); err != nil {
		return err
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return errors.New("netns: nft not found on PATH; install the Debian package nftables")
	}
	_, err := command(context.Background(), strings.NewReader(script), "ip", "netns", "exec", ns.name, "nft", "-f", "-")
	if err != nil {
		return fmt.Errorf("%w\nscript:\n%s", err, script)
	}
	return nil
}

// command runs a helper program with the package's time limit and returns
// its combined output; the error names the command and carries the output.
func command(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// No Pdeathsig here: it fires when the forking OS thread exits, which
	// for a short command is a hazard (see Start) and no benefit.
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("netns: %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}
