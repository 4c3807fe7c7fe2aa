package stack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/link/tap"
)

// TestKernelEchoWithOffloads runs the stack on a TAP with segmentation and
// checksum offloads, inside a namespace of its own, and echoes 32 MiB for
// a kernel TCP client there: the bytes must come back intact, and both
// directions must really have used super-frames.
func TestKernelEchoWithOffloads(t *testing.T) {
	for _, offload := range []bool{true, false} {
		name := "offload"
		if !offload {
			name = "plain"
		}
		t.Run(name, func(t *testing.T) { kernelEcho(t, offload) })
	}
}

func kernelEcho(t *testing.T, offload bool) {
	ns := netns.NewNS(t)
	var dev *tap.Device
	require.NoError(t, ns.Do(func() error {
		var err error
		dev, err = tap.Open(tap.Config{Name: "tap0", Offload: offload})
		return err
	}))
	_, err := ns.Run("ip", "addr", "add", "10.77.251.1/24", "dev", "tap0")
	require.NoError(t, err)
	cfg := Default()
	cfg.Addr = netip.MustParseAddr("10.77.251.2")
	cfg.Prefix = netip.MustParsePrefix("10.77.251.0/24")
	cfg.MAC = net.HardwareAddr{0x02, 0x77, 0, 0, 0, 2}
	st, err := New(dev, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	l, err := st.ListenTCP(netip.AddrPortFrom(cfg.Addr, 80), ListenConfig{})
	require.NoError(t, err)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp", "10.77.251.2:80")
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(60*time.Second)))

	const size = 32 << 20
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	require.NoError(t, err)
	require.NoError(t, <-werr)
	require.Equal(t, int64(size), n)
	want := sha256.Sum256(data)
	assert.True(t, bytes.Equal(want[:], h.Sum(nil)), "echoed bytes differ")

	stats := st.Stats()
	in := stats.BytesIn / max(stats.FramesIn, 1)
	out := stats.BytesOut / max(stats.FramesOut, 1)
	t.Logf("offload=%v: %d frames in (avg %d B), %d frames out (avg %d B)", offload, stats.FramesIn, in, stats.FramesOut, out)
	if offload {
		assert.Greater(t, out, uint64(8000), "outbound super-frames expected")
		assert.Greater(t, in, uint64(4000), "inbound super-frames expected")
	} else {
		assert.LessOrEqual(t, in, uint64(1514))
		assert.LessOrEqual(t, out, uint64(1514))
	}
}
