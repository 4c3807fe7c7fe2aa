//go:build linux

package bench

import (
	"context"
	"fmt"
	"os"
	"testing"
)

// kernelServerEnv, when set to an IPv4 address, turns the test binary into
// the kernel-TCP baseline server (see KernelServer): BenchmarkVsKernel
// re-executes itself that way inside the node namespace, so the baseline is
// a separate process whose CPU time can be measured like the RFSIS one's.
const kernelServerEnv = "RFSIS_BENCH_KERNEL_SERVER"

// runCtx is cancelled at the first SIGINT or SIGTERM (CancelOnInterrupt):
// the benchmark then stops measuring and returns, so the netns cleanups
// delete its namespaces and kill its servers.
var runCtx = context.Background()

func TestMain(m *testing.M) {
	if addr := os.Getenv(kernelServerEnv); addr != "" {
		if err := KernelServer(addr); err != nil {
			fmt.Fprintln(os.Stderr, "kernel server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	runCtx = CancelOnInterrupt("bench")
	os.Exit(m.Run())
}
