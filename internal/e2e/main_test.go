//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/internal/progtest"
)

// echoserverBin is the echo server built by TestMain; buildErr is why not.
var (
	echoserverBin string
	buildErr      error
)

func TestMain(m *testing.M) { progtest.Main(m, "RFSIS_E2E", &echoserverBin, &buildErr) }

func requireBinary(t *testing.T) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("echoserver not built: %v", buildErr)
	}
}

// short reports whether transfers should be scaled down.
func short() bool { return testing.Short() || os.Getenv("RFSIS_E2E_SHORT") != "" }

// readyLine is what the echo server logs once it answers on the service
// address.
const readyLine = "serving the service address"

// echoPort is the echo server's port in every test.
const echoPort = 8080

// backupHost is the host number used as backup_addr: inside the subnet and
// used by nobody (there is no backup node in these tests).
const backupHost = 50

// echoServer is a running cmd/echoserver in node0 of its own topology.
type echoServer struct {
	tp   *netns.Topology
	proc *netns.Process
	addr netip.AddrPort // service address and port
}

// writeConfig writes a config.json for tp into a temporary directory.
func writeConfig(t *testing.T, tp *netns.Topology) string {
	t.Helper()
	cfg := map[string]any{
		"backup":          false,
		"ipv4_addr":       tp.ServiceAddr().String(),
		"backup_addr":     tp.Addr(backupHost).String(),
		"port":            echoPort,
		"netmask":         "255.255.255.0",
		"heartbeat_timer": 1,
		"debug_mode":      os.Getenv("RFSIS_E2E_DEBUG") != "",
		"tap_device_name": netns.NodeTAP,
		"main_heartbeats": false,
		// The node-to-node channel is authenticated; nothing uses it
		// here (one node), but the configuration must be complete.
		"sync_key": "rfsis-e2e-test-shared-secret",
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, b, 0o644))
	return path
}

// startEchoServer builds a topology with one node and runs the echo server
// in it until the test ends. The netns cleanup kills the server and, if the
// test failed, logs the end of its output.
func startEchoServer(t *testing.T) *echoServer {
	t.Helper()
	tp := netns.New(t, netns.Options{Nodes: 1}) // skips when not root
	requireBinary(t)
	path := writeConfig(t, tp)
	t.Cleanup(func() {
		if t.Failed() {
			// Why the client dropped or retransmitted.
			tp.Client().LogCounters(t, "Tcp", "IpExt")
		}
	})
	// RFSIS_E2E_PCAP: the client's eth0 and node0's uplink, so a frame
	// the switch dropped shows in one file and not the other.
	pcap := os.Getenv("RFSIS_E2E_PCAP")
	tp.Client().Capture(t, netns.HostLink, pcap)
	tp.Node(0).Capture(t, netns.NodeUplink, pcap)
	p, err := tp.Node(0).Start(context.Background(), echoserverBin, "-config", path)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, p.WaitOutput(ctx, "echo server listening"))
	// The listener is up before the node may answer on the service
	// address: a main first makes sure no peer holds it (heartbeat_timer
	// x heartbeat_misses, 3 s here), then claims it.
	require.NoError(t, p.WaitOutput(ctx, readyLine))
	// A panic or (with RFSIS_E2E_RACE_SERVER) a data race in the server
	// fails the test even when the clients saw nothing wrong.
	t.Cleanup(func() { progtest.CheckOutput(t, "echoserver", p.Output()) })
	t.Logf("echoserver pid %d serving %s:%d in %s", p.Pid(), tp.ServiceAddr(), echoPort, tp.Node(0).Name())
	return &echoServer{tp: tp, proc: p, addr: netip.AddrPortFrom(tp.ServiceAddr(), echoPort)}
}

// requireNoPAWSDrops checks that the client kernel never discarded one of
// the stack's segments as an old duplicate because its timestamp went
// backwards (RFC 7323 PAWS): each such drop costs a retransmission, and a
// FIN or data lost that way at shutdown is never recovered.
func requireNoPAWSDrops(t *testing.T, s *echoServer) {
	t.Helper()
	n := s.tp.Client().MustKernelCounter(t, "TcpExtPAWSEstab")
	assert.Zero(t, n, "client kernel dropped %d segments of the stack as PAWS-old "+
		"(TSval not monotonic per connection on the wire)", n)
}

// dial connects from the client namespace's kernel to the echo server. The
// connection gets a deadline of d and is closed when the test ends.
func (s *echoServer) dial(d time.Duration) (*net.TCPConn, error) {
	return s.dialAddr(s.addr, d)
}

func (s *echoServer) dialAddr(addr netip.AddrPort, d time.Duration) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := s.tp.Client().Dial(ctx, "tcp4", addr.String())
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(time.Now().Add(d)); err != nil {
		c.Close()
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// mustDial is dial for the test goroutine.
func (s *echoServer) mustDial(t *testing.T, d time.Duration) *net.TCPConn {
	t.Helper()
	c, err := s.dial(d)
	require.NoError(t, err, "dial %s from the client namespace", s.addr)
	t.Cleanup(func() { c.Close() })
	return c
}

// newRand is a deterministic generator; seeds are logged so a failure can
// be replayed.
func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x5eed)) }

// newStream is a deterministic byte stream for bulk payloads.
func newStream(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

// echoMessages writes n messages of random sizes 1..maxSize on c and reads
// each one back before the next, checking it byte for byte. It returns the
// bytes sent.
func echoMessages(c net.Conn, r *rand.Rand, n, maxSize int) (int64, error) {
	msg := make([]byte, maxSize)
	got := make([]byte, maxSize)
	var total int64
	for i := range n {
		size := 1 + r.IntN(maxSize)
		for j := range size {
			msg[j] = byte(r.Uint32())
		}
		if _, err := c.Write(msg[:size]); err != nil {
			return total, fmt.Errorf("message %d/%d (%d bytes, %d sent before): write: %w", i, n, size, total, err)
		}
		if k, err := io.ReadFull(c, got[:size]); err != nil {
			return total, fmt.Errorf("message %d/%d (%d bytes, %d sent before): read %d of %d bytes: %w", i, n, size, total, k, size, err)
		}
		if off := firstDiff(msg[:size], got[:size]); off >= 0 {
			return total, fmt.Errorf("message %d/%d (%d bytes, %d sent before): echo differs at byte %d: sent %#02x, got %#02x",
				i, n, size, total, off, msg[off], got[off])
		}
		total += int64(size)
	}
	return total, nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// bulkEcho sends size bytes of a seeded stream on c while reading the echo
// concurrently and checking it byte for byte; after the last byte it
// half-closes (CloseWrite) and expects EOF right after the echo's last
// byte. chunk is the write and read size.
func bulkEcho(c *net.TCPConn, size int64, seed uint64, chunk int) error {
	werr := make(chan error, 1)
	go func() {
		src := newStream(seed)
		buf := make([]byte, chunk)
		var sent int64
		for sent < size {
			n := int(min(int64(chunk), size-sent))
			src.Read(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				werr <- fmt.Errorf("write at offset %d: %w", sent, err)
				return
			}
			sent += int64(n)
		}
		if err := c.CloseWrite(); err != nil {
			werr <- fmt.Errorf("CloseWrite after %d bytes: %w", sent, err)
			return
		}
		werr <- nil
	}()
	rerr := readStream(c, size, seed, chunk, 0)
	if rerr != nil {
		// Unblock the writer (it may be stuck on a full window) before
		// waiting for it.
		c.SetDeadline(time.Now())
	}
	return errors.Join(rerr, <-werr)
}

// readStream reads size bytes of the seeded stream from c, checking them,
// then expects EOF. pause, if set, is slept after every chunk (a slow
// reader).
func readStream(c net.Conn, size int64, seed uint64, chunk int, pause time.Duration) error {
	want := newStream(seed)
	exp := make([]byte, chunk)
	got := make([]byte, chunk)
	var recv int64
	for recv < size {
		n, err := c.Read(got[:min(int64(chunk), size-recv)])
		if n > 0 {
			want.Read(exp[:n])
			if off := firstDiff(exp[:n], got[:n]); off >= 0 {
				return fmt.Errorf("echo differs at stream offset %d: sent %#02x, got %#02x", recv+int64(off), exp[off], got[off])
			}
			recv += int64(n)
		}
		if err != nil {
			return fmt.Errorf("read after %d of %d echoed bytes: %w", recv, size, err)
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	var one [1]byte
	n, err := c.Read(one[:])
	if n != 0 || err != io.EOF {
		return fmt.Errorf("after all %d echoed bytes: read returned %d bytes, err %v; want EOF", size, n, err)
	}
	return nil
}

// runConcurrent runs f(i) for i in 0..n-1 on their own goroutines and
// returns the errors, labelled with i.
func runConcurrent(n int, f func(i int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(i); err != nil {
				errs[i] = fmt.Errorf("conn %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// mbps formats a throughput.
func mbps(bytes int64, d time.Duration) string {
	return fmt.Sprintf("%.1f MB/s", float64(bytes)/d.Seconds()/1e6)
}
