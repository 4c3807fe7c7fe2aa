//go:build linux

package bench

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// runInfo is what both benchmarks' reports say about their run.
type runInfo struct {
	started time.Time
	// dur is the time per server (or mode) per test,
	// RFSIS_BENCH_DURATION; each test runs it in two slices of dur/2.
	dur     time.Duration
	machine Machine
}

// newRunInfo reads RFSIS_BENCH_DURATION and describes the machine, which
// takes a second (MeasureMachine).
func newRunInfo(b *testing.B) runInfo {
	ri := runInfo{started: time.Now(), dur: 5 * time.Second}
	if s := os.Getenv(durationEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("%s=%q: want a positive duration", durationEnv, s)
		}
		ri.dur = d
	}
	ri.machine = MeasureMachine()
	return ri
}

// header starts a report: its title, when, on what machine and what code.
func (ri *runInfo) header(w *strings.Builder, title string) {
	fmt.Fprintf(w, "\n## %s\n\n", title)
	fmt.Fprintf(w, "- date: %s\n", ri.started.Format(time.RFC3339))
	fmt.Fprintf(w, "- machine: %s\n", ri.machine)
	fmt.Fprintf(w, "- code: %s\n", VCSInfo())
}

// reportStarted is set once this process has written a report to
// RFSIS_BENCH_REPORT (benchmarks run one at a time).
var reportStarted bool

// writeReport prints a benchmark's report and, with RFSIS_BENCH_REPORT,
// writes it to that file: the first report of the run replaces what the
// file held, later ones (`make bench` runs two benchmarks) are appended.
func writeReport(b *testing.B, rep string) {
	fmt.Print(rep)
	path := os.Getenv(reportEnv)
	if path == "" {
		return
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if !reportStarted {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		b.Error(err)
		return
	}
	reportStarted = true
	_, err = f.WriteString(rep)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		b.Error(err)
	}
}

// Reference figures from the issue: Debian's lwIP 2.1 build, on this
// machine, moved about 130 MB/s into a sink and echoed about 50 MB/s,
// saturating one core.
const (
	lwipSinkMBps = 130
	lwipEchoMBps = 50
)

// row is one line of the comparison table.
type row struct {
	label string
	test  string
	value func(*result) float64
	prec  int
}

var rows = []row{
	{"bulk client→server (sink), MB/s", "sink", (*result).mbps, 1},
	{"bulk server→client (source), MB/s", "source", (*result).mbps, 1},
	{"echo, both ways at once, MB/s echoed", "echo", (*result).mbps, 1},
	{"round trips/s, 1 connection", "rr1", (*result).opsPerSec, 0},
	{"  latency p50, µs (1 conn)", "rr1", func(r *result) float64 { return r.percentile(0.50) }, 1},
	{"  latency p99, µs (1 conn)", "rr1", func(r *result) float64 { return r.percentile(0.99) }, 1},
	{"round trips/s, 64 connections", "rr64", (*result).opsPerSec, 0},
	{"  latency p50, µs (64 conns)", "rr64", func(r *result) float64 { return r.percentile(0.50) }, 1},
	{"  latency p99, µs (64 conns)", "rr64", func(r *result) float64 { return r.percentile(0.99) }, 1},
	{"server CPU, ns/byte, sink", "sink", (*result).serverNsPerByte, 2},
	{"server CPU, ns/byte, source", "source", (*result).serverNsPerByte, 2},
	{"server CPU, ns/byte echoed, echo", "echo", (*result).serverNsPerByte, 2},
	{"server CPU, µs/round trip, 1 conn", "rr1", (*result).serverUsPerOp, 1},
	{"server CPU, µs/round trip, 64 conns", "rr64", (*result).serverUsPerOp, 1},
	{"machine CPU, ns/byte, sink", "sink", (*result).machineNsPerByte, 2},
	{"machine CPU, ns/byte, source", "source", (*result).machineNsPerByte, 2},
	{"machine CPU, ns/byte echoed, echo", "echo", (*result).machineNsPerByte, 2},
	{"machine CPU, µs/round trip, 1 conn", "rr1", (*result).machineUsPerOp, 1},
	{"machine CPU, µs/round trip, 64 conns", "rr64", (*result).machineUsPerOp, 1},
	{"server context switches per MB, sink", "sink", (*result).switchesPerMB, 1},
	{"server context switches per MB, source", "source", (*result).switchesPerMB, 1},
	{"server context switches per MB echoed, echo", "echo", (*result).switchesPerMB, 1},
	{"server context switches per round trip, 1 conn", "rr1", (*result).switchesPerOp, 2},
	{"server context switches per round trip, 64 conns", "rr64", (*result).switchesPerOp, 2},
}

// report renders the machine, the comparison table with ratios, the checks
// against the targets, and per-measurement diagnostics, as Markdown.
func (e *env) report() string {
	var w strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	e.header(&w, "RFSIS vs Linux kernel TCP")
	p("- path: client ns (kernel TCP) → switch bridge → node ns br0 → tap0 + RFSIS (%s) | br0 kernel address (%s)\n",
		e.tp.ServiceAddr(), e.tp.NodeKernelAddr(0))
	p("- each test: %s per server, run as RFSIS, kernel, kernel, RFSIS slices of %s; MB = 10^6 bytes; CPU from /proc (10 ms ticks)\n\n", e.dur, e.dur/2)

	p("| measurement | RFSIS | kernel | RFSIS / kernel |\n|---|---:|---:|---:|\n")
	for _, r := range rows {
		a, k := e.results[r.test+"/"+implRFSIS], e.results[r.test+"/"+implKernel]
		if a == nil && k == nil {
			continue
		}
		p("| %s | %s | %s | %s |\n", r.label, cell(a, r), cell(k, r), ratio(a, k, r))
	}

	p("\nTargets:\n")
	for _, t := range []string{"sink", "source", "echo"} {
		a, k := e.results[t+"/"+implRFSIS], e.results[t+"/"+implKernel]
		if !ok(a) || !ok(k) {
			continue
		}
		x := a.mbps() / k.mbps()
		verdict := "MET"
		if x < 0.5 {
			verdict = "NOT MET"
		}
		p("- %s throughput ≥ ½ kernel: %.2f × kernel — %s\n", t, x, verdict)
	}
	if a := e.results["sink/"+implRFSIS]; ok(a) {
		p("- sink vs lwIP 2.1 reference (~%d MB/s): %.1f ×\n", lwipSinkMBps, a.mbps()/lwipSinkMBps)
	}
	if a := e.results["echo/"+implRFSIS]; ok(a) {
		p("- echo vs lwIP 2.1 reference (~%d MB/s): %.1f ×\n", lwipEchoMBps, a.mbps()/lwipEchoMBps)
	}

	p("\nPer measurement (server and machine CPU in cores busy on average; " +
		"longest gap = longest wait for progress in a bulk transfer; counter deltas: " +
		"client = client namespace kernel TCP, node = node namespace kernel TCP, tap0/br0 = node links):\n\n")
	p("| test | elapsed | payload MB | server cores | machine cores | longest gap | counters |\n|---|---:|---:|---:|---:|---:|---|\n")
	for _, key := range e.order {
		r := e.results[key]
		if r.err != nil {
			p("| %s | FAILED: %v | | | | | |\n", key, r.err)
			continue
		}
		gap := "–"
		if !r.rr {
			gap = r.s.MaxGap.Round(10 * time.Microsecond).String()
		}
		p("| %s | %.2fs | %.1f | %.2f | %.2f | %s | %s |\n", key, r.s.Elapsed.Seconds(), float64(r.s.Bytes)/1e6,
			r.serverCPU.Seconds()/r.s.Elapsed.Seconds(), r.machineCPU.Seconds()/r.s.Elapsed.Seconds(),
			gap, formatCounters(r.counters))
	}
	if e.rfsisEnd != "" {
		p("\nrfsissink at exit: `%s`\n", e.rfsisEnd)
	}
	p("\nCPU accounting on this kernel is tick-based without IRQ time accounting: softirq work is " +
		"charged to whatever task the tick lands in. The kernel server's TCP input runs in the softirq " +
		"raised by the sender, mostly in the client's context, so it is not charged to the kernel server " +
		"(this flatters the kernel, most in the sink rows); RFSIS does its TCP input in its own process. " +
		"Both servers' transmit paths push frames through br0, the switch and the veths inside their own " +
		"system time. The machine CPU rows count everything on the machine: client, both kernels, " +
		"bridges, and any other load.\n")
	return w.String()
}

func ok(r *result) bool { return r != nil && r.err == nil && r.s.Elapsed > 0 }

func cell(r *result, rw row) string {
	if r == nil {
		return "–"
	}
	if r.err != nil {
		return "FAILED"
	}
	if r.s.Elapsed <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.*f", rw.prec, rw.value(r))
}

func ratio(a, k *result, rw row) string {
	if !ok(a) || !ok(k) {
		return "–"
	}
	kv := rw.value(k)
	if kv == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", rw.value(a)/kv)
}
