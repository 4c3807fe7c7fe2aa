//go:build linux

package takeover

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/zppratt/rfsis/internal/workload"
)

// The tests in this file are about the pair recovering its protection
// while clients are connected: a backup restarted after a crash, and a
// backup that stalls long enough for the main to drop it and then comes
// back. Neither may cost the main's clients anything, and a main that
// dies afterwards must not hand them a stale copy of their connection.

// TestBackupRestartWhileMainServes restarts a crashed backup, as a
// supervisor would, while the main serves clients unprotected. The new
// backup process must join the running main (the main logs "backup
// joined" again) and must not take the service over from it: if it did,
// the main would stand down and every connection it served would die.
// The connections the main served meanwhile rejoin from their
// checkpoints (the echo server takes one after every echo), and must not
// notice the rejoin at all (TestBackupRestartThenKillMain kills the main
// afterwards).
//
// Two ways this goes wrong. A backup that has never heard the main takes
// over after one detection window (30 ms here), and its only way to hear
// the main is its sync connection, whose first ARP and SYN are retried
// only after the stack's 1 s SYN timeout: a single frame lost at start-up
// (here, one sent before the kernel has put the freshly attached TAP's
// bridge port into forwarding) makes it take over a live main. And once
// the backup has joined, the main must not try to replicate the
// connections it served unprotected from where their replication stopped
// (the bytes are gone): only from their checkpoints.
func TestBackupRestartWhileMainServes(t *testing.T) {
	p, w := startWarmPair(t, 0)

	killed := time.Now()
	require.NoError(t, p.Backup.Kill())
	waitOutput(t, p.Main, takeoverWait, LogUnprotected)
	<-p.Backup.Done()

	// The same configuration, at once. Whichever comes first: the main
	// protected again, or the new backup serving (the failure).
	restarted := time.Now()
	err := restartBackup(t, p)
	if err != nil && !errors.Is(err, ErrStartRace) {
		t.Fatalf("the restarted backup neither joined nor took over: %v", err)
	}
	rejoined := err == nil
	assert.True(t, rejoined, "the restarted backup took the service over from the live main %v after its start "+
		"instead of joining it (backup log:\n%s)", time.Since(restarted).Round(time.Millisecond), p.Backup.Output())
	if rejoined {
		t.Logf("the restarted backup joined the main %v after its start", time.Since(restarted).Round(time.Millisecond))
	}

	// Either way, the connections the main serves must go on untouched.
	time.Sleep(afterTakeover)
	rs := finish(t, w, drain)
	requireClean(t, rs, restarted)
	requireNoResets(t, p)
	assert.NotContains(t, p.Main.Output(), LogStandDown, "the main stood down")
	// From the backup's kill on, as in TestKillBackup: the gates held for
	// one detection window, and the rejoin must not be felt at all.
	s := workload.ComputeStall(rs, killed)
	t.Logf("backup killed, restarted and rejoined: %v", s)
	assertStall(t, s, 300*time.Millisecond)
}

// TestBackupPauseThenKillMain stalls the backup (SIGSTOP) long enough for
// the main to declare it lost and serve unprotected, resumes it (the main
// reports it joined again), then kills the main.
//
// From the moment the main serves unprotected, the backup's copies of the
// connections then open are stale: the main no longer replicates them.
// The backup drops them when the new session starts, and the connections
// rejoin from their checkpoints. A connection that could not rejoin
// must end cleanly for its client when the main dies (a reset): never a
// hang, never an early EOF (the client would take it for an orderly end),
// never a lost, duplicated or wrong byte, which is what a stale copy
// going live would give. Connections
// opened after the backup rejoined are protected and must come through
// the kill like in TestKillMain, with a stall under stallBound.
func TestBackupPauseThenKillMain(t *testing.T) {
	p, old := startWarmPair(t, 0)

	joined := p.Joins()
	require.NoError(t, p.Backup.Stop())
	waitOutput(t, p.Main, takeoverWait, LogUnprotected)
	// A little traffic while unprotected, so the copies really are stale.
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, p.Backup.Cont())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitJoined(ctx, joined); errors.Is(err, ErrStartRace) {
		t.Fatalf("the paused backup took over on waking up")
	} else if err != nil {
		t.Fatalf("the backup did not rejoin after SIGCONT: %v", err)
	}
	require.NotContains(t, p.Backup.Output(), LogTookOver, "the paused backup took over on waking up")

	fresh := startWorkload(t, p, workload.Config{Steady: 10, LineSize: 32, Interval: 10 * time.Millisecond, Life: 60 * time.Second})
	time.Sleep(warmup)
	fault := time.Now()
	require.NoError(t, p.Inject(Kill))
	waitOutput(t, p.Backup, takeoverWait, LogTookOver)
	time.Sleep(afterTakeover)

	// finish waits for every connection; a stale copy that hangs its
	// client is cut after a few seconds (they all hang together, and the
	// fresh connections have drained by then) and reported below.
	freshRes := finish(t, fresh, drain)
	oldRes := finish(t, old, 3*time.Second)
	requireClean(t, freshRes, fault)
	var bad []string
	ended := 0
	for _, r := range oldRes {
		switch {
		case r.Err == nil:
		case endedCleanly(r.Err):
			ended++
		default:
			bad = append(bad, fmt.Sprintf("%s: %v", r.Name, r.Err))
		}
	}
	t.Logf("connections opened before the backup's stall: %d carried on, %d ended cleanly, %d failed",
		len(oldRes)-ended-len(bad), ended, len(bad))
	assert.Empty(t, bad, "connections served unprotected must survive intact or end with a reset; "+
		"a hang, an early EOF or a wrong byte means a stale copy went live")
	// The protected connections came through the kill as in TestKillMain.
	s := workload.ComputeStall(freshRes, fault)
	t.Logf("kill -9 after the rejoin, connections opened since: %v", s)
	assertStall(t, s, stallBound)
}

// restartBackup starts a new backup process with the pair's configuration
// and waits until the main logs that it joined (Pair.WaitJoined's error:
// ErrStartRace if the new backup took the service over instead).
func restartBackup(t *testing.T, p *Pair) error {
	t.Helper()
	joined := p.Joins()
	proc, err := p.StartNode(true)
	require.NoError(t, err)
	p.Backup = proc
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.WaitJoined(ctx, joined)
}

// endedCleanly reports whether err is a connection ending its client can
// act on at once: a reset. (An EOF short of the bytes sent is not: the
// client would take it for an orderly end and lose data silently.)
func endedCleanly(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// TestBackupRestartThenKillMain is the rejoin's acceptance: the
// connections a main served while its backup was dead are protected again
// once a restarted backup joins (the echo server checkpoints after every
// echo, so each has a checkpoint to rejoin from), and then come through
// the main's kill -9 like connections the backup saw open: every byte
// echoed once and in order, no reset, the stall under stallBound.
func TestBackupRestartThenKillMain(t *testing.T) {
	p, w := startWarmPair(t, 0)

	require.NoError(t, p.Backup.Kill())
	waitOutput(t, p.Main, takeoverWait, LogUnprotected)
	<-p.Backup.Done()
	// Traffic while unprotected, so that nothing the backup saw before
	// its death would do.
	time.Sleep(200 * time.Millisecond)

	require.NoError(t, restartBackup(t, p), "the restarted backup did not join (backup log:\n%s)", p.Backup.Output())
	// Connections not taken when the backup joined (too much in flight
	// at that instant) are offered again at their next checkpoint, within
	// one echo.
	time.Sleep(warmup)
	for _, line := range strings.Split(p.Main.Output(), "\n") {
		if strings.Contains(line, LogProtected) || strings.Contains(line, "rejoined") {
			t.Logf("main: %s", line)
		}
	}

	fault := time.Now()
	require.NoError(t, p.Inject(Kill))
	waitOutput(t, p.Backup, takeoverWait, LogTookOver)
	time.Sleep(afterTakeover)
	rs := finish(t, w, drain)
	requireClean(t, rs, fault)
	requireNoResets(t, p)
	s := workload.ComputeStall(rs, fault)
	t.Logf("kill -9 after the backup's restart and the connections' rejoin: %v", s)
	assertStall(t, s, stallBound)
}
