package rfsis

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"syscall"
)

// Garbage collection and the pair's heartbeats.
//
// A node's garbage collections were its longest silences under load, and
// the peer cannot tell a silent node from a dead one. Two settings shorten
// and thin them out: async preemption off (below) and a GC percent of 400
// instead of 100 (gcPercent).
//
// Async preemption.
//
// Under load, a garbage collection on a node with async preemption on (Go's
// default) took 50-180 ms instead of 20-40 ms, and the node stopped
// answering for much of it: the collector spins preempting a goroutine with
// signals while that goroutine's thread waits for a CPU, and the node's
// stack goroutines wait behind both of them (BENCHMARKS.md, run I, has the
// profiles and the A/B runs). With a heartbeat window of 30-100 ms that is
// a false failover, or a main declaring its backup lost. With async
// preemption off, the same runs stayed under 55 ms and never broke.
//
// What is given up: a goroutine in a loop without function calls can no
// longer be preempted, so it delays a collection until it makes a call.
// The stack has no such loops; an application handler with one would.
//
// The runtime reads GODEBUG once, at start, and //go:debug does not accept
// this setting, hence the re-exec.

// ExecWithoutAsyncPreemption re-executes the running program with the same
// arguments and environment plus GODEBUG asyncpreemptoff=1, unless GODEBUG
// already says something about asyncpreemptoff (the operator's choice is
// kept). Call it first thing in main, before anything with side effects:
// the program starts again from the top, under the same process id. It
// returns only if there is nothing to do (nil) or the exec failed (an
// error; the program can go on with async preemption).
func ExecWithoutAsyncPreemption() error {
	godebug, _ := os.LookupEnv("GODEBUG")
	if _, set := asyncPreemptSetting(godebug); set {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("rfsis: re-exec without async preemption: %w", err)
	}
	if godebug != "" {
		godebug += ","
	}
	env := append(withoutVar(os.Environ(), "GODEBUG"), "GODEBUG="+godebug+"asyncpreemptoff=1")
	if err := syscall.Exec(exe, os.Args, env); err != nil {
		return fmt.Errorf("rfsis: re-exec %s without async preemption: %w", exe, err)
	}
	return nil // unreachable: a successful exec does not return
}

// asyncPreemptOff reports whether GODEBUG, as the runtime read it at
// start, turned async preemption off.
func asyncPreemptOff() bool {
	v, _ := asyncPreemptSetting(os.Getenv("GODEBUG"))
	return v == "1"
}

// asyncPreemptSetting returns the value godebug gives asyncpreemptoff and
// whether it gives one; the last setting wins, as at the runtime's start.
func asyncPreemptSetting(godebug string) (value string, set bool) {
	for field := range strings.SplitSeq(godebug, ",") {
		if k, v, ok := strings.Cut(field, "="); ok && k == "asyncpreemptoff" {
			value, set = v, true
		}
	}
	return value, set
}

// withoutVar returns env without the variable name.
func withoutVar(env []string, name string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k != name {
			out = append(out, kv)
		}
	}
	return out
}

// gcPercent is the GC percent Run sets unless GOGC is set: a collection
// when the heap has grown to five times what the last one left live,
// rather than twice. Most collections come while a node's heap grows with
// its load (its buffers), and each can silence it for tens of ms: in a
// saturating bulk echo with a 30 ms heartbeat window, the main declared
// its backup lost in 4 of 8 runs at 100 and 1 of 8 at 400 (BENCHMARKS.md,
// run I). The price is a heap up to five times the live data instead of
// twice.
const gcPercent = 400

// collectLessOften sets gcPercent unless the operator chose with GOGC.
func collectLessOften(log *slog.Logger) {
	if v, set := os.LookupEnv("GOGC"); set {
		log.Debug("GOGC set; keeping it", "GOGC", v)
		return
	}
	debug.SetGCPercent(gcPercent)
}
