//go:build linux

package takeover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/netns"
)

const (
	// warmup runs the workload before the fault, long enough for every
	// connection to be replicated and in its steady state.
	warmup = time.Second
	// afterTakeover runs the workload on the new main before the clients
	// half-close: the takeover must leave connections that keep working,
	// not only ones that survive one more echo. It is not 1 s so that the
	// clients' half-close does not coincide with the new main's first
	// retransmission timeout (1 s) in a capture.
	afterTakeover = 1500 * time.Millisecond
	// takeoverWait bounds the wait for the backup's takeover log line;
	// detection is 30 ms, so this is "never", not "slow".
	takeoverWait = 5 * time.Second
	// drain bounds the wait for every echo and EOF after the writers stop.
	drain = 15 * time.Second
	// stallBound is the per-trial stall every ordinary run asserts. It is
	// generous (the criteria are a median of 100 ms and a maximum
	// of 300 ms over 20 trials, see TestKillStall) because CI runs these
	// tests beside everything else under -race on two cores.
	stallBound = time.Second
)

// killMainTrial runs one kill -9 trial: the workload on a fresh pair, the
// main killed mid-stream, every connection checked. lossPercent > 0 makes
// the switch drop that share of frames for the whole trial.
func killMainTrial(t *testing.T, lossPercent float64) stallStats {
	p := startPair(t)
	if lossPercent > 0 {
		netns.RequireTools(t, "nft")
		require.NoError(t, p.tp.SetLoss(lossPercent))
	}
	w := startWorkload(t, p, defaultWorkload)
	time.Sleep(warmup)

	requireStillPaired(t, p, "after the warm-up")
	fault := time.Now()
	require.NoError(t, crash(p.main))
	waitOutput(t, p.backup, takeoverWait, logTookOver)
	tookOver := time.Since(fault)
	time.Sleep(afterTakeover)

	rs := w.finish(t, drain)
	requireClean(t, rs, fault)
	requireNoResets(t, p)
	requireServiceWithBackup(t, p)
	s := stall(rs, fault)
	t.Logf("kill -9: takeover logged %v after the kill; %v", tookOver.Round(time.Millisecond), s)
	return s
}

// crash kills proc with SIGKILL, or with SIGQUIT when
// RFSIS_TAKEOVER_CRASH=quit: the Go runtime then writes every goroutine's
// stack to the log before the process exits (status 2), which shows what
// the node was doing when it died, at the cost of a few milliseconds of
// dying. Neither gives the stack a chance to send anything.
func crash(proc *netns.Process) error {
	if os.Getenv("RFSIS_TAKEOVER_CRASH") == "quit" {
		return proc.Signal(syscall.SIGQUIT)
	}
	return proc.Kill()
}

// TestKillMain is fault 1: kill -9 of the main mid-stream. Every
// connection must carry on with the backup: every byte echoed exactly
// once and in order, no reset, no error, and a short pause.
func TestKillMain(t *testing.T) {
	s := killMainTrial(t, 0)
	assertStall(t, s, stallBound)
}

// TestKillMainUnderLoss is fault 6: fault 1 while the switch drops 1% of
// all frames at random, both ways, sync channel included. Loss may cost
// time (retransmissions), nothing else.
func TestKillMainUnderLoss(t *testing.T) {
	s := killMainTrial(t, 1)
	// A frame lost at the wrong moment costs the client retransmission
	// timeouts on top of the takeover (200 ms minimum on Linux, doubling
	// on each loss: 200+400+800+1600 ms is already 3 s), so loss may cost
	// seconds; what it must not cost is a byte, a reset or a hang, which
	// the trial checks. The bound only tells a hang from slowness.
	assertStall(t, s, 10*time.Second)
}

// TestMainLinkDown is fault 2: the main's uplink is taken down at the
// switch instead of killing it. The main lives on but hears nobody; the
// backup must take over as for a crash, and the main, alone, must notice
// it lost its backup.
func TestMainLinkDown(t *testing.T) {
	p := startPair(t)
	w := startWorkload(t, p, defaultWorkload)
	time.Sleep(warmup)

	requireStillPaired(t, p, "after the warm-up")
	fault := time.Now()
	require.NoError(t, p.tp.LinkDown(p.tp.Node(0)))
	waitOutput(t, p.backup, takeoverWait, logTookOver)
	tookOver := time.Since(fault)
	waitOutput(t, p.main, takeoverWait, logUnprotected)
	time.Sleep(afterTakeover)

	rs := w.finish(t, drain)
	requireClean(t, rs, fault)
	requireNoResets(t, p)
	requireServiceWithBackup(t, p)
	s := stall(rs, fault)
	t.Logf("link down: takeover logged %v after the fault; %v", tookOver.Round(time.Millisecond), s)
	assertStall(t, s, stallBound)
}

// TestStopContMain is fault 3: SIGSTOP of the main, SIGCONT once the
// backup has taken over. The woken main holds stale connections and a
// stale role; it must learn of the new epoch and stand down (exit with an
// error, log "standing down") without sending clients anything: no RST,
// no ARP claim on the service address. Connections keep working on the
// new main for a while after the SIGCONT.
func TestStopContMain(t *testing.T) {
	p := startPair(t)
	w := startWorkload(t, p, defaultWorkload)
	time.Sleep(warmup)

	requireStillPaired(t, p, "after the warm-up")
	fault := time.Now()
	require.NoError(t, p.main.Stop())
	waitOutput(t, p.backup, takeoverWait, logTookOver)
	tookOver := time.Since(fault)
	// Let the clients run on the new main, and the frozen main's socket
	// buffers fill with what clients and peer sent it meanwhile.
	time.Sleep(300 * time.Millisecond)

	woke := time.Now()
	require.NoError(t, p.main.Cont())
	exitErr := waitExit(t, p.main, 10*time.Second)
	exited := time.Since(woke)
	var ee *exec.ExitError
	require.ErrorAs(t, exitErr, &ee, "the old main must exit with an error status after standing down")
	assert.Contains(t, p.main.Output(), logStandDown)
	t.Logf("old main exited %v after SIGCONT: %v", exited.Round(time.Millisecond), exitErr)

	// The clients must not have noticed the old main's wake-up: keep
	// running on the new main, then check everything.
	time.Sleep(afterTakeover)
	rs := w.finish(t, drain)
	requireClean(t, rs, fault)
	requireNoResets(t, p)
	requireServiceWithBackup(t, p)
	// A connection opened now reaches the new main.
	echoOnce(t, p, "after the stand-down")
	s := stall(rs, fault)
	t.Logf("SIGSTOP: takeover logged %v after the stop; %v", tookOver.Round(time.Millisecond), s)
	assertStall(t, s, stallBound)
}

// TestKillBackup is fault 4: kill -9 of the backup. The main must notice
// within its detection window, open its gates and serve unprotected; the
// clients only see the gates held for that window.
func TestKillBackup(t *testing.T) {
	p := startPair(t)
	w := startWorkload(t, p, defaultWorkload)
	time.Sleep(warmup)

	requireStillPaired(t, p, "after the warm-up")
	fault := time.Now()
	require.NoError(t, p.backup.Kill())
	waitOutput(t, p.main, takeoverWait, logUnprotected)
	noticed := time.Since(fault)
	time.Sleep(afterTakeover)

	rs := w.finish(t, drain)
	requireClean(t, rs, fault)
	requireNoResets(t, p)
	echoOnce(t, p, "after the backup died")
	s := stall(rs, fault)
	t.Logf("backup killed: main logged unprotected %v after the kill; %v", noticed.Round(time.Millisecond), s)
	// The gates hold output for one detection window (30 ms) plus a round
	// of scheduling: clients should notice nothing a person would.
	assertStall(t, s, 300*time.Millisecond)
}

// TestConnectDuringKill is fault 5: connections opened while the main
// dies. Each must either complete normally (every byte echoed, clean EOF)
// or be refused cleanly (ECONNREFUSED at connect); none may hang, be reset
// after connecting, or lose data. Connections are opened every 5 ms from
// 300 ms before the kill to 700 ms after it, beside the usual workload.
func TestConnectDuringKill(t *testing.T) {
	p := startPair(t)
	w := startWorkload(t, p, defaultWorkload)
	time.Sleep(warmup)

	type outcome struct {
		name     string
		dialTook time.Duration
		refused  bool
		err      error
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
	)
	requireStillPaired(t, p, "after the warm-up")
	churnStart := time.Now()
	killAt := churnStart.Add(300 * time.Millisecond)
	churnEnd := killAt.Add(700 * time.Millisecond)
	killed := make(chan time.Time, 1)
	go func() {
		time.Sleep(time.Until(killAt))
		now := time.Now()
		crash(p.main)
		killed <- now
	}()
	for i := 0; time.Now().Before(churnEnd); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := outcome{name: fmt.Sprintf("churn%03d", i)}
			o.dialTook, o.refused, o.err = shortConn(p, i)
			mu.Lock()
			outcomes = append(outcomes, o)
			mu.Unlock()
		}()
		time.Sleep(5 * time.Millisecond)
	}
	fault := <-killed
	waitOutput(t, p.backup, takeoverWait, logTookOver)
	wg.Wait() // every shortConn is deadline-bounded

	completed, refused := 0, 0
	var slowest time.Duration
	var bad []string
	for _, o := range outcomes {
		switch {
		case o.err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", o.name, o.err))
		case o.refused:
			refused++
		default:
			completed++
			slowest = max(slowest, o.dialTook)
		}
	}
	t.Logf("connections opened around the kill: %d completed (slowest connect %v), %d refused, %d failed",
		completed, slowest.Round(time.Millisecond), refused, len(bad))
	assert.Empty(t, bad, "connections opened while the main died must complete or be refused cleanly")

	rs := w.finish(t, drain)
	requireClean(t, rs, fault)
	// A refused connect is an RST answering a SYN: it counts in neither
	// TcpEstabResets nor the client's own RSTs.
	requireNoResets(t, p)
	t.Logf("kill -9 with connects: %v", stall(rs, fault))
}

// shortConn opens one connection to the service, echoes three lines and
// half-closes, expecting EOF after the echo. It reports how long the
// connect took, whether it was refused, and any other failure. Every step
// is bounded: the connect by 10 s (long enough for two SYN retransmissions
// of the client, at 1 s and 3 s), the rest by 10 s.
func shortConn(p *pair, id int) (time.Duration, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	c, err := p.tp.Client().Dial(ctx, "tcp4", p.service())
	took := time.Since(start)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return took, true, nil
	}
	if err != nil {
		return took, false, fmt.Errorf("connect (after %v): %w", took.Round(time.Millisecond), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, defaultWorkload.LineSize)
	for k := range 3 {
		want := line(id, k, defaultWorkload.LineSize)
		if _, err := c.Write(want); err != nil {
			return took, false, fmt.Errorf("write of line %d: %w", k, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return took, false, fmt.Errorf("read of line %d: %w", k, err)
		}
		if string(got) != string(want) {
			return took, false, fmt.Errorf("line %d: got %q, want %q", k, got, want)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return took, false, fmt.Errorf("CloseWrite: %w", err)
	}
	if n, err := c.Read(got); n != 0 || err != io.EOF {
		return took, false, fmt.Errorf("after the echo: read %d bytes, %v; want EOF", n, err)
	}
	return took, false, nil
}

// echoOnce opens a fresh connection and echoes one line over it.
func echoOnce(t *testing.T, p *pair, when string) {
	t.Helper()
	_, refused, err := shortConn(p, 99)
	require.NoError(t, err, "a new connection %s", when)
	require.False(t, refused, "a new connection %s was refused", when)
}

// TestKillStall is the statistics over repeated kill -9 trials
// (heartbeat_timer 0.01, heartbeat_misses 3). An ordinary run does 3
// trials and asserts each stall is under stallBound; with
// RFSIS_TAKEOVER_TRIALS=20 (or more) it also asserts the criteria:
// median stall <= 100 ms and no trial over 300 ms. The distribution is
// logged either way.
func TestKillStall(t *testing.T) {
	trials := 3
	if v := os.Getenv("RFSIS_TAKEOVER_TRIALS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "RFSIS_TAKEOVER_TRIALS")
		require.Positive(t, n, "RFSIS_TAKEOVER_TRIALS")
		trials = n
	}
	var stalls, medians []time.Duration
	var unmeasured []int
	for i := range trials {
		measured, skipped := false, false
		t.Run(fmt.Sprintf("trial%02d", i), func(t *testing.T) {
			defer func() { skipped = t.Skipped() }()
			s := killMainTrial(t, 0)
			stalls = append(stalls, s.Max)
			medians = append(medians, s.Median)
			measured = true
			assertStall(t, s, stallBound)
		})
		if skipped {
			t.Skip("the trials cannot run here (see the subtest's skip message)")
		}
		if !measured {
			// The trial failed before its stall could be measured (a lost
			// byte, a false failover during the warm-up): it has failed
			// the test already; the statistics are of the others.
			unmeasured = append(unmeasured, i)
		}
	}
	if len(unmeasured) > 0 {
		t.Logf("%d of %d trials failed before their stall was measured: %v", len(unmeasured), trials, unmeasured)
	}
	if len(stalls) == 0 {
		t.Fatalf("no trial measured a stall")
	}
	median, p99, worst := percentile(stalls, 0.5), percentile(stalls, 0.99), percentile(stalls, 1)
	t.Logf("kill -9 stall over %d measured trials: median %v, p99 %v, max %v; per trial: %s",
		len(stalls), median.Round(time.Millisecond), p99.Round(time.Millisecond), worst.Round(time.Millisecond), durations(stalls))
	t.Logf("median over connections, per trial: %s", durations(medians))
	if trials >= 20 {
		assert.LessOrEqual(t, median, 100*time.Millisecond, "median stall")
		assert.LessOrEqual(t, worst, 300*time.Millisecond, "worst stall")
	}
}
