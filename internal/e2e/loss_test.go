//go:build linux

package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/netns"
)

// TestUnderLoss runs an echo workload (20 connections of random messages
// plus one bulk connection, all at once) while the switch drops a random
// share of the frames it forwards, both directions. Everything must arrive
// byte-exact: loss may only cost time.
//
// The switch drops whole frames as the bridge forwards them, and with TSO
// and GRO on the TAP and the veths a frame is often a TCP super-segment (up
// to 64 KiB), so a drop can take out a whole flight at once: harsher than
// per-MSS loss. The kernel-to-kernel numbers on the same path are
// TestUnderLossKernelBaseline (RFSIS_E2E_BASELINE=1).
func TestUnderLoss(t *testing.T) {
	for _, tc := range []struct {
		name    string
		percent float64
	}{
		{"loss1pct", 1},
		{"loss5pct", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			netns.RequireTools(t, "nft")
			s := startEchoServer(t)
			runLossWorkload(t, s, tc.percent)
		})
	}
}

func runLossWorkload(t *testing.T, s *echoServer, percent float64) {
	conns, msgs := 20, 100
	bulk := int64(16 << 20)
	if short() {
		conns, msgs, bulk = 5, 30, 2<<20
	}
	const maxSize = 4000
	const timeout = 3 * time.Minute
	seed := uint64(time.Now().UnixNano())
	t.Logf("%v%% loss: %d connections x %d messages of 1..%d bytes + %d MiB bulk, seed %d",
		percent, conns, msgs, maxSize, bulk>>20, seed)

	// Connect before the loss starts: dialing under loss is a test of the
	// client's SYN retransmission (1 s, 3 s, ...), not of the stack.
	bulkConn := s.mustDial(t, timeout)
	cs := make([]*net.TCPConn, conns)
	for i := range cs {
		cs[i] = s.mustDial(t, timeout)
	}

	require.NoError(t, s.tp.SetLoss(percent))
	t.Cleanup(func() { s.tp.ClearLoss() })

	stopSampling := sampleSS(t, s)
	defer stopSampling()
	start := time.Now()
	var bulkErr error
	var bulkElapsed time.Duration
	bulkDone := make(chan struct{})
	go func() {
		defer close(bulkDone)
		bulkErr = bulkEcho(bulkConn, bulk, seed, 64<<10)
		bulkElapsed = time.Since(start)
	}()
	total := make([]int64, conns)
	msgErr := runConcurrent(conns, func(i int) error {
		n, err := echoMessages(cs[i], newRand(seed+uint64(i)+1), msgs, maxSize)
		total[i] = n
		return err
	})
	msgElapsed := time.Since(start)
	<-bulkDone

	var sum int64
	for _, n := range total {
		sum += n
	}
	t.Logf("messages: %d bytes each way in %v (%s); bulk: %d MiB each way in %v (%s)",
		sum, msgElapsed.Round(time.Millisecond), mbps(sum, msgElapsed),
		bulk>>20, bulkElapsed.Round(time.Millisecond), mbps(bulk, bulkElapsed))
	if s.proc != nil {
		t.Logf("client kernel: %d segments from the stack dropped as PAWS-old, %d retransmitted by the client",
			s.tp.Client().MustKernelCounter(t, "TcpExtPAWSEstab"), s.tp.Client().MustKernelCounter(t, "TcpRetransSegs"))
	}
	require.NoError(t, msgErr, "message connections under %v%% loss, seed %d", percent, seed)
	require.NoError(t, bulkErr, "bulk connection under %v%% loss, seed %d", percent, seed)
}
