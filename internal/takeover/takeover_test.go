//go:build linux

package takeover

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/internal/workload"
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

// faultStory is what a test does around one fault of the main, beyond
// the common trial: what to wait for after the backup's takeover, and
// what to check once the workload is done.
type faultStory struct {
	// settle runs right after the backup logged its takeover, with the
	// workload still running.
	settle func(t *testing.T, p *Pair)
	// check runs after the workload's own checks.
	check func(t *testing.T, p *Pair)
}

// stories are the faults' stories:
//
//   - kill -9: nothing more; the backup's takeover is the story.
//   - link down: the main lives on but hears nobody; alone, it must
//     notice it lost its backup.
//   - SIGSTOP, SIGCONT once the backup has taken over: the woken main
//     holds stale connections and a stale role; it must learn of the new
//     epoch and stand down (exit with an error, log "standing down")
//     without sending clients anything: no RST, no ARP claim on the
//     service address. Connections keep working on the new main for a
//     while after the SIGCONT, and a new connection reaches the new main.
var stories = map[Fault]faultStory{
	Kill: {},
	LinkDown: {
		settle: func(t *testing.T, p *Pair) { waitOutput(t, p.Main, takeoverWait, LogUnprotected) },
	},
	Stop: {
		settle: func(t *testing.T, p *Pair) {
			// Let the clients run on the new main, and the frozen main's
			// socket buffers fill with what clients and peer sent it
			// meanwhile.
			time.Sleep(300 * time.Millisecond)
			woke := time.Now()
			require.NoError(t, p.Main.Cont())
			exitErr := waitExit(t, p.Main, 10*time.Second)
			var ee *exec.ExitError
			require.ErrorAs(t, exitErr, &ee, "the old main must exit with an error status after standing down")
			assert.Contains(t, p.Main.Output(), LogStandDown)
			t.Logf("old main exited %v after SIGCONT: %v", time.Since(woke).Round(time.Millisecond), exitErr)
		},
		check: func(t *testing.T, p *Pair) { echoOnce(t, p, "after the stand-down") },
	},
}

// faultTrial runs one trial of fault f: the workload on a fresh pair, the
// main hit mid-stream, the fault's story (stories), every connection
// checked: every byte echoed exactly once and in order, no reset, no
// error, the service address with the backup. lossPercent > 0 makes the
// switch drop that share of frames for the whole trial. It returns the
// client-visible stall.
func faultTrial(t *testing.T, f Fault, lossPercent float64) workload.Stall {
	story, ok := stories[f]
	require.True(t, ok, "no story for fault %q", f)
	p, w := startWarmPair(t, lossPercent)
	fault := time.Now()
	require.NoError(t, p.Inject(f))
	waitOutput(t, p.Backup, takeoverWait, LogTookOver)
	tookOver := time.Since(fault)
	if story.settle != nil {
		story.settle(t, p)
	}
	// The clients must not have noticed anything but a pause: keep
	// running on the new main, then check everything.
	time.Sleep(afterTakeover)

	rs := finish(t, w, drain)
	requireClean(t, rs, fault)
	requireNoResets(t, p)
	requireServiceWithBackup(t, p)
	if story.check != nil {
		story.check(t, p)
	}
	s := workload.ComputeStall(rs, fault)
	t.Logf("%s: takeover logged %v after the fault; %v", f.Label(), tookOver.Round(time.Millisecond), s)
	return s
}

// startWarmPair is the prologue of every fault: a pair (startPair), the
// switch dropping lossPercent of the frames from then on when it is above
// 0, the default workload run for warmup, and the check that the pair is
// still the main and the backup it started as.
func startWarmPair(t *testing.T, lossPercent float64) (*Pair, *workload.Workload) {
	t.Helper()
	p := startPair(t)
	if lossPercent > 0 {
		netns.RequireTools(t, "nft")
		require.NoError(t, p.TP.SetLoss(lossPercent))
	}
	w := startWorkload(t, p, workload.Default)
	time.Sleep(warmup)
	requireStillPaired(t, p, "after the warm-up")
	return p, w
}

// TestKillMain is fault 1: kill -9 of the main mid-stream. Every
// connection must carry on with the backup: every byte echoed exactly
// once and in order, no reset, no error, and a short pause.
func TestKillMain(t *testing.T) {
	assertStall(t, faultTrial(t, Kill, 0), stallBound)
}

// TestMainLinkDown is fault 2: the main's uplink is taken down at the
// switch instead of killing it. The main lives on but hears nobody; the
// backup must take over as for a crash, and the main, alone, must notice
// it lost its backup.
func TestMainLinkDown(t *testing.T) {
	assertStall(t, faultTrial(t, LinkDown, 0), stallBound)
}

// TestStopContMain is fault 3: SIGSTOP of the main, SIGCONT once the
// backup has taken over. The old main must stand down without a trace
// (see stories), and connections keep working on the new main.
func TestStopContMain(t *testing.T) {
	assertStall(t, faultTrial(t, Stop, 0), stallBound)
}

// lossStallBound tells a hang from slowness under loss. A frame lost at
// the wrong moment costs the client retransmission timeouts on top of
// the takeover (200 ms minimum on Linux, doubling on each loss:
// 200+400+800+1600 ms is already 3 s), so loss may cost seconds; what it
// must not cost is a byte, a reset or a hang, which the trial checks.
const lossStallBound = 10 * time.Second

// TestKillMainUnderLoss is fault 6: fault 1 while the switch drops 1% of
// all frames at random, both ways, sync channel included. Loss may cost
// time (retransmissions), nothing else.
func TestKillMainUnderLoss(t *testing.T) {
	assertStall(t, faultTrial(t, Kill, 1), lossStallBound)
}

// TestMainLinkDownUnderLoss is fault 2 under 1% random frame loss.
func TestMainLinkDownUnderLoss(t *testing.T) {
	assertStall(t, faultTrial(t, LinkDown, 1), lossStallBound)
}

// TestStopContMainUnderLoss is fault 3 under 1% random frame loss: the
// woken main must stand down even if some of what it hears is lost.
func TestStopContMainUnderLoss(t *testing.T) {
	assertStall(t, faultTrial(t, Stop, 1), lossStallBound)
}

// TestKillBackup is fault 4: kill -9 of the backup. The main must notice
// within its detection window, open its gates and serve unprotected; the
// clients only see the gates held for that window.
func TestKillBackup(t *testing.T) {
	p, w := startWarmPair(t, 0)
	fault := time.Now()
	require.NoError(t, p.Backup.Kill())
	waitOutput(t, p.Main, takeoverWait, LogUnprotected)
	noticed := time.Since(fault)
	time.Sleep(afterTakeover)

	rs := finish(t, w, drain)
	requireClean(t, rs, fault)
	requireNoResets(t, p)
	echoOnce(t, p, "after the backup died")
	s := workload.ComputeStall(rs, fault)
	t.Logf("backup killed: main logged unprotected %v after the kill; %v", noticed.Round(time.Millisecond), s)
	// The gates hold output for one detection window (30 ms) plus a round
	// of scheduling: clients should notice nothing a person would.
	assertStall(t, s, 300*time.Millisecond)
}

// TestConnectDuringKill is fault 5: connections opened while the main
// dies. Each must either complete normally (every byte echoed, clean EOF)
// or be refused cleanly (ECONNREFUSED at connect); none may hang, be reset
// after connecting, or lose data. Those dialled after the backup logged
// its takeover must complete: the service is back. Connections are opened
// every 5 ms from 300 ms before the kill to 700 ms after it, beside the
// usual workload.
func TestConnectDuringKill(t *testing.T) {
	p, w := startWarmPair(t, 0)

	type outcome struct {
		name  string
		start time.Time // when it began to dial
		workload.ShortResult
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
	)
	churnStart := time.Now()
	killAt := churnStart.Add(300 * time.Millisecond)
	churnEnd := killAt.Add(700 * time.Millisecond)
	type kill struct {
		at  time.Time
		err error
	}
	killed := make(chan kill, 1)
	go func() {
		time.Sleep(time.Until(killAt))
		now := time.Now()
		killed <- kill{now, p.Inject(Kill)}
	}()
	// The takeover's log line, timed as it is written (at the latest).
	tookOver := make(chan time.Time, 1)
	go func() {
		defer close(tookOver)
		ctx, cancel := context.WithDeadline(context.Background(), killAt.Add(takeoverWait))
		defer cancel()
		if p.Backup.WaitOutput(ctx, LogTookOver) == nil {
			tookOver <- time.Now()
		}
	}()
	for i := 0; time.Now().Before(churnEnd); i++ {
		wg.Add(1)
		start := time.Now()
		go func() {
			defer wg.Done()
			o := outcome{fmt.Sprintf("churn%03d", i), start,
				workload.ShortConn(context.Background(), dialer(p), i, workload.Default.LineSize)}
			mu.Lock()
			outcomes = append(outcomes, o)
			mu.Unlock()
		}()
		time.Sleep(5 * time.Millisecond)
	}
	k := <-killed
	require.NoError(t, k.err, "kill -9 of the main")
	fault := k.at
	takeoverAt, ok := <-tookOver
	require.True(t, ok, "the backup did not log its takeover within %v of the kill", takeoverWait)
	wg.Wait() // every ShortConn is deadline-bounded

	completed, refused, late := 0, 0, 0
	var slowest time.Duration
	var bad, lateRefused []string
	for _, o := range outcomes {
		if o.start.After(takeoverAt) {
			late++
			if o.Refused {
				lateRefused = append(lateRefused, fmt.Sprintf("%s (dialled %v after the takeover)",
					o.name, o.start.Sub(takeoverAt).Round(time.Millisecond)))
			}
		}
		switch {
		case o.Err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", o.name, o.Err))
		case o.Refused:
			refused++
		default:
			completed++
			slowest = max(slowest, o.Connect)
		}
	}
	t.Logf("connections opened around the kill: %d completed (slowest connect %v), %d refused, %d failed; "+
		"%d dialled after the takeover, logged %v after the kill",
		completed, slowest.Round(time.Millisecond), refused, len(bad), late, takeoverAt.Sub(fault).Round(time.Millisecond))
	assert.Empty(t, bad, "connections opened while the main died must complete or be refused cleanly")
	assert.NotZero(t, late, "no connection was dialled after the backup logged its takeover")
	assert.Empty(t, lateRefused, "connections dialled after the backup logged its takeover must complete, not be refused")

	rs := finish(t, w, drain)
	requireClean(t, rs, fault)
	// A refused connect is an RST answering a SYN: it counts in neither
	// TcpEstabResets nor the client's own RSTs.
	requireNoResets(t, p)
	t.Logf("kill -9 with connects: %v", workload.ComputeStall(rs, fault))
}

// echoOnce opens a fresh connection and echoes a few lines over it.
func echoOnce(t *testing.T, p *Pair, when string) {
	t.Helper()
	r := workload.ShortConn(context.Background(), dialer(p), 99, workload.Default.LineSize)
	require.NoError(t, r.Err, "a new connection %s", when)
	require.False(t, r.Refused, "a new connection %s was refused", when)
}

// The statistics over repeated trials of each fault
// (heartbeat_timer 0.01, heartbeat_misses 3): RFSIS_TAKEOVER_TRIALS trials
// per fault (default defaultTrials), each checked like a single test and
// asserting its stall is under stallBound; from 20 trials on, also the
// issue's criteria: median stall <= 100 ms and no trial over 300 ms. The
// distribution is logged either way.

// TestKillStall repeats TestKillMain.
func TestKillStall(t *testing.T) { stallTrials(t, Kill) }

// TestLinkDownStall repeats TestMainLinkDown.
func TestLinkDownStall(t *testing.T) { stallTrials(t, LinkDown) }

// TestStopContStall repeats TestStopContMain.
func TestStopContStall(t *testing.T) { stallTrials(t, Stop) }

// defaultTrials keeps the suite's cost low: each fault also has its own
// single test, so an ordinary run sees every fault defaultTrials+1 times.
const defaultTrials = 2

// criteriaTrials is the number of trials from which the criteria
// are asserted: below it a median and a maximum say little.
const criteriaTrials = 20

// trials is RFSIS_TAKEOVER_TRIALS, or defaultTrials.
func trials(t *testing.T) int {
	v := os.Getenv("RFSIS_TAKEOVER_TRIALS")
	if v == "" {
		return defaultTrials
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "RFSIS_TAKEOVER_TRIALS")
	require.Positive(t, n, "RFSIS_TAKEOVER_TRIALS")
	return n
}

// stallTrials runs the trials of fault f as subtests and judges their
// stalls together.
func stallTrials(t *testing.T, f Fault) {
	n := trials(t)
	var stalls, medians []time.Duration
	var unmeasured []int
	for i := range n {
		measured, skipped := false, false
		t.Run(fmt.Sprintf("trial%02d", i), func(t *testing.T) {
			defer func() { skipped = t.Skipped() }()
			s := faultTrial(t, f, 0)
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
		t.Logf("%d of %d trials failed before their stall was measured: %v", len(unmeasured), n, unmeasured)
	}
	if len(stalls) == 0 {
		t.Fatalf("no trial measured a stall")
	}
	median, p99, worst := workload.Percentile(stalls, 0.5), workload.Percentile(stalls, 0.99), workload.Percentile(stalls, 1)
	t.Logf("%s stall over %d measured trials: median %v, p99 %v, max %v; per trial: %s",
		f.Label(), len(stalls), median.Round(time.Millisecond), p99.Round(time.Millisecond), worst.Round(time.Millisecond),
		workload.Durations(stalls))
	t.Logf("median over connections, per trial: %s", workload.Durations(medians))
	if n >= criteriaTrials {
		assert.LessOrEqual(t, median, 100*time.Millisecond, "median stall")
		assert.LessOrEqual(t, worst, 300*time.Millisecond, "worst stall")
	}
}
