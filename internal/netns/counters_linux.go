package netns

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// Kernel counters are per network namespace, and a test's namespaces are
// new, so they count the test's own traffic only: what the kernel side
// (the client, say) saw of the stack under test. They come from nstat
// (iproute2).

// KernelCounter returns one of the namespace kernel's counters by its
// nstat name, such as "TcpExtPAWSEstab" or "TcpRetransSegs".
func (ns *NS) KernelCounter(name string) (uint64, error) {
	out, err := ns.Run("nstat", "-asz", name)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == name {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("netns: nstat line %q: %w", line, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("netns: nstat in %s has no counter %s", ns.Role(), name)
}

// KernelCounters returns the namespace kernel's non-zero counters whose
// names start with one of prefixes (all when none), one per line, for a
// failing test's log.
func (ns *NS) KernelCounters(prefixes ...string) (string, error) {
	out, err := ns.Run("nstat", "-as")
	if err != nil {
		return "", err
	}
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				keep = append(keep, line)
				break
			}
		}
		if len(prefixes) == 0 && line != "" {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n"), nil
}

// MustKernelCounter is KernelCounter for the test goroutine: a failure to
// read the counter is fatal to the test.
func (ns *NS) MustKernelCounter(t testing.TB, name string) uint64 {
	t.Helper()
	n, err := ns.KernelCounter(name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return n
}

// LogCounters logs the namespace kernel's non-zero counters whose names
// start with one of prefixes (KernelCounters), for a failing test: what
// the kernel retransmitted, reset or dropped.
func (ns *NS) LogCounters(t testing.TB, prefixes ...string) {
	t.Helper()
	out, err := ns.KernelCounters(prefixes...)
	if err != nil {
		t.Logf("nstat in %s: %v", ns.Role(), err)
		return
	}
	t.Logf("%s kernel counters (nstat -as):\n%s", ns.Role(), out)
}
