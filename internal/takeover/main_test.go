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
	// RFSIS_TAKEOVER_PCAP: the client's eth0 and both nodes' uplinks.
	pcap := os.Getenv("RFSIS_TAKEOVER_PCAP")
	tp.Client().Capture(t, netns.HostLink, pcap)
	tp.Node(0).Capture(t, netns.NodeUplink, pcap)
	tp.Node(1).Capture(t, netns.NodeUplink, pcap)

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
		progtest.CheckOutput(t, role+" echoserver", out)
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
		// What the client retransmitted, reset or dropped.
		p.TP.Client().LogCounters(t, "Tcp")
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

// requireNoResets checks the client kernel's view: no established
// connection was reset (an RST from either node, which the clients may
// also have seen as an error) and the client sent no RST itself (it does
// when a segment makes no sense for its connection).
func requireNoResets(t *testing.T, p *Pair) {
	t.Helper()
	assert.Zero(t, p.TP.Client().MustKernelCounter(t, "TcpEstabResets"),
		"client kernel: established connections reset")
	assert.Zero(t, p.TP.Client().MustKernelCounter(t, "TcpOutRsts"),
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
