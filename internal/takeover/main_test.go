//go:build linux

package takeover

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/internal/progtest"
)

// echoserverBin is the echo server built by TestMain; buildErr is why not.
var (
	echoserverBin string
	buildErr      error
)

func TestMain(m *testing.M) { progtest.Main(m, "RFSIS_TAKEOVER", &echoserverBin, &buildErr) }

// startPair builds a two-node topology, starts the main and then the
// backup, and returns once the main says its backup joined, so that every
// connection the test opens afterwards is replicated. The start-up race
// (Pair.StartRetrying) is logged and the pair restarted, up to
// startAttempts times.
func startPair(t *testing.T) *Pair {
	t.Helper()
	tp := netns.New(t, netns.Options{Nodes: 2}) // skips unless root
	if buildErr != nil {
		t.Fatalf("echoserver not built: %v", buildErr)
	}
	p := &Pair{TP: tp, Bin: echoserverBin, Dir: t.TempDir(), Debug: os.Getenv("RFSIS_TAKEOVER_DEBUG") != ""}
	if os.Getenv("RFSIS_TAKEOVER_CRASH") == "quit" {
		p.Crash = syscall.SIGQUIT
	}
	t.Cleanup(func() { checkLogs(t, p) })
	capture(t, tp.Client(), netns.HostLink)
	capture(t, tp.Node(0), netns.NodeUplink)
	capture(t, tp.Node(1), netns.NodeUplink)

	require.NoError(t, p.StartRetrying(context.Background(), startAttempts, t.Logf))
	t.Logf("pair up: main pid %d in %s, backup pid %d in %s, service %s", p.Main.Pid(), tp.Node(0).Name(),
		p.Backup.Pid(), tp.Node(1).Name(), p.Service())
	return p
}

// startAttempts bounds startPair's restarts after the start-up race.
const startAttempts = 5

// checkLogs fails the test on a panic or race report in either node's
// output, and keeps both logs when the test failed (or when asked): the
// tail netns logs on failure is too short to diagnose a takeover.
func checkLogs(t *testing.T, p *Pair) {
	procs := map[string]*netns.Process{"main": p.Main, "backup": p.Backup}
	dir := os.Getenv("RFSIS_TAKEOVER_LOGDIR")
	for role, proc := range procs {
		if proc == nil {
			continue
		}
		out := proc.Output()
		for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
			if strings.Contains(out, bad) {
				t.Errorf("%s echoserver output contains %q", role, bad)
			}
		}
		if dir == "" && !t.Failed() {
			continue
		}
		d := dir
		if d == "" {
			d = os.TempDir()
		}
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-" + role + ".log"
		path := filepath.Join(d, name)
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Logf("keeping the %s log: %v", role, err)
			continue
		}
		t.Logf("%s log (%d bytes): %s", role, len(out), path)
	}
	if t.Failed() {
		logKernelCounters(t, p.TP.Client())
	}
}

// waitOutput waits up to d for s in proc's output.
func waitOutput(t *testing.T, proc *netns.Process, d time.Duration, s string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	require.NoError(t, proc.WaitOutput(ctx, s))
}

// waitExit waits up to d for proc to exit and returns its Wait error.
func waitExit(t *testing.T, proc *netns.Process, d time.Duration) error {
	t.Helper()
	select {
	case <-proc.Done():
		return proc.Wait()
	case <-time.After(d):
		t.Fatalf("pid %d still running %v later", proc.Pid(), d)
		return nil
	}
}

// logKernelCounters logs the non-zero TCP counters of ns's kernel (nstat,
// from iproute2): what the client retransmitted, reset or dropped.
func logKernelCounters(t *testing.T, ns *netns.NS) {
	out, err := ns.KernelCounters("Tcp")
	if err != nil {
		t.Logf("nstat in %s: %v", ns.Role(), err)
		return
	}
	t.Logf("%s kernel counters (nstat -as):\n%s", ns.Role(), out)
}

// kernelCounter reads one counter of ns's kernel by its nstat name.
func kernelCounter(t *testing.T, ns *netns.NS, name string) uint64 {
	t.Helper()
	n, err := ns.KernelCounter(name)
	require.NoError(t, err)
	return n
}

// requireNoResets checks the client kernel's view: no established
// connection was reset (an RST from either node, which the clients may
// also have seen as an error) and the client sent no RST itself (it does
// when a segment makes no sense for its connection).
func requireNoResets(t *testing.T, p *Pair) {
	t.Helper()
	assert.Zero(t, kernelCounter(t, p.TP.Client(), "TcpEstabResets"),
		"client kernel: established connections reset")
	assert.Zero(t, kernelCounter(t, p.TP.Client(), "TcpOutRsts"),
		"client kernel: RSTs sent by the client")
}

// requireServiceWithBackup checks that the client's neighbour entry for
// the service address names the backup's MAC: the address moved and did
// not come back.
func requireServiceWithBackup(t *testing.T, p *Pair) {
	t.Helper()
	out, err := p.TP.Client().Run("ip", "neigh", "show", p.TP.ServiceAddr().String())
	require.NoError(t, err)
	assert.Contains(t, strings.ToLower(out), strings.ToLower(p.BackupMAC),
		"client's neighbour entry for the service address: %q; want the backup's MAC %s", strings.TrimSpace(out), p.BackupMAC)
}

// capture, when RFSIS_TAKEOVER_PCAP names a directory, runs tcpdump on dev
// in ns for the rest of the test, writing <dir>/<test>-<ns role>.pcap
// (headers only). A frame the switch dropped shows in one file and not in
// another; the node captures show what each node sent and when.
func capture(t *testing.T, ns *netns.NS, dev string) {
	t.Helper()
	dir := os.Getenv("RFSIS_TAKEOVER_PCAP")
	if dir == "" {
		return
	}
	netns.RequireTools(t, "tcpdump")
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-" + ns.Role() + ".pcap"
	file := filepath.Join(dir, name)
	p, err := ns.Start(context.Background(), "tcpdump", "-Z", "root", "-i", dev, "-U", "--immediate-mode", "-s", "128", "-w", file)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.WaitOutput(ctx, "listening on"))
	t.Cleanup(func() {
		p.Signal(os.Interrupt)
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
		}
	})
}

// requireStillPaired fails the test if the pair changed roles before the
// test's own fault: a backup that took over from a live main (a false
// failover: the main was slow or a frame was lost for three heartbeat
// intervals), or a main that lost its backup or stood down. The message
// quotes both nodes' role changes, so the failure says what happened
// rather than being misread as the fault's effect.
func requireStillPaired(t *testing.T, p *Pair, when string) {
	t.Helper()
	if !p.RolesChanged() {
		return
	}
	t.Fatalf("%s, before the test's fault, the pair had already changed roles (a false failover or a lost backup):\n%s",
		when, p.RoleLines())
}
