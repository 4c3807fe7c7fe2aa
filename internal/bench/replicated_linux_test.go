//go:build linux

package bench

import (
	"context"
	"encoding/json"
	"errors"
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

	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/internal/progtest"
	"github.com/zppratt/rfsis/internal/takeover"
	"github.com/zppratt/rfsis/link/tap"
	"github.com/zppratt/rfsis/stack"
)

const (
	// nodeRTTDur is how long the node-to-node round trip is measured.
	nodeRTTDur = 2 * time.Second
	// addAttempts bounds the restarts of the pair after the start-up race
	// while adding the backup.
	addAttempts = 5
	// sliceAttempts bounds the runs of one replicated slice: a slice in
	// which the pair broke down is discarded and run again.
	sliceAttempts = 4
	// benchMisses is the pair's heartbeat_misses here: 10 ms heartbeats
	// as in the acceptance tests, but a 100 ms window. With the client,
	// the main and the backup sharing two saturated cores, the backup's
	// process is now and then not run for 35 ms or more (a flight-recorder
	// trace shows no thread of it running at all), and the acceptance
	// tests' 30 ms window makes the main drop it mid-slice in nearly every
	// bulk slice. The detection window does not change what replication
	// costs while the pair is healthy, which is what this measures.
	benchMisses = 10
)

const (
	modeUnrepl = "unreplicated"
	modeRepl   = "replicated"
)

// replEnv is BenchmarkReplicated's topology and pair (internal/takeover's
// Pair): node 0 runs the main, node 1 the backup (during the replicated
// slices).
type replEnv struct {
	runInfo
	pair     *takeover.Pair
	results  map[string]*result // test/mode
	nodeRTT  *result            // kernel TCP round trips node 0 → node 1
	stackRTT *result            // RFSIS stack round trips node 0 → node 1
	// nodeEcho and stackEcho are bulk echoes over the same two paths,
	// with the machine's CPU: what moving bytes between the nodes costs,
	// from which the report derives the best ratio any replication of the
	// input over that path could reach on this machine.
	nodeEcho, stackEcho *result
	port                int // a port the main serves once it is up
	raceRetry           int // start-up races met while adding the backup
	// incidents are the pair's breakdowns seen after a replicated slice
	// (the pair is then restarted and the slice run again).
	incidents []string
	// tainted counts replicated slices kept although the pair broke down
	// in every one of their sliceAttempts runs.
	tainted int
}

// BenchmarkReplicated measures what replication costs the echo server: the
// same client code (1-connection 64-byte round trips, and 1-connection echo
// bulk) against cmd/echoserver as a lone main (unreplicated) and as a main
// protected by a backup on a second node (replicated), in one topology and
// with the same main process throughout. The slices run unreplicated,
// replicated, replicated, unreplicated (the backup is added, then killed),
// each for half of RFSIS_BENCH_DURATION (5s); a replicated slice in which
// the pair broke down is run again on a restarted pair. It also reports
// the CPU the machine, the main and the backup spent per MB echoed. It also measures a kernel TCP
// round trip between the two nodes, the unit of the latency target,
// and prints a table with the ratios.
func BenchmarkReplicated(b *testing.B) {
	e := newReplEnv(b, "./cmd/echoserver", EchoPort)
	e.measureNodeRTT(b)
	e.measureStackRTT(b, e.pair.Bin)
	e.startMain(b)
	// MeasureEcho half-closes while echoed bytes are still in flight,
	// which once broke a replicated pair (BENCHMARKS.md, "Replication
	// cost"); the benchmark checks the pair after every test.
	tests := []testDef{
		{name: "rr1", rr: true, run: rrTest(1)},
		{name: "echo", run: MeasureEcho},
	}
	e.runSlices(b, tests)
	progtest.CheckOutput(b, "main", e.pair.Main.Output())
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(e.results["rr1/"+modeRepl].opsPerSec()/e.results["rr1/"+modeUnrepl].opsPerSec(), "rr1-ratio")
	b.ReportMetric(e.results["echo/"+modeRepl].mbps()/e.results["echo/"+modeUnrepl].mbps(), "echo-ratio")
	writeReport(b, e.report())
}

// BenchmarkReplicatedOneWay is BenchmarkReplicated for one-way bulk
// transfers, with rfsissink as the pair's application: the sink (the
// client sends; only input reaches the backup) and the source (the
// server sends a deterministic stream, which the backup's application
// produces too: output by checksum). Between them they separate what
// replicating input costs from what replicating output costs.
func BenchmarkReplicatedOneWay(b *testing.B) {
	e := newReplEnv(b, "./internal/bench/rfsissink", SinkPort)
	e.startMain(b)
	tests := []testDef{{name: "sink", run: MeasureSink}, {name: "source", run: MeasureSource}}
	e.runSlices(b, tests)
	progtest.CheckOutput(b, "main", e.pair.Main.Output())
	b.ReportMetric(0, "ns/op")
	var w strings.Builder
	e.header(&w, "Replication cost, one way: rfsissink unreplicated vs replicated")
	fmt.Fprintf(&w, "- same pair and slices as \"Replication cost\", with rfsissink as the application; MB = 10^6 bytes\n\n")
	fmt.Fprintf(&w, "| test | unreplicated MB/s | replicated MB/s | ratio | machine CPU per MB, ms (unrepl. / repl.) | main / backup CPU per MB, ms (repl.) |\n|---|---:|---:|---:|---:|---:|\n")
	for _, t := range tests {
		u, r := e.results[t.name+"/"+modeUnrepl], e.results[t.name+"/"+modeRepl]
		b.ReportMetric(r.mbps()/u.mbps(), t.name+"-ratio")
		fmt.Fprintf(&w, "| %s | %.1f | %.1f | %.2f | %.2f / %.2f | %.2f / %.2f |\n", t.name, u.mbps(), r.mbps(), r.mbps()/u.mbps(),
			msPerMB(u.machineCPU, u), msPerMB(r.machineCPU, r), msPerMB(r.serverCPU, r), msPerMB(r.peerCPU, r))
	}
	if e.tainted > 0 || len(e.incidents) > 0 {
		fmt.Fprintf(&w, "\nThe pair broke down %d time(s) (%d slice(s) kept anyway):\n\n```\n%s\n```\n", len(e.incidents), e.tainted, strings.Join(e.incidents, "\n"))
	}
	writeReport(b, w.String())
}

// newReplEnv builds the program pkg and prepares a pair of it in a new
// topology of two nodes; port is one its main serves once it is up.
func newReplEnv(b *testing.B, pkg string, port int) *replEnv {
	netns.RequireTools(b, "ip")
	e := &replEnv{runInfo: newRunInfo(b), results: map[string]*result{}, port: port}
	bin, err := progtest.Build(b.TempDir(), pkg, false)
	if err != nil {
		b.Fatal(err)
	}
	// The pair's configs are internal/takeover's: identical but for
	// "backup". netns's cleanup kills the nodes.
	tp := netns.New(b, netns.Options{Nodes: 2, NodeKernelAddrs: true})
	e.pair = &takeover.Pair{TP: tp, Bin: bin, Dir: b.TempDir(), Misses: benchMisses}
	return e
}

// msPerMB is d per MB that r moved, in milliseconds.
func msPerMB(d time.Duration, r *result) float64 {
	return d.Seconds() * 1e3 / (float64(r.s.Bytes) / 1e6)
}

// runSlices measures tests in both modes, ABBA, with one backup start and
// one backup loss.
func (e *replEnv) runSlices(b *testing.B, tests []testDef) {
	for _, t := range tests {
		for _, m := range []string{modeUnrepl, modeRepl} {
			e.results[t.name+"/"+m] = &result{test: t.name, impl: m, rr: t.rr}
		}
	}
	// ABBA over the modes, with one backup start and one backup loss. A
	// replicated slice counts only if the pair stayed a protected main
	// and backup throughout: once the main has declared its backup lost
	// it serves unprotected, and faster, so such a slice would flatter
	// replication (BENCHMARKS.md, runs F and G).
	for _, m := range []string{modeUnrepl, modeRepl, modeRepl, modeUnrepl} {
		e.setMode(b, m)
		for _, t := range tests {
			r := e.results[t.name+"/"+m]
			for attempt := 1; ; attempt++ {
				sl := e.measure(b, t, r)
				if m != modeRepl || !e.checkPair(b, t.name) {
					r.addSlice(sl)
					break
				}
				if attempt == sliceAttempts {
					e.tainted++
					r.addSlice(sl)
					break
				}
				b.Logf("%s/%s slice discarded (attempt %d): the pair broke down", t.name, m, attempt)
			}
		}
	}
	if runCtx.Err() != nil {
		b.Fatal("interrupted")
	}
}

// measureNodeRTT measures 64-byte kernel TCP round trips from node 0's
// kernel to an echo listener on node 1's kernel address, through the same
// bridges the sync channel crosses (but not the TAPs and stacks).
func (e *replEnv) measureNodeRTT(b *testing.B) {
	tp := e.pair.TP
	l, err := tp.Node(1).Listen("tcp4", netip.AddrPortFrom(tp.NodeKernelAddr(1), EchoPort).String())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go Serve(l, Echo)
	dial := dialer(tp.Node(0), tp.NodeKernelAddr(1))
	s, err := MeasureRR(runCtx, dial, nodeRTTDur, 1)
	if err != nil {
		b.Fatalf("node-to-node round trips: %v", err)
	}
	slices.Sort(s.Lat)
	e.nodeRTT = &result{test: "node-rtt", impl: "kernel", rr: true, s: s}
	if e.nodeEcho, err = measurePathEcho(dial); err != nil {
		b.Fatalf("node-to-node echo: %v", err)
	}
}

// measurePathEcho runs a bulk echo over dial for nodeRTTDur and records the
// machine's CPU during it.
func measurePathEcho(dial DialFunc) (*result, error) {
	m0, err := MachineCPU()
	if err != nil {
		return nil, err
	}
	s, err := MeasureEcho(runCtx, dial, nodeRTTDur)
	if err != nil {
		return nil, err
	}
	m1, err := MachineCPU()
	if err != nil {
		return nil, err
	}
	return &result{test: "path-echo", s: s, machineCPU: m1 - m0}, nil
}

// measureStackRTT measures 64-byte round trips between two RFSIS stacks on
// the nodes' TAPs, the path the sync channel takes: a client stack in this
// process on node 0's TAP, and cmd/echoserver serving alone on node 1's
// stack address. A replicated round trip cannot cost less than one of
// these (the main ships, the backup acknowledges), so it is the unit of
// the latency target that can be met on this path; the kernel round trip
// is a lower bound of it.
func (e *replEnv) measureStackRTT(b *testing.B, bin string) {
	tp := e.pair.TP
	cfg := map[string]any{
		"ipv4_addr":       tp.NodeAddr(1).String(),
		"backup_addr":     tp.Addr(200).String(), // nobody: the server serves alone
		"port":            EchoPort,
		"netmask":         "255.255.255.0",
		"tap_device_name": netns.NodeTAP,
		"insecure":        true,
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "stack-echo.json")
	if err := os.WriteFile(path, js, 0o644); err != nil {
		b.Fatal(err)
	}
	srv, err := tp.Node(1).Start(runCtx, bin, "-config", path)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		srv.Kill()
		<-srv.Done()
	}()
	ctx, cancel := context.WithTimeout(runCtx, 20*time.Second)
	defer cancel()
	if err := srv.WaitOutput(ctx, takeover.LogServing); err != nil {
		b.Fatalf("stack echo server on node 1: %v\n%s", err, tail(srv.Output(), 20))
	}

	var dev *tap.Device
	if err := tp.Node(0).Do(func() error {
		var err error
		dev, err = tap.Open(tap.Config{Name: netns.NodeTAP, Offload: true})
		return err
	}); err != nil {
		b.Fatalf("node 0 TAP: %v", err)
	}
	scfg := stack.Default()
	scfg.Addr = tp.NodeAddr(0)
	scfg.Prefix = tp.Subnet()
	scfg.MAC = net.HardwareAddr{0x02, 0x77, 0, 0, 0, 0x10}
	st, err := stack.New(dev, scfg)
	if err != nil {
		dev.Close()
		b.Fatalf("node 0 stack: %v", err)
	}
	defer st.Close() // closes dev; the TAP persists for the main
	dial := func(ctx context.Context, port int) (Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return st.DialTCP(dctx, tp.NodeAddr(0), netip.AddrPortFrom(tp.NodeAddr(1), uint16(port)))
	}
	s, err := MeasureRR(runCtx, dial, nodeRTTDur, 1)
	if err != nil {
		b.Fatalf("stack-to-stack round trips: %v\n%s", err, tail(srv.Output(), 20))
	}
	slices.Sort(s.Lat)
	e.stackRTT = &result{test: "stack-rtt", impl: "rfsis", rr: true, s: s}
	if e.stackEcho, err = measurePathEcho(dial); err != nil {
		b.Fatalf("stack-to-stack echo: %v\n%s", err, tail(srv.Output(), 20))
	}
}

// tails is the end of both nodes' logs, for a failure's message.
func (e *replEnv) tails() string {
	var out []string
	for role, p := range map[string]*netns.Process{"main": e.pair.Main, "backup": e.pair.Backup} {
		if p != nil {
			out = append(out, fmt.Sprintf("%s output (end):\n%s", role, tail(p.Output(), 20)))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// startMain starts the main alone on node 0 and waits until it serves.
func (e *replEnv) startMain(b *testing.B) {
	ctx, cancel := context.WithTimeout(runCtx, 20*time.Second)
	defer cancel()
	if err := e.pair.StartMain(ctx); err != nil {
		b.Fatalf("starting the main: %v\n%s", err, e.tails())
	}
	if err := waitServing(e.pair.TP, e.port); err != nil {
		b.Fatalf("main pid %d: %v\n%s", e.pair.Main.Pid(), err, e.tails())
	}
	b.Logf("main pid %d serving %s from %s", e.pair.Main.Pid(), e.pair.Service(), e.pair.TP.Node(0).Name())
}

// setMode adds the backup (replicated) or kills it (unreplicated), and
// returns once the main reports the change.
func (e *replEnv) setMode(b *testing.B, mode string) {
	switch {
	case mode == modeRepl && e.pair.Backup == nil:
		e.addBackup(b)
	case mode == modeUnrepl && e.pair.Backup != nil:
		e.pair.Backup.Kill()
		<-e.pair.Backup.Done()
		e.pair.Backup = nil
		ctx, cancel := context.WithTimeout(runCtx, 20*time.Second)
		defer cancel()
		if err := e.pair.Main.WaitOutput(ctx, takeover.LogUnprotected); err != nil {
			b.Fatalf("waiting for the main to lose its backup: %v\n%s", err, e.tails())
		}
		b.Logf("backup killed; main serving unprotected")
	}
}

// addBackup starts the backup on node 1 and waits for the main's "backup
// joined". A backup that starts before its TAP's bridge port forwards may
// take the service over instead (the start-up race of
// takeover.Pair.StartRetrying); the pair is then restarted.
func (e *replEnv) addBackup(b *testing.B) {
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(runCtx, 20*time.Second)
		err := e.pair.AddBackup(ctx)
		cancel()
		if err == nil {
			b.Logf("backup pid %d joined (attempt %d)", e.pair.Backup.Pid(), attempt)
			return
		}
		if !errors.Is(err, takeover.ErrStartRace) || attempt == addAttempts {
			b.Fatalf("adding the backup (attempt %d): %v\n%s", attempt, err, e.tails())
		}
		e.raceRetry++
		b.Logf("attempt %d: %v; restarting the pair", attempt, err)
		e.restart(b)
	}
}

// restart kills both nodes and starts the main alone again.
func (e *replEnv) restart(b *testing.B) {
	e.pair.Kill()
	e.pair.Backup = nil
	e.startMain(b)
}

// pairTrouble are log lines that mean the pair is no longer a healthy main
// and backup.
var pairTrouble = []string{takeover.LogTookOver, takeover.LogUnprotected, "address conflict", "sync: cannot apply",
	takeover.LogStandDown, "panic:"}

// checkPair, after a replicated measurement, checks that the main is still
// protected by its backup. If not, it records what the logs say, restarts
// the pair (a new main, then a new backup) and reports true: the slice
// is to be run again.
func (e *replEnv) checkPair(b *testing.B, test string) bool {
	time.Sleep(200 * time.Millisecond) // a takeover follows its cause by a detection window
	var lines []string
	for role, p := range map[string]*netns.Process{"main": e.pair.Main, "backup": e.pair.Backup} {
		if p == nil {
			continue
		}
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
		return false
	}
	slices.Sort(lines)
	msg := fmt.Sprintf("after the replicated %s slice:\n%s", test, strings.Join(lines, "\n"))
	e.incidents = append(e.incidents, msg)
	b.Logf("pair broke %s; restarting it", msg)
	e.restart(b)
	e.addBackup(b)
	return true
}

// slice is one measured slice: the client's sample and the CPU time the
// machine, the main and the backup (if any) spent during it.
type slice struct {
	s                   Sample
	machine, main, peer time.Duration
}

func (r *result) addSlice(sl slice) {
	r.s.Add(sl.s)
	r.machineCPU += sl.machine
	r.serverCPU += sl.main
	r.peerCPU += sl.peer
}

// cpuNow reads the machine's busy CPU time and the main's and backup's.
func (e *replEnv) cpuNow(b *testing.B) (machine, main, peer time.Duration) {
	var err error
	if machine, err = MachineCPU(); err != nil {
		b.Fatal(err)
	}
	if main, err = procCPU(e.pair.Main.Pid()); err != nil {
		b.Fatal(err)
	}
	if e.pair.Backup != nil {
		if peer, err = procCPU(e.pair.Backup.Pid()); err != nil {
			b.Fatal(err)
		}
	}
	return machine, main, peer
}

// measure runs one slice (half the duration) of t against the service.
func (e *replEnv) measure(b *testing.B, t testDef, r *result) slice {
	tp := e.pair.TP
	m0, c0, p0 := e.cpuNow(b)
	s, err := t.run(runCtx, dialer(tp.Client(), tp.ServiceAddr()), e.dur/2)
	if err != nil {
		if runCtx.Err() != nil {
			b.Fatal("interrupted")
		}
		b.Fatalf("%s/%s: %v\n%s", r.test, r.impl, err, e.tails())
	}
	m1, c1, p1 := e.cpuNow(b)
	b.Logf("%s/%s slice: %d bytes, %d round trips in %v", r.test, r.impl, s.Bytes, s.Ops, s.Elapsed.Round(time.Millisecond))
	return slice{s: s, machine: m1 - m0, main: c1 - c0, peer: p1 - p0}
}

// report renders the comparison as Markdown.
func (e *replEnv) report() string {
	var w strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	u := func(t string) *result { return e.results[t+"/"+modeUnrepl] }
	r := func(t string) *result { return e.results[t+"/"+modeRepl] }
	e.header(&w, "Replication cost: echoserver unreplicated vs replicated")
	p("- pair: main in %s, backup in %s (heartbeat %v, %d misses); service %s\n",
		e.pair.TP.Node(0).Name(), e.pair.TP.Node(1).Name(), takeover.Heartbeat, e.pair.Misses, e.pair.Service())
	p("- each test: %s per mode, as unreplicated, replicated, replicated, unreplicated slices of %s, same main process unless the pair was restarted; MB = 10^6 bytes\n",
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
	busy := func(r *result) float64 { return r.machineCPU.Seconds() / r.s.Elapsed.Seconds() }
	perMB := msPerMB
	line("echo: machine CPU busy, cores", busy(u("echo")), busy(r("echo")), 2)
	line("echo: machine CPU per MB echoed, ms", perMB(u("echo").machineCPU, u("echo")), perMB(r("echo").machineCPU, r("echo")), 2)
	p("| echo: main / backup CPU per MB echoed, ms | %.2f / – | %.2f / %.2f | |\n",
		perMB(u("echo").serverCPU, u("echo")), perMB(r("echo").serverCPU, r("echo")), perMB(r("echo").peerCPU, r("echo")))

	n, sr := e.nodeRTT, e.stackRTT
	p("\nNode-to-node round trips, node 0 → node 1, 64 bytes, 1 connection, %v each:\n\n", nodeRTTDur)
	p("- kernel TCP to kernel TCP (the bridges only): p50 %.1f µs, p99 %.1f µs, %.0f round trips/s\n",
		n.percentile(0.5), n.percentile(0.99), n.opsPerSec())
	p("- RFSIS stack to RFSIS stack (TAPs, bridges and stacks: the sync channel's path): p50 %.1f µs, p99 %.1f µs, %.0f round trips/s\n",
		sr.percentile(0.5), sr.percentile(0.99), sr.opsPerSec())

	ne, se := e.nodeEcho, e.stackEcho
	p("\nBulk echo over the same two paths, 1 connection, %v each (a byte echoed crosses the path twice):\n\n", nodeRTTDur)
	p("- kernel TCP to kernel TCP: %.1f MB/s echoed, %.2f ms of machine CPU per MB echoed (%.2f cores busy)\n",
		ne.mbps(), perMB(ne.machineCPU, ne), busy(ne))
	p("- RFSIS stack to RFSIS stack: %.1f MB/s echoed, %.2f ms of machine CPU per MB echoed (%.2f cores busy)\n",
		se.mbps(), perMB(se.machineCPU, se), busy(se))
	// The bound: a replicated byte costs at least what the unreplicated
	// echo costs plus one crossing of the sync path (half an echo over
	// it), even with a standby that does no work and no authentication.
	// On a machine that is CPU-bound in both modes throughput is
	// inversely proportional to CPU per byte, so that is the best ratio.
	unrepl := perMB(u("echo").machineCPU, u("echo"))
	for _, path := range []struct {
		name string
		r    *result
	}{{"the stacks' path (the sync channel's)", se}, {"kernel TCP", ne}} {
		oneWay := perMB(path.r.machineCPU, path.r) / 2
		p("- one crossing of %s costs %.2f ms/MB: a replication shipping each input byte once over it, with a free standby and no authentication, could reach at best %.0f%% of unreplicated throughput on this machine (%.2f / (%.2f + %.2f))\n",
			path.name, oneWay, 100*unrepl/(unrepl+oneWay), unrepl, unrepl, oneWay)
	}

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
		p("\nThe pair broke down %d time(s); each time it was restarted and the replicated slice run again (%d slice(s) kept although the pair broke in all %d runs):\n\n```\n%s\n```\n",
			len(e.incidents), e.tainted, sliceAttempts, strings.Join(e.incidents, "\n"))
	}
	p("\nTargets (the issue's):\n\n")
	p("- added latency per round trip (p50 %.1f µs, mean %.1f µs, p99 %+.1f µs) ≤ one node-to-node round trip: against the stacks' %.1f µs p50: %s; against the kernels' %.1f µs: %s\n",
		added50, addedMean, added99, sr.percentile(0.5), verdict(added50 <= sr.percentile(0.5)),
		n.percentile(0.5), verdict(added50 <= n.percentile(0.5)))
	ratio := r("echo").mbps() / u("echo").mbps()
	p("- bulk throughput ≥ 70%% of unreplicated: %.0f%%: %s", 100*ratio, verdict(ratio >= 0.70))
	if e.tainted > 0 {
		p(" (not trustworthy: %d replicated slice(s) ran partly unprotected)", e.tainted)
	}
	p("\n")
	if b := busy(u("echo")); b > 0.9*float64(runtime.NumCPU()) {
		p("  - the machine was CPU-bound in the unreplicated echo already (%.2f of %d cores busy): with the client, the main and the backup on the same cores the ratio measures how much more CPU a replicated byte costs (the machine CPU per MB above), not what a pair on separate machines would do\n",
			b, runtime.NumCPU())
	}
	return w.String()
}
