package stack

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/stack/tcp"
	"github.com/zppratt/rfsis/stack/wire"
)

// recvTCPWithin returns the next TCP segment the stack sends, failing if
// none comes within d.
func (h *harness) recvTCPWithin(d time.Duration) tcp.Segment {
	h.t.Helper()
	select {
	case f := <-h.rx:
		e, err := wire.ParseEthernet(f)
		require.NoError(h.t, err)
		require.Equal(h.t, wire.EtherTypeIPv4, e.EtherType())
		p, err := wire.ParseIPv4(e.Payload())
		require.NoError(h.t, err)
		require.Equal(h.t, wire.ProtoTCP, p.Protocol())
		var seg tcp.Segment
		require.NoError(h.t, tcp.Parse(p.Payload(), &seg))
		return seg
	case <-time.After(d):
		h.t.Fatalf("no TCP segment from the stack within %v", d)
		return tcp.Segment{}
	}
}

// sendTCP sends seg from the peer to the stack.
func (h *harness) sendTCP(seg *tcp.Segment) {
	h.t.Helper()
	b := make([]byte, tcp.HeaderLen+seg.OptionsLen()+len(seg.Payload))
	ph := wire.PseudoHeaderChecksum(peerIP, stackIP, wire.ProtoTCP, uint16(len(b)))
	seg.Marshal(b, ph, wire.Checksum)
	h.send(ethFrame(stackMAC, peerMAC, wire.EtherTypeIPv4,
		ipv4Packet(wire.IPv4Header{Protocol: wire.ProtoTCP, Src: peerIP, Dst: stackIP}, b)))
}

// TestSetNoDelayPushesHeldSegment: a small segment Nagle holds (an earlier
// one is unacknowledged) goes out as soon as the application sets
// TCP_NODELAY, as on Linux, not at the next ACK or the RTO. The peer is
// scripted and never acknowledges the data, and the RTO is long, so only
// SetNoDelay can release it.
func TestSetNoDelayPushesHeldSegment(t *testing.T) {
	h := newHarness(t, testConfig(t), nil)
	h.introduce()
	const port = 5001
	type dialed struct {
		c   *Conn
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// No retransmission within the test: it would move data too.
		cfg := tcp.Config{InitialRTO: time.Minute, MinRTO: time.Minute}
		c, err := h.s.DialTCPConfig(ctx, stackIP, netip.AddrPortFrom(peerIP, port), cfg)
		ch <- dialed{c, err}
	}()
	syn := h.recvTCPWithin(5 * time.Second)
	require.Equal(t, tcp.FlagSYN, syn.Flags)
	h.sendTCP(&tcp.Segment{SrcPort: port, DstPort: syn.SrcPort, Seq: 5000, Ack: syn.Seq + 1,
		Flags: tcp.FlagSYN | tcp.FlagACK, Window: 65535, MSS: 1460, WScale: -1})
	ack := h.recvTCPWithin(5 * time.Second)
	require.Equal(t, tcp.FlagACK, ack.Flags)
	d := <-ch
	require.NoError(t, d.err)
	c := d.c
	t.Cleanup(func() { c.Close() })

	_, err := c.Write([]byte("a"))
	require.NoError(t, err)
	a := h.recvTCPWithin(5 * time.Second)
	require.Equal(t, "a", string(a.Payload))
	_, err = c.Write([]byte("b"))
	require.NoError(t, err)
	h.quiet(50 * time.Millisecond) // Nagle: "a" is unacknowledged

	require.NoError(t, c.SetNoDelay(true))
	b := h.recvTCPWithin(2 * time.Second)
	require.Equal(t, "b", string(b.Payload))
	require.Equal(t, a.Seq+1, b.Seq)
}
