//go:build linux

package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEchoTelnetLike is what `telnet <ipv4_addr> 8080` sees: type a line,
// get it back. It also pings the service address.
func TestEchoTelnetLike(t *testing.T) {
	s := startEchoServer(t)

	t.Run("line", func(t *testing.T) {
		c := s.mustDial(t, 10*time.Second)
		for _, line := range []string{"hello\r\n", "second line, a bit longer than the first\r\n", "\r\n"} {
			_, err := io.WriteString(c, line)
			require.NoError(t, err)
			got := make([]byte, len(line))
			_, err = io.ReadFull(c, got)
			require.NoError(t, err, "reading the echo of %q", line)
			assert.Equal(t, line, string(got))
		}
		// Quitting telnet closes the connection: the server's side ends
		// with a FIN, so a read sees EOF.
		require.NoError(t, c.CloseWrite())
		n, err := c.Read(make([]byte, 1))
		assert.Equal(t, 0, n)
		assert.ErrorIs(t, err, io.EOF)
	})

	t.Run("ping", func(t *testing.T) {
		pingService(t, s)
	})
}

// pingService sends ICMP echo requests from the client namespace through a
// raw socket (so iputils-ping is not needed) and expects matching replies.
func pingService(t *testing.T, s *echoServer) {
	pc, err := s.tp.Client().ListenPacket("ip4:icmp", s.tp.ClientAddr().String())
	require.NoError(t, err, "raw ICMP socket in the client namespace")
	defer pc.Close()
	dst := &net.IPAddr{IP: s.tp.ServiceAddr().AsSlice()}
	id := uint16(os.Getpid())
	payload := []byte("rfsis e2e ping payload 0123456789")
	for seq := uint16(1); seq <= 3; seq++ {
		req := icmpEcho(8, id, seq, payload)
		start := time.Now()
		_, err := pc.WriteTo(req, dst)
		require.NoError(t, err)
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(3*time.Second)))
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			require.NoError(t, err, "waiting for the echo reply to seq %d", seq)
			m := buf[:n]
			// Raw sockets see every ICMP message, our own requests
			// included; keep only our reply.
			if n < 8 || m[0] != 0 || binary.BigEndian.Uint16(m[4:]) != id || binary.BigEndian.Uint16(m[6:]) != seq {
				continue
			}
			assert.Equal(t, s.tp.ServiceAddr().String(), from.String())
			assert.Equal(t, uint16(0), icmpChecksum(m), "reply checksum")
			assert.Equal(t, payload, m[8:], "reply payload")
			t.Logf("ping seq %d: reply from %s in %v", seq, from, time.Since(start))
			break
		}
	}
}

func icmpEcho(typ byte, id, seq uint16, payload []byte) []byte {
	m := make([]byte, 8+len(payload))
	m[0] = typ
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[8:], payload)
	binary.BigEndian.PutUint16(m[2:], icmpChecksum(m))
	return m
}

// icmpChecksum is the Internet checksum; over a message with a correct
// checksum field it is 0.
func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// TestEchoManyConcurrent runs 100 connections at once, each echoing 200
// messages of random sizes (1..4000 bytes) and checking every byte.
func TestEchoManyConcurrent(t *testing.T) {
	s := startEchoServer(t)
	conns, msgs := 100, 200
	if short() {
		conns, msgs = 20, 50
	}
	const maxSize = 4000
	seed := uint64(time.Now().UnixNano())
	t.Logf("%d connections x %d messages of 1..%d bytes, seed %d", conns, msgs, maxSize, seed)

	// Dial them all first, so that all are open at once.
	cs := make([]*net.TCPConn, conns)
	err := runConcurrent(conns, func(i int) error {
		c, err := s.dial(90 * time.Second)
		cs[i] = c
		return err
	})
	for _, c := range cs {
		if c != nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	require.NoError(t, err, "dialing %d connections", conns)

	start := time.Now()
	total := make([]int64, conns)
	err = runConcurrent(conns, func(i int) error {
		n, err := echoMessages(cs[i], newRand(seed+uint64(i)), msgs, maxSize)
		total[i] = n
		if err != nil {
			return err
		}
		// Close cleanly: FIN from us, FIN back, EOF.
		if err := cs[i].CloseWrite(); err != nil {
			return err
		}
		if n, err := cs[i].Read(make([]byte, 1)); n != 0 || err != io.EOF {
			return fmt.Errorf("after the last echo: read %d bytes, err %v; want EOF", n, err)
		}
		return nil
	})
	elapsed := time.Since(start)
	var sum int64
	for _, n := range total {
		sum += n
	}
	t.Logf("echoed %d bytes each way in %v (%s each way)", sum, elapsed.Round(time.Millisecond), mbps(sum, elapsed))
	require.NoError(t, err)
	requireNoPAWSDrops(t, s)
}

// TestBulkBothWays sends 64 MiB on one connection while reading the echo
// concurrently, checks it byte for byte, then half-closes and expects EOF.
func TestBulkBothWays(t *testing.T) {
	s := startEchoServer(t)
	size := int64(64 << 20)
	if short() {
		size = 8 << 20
	}
	seed := uint64(time.Now().UnixNano())
	c := s.mustDial(t, 120*time.Second)
	start := time.Now()
	err := bulkEcho(c, size, seed, 64<<10)
	elapsed := time.Since(start)
	require.NoError(t, err, "bulk echo of %d bytes, seed %d", size, seed)
	t.Logf("%d MiB each way in %v: %s each way", size>>20, elapsed.Round(time.Millisecond), mbps(size, elapsed))
	requireNoPAWSDrops(t, s)
}

// TestBulkSlowReader: the client reads the echo slowly, so the server's
// send window closes (zero window, window probes) and its receive side
// backs up too; the data must still arrive intact and the connection end
// cleanly.
func TestBulkSlowReader(t *testing.T) {
	s := startEchoServer(t)
	runSlowReader(t, s)
	requireNoPAWSDrops(t, s)
}

func runSlowReader(t *testing.T, s *echoServer) {
	const size = 4 << 20
	seed := uint64(time.Now().UnixNano())
	c := s.mustDial(t, 60*time.Second)
	// A small receive buffer makes the client's window close quickly.
	require.NoError(t, c.SetReadBuffer(32<<10))

	werr := make(chan error, 1)
	go func() {
		src := newStream(seed)
		buf := make([]byte, 16<<10)
		for sent := 0; sent < size; sent += len(buf) {
			src.Read(buf)
			if _, err := c.Write(buf); err != nil {
				werr <- fmt.Errorf("write at offset %d: %w", sent, err)
				return
			}
		}
		werr <- c.CloseWrite()
	}()
	stopSampling := sampleSS(t, s)
	defer stopSampling()
	start := time.Now()
	// 8 KiB every 2 ms is at most 4 MB/s: well below what the path can do.
	rerr := readStream(c, size, seed, 8<<10, 2*time.Millisecond)
	if rerr != nil {
		c.SetDeadline(time.Now())
	}
	require.NoError(t, errors.Join(rerr, <-werr), "seed %d", seed)
	t.Logf("%d MiB through a slow reader in %v", size>>20, time.Since(start).Round(time.Millisecond))
}

// TestRefusedPort: a SYN to a port nobody listens on is answered with a
// reset, so the kernel client gets ECONNREFUSED at once (not a timeout).
func TestRefusedPort(t *testing.T) {
	s := startEchoServer(t)
	for _, port := range []uint16{echoPort + 1, 22, 65535} {
		start := time.Now()
		c, err := s.dialAddr(netip.AddrPortFrom(s.tp.ServiceAddr(), port), 5*time.Second)
		if c != nil {
			c.Close()
		}
		elapsed := time.Since(start)
		require.Error(t, err, "port %d: connected, but nothing listens there", port)
		assert.ErrorIs(t, err, syscall.ECONNREFUSED, "port %d", port)
		assert.Less(t, elapsed, 2*time.Second, "port %d: refusal took %v", port, elapsed)
		t.Logf("port %d: %v after %v", port, err, elapsed.Round(time.Microsecond))
	}
	// The listening port still works afterwards.
	c := s.mustDial(t, 10*time.Second)
	_, err := io.WriteString(c, "still here\n")
	require.NoError(t, err)
	got := make([]byte, len("still here\n"))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	assert.Equal(t, "still here\n", string(got))
}
