//go:build linux

package takeover

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/workload"
)

// The client traffic is package workload's; these are its test-side
// helpers: where the connections come from (the client namespace) and
// go to (the service address), and failures as assertions.

// dialer dials the pair's service from the client namespace.
func dialer(p *Pair) workload.DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		return p.TP.Client().Dial(ctx, "tcp4", p.Service())
	}
}

// startWorkload dials every connection from the client namespace (all
// must connect: the pair is up) and starts their traffic; the test's
// cleanup aborts it, so a test that fails half-way leaves nothing running.
func startWorkload(t *testing.T, p *Pair, cfg workload.Config) *workload.Workload {
	t.Helper()
	w, err := workload.Start(context.Background(), dialer(p), cfg)
	require.NoError(t, err, "starting the workload against %s", p.Service())
	t.Cleanup(w.Abort)
	return w
}

// finish stops the workload's writers and returns every connection's
// result; connections still busy after drain are cut and fail the test.
func finish(t *testing.T, w *workload.Workload, drain time.Duration) []*workload.ConnResult {
	t.Helper()
	rs, err := w.Finish(drain)
	if err != nil {
		t.Errorf("workload: %v", err)
	}
	return rs
}

// requireClean asserts that every connection echoed every byte exactly
// once and in order and ended with a clean EOF, and that each got echoes
// after the fault (so it really lived through it).
func requireClean(t *testing.T, rs []*workload.ConnResult, fault time.Time) {
	t.Helper()
	total, err := workload.Verify(rs, fault)
	require.NoError(t, err)
	t.Logf("workload: %d connections, %d bytes echoed and verified", len(rs), total)
}

// assertStall asserts the trial's stall is under bound.
func assertStall(t *testing.T, s workload.Stall, bound time.Duration) {
	t.Helper()
	assert.LessOrEqual(t, s.Max, bound, "client-visible stall over %v: %v", bound, s)
}
