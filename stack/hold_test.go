package stack

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHoldSilencesAddress: while the server's address is held, a client
// that already knows the server's MAC gets no answer at all to its SYNs:
// no SYN-ACK from a listening port, no RST from a closed one, nothing
// else either. Once released, the client's retransmitted SYN completes.
func TestHoldSilencesAddress(t *testing.T) {
	p := newPair(t)
	p.listen(t, 20)
	p.listen(t, 21)
	p.dial(t, 21) // the client learns the server's MAC
	p.srv.Hold(p.srvAddr, 0)
	require.Error(t, p.srv.SendGratuitousARP(p.srvAddr, 1, 0))
	sent, arpReplies := p.srvDev.Stats().Sent, p.srv.Stats().ARPRepliesOut
	for _, port := range []uint16{20, 22} { // a listener, and none
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, port))
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded, "port %d: a held address must not answer", port)
	}
	assert.NotZero(t, p.srv.Stats().HeldDrops, "the SYNs never reached the server")
	assert.Equal(t, sent, p.srvDev.Stats().Sent, "frames left the held server")
	assert.Equal(t, arpReplies, p.srv.Stats().ARPRepliesOut, "ARP reply for a held address")

	p.srv.Unhold()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, 20))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
}

func TestHoldExemptsSyncPort(t *testing.T) {
	p := newPair(t)
	p.listen(t, 7001)
	p.listen(t, 7002)
	// Held addresses answer no ARP: the peer must know our MAC already,
	// as a backup does from its sync connection. (This is why failover
	// wants main_addr distinct from the service address.)
	p.dial(t, 7001).Close()
	p.srv.Hold(p.srvAddr, 7001)
	c := p.dial(t, 7001) // the exempt port still answers
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, 7002))
	require.Error(t, err)
	assert.NotZero(t, p.srv.Stats().HeldDrops)
}
