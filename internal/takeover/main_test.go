//go:build linux

package takeover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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

// Log lines the tests wait for, as failover/node.go and cmd/echoserver
// write them.
const (
	logListening   = "echo server listening"
	logServing     = "serving the service address"
	logProtected   = "backup joined"
	logTookOver    = "took over the service"
	logUnprotected = "backup lost: serving unprotected"
	logStandDown   = "standing down"
)

const (
	echoPort = 8080
	// syncKey is the shared key of the pair: 32 characters, the same on
	// both nodes.
	syncKey = "rfsis-takeover-test-key-32-chars"
	// heartbeat and misses are the settings: detection within
	// 30 ms of the main's last heartbeat.
	heartbeat = 10 * time.Millisecond
	misses    = 3
)

// pair is a main (node 0) and a backup (node 1) running cmd/echoserver.
type pair struct {
	tp     *netns.Topology
	main   *netns.Process
	backup *netns.Process
	// backupMAC is the backup stack's Ethernet address, from its log: after
	// a takeover the client's neighbour entry for the service address must
	// point to it.
	backupMAC string
}

// service is the address clients dial.
func (p *pair) service() string {
	return fmt.Sprintf("%s:%d", p.tp.ServiceAddr(), echoPort)
}

// writeConfig writes node i's config.json into a temporary directory.
func writeConfig(t *testing.T, tp *netns.Topology, backup bool) string {
	t.Helper()
	cfg := map[string]any{
		"backup":           backup,
		"ipv4_addr":        tp.ServiceAddr().String(),
		"main_addr":        tp.NodeAddr(0).String(),
		"backup_addr":      tp.NodeAddr(1).String(),
		"port":             echoPort,
		"netmask":          "255.255.255.0",
		"tap_device_name":  netns.NodeTAP,
		"heartbeat_timer":  heartbeat.Seconds(),
		"heartbeat_misses": misses,
		"sync_key":         syncKey,
		"debug_mode":       os.Getenv("RFSIS_TAKEOVER_DEBUG") != "",
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, b, 0o644))
	return path
}

// startPair builds a two-node topology, starts the main and then the
// backup, and returns once the main says its backup joined, so that every
// connection the test opens afterwards is replicated.
//
// A backup that cannot reach the main within one detection window (30 ms)
// of its start takes the service over, and the main then stands down. On
// this topology that happens when the backup's first frames (the ARP and
// SYN of its sync connection) are sent before its TAP's bridge port is
// forwarding: the kernel enables the port a few milliseconds after the
// process attaches to the TAP, and the stack retries only after its 1 s
// SYN timeout. That start-up race is the subject of
// TestBackupRestartWhileMainServes; here, where it is not what the test is
// about, the pair is restarted (up to startAttempts times) and the race is
// logged.
func startPair(t *testing.T) *pair {
	t.Helper()
	tp := netns.New(t, netns.Options{Nodes: 2}) // skips unless root
	if buildErr != nil {
		t.Fatalf("echoserver not built: %v", buildErr)
	}
	p := &pair{tp: tp}
	t.Cleanup(func() { p.checkLogs(t) })
	capture(t, tp.Client(), netns.HostLink)
	capture(t, tp.Node(0), netns.NodeUplink)
	capture(t, tp.Node(1), netns.NodeUplink)

	for attempt := 1; ; attempt++ {
		err := p.start(t)
		if err == nil {
			break
		}
		if !errors.Is(err, errStartRace) || attempt == startAttempts {
			require.NoError(t, err, "starting the pair (attempt %d)", attempt)
		}
		t.Logf("attempt %d: %v; restarting the pair", attempt, err)
		for _, proc := range []*netns.Process{p.main, p.backup} {
			proc.Kill()
			<-proc.Done()
		}
	}
	m := regexp.MustCompile(`"stack up".* mac=(\S+)`).FindStringSubmatch(p.backup.Output())
	require.NotNil(t, m, "no MAC in the backup's \"stack up\" line")
	p.backupMAC = m[1]
	t.Logf("pair up: main pid %d in %s, backup pid %d in %s, service %s", p.main.Pid(), tp.Node(0).Name(),
		p.backup.Pid(), tp.Node(1).Name(), p.service())
	return p
}

// startAttempts bounds startPair's restarts after the start-up race.
const startAttempts = 5

// errStartRace is the start-up race of startPair.
var errStartRace = errors.New("start-up race: the backup took over from the live main before its sync connection was up")

// start starts the main, then the backup, and waits for the main's
// "backup joined". It returns errStartRace when the backup took over
// instead.
func (p *pair) start(t *testing.T) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var err error
	// The main first: alone, it serves (Standalone) after one detection
	// window as Joining; the backup then dials it and the main reports it
	// protected. (In the other order the lone backup takes the service
	// after its window, and the main, when it comes, must yield.)
	p.main, err = p.tp.Node(0).Start(context.Background(), echoserverBin, "-config", writeConfig(t, p.tp, false))
	if err != nil {
		return err
	}
	if err := p.main.WaitOutput(ctx, logServing); err != nil {
		return err
	}
	p.backup, err = p.tp.Node(1).Start(context.Background(), echoserverBin, "-config", writeConfig(t, p.tp, true))
	if err != nil {
		return err
	}
	// Whichever comes first: the main protected, or the backup serving.
	for {
		switch {
		case strings.Contains(p.backup.Output(), logTookOver):
			return errStartRace
		case strings.Contains(p.main.Output(), logProtected):
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the main never reported its backup: %w", ctx.Err())
		case <-p.main.Done():
			return fmt.Errorf("the main exited while its backup started: %v", p.main.Wait())
		case <-p.backup.Done():
			return fmt.Errorf("the backup exited at start: %v", p.backup.Wait())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// checkLogs fails the test on a panic or race report in either node's
// output, and keeps both logs when the test failed (or when asked): the
// tail netns logs on failure is too short to diagnose a takeover.
func (p *pair) checkLogs(t *testing.T) {
	procs := map[string]*netns.Process{"main": p.main, "backup": p.backup}
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
		logKernelCounters(t, p.tp.Client())
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
func requireNoResets(t *testing.T, p *pair) {
	t.Helper()
	assert.Zero(t, kernelCounter(t, p.tp.Client(), "TcpEstabResets"),
		"client kernel: established connections reset")
	assert.Zero(t, kernelCounter(t, p.tp.Client(), "TcpOutRsts"),
		"client kernel: RSTs sent by the client")
}

// requireServiceWithBackup checks that the client's neighbour entry for
// the service address names the backup's MAC: the address moved and did
// not come back.
func requireServiceWithBackup(t *testing.T, p *pair) {
	t.Helper()
	out, err := p.tp.Client().Run("ip", "neigh", "show", p.tp.ServiceAddr().String())
	require.NoError(t, err)
	assert.Contains(t, strings.ToLower(out), strings.ToLower(p.backupMAC),
		"client's neighbour entry for the service address: %q; want the backup's MAC %s", strings.TrimSpace(out), p.backupMAC)
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
func requireStillPaired(t *testing.T, p *pair, when string) {
	t.Helper()
	mainOut, backupOut := p.main.Output(), p.backup.Output()
	if !strings.Contains(backupOut, logTookOver) && !strings.Contains(mainOut, logUnprotected) &&
		!strings.Contains(mainOut, logStandDown) {
		return
	}
	t.Fatalf("%s, before the test's fault, the pair had already changed roles (a false failover or a lost backup):\nmain:\n%s\nbackup:\n%s",
		when, roleLines(mainOut), roleLines(backupOut))
}

// roleLines picks the role and address changes out of a node's log.
func roleLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		for _, k := range []string{logTookOver, logUnprotected, logProtected, logStandDown, "holding the service", logServing, "address conflict", "sync: "} {
			if strings.Contains(l, k) {
				keep = append(keep, "  "+l)
				break
			}
		}
	}
	return strings.Join(keep, "\n")
}
