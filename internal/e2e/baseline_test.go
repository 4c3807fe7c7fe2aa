//go:build linux

package e2e

import (
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/netns"
)

// TestUnderLossKernelBaseline runs the TestUnderLoss workload against a
// kernel TCP echo server in the node namespace instead of the stack: the
// reference for the stack's numbers. Opt-in: RFSIS_E2E_BASELINE=1.
func TestUnderLossKernelBaseline(t *testing.T) {
	if os.Getenv("RFSIS_E2E_BASELINE") == "" {
		t.Skip("set RFSIS_E2E_BASELINE=1 to measure kernel-to-kernel TCP under the same loss")
	}
	for _, tc := range []struct {
		name    string
		percent float64
	}{{"loss1pct", 1}, {"loss5pct", 5}} {
		t.Run(tc.name, func(t *testing.T) {
			netns.RequireTools(t, "nft")
			s := kernelEchoServer(t)
			stop := sampleSS(t, s)
			defer stop()
			runLossWorkload(t, s, tc.percent)
		})
	}
}

// TestBulkSlowReaderKernelBaseline is TestBulkSlowReader against a kernel
// echo server. Opt-in: RFSIS_E2E_BASELINE=1.
func TestBulkSlowReaderKernelBaseline(t *testing.T) {
	if os.Getenv("RFSIS_E2E_BASELINE") == "" {
		t.Skip("set RFSIS_E2E_BASELINE=1 to run the slow reader against kernel TCP")
	}
	runSlowReader(t, kernelEchoServer(t))
}

// kernelEchoServer runs a kernel TCP echo server (in the test process,
// listening inside node0's namespace on its kernel address).
func kernelEchoServer(t *testing.T) *echoServer {
	tp := netns.New(t, netns.Options{Nodes: 1, NodeKernelAddrs: true})
	addr := netip.AddrPortFrom(tp.NodeKernelAddr(0), echoPort)
	l, err := tp.Node(0).Listen("tcp4", addr.String())
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return &echoServer{tp: tp, addr: addr}
}

// sampleSS logs `ss -tino` (the client kernel's view of its connections:
// windows, retransmissions, SACK) when RFSIS_E2E_SS is set: every
// RFSIS_E2E_SS if it is a duration ("500ms"), else every 5 seconds.
// (-o matters: the ss of iproute2 6.1 omits "ts sack" without it.)
func sampleSS(t *testing.T, s *echoServer) func() {
	v := os.Getenv("RFSIS_E2E_SS")
	if v == "" {
		return func() {}
	}
	every, err := time.ParseDuration(v)
	if err != nil {
		every = 5 * time.Second
	}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tk.C:
				out, _ := s.tp.Client().Run("ss", "-tino", "dst", s.addr.Addr().String(), "dport", "=", ":8080")
				lines := strings.Split(out, "\n")
				if len(lines) > 8 {
					lines = lines[:8]
				}
				t.Logf("ss:\n%s", strings.Join(lines, "\n"))
			}
		}
	}()
	return func() { close(quit); <-done }
}
