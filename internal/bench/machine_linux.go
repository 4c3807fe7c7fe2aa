//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// What a benchmark report says about the machine and the code it ran on,
// shared by the benchmarks here and internal/failbench.

// clockTick is USER_HZ, the unit of /proc CPU times (100 on every Linux
// architecture Go supports).
const clockTick = 10 * time.Millisecond

// CPUModel is the first "model name" of /proc/cpuinfo, or "?".
func CPUModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, found := strings.Cut(sc.Text(), ":"); found && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// KernelRelease is the running kernel's release, or "?".
func KernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// VCSInfo is the commit the benchmark ran on, and whether the working tree
// had changes. It only reads: GIT_OPTIONAL_LOCKS=0 keeps `git status` from
// refreshing the index.
// VCSInfo names the code measured: the git revision of the working
// directory, and whether tracked files had uncommitted changes.
func VCSInfo() string {
	git := func(args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0")
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	rev, err := git("rev-parse", "--short=12", "HEAD")
	if err != nil {
		return "unknown revision"
	}
	st, err := git("status", "--porcelain", "--untracked-files=no")
	if err != nil {
		return rev
	}
	if st != "" {
		return fmt.Sprintf("%s + uncommitted changes in %d tracked files", rev, len(strings.Split(st, "\n")))
	}
	return rev
}

// MachineCPU is the CPU time all CPUs spent busy (everything but idle and
// iowait, softirq included) since boot, from /proc/stat.
func MachineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 6 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q: %w", s, err)
		}
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is already counted in user and nice.
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		busy += v
	}
	return time.Duration(busy) * clockTick, nil
}
