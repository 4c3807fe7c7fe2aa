//go:build linux

package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zppratt/rfsis/internal/takeover"

	"github.com/zppratt/rfsis/internal/netns"
)

// Log lines of failover/node.go and cmd/echoserver that BenchmarkReplicated
// waits for: internal/takeover's.
const (
	logServing     = takeover.LogServing
	logProtected   = takeover.LogProtected
	logTookOver    = takeover.LogTookOver
	logUnprotected = takeover.LogUnprotected
)

// Replication settings of the pair: internal/takeover's (the issue's
// heartbeat and misses, so detection is within 30 ms).
const (
	replHeartbeat = takeover.Heartbeat
	replMisses    = takeover.Misses
	// nodeRTTDur is how long the node-to-node round trip is measured.
	nodeRTTDur = 2 * time.Second
)

const (
	modeUnrepl = "unreplicated"
	modeRepl   = "replicated"
)

// replEnv is BenchmarkReplicated's topology: node 0 runs the main, node 1
// the backup (during the replicated slices).
type replEnv struct {
	tp         *netns.Topology
	dur        time.Duration
	bin        string // cmd/echoserver
	mainCfg    string
	backupCfg  string
	main       *netns.Process
	backup     *netns.Process
	results    map[string]*result // test/mode
	nodeRTT    *result            // kernel TCP round trips node 0 → node 1
	started    time.Time
	background float64
	loadavg    string
	raceRetry  int // start-up races met while adding the backup
	// incidents are the pair's breakdowns seen after a replicated slice
	// (the pair is then restarted for the next slice).
	incidents []string
}

// BenchmarkReplicated measures what replication costs the echo server: the
// same client code (1-connection 64-byte round trips, and 1-connection echo
// bulk) against cmd/echoserver as a lone main (unreplicated) and as a main
// protected by a backup on a second node (replicated), in one topology and
// with the same main process throughout. The slices run unreplicated,
// replicated, replicated, unreplicated (the backup is added, then killed),
// each for half of RFSIS_BENCH_DURATION (5s). It also measures a kernel TCP
// round trip between the two nodes, the unit of the latency target,
// and prints a table with the ratios.
func BenchmarkReplicated(b *testing.B) {
	netns.RequireTools(b, "ip")
	e := &replEnv{dur: 5 * time.Second, results: map[string]*result{}, started: time.Now()}
	if s := os.Getenv(durationEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("%s=%q: want a positive duration", durationEnv, s)
		}
		e.dur = d
	}
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		e.loadavg = strings.TrimSpace(string(la))
	}
	if m0, err := MachineCPU(); err == nil {
		t0 := time.Now()
		time.Sleep(time.Second)
		if m1, err := MachineCPU(); err == nil {
			e.background = (m1 - m0).Seconds() / time.Since(t0).Seconds()
		}
	}
	bins := b.TempDir()
	if err := build(bins); err != nil {
		b.Fatal(err)
	}
	e.bin = filepath.Join(bins, "echoserver")
	e.tp = netns.New(b, netns.Options{Nodes: 2, NodeKernelAddrs: true})
	e.mainCfg = e.writeConfig(b, false)
	e.backupCfg = e.writeConfig(b, true)
	b.Cleanup(func() {
		for _, p := range []*netns.Process{e.backup, e.main} {
			if p != nil {
				p.Kill()
			}
		}
	})

	e.measureNodeRTT(b)
	e.startMain(b)
	// MeasureEcho half-closes while echoed bytes are still in flight,
	// which once broke a replicated pair (BENCHMARKS.md, "Replication
	// cost"); the benchmark checks the pair after every test.
	tests := []testDef{
		{name: "rr1", rr: true, run: rrTest(1)},
		{name: "echo", run: MeasureEcho},
	}
	for _, t := range tests {
		for _, m := range []string{modeUnrepl, modeRepl} {
			e.results[t.name+"/"+m] = &result{test: t.name, impl: m, rr: t.rr}
		}
	}
	// ABBA over the modes, with one backup start and one backup loss.
	for _, m := range []string{modeUnrepl, modeRepl, modeRepl, modeUnrepl} {
		e.setMode(b, m)
		for _, t := range tests {
			e.measure(b, t, e.results[t.name+"/"+m])
			if m == modeRepl {
				e.checkPair(b, t.name)
			}
		}
	}
	if runCtx.Err() != nil {
		b.Fatal("interrupted")
	}
	if out := e.main.Output(); strings.Contains(out, "panic:") {
		b.Errorf("main log:\n%s", tail(out, 30))
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(e.results["rr1/"+modeRepl].opsPerSec()/e.results["rr1/"+modeUnrepl].opsPerSec(), "rr1-ratio")
	b.ReportMetric(e.results["echo/"+modeRepl].mbps()/e.results["echo/"+modeUnrepl].mbps(), "echo-ratio")
	rep := e.report()
	fmt.Print(rep)
	if path := os.Getenv(reportEnv); path != "" {
		if err := os.WriteFile(path, []byte(rep), 0o644); err != nil {
			b.Error(err)
		}
	}
}

// writeConfig writes the main's or the backup's config.json, as
// internal/takeover's pair does: identical but for "backup".
func (e *replEnv) writeConfig(b *testing.B, backup bool) string {
	path, err := takeover.WriteConfig(b.TempDir(), e.tp, backup, false)
	if err != nil {
		b.Fatal(err)
	}
	return path
}

// measureNodeRTT measures 64-byte kernel TCP round trips from node 0's
// kernel to an echo listener on node 1's kernel address, through the same
// bridges the sync channel crosses (but not the TAPs and stacks).
func (e *replEnv) measureNodeRTT(b *testing.B) {
	l, err := e.tp.Node(1).Listen("tcp4", netip.AddrPortFrom(e.tp.NodeKernelAddr(1), EchoPort).String())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go Serve(l, Echo)
	dial := func(ctx context.Context, port int) (*net.TCPConn, error) {
		c, err := e.tp.Node(0).Dial(ctx, "tcp4", netip.AddrPortFrom(e.tp.NodeKernelAddr(1), uint16(port)).String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	s, err := MeasureRR(runCtx, dial, nodeRTTDur, 1)
	if err != nil {
		b.Fatalf("node-to-node round trips: %v", err)
	}
	slices.Sort(s.Lat)
	e.nodeRTT = &result{test: "node-rtt", impl: "kernel", rr: true, s: s}
}

func (e *replEnv) waitFor(b *testing.B, p *netns.Process, s string) {
	ctx, cancel := context.WithTimeout(runCtx, 20*time.Second)
	defer cancel()
	if err := p.WaitOutput(ctx, s); err != nil {
		b.Fatalf("waiting for %q: %v\noutput:\n%s", s, err, tail(p.Output(), 30))
	}
}

// startMain starts the main alone on node 0 and waits until it serves.
func (e *replEnv) startMain(b *testing.B) {
	p, err := e.tp.Node(0).Start(context.Background(), e.bin, "-config", e.mainCfg)
	if err != nil {
		b.Fatal(err)
	}
	e.main = p
	e.waitFor(b, p, logServing)
	d := &env{tp: e.tp}
	if err := d.waitServing(EchoPort); err != nil {
		b.Fatalf("main pid %d: %v\noutput:\n%s", p.Pid(), err, tail(p.Output(), 30))
	}
	b.Logf("main pid %d serving %s:%d from %s", p.Pid(), e.tp.ServiceAddr(), EchoPort, e.tp.Node(0).Name())
}

// setMode adds the backup (replicated) or kills it (unreplicated), and
// returns once the main reports the change.
func (e *replEnv) setMode(b *testing.B, mode string) {
	switch {
	case mode == modeRepl && e.backup == nil:
		e.addBackup(b)
	case mode == modeUnrepl && e.backup != nil:
		e.backup.Kill()
		<-e.backup.Done()
		e.backup = nil
		e.waitFor(b, e.main, logUnprotected)
		b.Logf("backup killed; main serving unprotected")
	}
}

// addBackup starts the backup on node 1 and waits for the main's "backup
// joined". A backup that starts before its TAP's bridge port forwards may
// take the service over instead (the start-up race internal/takeover's
// startPair describes); the pair is then restarted.
func (e *replEnv) addBackup(b *testing.B) {
	for attempt := 1; ; attempt++ {
		joined := strings.Count(e.main.Output(), logProtected)
		p, err := e.tp.Node(1).Start(context.Background(), e.bin, "-config", e.backupCfg)
		if err != nil {
			b.Fatal(err)
		}
		e.backup = p
		raced, err := e.waitJoined(p, joined)
		if err == nil && !raced {
			b.Logf("backup pid %d joined (attempt %d)", p.Pid(), attempt)
			return
		}
		if err != nil || attempt == 5 {
			b.Fatalf("adding the backup (attempt %d): %v\nmain:\n%s\nbackup:\n%s", attempt, err,
				tail(e.main.Output(), 20), tail(p.Output(), 20))
		}
		e.raceRetry++
		b.Logf("attempt %d: start-up race (the backup took over); restarting the pair", attempt)
		for _, q := range []*netns.Process{p, e.main} {
			q.Kill()
			<-q.Done()
		}
		e.backup = nil
		e.startMain(b)
	}
}

// waitJoined waits for a new "backup joined" in the main's log, or for the
// backup's takeover (raced).
func (e *replEnv) waitJoined(backup *netns.Process, before int) (raced bool, err error) {
	deadline := time.After(20 * time.Second)
	for {
		switch {
		case strings.Contains(backup.Output(), logTookOver):
			return true, nil
		case strings.Count(e.main.Output(), logProtected) > before:
			return false, nil
		}
		select {
		case <-runCtx.Done():
			return false, runCtx.Err()
		case <-deadline:
			return false, fmt.Errorf("the main never reported its backup")
		case <-e.main.Done():
			return false, fmt.Errorf("the main exited: %v", e.main.Wait())
		case <-backup.Done():
			return false, fmt.Errorf("the backup exited: %v", backup.Wait())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// pairTrouble are log lines that mean the pair is no longer a healthy main
// and backup.
var pairTrouble = []string{logTookOver, logUnprotected, "address conflict", "sync: cannot apply", "standing down", "panic:"}

// checkPair, after a replicated measurement, checks that the main is still
// protected by its backup. If not, it records what the logs say and
// restarts the main alone (the next replicated slice adds a new backup),
// so that a breakdown does not spoil the other measurements.
func (e *replEnv) checkPair(b *testing.B, test string) {
	time.Sleep(200 * time.Millisecond) // a takeover follows its cause by a detection window
	var lines []string
	for role, p := range map[string]*netns.Process{"main": e.main, "backup": e.backup} {
		for _, l := range strings.Split(p.Output(), "\n") {
			for _, k := range pairTrouble {
				if strings.Contains(l, k) {
					lines = append(lines, role+": "+l)
					break
				}
			}
		}
	}
	if len(lines) == 0 {
		return
	}
	slices.Sort(lines)
	msg := fmt.Sprintf("after the replicated %s slice:\n%s", test, strings.Join(lines, "\n"))
	e.incidents = append(e.incidents, msg)
	b.Logf("pair broke %s; restarting the main alone", msg)
	for _, q := range []*netns.Process{e.backup, e.main} {
		q.Kill()
		<-q.Done()
	}
	e.backup = nil
	e.startMain(b)
}

// measure runs one slice (half the duration) of t against the service and
// adds it to r.
func (e *replEnv) measure(b *testing.B, t testDef, r *result) {
	d := &env{tp: e.tp}
	s, err := t.run(runCtx, d.dialer(e.tp.ServiceAddr()), e.dur/2)
	if err != nil {
		if runCtx.Err() != nil {
			b.Fatal("interrupted")
		}
		msg := fmt.Sprintf("%s/%s: %v\nmain output (end):\n%s", r.test, r.impl, err, tail(e.main.Output(), 20))
		if e.backup != nil {
			msg += "\nbackup output (end):\n" + tail(e.backup.Output(), 20)
		}
		b.Fatal(msg)
	}
	r.s.Add(s)
	b.Logf("%s/%s slice: %d bytes, %d round trips in %v", r.test, r.impl, s.Bytes, s.Ops, s.Elapsed.Round(time.Millisecond))
}

// report renders the comparison as Markdown.
func (e *replEnv) report() string {
	var w strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	u := func(t string) *result { return e.results[t+"/"+modeUnrepl] }
	r := func(t string) *result { return e.results[t+"/"+modeRepl] }
	p("\n## Replication cost: echoserver unreplicated vs replicated\n\n")
	p("- date: %s\n", e.started.Format(time.RFC3339))
	p("- machine: %d CPUs (%s), kernel %s, %s\n", runtime.NumCPU(), CPUModel(), KernelRelease(), runtime.Version())
	p("- code: %s\n", VCSInfo())
	p("- other load before the run: %.2f cores busy over 1 s; load average %s\n", e.background, e.loadavg)
	p("- pair: main in %s, backup in %s (heartbeat %v, %d misses); service %s:%d\n",
		e.tp.Node(0).Name(), e.tp.Node(1).Name(), replHeartbeat, replMisses, e.tp.ServiceAddr(), EchoPort)
	p("- each test: %s per mode, as unreplicated, replicated, replicated, unreplicated slices of %s, same main process; MB = 10^6 bytes\n",
		e.dur, e.dur/2)
	if e.raceRetry > 0 {
		p("- the backup start-up race happened %d time(s); the pair was restarted\n", e.raceRetry)
	}
	p("\n| measurement | unreplicated | replicated | replicated / unreplicated |\n|---|---:|---:|---:|\n")
	line := func(label string, a, c float64, prec int) {
		p("| %s | %.*f | %.*f | %.2f |\n", label, prec, a, prec, c, c/a)
	}
	line("round trips/s, 1 connection", u("rr1").opsPerSec(), r("rr1").opsPerSec(), 0)
	line("  latency p50, µs", u("rr1").percentile(0.5), r("rr1").percentile(0.5), 1)
	line("  latency p99, µs", u("rr1").percentile(0.99), r("rr1").percentile(0.99), 1)
	line("echo bulk, 1 connection, MB/s echoed", u("echo").mbps(), r("echo").mbps(), 1)
	p("| echo: longest wait for progress, ms | %.1f | %.1f | |\n",
		float64(u("echo").s.MaxGap.Microseconds())/1e3, float64(r("echo").s.MaxGap.Microseconds())/1e3)

	n := e.nodeRTT
	p("\nNode-to-node round trip (kernel TCP, node 0 → node 1, 64 bytes, 1 connection, %v): p50 %.1f µs, p99 %.1f µs, %.0f round trips/s.\n",
		nodeRTTDur, n.percentile(0.5), n.percentile(0.99), n.opsPerSec())

	added50 := r("rr1").percentile(0.5) - u("rr1").percentile(0.5)
	added99 := r("rr1").percentile(0.99) - u("rr1").percentile(0.99)
	addedMean := 1e6/r("rr1").opsPerSec() - 1e6/u("rr1").opsPerSec()
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	if len(e.incidents) > 0 {
		p("\nThe pair broke down %d time(s) (it was restarted each time; the measurement itself had completed):\n\n```\n%s\n```\n",
			len(e.incidents), strings.Join(e.incidents, "\n"))
	}
	p("\nTargets (the issue's):\n\n")
	p("- added latency per round trip ≤ one node-to-node round trip (%.1f µs p50): added p50 %.1f µs, mean %.1f µs (p99 %+.1f µs): %s\n",
		n.percentile(0.5), added50, addedMean, added99, verdict(added50 <= n.percentile(0.5)))
	ratio := r("echo").mbps() / u("echo").mbps()
	p("- bulk throughput ≥ 70%% of unreplicated: %.0f%%: %s\n", 100*ratio, verdict(ratio >= 0.70))
	return w.String()
}
