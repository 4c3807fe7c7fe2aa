package rfsis

import (
	"log/slog"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAsyncPreemptSetting(t *testing.T) {
	for _, c := range []struct {
		godebug string
		value   string
		set     bool
	}{
		{"", "", false},
		{"gctrace=1", "", false},
		{"asyncpreemptoff=1", "1", true},
		{"gctrace=1,asyncpreemptoff=1", "1", true},
		{"asyncpreemptoff=1,asyncpreemptoff=0", "0", true}, // the last wins
		{"xasyncpreemptoff=1", "", false},
	} {
		v, set := asyncPreemptSetting(c.godebug)
		assert.Equal(t, c.value, v, c.godebug)
		assert.Equal(t, c.set, set, c.godebug)
	}
	assert.Equal(t, []string{"A=1", "C=GODEBUG=x"}, withoutVar([]string{"A=1", "GODEBUG=x", "C=GODEBUG=x"}, "GODEBUG"))
}

// TestExecWithoutAsyncPreemption runs this test binary as a child that
// calls ExecWithoutAsyncPreemption and prints the GODEBUG it ends up with
// (see execHelper).
func TestExecWithoutAsyncPreemption(t *testing.T) {
	if os.Getenv("RFSIS_EXEC_HELPER") != "" {
		t.Skip("the helper's own run")
	}
	for _, c := range []struct{ before, after string }{
		{"", "asyncpreemptoff=1"},
		{"gctrace=0", "gctrace=0,asyncpreemptoff=1"},
		{"asyncpreemptoff=0", "asyncpreemptoff=0"}, // the operator's choice
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestExecHelper$", "-test.count=1")
		cmd.Env = append(withoutVar(os.Environ(), "GODEBUG"), "RFSIS_EXEC_HELPER=1")
		if c.before != "" {
			cmd.Env = append(cmd.Env, "GODEBUG="+c.before)
		}
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Contains(t, string(out), "GODEBUG=["+c.after+"] off="+strconv.FormatBool(strings.HasSuffix(c.after, "=1")), "GODEBUG %q before", c.before)
	}
}

// TestExecHelper is the child of TestExecWithoutAsyncPreemption.
func TestExecHelper(t *testing.T) {
	if os.Getenv("RFSIS_EXEC_HELPER") == "" {
		t.Skip("run by TestExecWithoutAsyncPreemption")
	}
	require.NoError(t, ExecWithoutAsyncPreemption())
	// Reached only when there was nothing to do: at the start, or after
	// the re-exec.
	os.Stdout.WriteString("GODEBUG=[" + os.Getenv("GODEBUG") + "] off=" + strconv.FormatBool(asyncPreemptOff()) + "\n")
}

func TestCollectLessOften(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })

	t.Setenv("GOGC", "150") // the operator's choice stands
	collectLessOften(log)
	assert.Equal(t, 100, debug.SetGCPercent(100))

	os.Unsetenv("GOGC") // t.Setenv restores it
	collectLessOften(log)
	assert.Equal(t, gcPercent, debug.SetGCPercent(100))
}
