package failover_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis"
	"github.com/zppratt/rfsis/stack"
)

// counterMsg is the size of a request of counterApp.
const counterMsg = 16

// counterApp answers each 16-byte request with the number of requests it
// answered before on that connection (8 bytes) and the request. Its state
// is that count: it checkpoints it after every third answer (so a
// backup that joins has input to replay and output to regenerate since
// the last checkpoint, most of the time), and a handler
// resumed from a checkpoint starts from it. A resumed handler that
// started from zero, or that re-read or skipped input, would answer with
// the wrong count (and the backup would count a divergence).
var counterApp = listeningApp(func(ctx context.Context, l net.Listener) error {
	return rfsis.Serve(ctx, l, func(c net.Conn) {
		var count uint64
		if st, ok := rfsis.Resumed(c); ok {
			count = binary.BigEndian.Uint64(st)
		}
		req := make([]byte, counterMsg)
		for {
			// ReadFull never reads past the request, so after the answer
			// the handler has acted on every byte it read.
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			if _, err := c.Write(append(binary.BigEndian.AppendUint64(nil, count), req...)); err != nil {
				return
			}
			count++
			if count%3 != 0 {
				continue // checkpoints need not follow every answer
			}
			if err := rfsis.Checkpoint(c, binary.BigEndian.AppendUint64(nil, count)); err != nil {
				return
			}
		}
	})
})

// TestRejoinFromCheckpoint: connections the main served before its
// backup existed are protected once the backup joins, from their
// handlers' checkpoints, and come through the main's death with their
// state: the backup's handlers resume the count where the main's were.
func TestRejoinFromCheckpoint(t *testing.T) {
	hub, devs, client := hubWithClient(t)
	nodes := make(chan *rfsis.Node, 2)
	killMain := runNode(t, false, counterApp(nodes), devs[1])
	mainNode := <-nodes
	// Alone, the main serves (unprotected) once its detection window has
	// passed without a peer.
	require.Eventually(t, func() bool {
		r, _ := mainNode.Failover().Role()
		return r.Serving()
	}, 5*time.Second, 5*time.Millisecond, "the lone main never served")

	const conns = 4
	type session struct {
		c    *stack.Conn
		next uint64 // the count the next answer must carry
	}
	sessions := make([]*session, conns)
	for i := range sessions {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := client.DialTCP(ctx, clientAddr, netip.AddrPortFrom(svcAddr, 7))
		cancel()
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		sessions[i] = &session{c: c}
	}
	exchange := func(rounds int) {
		t.Helper()
		for range rounds {
			for i, s := range sessions {
				req := fmt.Appendf(nil, "c%d-r%011d", i, s.next)[:counterMsg]
				_, err := s.c.Write(req)
				require.NoError(t, err)
				got := make([]byte, 8+counterMsg)
				_, err = io.ReadFull(s.c, got)
				require.NoError(t, err, "connection %d, request %d", i, s.next)
				require.Equal(t, s.next, binary.BigEndian.Uint64(got), "connection %d: the count", i)
				require.True(t, bytes.Equal(req, got[8:]), "connection %d: echoed %q, sent %q", i, got[8:], req)
				s.next++
			}
		}
	}
	exchange(20) // unprotected: no backup yet; 20 answers, the last 2 after a checkpoint

	runNode(t, true, counterApp(nodes), devs[2])
	backupNode := <-nodes
	require.Eventually(t, func() bool {
		return mainNode.Failover().Stats().ConnsRejoined.Load() >= conns
	}, 5*time.Second, 5*time.Millisecond, "the open connections did not rejoin")
	exchange(20) // protected from their checkpoints
	require.Eventually(t, func() bool {
		return mainNode.Failover().ProtectedConns() == conns
	}, 5*time.Second, 5*time.Millisecond, "protected connections")

	// kill -9, as far as the LAN can tell.
	hub.Cut(1, true)
	killMain()
	exchange(20) // through the takeover, the count going on

	st := backupNode.Failover().Stats()
	require.Equal(t, uint64(1), st.Takeovers.Load(), "the backup took over once")
	require.GreaterOrEqual(t, st.StandbysAdopted.Load(), uint64(conns))
	require.Zero(t, backupNode.Stack().TCPStats().Diverged, "the resumed handlers answered as the main's did")
	r, _ := backupNode.Failover().Role()
	require.True(t, r.Serving(), "the backup serves after the takeover, as %v", r)
}
