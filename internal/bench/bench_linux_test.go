//go:build linux

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/internal/progtest"
)

// Environment knobs (all optional).
const (
	// durationEnv sets how long each test runs against each server (a
	// time.ParseDuration string, 5s by default), in two halves (see abba).
	durationEnv = "RFSIS_BENCH_DURATION"
	// reportEnv names a file to which the final reports are written too
	// (writeReport).
	reportEnv = "RFSIS_BENCH_REPORT"
	// perfEnv names a directory: each RFSIS slice is then profiled with
	// `perf record -g -p <server pid>` into <dir>/<test>-<slice>.perf.data.
	perfEnv = "RFSIS_BENCH_PERF"
	// pcapEnv names a directory: the client's side of each RFSIS slice is
	// then captured (headers, first 300000 frames) with tcpdump into
	// <dir>/<test>-<slice>.pcap. Capturing slows the client down.
	pcapEnv = "RFSIS_BENCH_PCAP"
)

// backupHost is the host number of backup_addr: in the subnet, used by
// nobody (there is no backup node here).
const backupHost = 50

// testDef is one measurement, run against both servers.
type testDef struct {
	name string
	rr   bool // a round-trip test (else bulk)
	run  func(ctx context.Context, dial DialFunc, d time.Duration) (Sample, error)
}

func rrTest(conns int) func(context.Context, DialFunc, time.Duration) (Sample, error) {
	return func(ctx context.Context, dial DialFunc, d time.Duration) (Sample, error) {
		return MeasureRR(ctx, dial, d, conns)
	}
}

// The measurements served by cmd/echoserver, then by rfsissink.
var (
	echoTests = []testDef{
		{name: "echo", run: MeasureEcho},
		{name: "rr1", rr: true, run: rrTest(1)},
		{name: "rr64", rr: true, run: rrTest(64)},
	}
	oneWayTests = []testDef{
		{name: "sink", run: MeasureSink},
		{name: "source", run: MeasureSource},
	}
)

const (
	implRFSIS  = "rfsis"
	implKernel = "kernel"
)

// result is one test against one server.
type result struct {
	test, impl string
	rr         bool
	s          Sample
	serverCPU  time.Duration
	machineCPU time.Duration
	peerCPU    time.Duration    // the backup's, in BenchmarkReplicated
	ctxsw      int64            // server context switches
	counters   map[string]int64 // deltas of the counters that changed
	err        error
}

func (r *result) mbps() float64 { return float64(r.s.Bytes) / r.s.Elapsed.Seconds() / 1e6 }
func (r *result) opsPerSec() float64 {
	return float64(r.s.Ops) / r.s.Elapsed.Seconds()
}
func (r *result) serverNsPerByte() float64 {
	return float64(r.serverCPU.Nanoseconds()) / float64(r.s.Bytes)
}
func (r *result) machineNsPerByte() float64 {
	return float64(r.machineCPU.Nanoseconds()) / float64(r.s.Bytes)
}
func (r *result) serverUsPerOp() float64 {
	return float64(r.serverCPU.Microseconds()) / float64(r.s.Ops)
}
func (r *result) switchesPerOp() float64 { return float64(r.ctxsw) / float64(r.s.Ops) }
func (r *result) switchesPerMB() float64 {
	return float64(r.ctxsw) / (float64(r.s.Bytes) / 1e6)
}
func (r *result) machineUsPerOp() float64 {
	return float64(r.machineCPU.Microseconds()) / float64(r.s.Ops)
}

// percentile of the sorted latencies, in microseconds.
func (r *result) percentile(p float64) float64 {
	if len(r.s.Lat) == 0 {
		return 0
	}
	i := min(len(r.s.Lat)-1, int(p*float64(len(r.s.Lat))))
	return float64(r.s.Lat[i].Nanoseconds()) / 1e3
}

// env is one topology with its servers, shared by all measurements.
type env struct {
	runInfo
	tp       *netns.Topology
	bins     string // directory of the built binaries
	config   string // the RFSIS config file
	kernel   *netns.Process
	rfsis    *netns.Process // the RFSIS program of the current phase
	perfDir  string
	results  map[string]*result
	order    []string
	rfsisEnd string // rfsissink's exit log line (stack counters)
}

// BenchmarkVsKernel measures RFSIS against the Linux kernel's TCP through the
// same bridges: echo, 64-byte round trips with 1 and 64 connections, and
// one-way bulk (sink, source), each for RFSIS_BENCH_DURATION (5s) per
// server. It prints a table of both, with ratios, at the end. Run it with
// `make bench`.
func BenchmarkVsKernel(b *testing.B) {
	netns.RequireTools(b, "ip")
	e := setup(b)

	e.startRFSIS(b, "echoserver", "echo server listening", EchoPort)
	for _, t := range echoTests {
		e.bench(b, t)
	}
	e.stopRFSIS(b)
	e.startRFSIS(b, "rfsissink", "rfsissink listening", SinkPort)
	for _, t := range oneWayTests {
		e.bench(b, t)
	}
	e.rfsisEnd = e.stopRFSIS(b)
	if runCtx.Err() != nil {
		b.Fatal("interrupted")
	}
	writeReport(b, e.report())
}

func setup(b *testing.B) *env {
	e := &env{runInfo: newRunInfo(b), results: map[string]*result{}, perfDir: os.Getenv(perfEnv)}
	e.bins = b.TempDir()
	for _, pkg := range []string{"./cmd/echoserver", "./internal/bench/rfsissink"} {
		if _, err := progtest.Build(e.bins, pkg, false); err != nil {
			b.Fatal(err)
		}
	}
	e.tp = netns.New(b, netns.Options{Nodes: 1, NodeKernelAddrs: true})
	e.config = writeConfig(b, e.tp)

	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), kernelServerEnv+"="+e.tp.NodeKernelAddr(0).String())
	if e.kernel, err = e.tp.Node(0).StartCmd(cmd); err != nil {
		b.Fatal(err)
	}
	waitOutput(b, e.kernel, "kernel server listening")
	b.Logf("kernel server pid %d on %s; RFSIS on %s (%s in %s)", e.kernel.Pid(),
		e.tp.NodeKernelAddr(0), e.tp.ServiceAddr(), netns.NodeTAP, e.tp.Node(0).Name())
	return e
}

// writeConfig writes the RFSIS configuration for node 0 of tp.
func writeConfig(b *testing.B, tp *netns.Topology) string {
	cfg := map[string]any{
		"backup":          false,
		"ipv4_addr":       tp.ServiceAddr().String(),
		"backup_addr":     tp.Addr(backupHost).String(),
		"port":            EchoPort,
		"netmask":         "255.255.255.0",
		"heartbeat_timer": 1,
		"debug_mode":      false,
		"tap_device_name": netns.NodeTAP,
		"main_heartbeats": false,
		// A lone main (no backup node): after one detection window it
		// serves Standalone, with the replication gates open, so this
		// measures the stack itself. The key only authenticates the
		// (unused) node-to-node channel.
		"sync_key": "rfsis-bench-key-not-secret",
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "config.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
	return path
}

func waitOutput(b *testing.B, p *netns.Process, s string) {
	ctx, cancel := context.WithTimeout(runCtx, 20*time.Second)
	defer cancel()
	if err := p.WaitOutput(ctx, s); err != nil {
		b.Fatalf("waiting for %q: %v\noutput:\n%s", s, err, p.Output())
	}
}

// startRFSIS starts one of the built RFSIS programs on node 0's TAP.
func (e *env) startRFSIS(b *testing.B, prog, ready string, port int) {
	if runCtx.Err() != nil {
		return
	}
	p, err := e.tp.Node(0).Start(context.Background(), filepath.Join(e.bins, prog), "-config", e.config)
	if err != nil {
		b.Fatal(err)
	}
	e.rfsis = p
	waitOutput(b, p, ready)
	t0 := time.Now()
	if err := waitServing(e.tp, port); err != nil {
		b.Fatalf("%s pid %d: %v\noutput:\n%s", prog, p.Pid(), err, p.Output())
	}
	b.Logf("%s pid %d serving %s:%d (%v after listening)", prog, p.Pid(), e.tp.ServiceAddr(), port,
		time.Since(t0).Round(time.Millisecond))
}

// waitServing waits until the RFSIS service accepts connections: a lone
// main holds its service address silent for one failover detection window
// (3 s with the defaults) before it serves.
func waitServing(tp *netns.Topology, port int) error {
	dial := dialer(tp.Client(), tp.ServiceAddr())
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(runCtx, 300*time.Millisecond)
		c, err := dial(ctx, port)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		if runCtx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("not serving on port %d: %w", port, err)
		}
	}
}

// stopRFSIS stops the current RFSIS program gracefully (its TAP is
// persistent and is reused by the next) and returns its last log line.
func (e *env) stopRFSIS(b *testing.B) string {
	p := e.rfsis
	if p == nil {
		return ""
	}
	e.rfsis = nil
	if err := p.Signal(syscall.SIGTERM); err != nil {
		b.Fatalf("stop RFSIS pid %d: %v\noutput:\n%s", p.Pid(), err, p.Output())
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		p.Kill()
		b.Fatalf("RFSIS pid %d did not stop within 10s of SIGTERM\noutput:\n%s", p.Pid(), p.Output())
	}
	for _, line := range strings.Split(p.Output(), "\n") {
		if strings.Contains(line, "rfsissink stopped") {
			return line
		}
	}
	return ""
}

// dialer connects from the kernel of namespace from to ports of addr,
// each connect bounded by 10 s.
func dialer(from *netns.NS, addr netip.Addr) DialFunc {
	return func(ctx context.Context, port int) (Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c, err := from.Dial(dctx, "tcp4", netip.AddrPortFrom(addr, uint16(port)).String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
}

// abba is the order of the slices of a test: RFSIS, kernel, kernel, RFSIS,
// each for half the duration, so that a change in the machine's other load
// during a test weighs on both servers alike.
var abba = []string{implRFSIS, implKernel, implKernel, implRFSIS}

// bench runs test t against both servers as sub-benchmark t.name.
func (e *env) bench(b *testing.B, t testDef) {
	b.Run(t.name, func(b *testing.B) {
		if runCtx.Err() != nil {
			b.Skip("interrupted")
		}
		rs := map[string]*result{}
		for _, impl := range []string{implRFSIS, implKernel} {
			r := &result{test: t.name, impl: impl, rr: t.rr, counters: map[string]int64{}}
			rs[impl] = r
			key := t.name + "/" + impl
			if _, ok := e.results[key]; !ok {
				e.order = append(e.order, key)
			}
			e.results[key] = r
		}
		for range b.N {
			for i, impl := range abba {
				e.measure(b, t, rs[impl], i)
			}
		}
		a, k := rs[implRFSIS], rs[implKernel]
		b.ReportMetric(0, "ns/op")
		if t.rr {
			b.ReportMetric(a.opsPerSec(), "rfsis-rt/s")
			b.ReportMetric(k.opsPerSec(), "kernel-rt/s")
			b.ReportMetric(a.opsPerSec()/k.opsPerSec(), "ratio")
			b.ReportMetric(a.percentile(0.50), "rfsis-p50-us")
			b.ReportMetric(k.percentile(0.50), "kernel-p50-us")
			b.ReportMetric(a.percentile(0.99), "rfsis-p99-us")
			b.ReportMetric(k.percentile(0.99), "kernel-p99-us")
		} else {
			b.ReportMetric(a.mbps(), "rfsis-MB/s")
			b.ReportMetric(k.mbps(), "kernel-MB/s")
			b.ReportMetric(a.mbps()/k.mbps(), "ratio")
			b.ReportMetric(a.serverNsPerByte(), "rfsis-srv-ns/B")
			b.ReportMetric(k.serverNsPerByte(), "kernel-srv-ns/B")
		}
	})
}

// measure runs one slice of test t against r's server and adds it to r.
func (e *env) measure(b *testing.B, t testDef, r *result, slice int) {
	proc, addr := e.kernel, e.tp.NodeKernelAddr(0)
	if r.impl == implRFSIS {
		proc, addr = e.rfsis, e.tp.ServiceAddr()
	}
	key := r.test + "/" + r.impl
	if proc == nil {
		r.err = fmt.Errorf("no server")
		b.Fatalf("%s: no server", key)
	}
	before, err := takeSnapshot(e.tp, proc.Pid(), false)
	if err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf("%s-%d", r.test, slice)
	perfDone := e.startPerf(b, name, r.impl, proc)
	pcapDone := e.startPcap(b, name, r.impl)
	s, err := t.run(runCtx, dialer(e.tp.Client(), addr), e.dur/2)
	perfDone()
	pcapDone()
	if err != nil && runCtx.Err() != nil {
		r.err = runCtx.Err()
		b.Fatal("interrupted")
	}
	if err != nil {
		r.err = err
		b.Fatalf("%s: %v\nserver output (end):\n%s", key, err, tail(proc.Output(), 20))
	}
	after, err := takeSnapshot(e.tp, proc.Pid(), true)
	if err != nil {
		b.Fatal(err)
	}
	r.s.Add(s)
	r.serverCPU += after.server - before.server
	r.machineCPU += after.machine - before.machine
	r.ctxsw += after.ctxsw - before.ctxsw
	addDelta(r.counters, "client:", before.client, after.client)
	if r.impl == implKernel {
		addDelta(r.counters, "node:", before.node, after.node)
	}
	addDelta(r.counters, "", before.links, after.links)
}

// startPerf profiles an RFSIS measurement when RFSIS_BENCH_PERF is set; the
// returned function waits for the profile to be written.
func (e *env) startPerf(b *testing.B, test, impl string, proc *netns.Process) func() {
	if e.perfDir == "" || impl != implRFSIS {
		return func() {}
	}
	out := filepath.Join(e.perfDir, test+".perf.data")
	cmd := exec.Command("perf", "record", "-q", "-F", "999", "-g", "-o", out,
		"-p", fmt.Sprint(proc.Pid()), "--", "sleep", fmt.Sprint((e.dur / 2).Seconds()))
	if err := cmd.Start(); err != nil {
		b.Logf("perf: %v", err)
		return func() {}
	}
	return func() {
		if err := cmd.Wait(); err != nil {
			b.Logf("perf record: %v", err)
		} else {
			b.Logf("profile: perf report -i %s", out)
		}
	}
}

// startPcap captures the client's side of an RFSIS measurement when
// RFSIS_BENCH_PCAP is set; the returned function stops the capture.
func (e *env) startPcap(b *testing.B, test, impl string) func() {
	dir := os.Getenv(pcapEnv)
	if dir == "" || impl != implRFSIS {
		return func() {}
	}
	out := filepath.Join(dir, test+".pcap")
	p, err := e.tp.Client().Start(context.Background(), "tcpdump", "-i", netns.HostLink, "-s", "128",
		"-c", "300000", "-w", out, "tcp")
	if err != nil {
		b.Logf("tcpdump: %v", err)
		return func() {}
	}
	ctx, cancel := context.WithTimeout(runCtx, 5*time.Second)
	defer cancel()
	if err := p.WaitOutput(ctx, "listening on"); err != nil {
		b.Logf("tcpdump: %v\n%s", err, p.Output())
	}
	return func() {
		p.Signal(syscall.SIGINT)
		p.Wait()
		b.Logf("capture: %s (%s)", out, strings.TrimSpace(tail(p.Output(), 3)))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
