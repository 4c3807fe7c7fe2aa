//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
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

// Machine is what a report says about the machine: its CPUs, kernel and
// Go, and its other load just before the run.
type Machine struct {
	CPUs          int
	Model, Kernel string // CPUModel, KernelRelease
	Go            string // runtime.Version
	// Busy is how many CPUs were busy, on average, during the second
	// before the run (MachineCPU); negative if unknown.
	Busy float64
	// LoadAvg is the 1, 5 and 15 minute load averages, or "?".
	LoadAvg string
}

// MeasureMachine describes the machine and measures its other load: it
// takes one second, since any other load skews what a benchmark measures.
func MeasureMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Model: CPUModel(), Kernel: KernelRelease(), Go: runtime.Version(), Busy: -1, LoadAvg: "?"}
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(la)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	if m0, err := MachineCPU(); err == nil {
		t0 := time.Now()
		time.Sleep(time.Second)
		if m1, err := MachineCPU(); err == nil {
			m.Busy = (m1 - m0).Seconds() / time.Since(t0).Seconds()
		}
	}
	return m
}

func (m Machine) String() string {
	busy := "?"
	if m.Busy >= 0 {
		busy = fmt.Sprintf("%.2f", m.Busy)
	}
	return fmt.Sprintf("%d CPUs (%s), Linux %s, %s; before the run %s cores busy, load average %s",
		m.CPUs, m.Model, m.Kernel, m.Go, busy, m.LoadAvg)
}

// KernelRelease is the running kernel's release, or "?".
func KernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// VCSInfo names the code measured: the git revision of the working
// directory, and whether tracked files had uncommitted changes. It only
// reads: GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing the index.
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
