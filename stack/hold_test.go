package stack

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHoldSilencesAddress: while the server's address is held, a client's
// connection attempt gets no answer at all (no SYN-ACK, no RST, no ARP);
// once released, the client's retransmitted SYN completes.
func TestHoldSilencesAddress(t *testing.T) {
	p := newPair(t)
	p.listen(t, 20)
	p.srv.Hold(p.srvAddr, 0)
	require.Error(t, p.srv.SendGratuitousARP(p.srvAddr, 1, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, 20))
	cancel()
	require.Error(t, err, "a held address must not answer")
	assert.Zero(t, p.srv.Stats().ARPRepliesOut, "no ARP reply for a held address")
	assert.Zero(t, p.srv.TCPStats().SegmentsOut)

	p.srv.Unhold()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, 20))
	require.NoError(t, err)
	c.Close()
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
