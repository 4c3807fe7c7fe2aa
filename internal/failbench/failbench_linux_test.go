package failbench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/bench"
	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/internal/progtest"
	"github.com/zppratt/rfsis/internal/takeover"
	"github.com/zppratt/rfsis/internal/workload"
)

// Environment knobs.
const (
	// enableEnv=1 runs TestFailoverBench; without it the benchmark skips
	// (it takes minutes and needs root and keepalived).
	enableEnv = "RFSIS_FAILBENCH"
	// trialsEnv is K, the trials per fault and system (default
	// defaultTrials).
	trialsEnv = "RFSIS_FAILBENCH_TRIALS"
	// outEnv is the directory for the report, the JSON and the pictures;
	// without it they go to a temporary directory and only the report is
	// printed.
	outEnv = "RFSIS_FAILBENCH_OUT"
	// steadyEnv is the time per server per steady-state test (default
	// 4s).
	steadyEnv = "RFSIS_FAILBENCH_STEADY"
	// renderEnv names a failover.json to draw again (TestRender).
	renderEnv = "RFSIS_FAILBENCH_RENDER"
	// echoserverEnv names a cmd/echoserver binary to use instead of
	// building one from the working tree (say, one built from a
	// committed revision while the tree is being edited).
	echoserverEnv = "RFSIS_FAILBENCH_ECHOSERVER"
	// echoEnv turns the test binary into the kernel-TCP echo server of
	// the keepalived baseline (see TestMain).
	echoEnv = "RFSIS_FAILBENCH_KERNEL_ECHO"
)

const (
	defaultTrials = 20
	// warmup runs the workload before the fault, as the acceptance tests
	// do, so every connection is replicated and in its steady state.
	warmup = time.Second
	// afterTakeover keeps the workload running after the takeover before
	// the clients half-close, as the acceptance tests do.
	afterTakeover = 1500 * time.Millisecond
	// stopFor is how long a SIGSTOPped main stays frozen after the
	// backup took over, before SIGCONT (the acceptance test's 300 ms).
	stopFor = 300 * time.Millisecond
	// takeoverWait bounds the wait for the backup's takeover.
	takeoverWait = 5 * time.Second
	drain        = 15 * time.Second
	// probeEvery and probeWindow shape the new-connection probe.
	probeEvery  = 5 * time.Millisecond
	probeWindow = 5 * time.Second
	// startAttempts bounds the restarts of a pair after the start-up race
	// and of a trial after a false failover during its warm-up.
	startAttempts = 3
	// The timeline: from timelineBefore ahead of the fault to
	// timelineAfter past it, in bins of timelineBin.
	timelineBefore = 200 * time.Millisecond
	timelineAfter  = 1000 * time.Millisecond
	timelineBin    = 10 * time.Millisecond
	// Output file names in RFSIS_FAILBENCH_OUT.
	jsonName     = "failover.json"
	stallName    = "failover-stall.png"
	timelineName = "failover-timeline.png"
	mdName       = "failover.md"
)

// runCtx is cancelled at the first SIGINT or SIGTERM
// (bench.CancelOnInterrupt): the benchmark then stops starting trials and
// returns, so the cleanups delete its namespaces and kill its processes.
var runCtx = context.Background()

func TestMain(m *testing.M) {
	if os.Getenv(echoEnv) != "" {
		// The kernel-TCP echo server of a node: internal/bench's, on all
		// addresses, so it answers on the service address whenever
		// keepalived puts it on this node.
		if err := bench.KernelServer("0.0.0.0"); err != nil {
			fmt.Fprintln(os.Stderr, "kernel echo server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	runCtx = bench.CancelOnInterrupt("failbench")
	os.Exit(m.Run())
}

// kernelEchoReady is what the kernel echo server prints once listening.
const kernelEchoReady = "kernel server listening"

// kernelEchoCmd re-executes the test binary as the kernel echo server.
func kernelEchoCmd() *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), echoEnv+"=1")
	return cmd
}

// sleep waits d or until the run is interrupted.
func sleep(d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-runCtx.Done():
		return runCtx.Err()
	}
}

// target is one system under test in one trial's topology.
type target interface {
	inject(f takeover.Fault) error
	// paired reports nil while the main still serves and the backup still
	// stands by, else what changed.
	paired() error
	waitTakeover(ctx context.Context) error
	// settle runs after the takeover: it wakes a stopped main, and
	// returns a note on what the old main did.
	settle(f takeover.Fault) string
	// logs are the nodes' outputs, kept when a trial went wrong.
	logs() map[string]string
}

// rfsisTarget is RFSIS: internal/takeover's pair.
type rfsisTarget struct{ p *takeover.Pair }

func (r rfsisTarget) inject(f takeover.Fault) error { return r.p.Inject(f) }

func (r rfsisTarget) paired() error {
	if r.p.RolesChanged() {
		return fmt.Errorf("the pair changed roles before the fault (a false failover):\n%s", r.p.RoleLines())
	}
	return nil
}

func (r rfsisTarget) waitTakeover(ctx context.Context) error {
	return r.p.Backup.WaitOutput(ctx, takeover.LogTookOver)
}

func (r rfsisTarget) settle(f takeover.Fault) string {
	if f != takeover.Stop {
		return ""
	}
	if sleep(stopFor) != nil {
		return ""
	}
	if err := r.p.Main.Cont(); err != nil {
		return fmt.Sprintf("SIGCONT: %v", err)
	}
	select {
	case <-r.p.Main.Done():
	case <-time.After(10 * time.Second):
		return "the woken main did not exit within 10 s"
	}
	if strings.Contains(r.p.Main.Output(), takeover.LogStandDown) {
		return ""
	}
	return fmt.Sprintf("the woken main exited without standing down: %v", r.p.Main.Wait())
}

func (r rfsisTarget) logs() map[string]string {
	return map[string]string{"main": r.p.Main.Output(), "backup": r.p.Backup.Output()}
}

// vrrpTarget is the keepalived baseline.
type vrrpTarget struct{ v *vrrpPair }

func (k vrrpTarget) inject(f takeover.Fault) error { return k.v.inject(f) }

func (k vrrpTarget) paired() error {
	holds, err := k.v.mainHoldsAddress()
	if err != nil {
		return err
	}
	if !holds || k.v.masterLines(0) != 1 || k.v.masterLines(1) != 0 {
		return fmt.Errorf("the VRRP roles changed before the fault: main holds the address %v, master transitions main %d, backup %d",
			holds, k.v.masterLines(0), k.v.masterLines(1))
	}
	return nil
}

func (k vrrpTarget) waitTakeover(ctx context.Context) error {
	return k.v.nodes[1].keepalived.WaitOutput(ctx, logVRRPMaster)
}

func (k vrrpTarget) settle(f takeover.Fault) string {
	if f != takeover.Stop {
		return ""
	}
	if sleep(stopFor) != nil {
		return ""
	}
	if err := k.v.resume(); err != nil {
		return fmt.Sprintf("SIGCONT: %v", err)
	}
	return ""
}

func (k vrrpTarget) logs() map[string]string {
	out := map[string]string{}
	for i, n := range k.v.nodes {
		out[fmt.Sprintf("node%d-keepalived", i)] = n.keepalived.Output()
	}
	return out
}

// afterStop is, for keepalived, what the woken main did by the end of the
// trial: with preemption (keepalived's default) its higher priority takes
// the address back, and every connection opened on the backup meanwhile
// breaks too.
func (k vrrpTarget) afterStop() string {
	holds, err := k.v.mainHoldsAddress()
	if err != nil {
		return err.Error()
	}
	if holds || k.v.masterLines(0) > 1 {
		return "the woken main took the address back (preemption)"
	}
	return ""
}

// bench is one run of the benchmark.
type benchRun struct {
	bin     string // cmd/echoserver
	rep     *Report
	logDir  string
	mu      sync.Mutex
	started time.Time
}

// TestFailoverBench is `make bench-failover`: see the package doc.
func TestFailoverBench(t *testing.T) {
	if os.Getenv(enableEnv) != "1" {
		t.Skipf("the failover benchmark runs with %s=1 (make bench-failover)", enableEnv)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the failover benchmark needs root (network namespaces, TAP devices)")
	}
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Fatal("keepalived not found: install the Debian package keepalived (apt-get install keepalived)")
	}
	netns.RequireTools(t, "ip")
	k := defaultTrials
	if v := os.Getenv(trialsEnv); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, trialsEnv)
		require.Positive(t, n, trialsEnv)
		k = n
	}
	steady := 4 * time.Second
	if v := os.Getenv(steadyEnv); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, steadyEnv)
		steady = d
	}
	out := os.Getenv(outEnv)
	if out == "" {
		out = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(out, 0o755))

	b := &benchRun{started: time.Now(), logDir: filepath.Join(os.TempDir(), "failbench-logs")}
	code := bench.VCSInfo()
	if b.bin = os.Getenv(echoserverEnv); b.bin != "" {
		code = fmt.Sprintf("echoserver %s (%s); the benchmark from %s", b.bin, echoserverEnv, code)
	} else {
		var err error
		b.bin, err = progtest.Build(t.TempDir(), "./cmd/echoserver", false)
		require.NoError(t, err)
	}
	b.rep = &Report{
		Date:           b.started,
		Machine:        bench.MeasureMachine().String(),
		Code:           code,
		Command:        fmt.Sprintf("make bench-failover TRIALS=%d", k),
		TrialsPerFault: k,
		Workload: fmt.Sprintf("%d connections each echoing a %d-byte line every %v, plus one bulk connection at %d KiB/s, every byte verified; "+
			"%v of traffic before the fault, %v after the takeover; a new connection dialled every %v from the fault on",
			workload.Default.Steady, workload.Default.LineSize, workload.Default.Interval, workload.Default.BulkRate>>10,
			warmup, afterTakeover, probeEvery),
		Detection: map[string]string{
			SystemRFSIS: fmt.Sprintf("RFSIS heartbeat_timer %g × heartbeat_misses %d (detection after 30 ms without a heartbeat)",
				takeover.Heartbeat.Seconds(), takeover.Misses),
			SystemKeepalived: VRRPDetection,
		},
		FaultLabels: map[string]string{},
	}
	for _, f := range takeover.Faults {
		b.rep.Faults = append(b.rep.Faults, string(f))
		b.rep.FaultLabels[string(f)] = f.Label()
	}

	t.Run("steady", func(t *testing.T) { b.steadyState(t, steady) })
	// Interleaved, so a change in the machine's other load falls on both
	// systems and every fault alike.
	for i := range k {
		for _, f := range takeover.Faults {
			for _, sys := range Systems {
				if runCtx.Err() != nil {
					t.Fatal("interrupted")
				}
				t.Run(fmt.Sprintf("%s-%s-%02d", sys, f, i), func(t *testing.T) { b.trial(t, sys, f, i) })
			}
		}
	}
	b.rep.DurationS = time.Since(b.started).Seconds()
	require.NoError(t, b.rep.WriteJSON(filepath.Join(out, jsonName)))
	require.NoError(t, b.rep.PlotStalls(filepath.Join(out, stallName)))
	require.NoError(t, b.rep.PlotTimelines(filepath.Join(out, timelineName)))
	md := b.rep.Markdown(stallName, timelineName, jsonName)
	require.NoError(t, os.WriteFile(filepath.Join(out, mdName), []byte(md), 0o644))
	fmt.Printf("\n%s\nWritten to %s: %s, %s, %s, %s\n", md, out, mdName, jsonName, stallName, timelineName)
}

// TestRender draws the pictures and the Markdown again from a stored
// report (RFSIS_FAILBENCH_RENDER=docs/bench/failover.json), next to it. A
// relative path is taken from the repository's root, not from the
// package's directory where go test runs.
func TestRender(t *testing.T) {
	path := os.Getenv(renderEnv)
	if path == "" {
		t.Skipf("%s names a %s to draw again", renderEnv, jsonName)
	}
	if !filepath.IsAbs(path) {
		root, err := progtest.ModuleRoot()
		require.NoError(t, err)
		path = filepath.Join(root, path)
	}
	r, err := ReadJSON(path)
	require.NoError(t, err)
	dir := filepath.Dir(path)
	require.NoError(t, r.PlotStalls(filepath.Join(dir, stallName)))
	require.NoError(t, r.PlotTimelines(filepath.Join(dir, timelineName)))
	require.NoError(t, os.WriteFile(filepath.Join(dir, mdName), []byte(r.Markdown(stallName, timelineName, jsonName)), 0o644))
}

// note adds a note to the report.
func (b *benchRun) note(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rep.Notes = append(b.rep.Notes, fmt.Sprintf(format, args...))
}

// keepLogs writes a trial's node logs to the log directory and returns
// where.
func (b *benchRun) keepLogs(name string, logs map[string]string) string {
	if err := os.MkdirAll(b.logDir, 0o755); err != nil {
		return err.Error()
	}
	for role, out := range logs {
		os.WriteFile(filepath.Join(b.logDir, name+"-"+role+".log"), []byte(out), 0o644)
	}
	return filepath.Join(b.logDir, name+"-*.log")
}

// start builds a fresh topology and starts sys in it.
func (b *benchRun) start(t *testing.T, sys string) (*netns.Topology, target) {
	tp := netns.New(t, netns.Options{Nodes: 2, NodeKernelAddrs: true})
	ctx, cancel := context.WithTimeout(runCtx, 30*time.Second)
	defer cancel()
	switch sys {
	case SystemRFSIS:
		p := &takeover.Pair{TP: tp, Bin: b.bin, Dir: t.TempDir()}
		require.NoError(t, p.StartRetrying(ctx, startAttempts, t.Logf))
		return tp, rfsisTarget{p}
	case SystemKeepalived:
		v, err := startVRRPPair(ctx, tp, t.TempDir(), kernelEchoCmd, kernelEchoReady)
		// Registered after the topology's, so it runs first: the VRRP
		// children are not the topology's processes.
		t.Cleanup(v.stop)
		require.NoError(t, err)
		return tp, vrrpTarget{v}
	}
	t.Fatalf("unknown system %q", sys)
	return nil, nil
}

// trial runs fault f against sys once and adds the trial to the report.
// A false failover during the warm-up is noted and the trial run again.
func (b *benchRun) trial(t *testing.T, sys string, f takeover.Fault, i int) {
	for attempt := 1; ; attempt++ {
		var tr *Trial
		var warmupErr error
		t.Run(fmt.Sprintf("attempt%d", attempt), func(t *testing.T) { tr, warmupErr = b.runTrial(t, sys, f, i) })
		if tr != nil {
			b.mu.Lock()
			b.rep.Trials = append(b.rep.Trials, *tr)
			b.mu.Unlock()
			return
		}
		if warmupErr == nil || attempt == startAttempts {
			t.Fatalf("%s %s trial %d failed; see above", SystemLabel(sys), f.Label(), i)
		}
	}
}

// runTrial is one attempt of a trial. It returns the trial, or the
// reason the pair was already broken before the fault.
func (b *benchRun) runTrial(t *testing.T, sys string, f takeover.Fault, i int) (*Trial, error) {
	name := fmt.Sprintf("%s-%s-%02d", sys, f, i)
	tp, sut := b.start(t, sys)
	service := netip.AddrPortFrom(tp.ServiceAddr(), takeover.EchoPort).String()
	dial := func(ctx context.Context) (net.Conn, error) { return tp.Client().Dial(ctx, "tcp4", service) }

	w, err := workload.Start(runCtx, dial, workload.Default)
	require.NoError(t, err)
	t.Cleanup(w.Abort)
	require.NoError(t, sleep(warmup))
	if err := sut.paired(); err != nil {
		b.note("%s: %v (logs: %s); the trial was run again", name, err, b.keepLogs(name, sut.logs()))
		t.Log(err)
		return nil, err
	}

	fault := time.Now()
	require.NoError(t, sut.inject(f))
	// Only now: taking a link down runs `ip`, and a connection completed
	// meanwhile would not have met the fault.
	probe := startProbe(dial, fault)
	tr := &Trial{System: sys, Fault: string(f), Index: i}
	ctx, cancel := context.WithTimeout(runCtx, takeoverWait)
	err = sut.waitTakeover(ctx)
	cancel()
	if err == nil {
		tr.TakeoverMS = Ms(time.Since(fault))
	}
	notes := []string{sut.settle(f)}
	require.NoError(t, sleep(afterTakeover))
	if k, ok := sut.(vrrpTarget); ok && f == takeover.Stop {
		notes = append(notes, k.afterStop())
	}
	rs, err := w.Finish(drain)
	if err != nil {
		notes = append(notes, err.Error())
	}
	newConn, ok := probe.wait()

	s := TrialOf(rs, fault)
	s.System, s.Fault, s.Index, s.TakeoverMS = tr.System, tr.Fault, tr.Index, tr.TakeoverMS
	if ok {
		s.NewConnMS = Ms(newConn)
	}
	notes = slices.DeleteFunc(notes, func(n string) bool { return n == "" })
	if sys == SystemRFSIS && (s.Survived < s.Conns || len(notes) > 0) {
		notes = append(notes, "logs: "+b.keepLogs(name, sut.logs()))
	}
	s.Note = strings.Join(notes, "; ")
	if i == 0 {
		tl := TimelineOf(rs, fault, timelineBefore, timelineAfter, timelineBin)
		tl.System, tl.Fault, tl.TakeoverMS, tl.NewConnMS = sys, string(f), s.TakeoverMS, s.NewConnMS
		b.mu.Lock()
		b.rep.Timelines = append(b.rep.Timelines, tl)
		b.mu.Unlock()
	}
	t.Logf("%s: %d of %d connections survived, %d bytes lost, stall %s ms, new connection %s ms, takeover %s ms; %v %s",
		name, s.Survived, s.Conns, s.BytesLost, fmtMs(s.StallMS), fmtMs(s.NewConnMS), fmtMs(s.TakeoverMS), s.Errors, s.Note)
	return &s, nil
}

func fmtMs(v *float64) string {
	if v == nil {
		return "—"
	}
	return strconv.FormatFloat(*v, 'f', 0, 64)
}

// probe dials new connections from the fault on (see startProbe).
type probe struct {
	done  chan struct{}
	mu    sync.Mutex
	first time.Duration
	ok    bool
}

// startProbe dials a new connection every probeEvery from now until one
// has completed an echo (workload.ShortConn), or probeWindow has passed;
// each attempt runs on its own, so a SYN lost to the dead main does not
// hold the next ones back. The result is the time from the fault until
// the first exchange completed.
func startProbe(dial workload.DialFunc, fault time.Time) *probe {
	pr := &probe{done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(runCtx, probeWindow)
	go func() {
		defer close(pr.done)
		defer cancel()
		var wg sync.WaitGroup
		defer wg.Wait()
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for id := 0; ; id++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := workload.ShortConn(ctx, dial, 1000+id, workload.Default.LineSize)
				if r.Err != nil || r.Refused {
					return
				}
				at := time.Since(fault)
				pr.mu.Lock()
				if !pr.ok || at < pr.first {
					pr.first, pr.ok = at, true
				}
				pr.mu.Unlock()
				cancel()
			}()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return pr
}

// wait returns the probe's result once every attempt has ended.
func (pr *probe) wait() (time.Duration, bool) {
	<-pr.done
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.first, pr.ok
}

// steadyState measures the steady-state cost, no fault: 64-byte round
// trips and a bulk echo, one connection each, against the node kernel's
// TCP, RFSIS replicated and RFSIS unreplicated, in slices ordered kernel,
// replicated, unreplicated, kernel (a lone main after its backup is
// killed), so a change in the machine's load falls on all three.
func (b *benchRun) steadyState(t *testing.T, d time.Duration) {
	tp := netns.New(t, netns.Options{Nodes: 2, NodeKernelAddrs: true})
	kernel, err := tp.Node(0).StartCmd(kernelEchoCmd())
	require.NoError(t, err)
	startCtx, cancel := context.WithTimeout(runCtx, 30*time.Second)
	defer cancel()
	require.NoError(t, kernel.WaitOutput(startCtx, kernelEchoReady))
	p := &takeover.Pair{TP: tp, Bin: b.bin, Dir: t.TempDir()}
	require.NoError(t, p.StartRetrying(startCtx, startAttempts, t.Logf))

	type acc struct {
		rr, echo bench.Sample
	}
	got := map[string]*acc{}
	measure := func(server string, addr netip.Addr, d time.Duration) {
		dial := func(ctx context.Context, port int) (bench.Conn, error) {
			c, err := tp.Client().Dial(ctx, "tcp4", netip.AddrPortFrom(addr, uint16(port)).String())
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		}
		a := got[server]
		if a == nil {
			a = &acc{}
			got[server] = a
		}
		rr, err := bench.MeasureRR(runCtx, dial, d, 1)
		require.NoError(t, err, "%s round trips", server)
		echo, err := bench.MeasureEcho(runCtx, dial, d)
		require.NoError(t, err, "%s echo", server)
		a.rr.Add(rr)
		a.echo.Add(echo)
	}
	const (
		kern  = "kernel TCP"
		repl  = "RFSIS replicated (main + backup)"
		alone = "RFSIS unreplicated (lone main)"
	)
	measure(kern, tp.NodeKernelAddr(0), d/2)
	measure(repl, tp.ServiceAddr(), d)
	if p.RolesChanged() {
		b.note("steady state: the replicated pair broke during its measurement:\n%s", p.RoleLines())
	}
	require.NoError(t, p.Backup.Kill())
	// Its own limit: startCtx's has been spent measuring.
	lostCtx, cancelLost := context.WithTimeout(runCtx, takeoverWait)
	defer cancelLost()
	require.NoError(t, p.Main.WaitOutput(lostCtx, takeover.LogUnprotected))
	measure(alone, tp.ServiceAddr(), d)
	measure(kern, tp.NodeKernelAddr(0), d/2)
	for _, server := range []string{kern, alone, repl} {
		a := got[server]
		s := Steady{
			Server:        server,
			RTTP50US:      float64(workload.Percentile(a.rr.Lat, 0.5).Nanoseconds()) / 1e3,
			RTTP99US:      float64(workload.Percentile(a.rr.Lat, 0.99).Nanoseconds()) / 1e3,
			RoundTripsSec: float64(a.rr.Ops) / a.rr.Elapsed.Seconds(),
			EchoMBps:      float64(a.echo.Bytes) / a.echo.Elapsed.Seconds() / 1e6,
			Seconds:       d.Seconds(),
		}
		b.rep.Steady = append(b.rep.Steady, s)
		t.Logf("%s: round trip p50 %.0f µs, p99 %.0f µs, %.0f/s; echo %.1f MB/s", server, s.RTTP50US, s.RTTP99US, s.RoundTripsSec, s.EchoMBps)
	}
}
