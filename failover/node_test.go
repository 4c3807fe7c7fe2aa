package failover_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis"
	"github.com/zppratt/rfsis/config"
	"github.com/zppratt/rfsis/failover"
	"github.com/zppratt/rfsis/link/pipe"
	"github.com/zppratt/rfsis/stack"
)

var (
	svcAddr    = netip.MustParseAddr("10.77.3.1")
	mainAddr   = netip.MustParseAddr("10.77.3.2")
	backupAddr = netip.MustParseAddr("10.77.3.3")
	clientAddr = netip.MustParseAddr("10.77.3.10")
)

func nodeConfig(backup bool) config.Config {
	c := config.Default()
	c.Backup = backup
	c.IPv4Addr = svcAddr
	c.MainAddr = mainAddr
	c.BackupAddr = backupAddr
	c.Port = 7
	c.Netmask = netip.MustParseAddr("255.255.255.0")
	c.HeartbeatTimer = 20 * time.Millisecond
	c.HeartbeatMisses = 3
	c.SyncKey = "a test key of sixteen bytes or more"
	c.MACAddr = nil
	return c
}

// listeningApp is an application that listens, publishes its node, then
// runs serve on the listener until ctx ends.
func listeningApp(serve func(ctx context.Context, l net.Listener) error) func(chan<- *rfsis.Node) rfsis.App {
	return func(nodes chan<- *rfsis.Node) rfsis.App {
		return func(ctx context.Context, n *rfsis.Node) error {
			l, err := n.Listen()
			if err != nil {
				return err
			}
			defer l.Close()
			nodes <- n
			return serve(ctx, l)
		}
	}
}

// echoApp is the application on both nodes.
var echoApp = listeningApp(func(ctx context.Context, l net.Listener) error {
	return rfsis.Serve(ctx, l, func(c net.Conn) { io.Copy(c, c) })
})

func testLogger(t testing.TB, name string) *slog.Logger {
	if os.Getenv("RFSIS_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
}

// hubWithClient is an in-memory hub of three ports with a client stack on
// the first; the main's and the backup's go on the others.
func hubWithClient(t testing.TB) (*pipe.Hub, []*pipe.Device, *stack.Stack) {
	hub, devs := pipe.NewHub(3, 1500)
	t.Cleanup(hub.Close)
	ccfg := stack.Default()
	ccfg.Addr = clientAddr
	ccfg.Prefix = netip.MustParsePrefix("10.77.3.0/24")
	ccfg.MAC = net.HardwareAddr{2, 0, 0, 0, 3, 10}
	client, err := stack.New(devs[0], ccfg)
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	return hub, devs, client
}

// runNode runs the main or the backup with app on dev until the test ends
// or the returned function kills it.
func runNode(t testing.TB, backup bool, app rfsis.App, dev *pipe.Device) (kill func()) {
	name := "main"
	if backup {
		name = "backup"
	}
	ctx, kill := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- rfsis.RunContext(ctx, nodeConfig(backup), app, rfsis.Options{Device: dev, Logger: testLogger(t, name)})
	}()
	t.Cleanup(func() {
		kill()
		<-done
	})
	return kill
}

// pairUp starts a main and a backup running echoApp and a client stack
// on an in-memory hub, and waits until the main is protected.
func pairUp(t testing.TB) (hub *pipe.Hub, client *stack.Stack, mainNode, backupNode *rfsis.Node, killMain func()) {
	return pairUpWith(t, echoApp, echoApp)
}

// pairUpWith is pairUp with the main's and the backup's applications.
func pairUpWith(t testing.TB, mainApp, backupApp func(chan<- *rfsis.Node) rfsis.App) (hub *pipe.Hub, client *stack.Stack, mainNode, backupNode *rfsis.Node, killMain func()) {
	hub, devs, client := hubWithClient(t)
	nodes := make(chan *rfsis.Node, 2)
	killMain = runNode(t, false, mainApp(nodes), devs[1])
	runNode(t, true, backupApp(nodes), devs[2])
	for range 2 {
		n := <-nodes
		if n.Config().Backup {
			backupNode = n
		} else {
			mainNode = n
		}
	}
	// The pair is up once the main is protected.
	require.Eventually(t, func() bool {
		r, _ := mainNode.Failover().Role()
		return r == failover.RoleMain
	}, 5*time.Second, 5*time.Millisecond, "main never saw its backup")

	return hub, client, mainNode, backupNode, killMain
}

func TestFailoverKeepsConnections(t *testing.T) {
	hub, client, _, backupNode, killMain := pairUp(t)
	const conns, msgs = 6, 150
	var echoed atomic.Int64
	errs := make(chan error, conns)
	for i := range conns {
		go func() {
			errs <- func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, err := client.DialTCP(ctx, clientAddr, netip.AddrPortFrom(svcAddr, 7))
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				for m := range msgs {
					msg := []byte(fmt.Sprintf("conn %d message %d %s\n", i, m, bytes.Repeat([]byte{'y'}, m*5)))
					if _, err := c.Write(msg); err != nil {
						return fmt.Errorf("conn %d write %d: %w", i, m, err)
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(c, got); err != nil {
						return fmt.Errorf("conn %d read %d: %w", i, m, err)
					}
					if !bytes.Equal(got, msg) {
						return fmt.Errorf("conn %d message %d: got %q", i, m, got)
					}
					echoed.Add(1)
					time.Sleep(2 * time.Millisecond)
				}
				return nil
			}()
		}()
	}
	require.Eventually(t, func() bool { return echoed.Load() > conns*msgs/3 }, 20*time.Second, time.Millisecond)
	// kill -9, as far as the LAN can tell: the main falls silent at once.
	hub.Cut(1, true)
	killMain()
	atKill := echoed.Load()
	for range conns {
		require.NoError(t, <-errs)
	}
	require.Greater(t, echoed.Load(), atKill)
	st := backupNode.Failover().Stats()
	require.Equal(t, uint64(1), st.Takeovers.Load(), "the backup took over once")
	require.GreaterOrEqual(t, st.StandbysAdopted.Load(), uint64(conns), "every connection was mirrored")
	require.Zero(t, backupNode.Stack().TCPStats().Diverged)
	r, _ := backupNode.Failover().Role()
	require.True(t, r.Serving(), "the backup serves after the takeover, as %v", r)
}

// TestBackupDropsOneConnection: a connection the backup cannot hold (here
// its application accepts nothing, so the accept queue fills) costs only
// that connection its protection: the main serves it unprotected, and the
// session, the heartbeats and every other copy carry on. Dropping the
// session instead would look like a dead main to the backup.
func TestBackupDropsOneConnection(t *testing.T) {
	const backlog = 128 // stack.ListenConfig's default
	notAccepting := listeningApp(func(ctx context.Context, _ net.Listener) error {
		<-ctx.Done()
		return nil
	})
	_, client, mainNode, backupNode, _ := pairUpWith(t, echoApp, notAccepting)
	const conns = backlog + 3
	cs := make([]*stack.Conn, conns)
	echo := func(i int, when string) {
		t.Helper()
		msg := []byte(fmt.Sprintf("connection %d %s\n", i, when))
		_, err := cs[i].Write(msg)
		require.NoError(t, err)
		got := make([]byte, len(msg))
		_, err = io.ReadFull(cs[i], got)
		require.NoError(t, err, "connection %d %s", i, when)
		require.Equal(t, msg, got)
	}
	for i := range conns {
		cs[i] = dialEcho(t, client)
		cs[i].SetDeadline(time.Now().Add(20 * time.Second))
		echo(i, "first")
	}
	mst, bst := mainNode.Failover().Stats(), backupNode.Failover().Stats()
	require.Eventually(t, func() bool { return mst.ConnsDropped.Load() == conns-backlog }, 5*time.Second, time.Millisecond,
		"the main learns of each dropped copy (%d)", mst.ConnsDropped.Load())
	require.Equal(t, uint64(conns-backlog), bst.ConnsDropped.Load())
	require.Equal(t, uint64(conns), bst.StandbysAdopted.Load(), "each copy was adopted at the SYN")
	require.Equal(t, uint64(1), bst.Sessions.Load(), "the session survived")
	require.Equal(t, backlog, mainNode.Failover().ProtectedConns())
	r, _ := mainNode.Failover().Role()
	require.Equal(t, failover.RoleMain, r)
	require.True(t, mainNode.Failover().PeerUp())
	require.Equal(t, uint64(backlog), backupNode.Stack().TCPStats().CurrentConnections-1,
		"no copy of a dropped connection is left in the backup's table (beyond the sync connection)")

	// The dropped connections run ungated: they go on when the backup is
	// gone too (a gate left in place would hold them for good).
	backupNode.Stack().Close()
	require.Eventually(t, func() bool { r, _ := mainNode.Failover().Role(); return r == failover.RoleStandalone },
		5*time.Second, time.Millisecond, "the main never noticed its backup gone")
	for i := range conns {
		echo(i, "alone")
	}
}

// dialEcho connects the client to the service, closed at the end of tb.
func dialEcho(tb testing.TB, client *stack.Stack) *stack.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.DialTCP(ctx, clientAddr, netip.AddrPortFrom(svcAddr, 7))
	require.NoError(tb, err)
	tb.Cleanup(func() { c.Close() })
	return c
}

// TestAbortReachesClient: a replicated connection the main's application
// aborts (it closes with bytes unread) resets the client once the backup
// knows: the RST, held by the gate, is not lost when the connection
// leaves the main's table.
func TestAbortReachesClient(t *testing.T) {
	abortApp := func(nodes chan<- *rfsis.Node) rfsis.App {
		return func(ctx context.Context, n *rfsis.Node) error {
			l, err := n.Listen()
			if err != nil {
				return err
			}
			nodes <- n
			return rfsis.Serve(ctx, l, func(c net.Conn) {
				// Read one byte, let the rest arrive, close with it unread.
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
				c.Close()
			})
		}
	}
	_, client, mainNode, _, _ := pairUpWith(t, abortApp, abortApp)
	c := dialEcho(t, client)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Write([]byte("abort with these bytes unread"))
	require.NoError(t, err)
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err)
	require.NotErrorIs(t, err, os.ErrDeadlineExceeded, "the client never heard of the abort")
	require.ErrorIs(t, err, syscall.ECONNRESET)
	r, _ := mainNode.Failover().Role()
	require.Equal(t, failover.RoleMain, r, "the pair stayed up")
}

// TestDataCompletesHandshake: when the client's ACK of the SYN-ACK is
// lost, its first data completes the handshake, and the main ships that
// data (IN) before the client's progress (ACKED). The backup must hold
// the bytes and keep the copy, not apply a progress it has not received.
func TestDataCompletesHandshake(t *testing.T) {
	hub, client, mainNode, backupNode, _ := pairUp(t)
	var dropped atomic.Bool
	hub.Port(1).SetFilter(func(f []byte) bool {
		// The first bare ACK from the client to the service port.
		if dropped.Load() || len(f) < 14+20+20 || f[12] != 0x08 || f[13] != 0x00 || f[14+9] != 6 {
			return true
		}
		ip := f[14:]
		tcpHdr := ip[int(ip[0]&0x0f)*4:]
		total := int(ip[2])<<8 | int(ip[3])
		payload := total - int(ip[0]&0x0f)*4 - int(tcpHdr[12]>>4)*4
		if tcpHdr[2] == 0 && tcpHdr[3] == 7 && tcpHdr[13] == 0x10 && payload == 0 && dropped.CompareAndSwap(false, true) {
			return false
		}
		return true
	})
	c := dialEcho(t, client)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("first bytes complete the handshake\n")
	_, err := c.Write(msg)
	require.NoError(t, err)
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, msg, got)
	require.True(t, dropped.Load(), "the filter dropped the client's ACK")
	require.Zero(t, backupNode.Failover().Stats().ConnsDropped.Load(), "the backup kept its copy")
	require.Equal(t, 1, mainNode.Failover().ProtectedConns())
}

// TestBackupAppliesBeforeTakingOver: the main opens its gates on the
// sync connection's TCP acknowledgements, so the bytes a client has seen
// acknowledged and echoed may still wait, unapplied, in the backup's
// receive buffer when the main dies. The backup must apply them before it
// takes over, however late its reader is: here the reader is stalled
// while the main releases an echo and dies, and the takeover waits for
// it.
func TestBackupAppliesBeforeTakingOver(t *testing.T) {
	hub, client, mainNode, backupNode, killMain := pairUp(t)
	c := dialEcho(t, client)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	echo := func(msg string) {
		t.Helper()
		_, err := c.Write([]byte(msg))
		require.NoError(t, err)
		got := make([]byte, len(msg))
		_, err = io.ReadFull(c, got)
		require.NoError(t, err, "echo of %q", msg)
		require.Equal(t, msg, string(got))
	}
	echo("before the stall\n")
	require.Eventually(t, func() bool { return mainNode.Failover().ProtectedConns() == 1 }, 5*time.Second, time.Millisecond)

	release := make(chan struct{})
	var stalled atomic.Bool
	fo := backupNode.Failover()
	fo.SetTestBeforeBatch(func() {
		stalled.Store(true)
		<-release
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	// The backup's stack acknowledges the IN and OUT of this echo at
	// once; its reader, stalled, applies neither.
	echo("while the backup's reader is stalled\n")
	require.Eventually(t, stalled.Load, 5*time.Second, time.Millisecond)

	hub.Cut(1, true)
	killMain()
	// Many detection windows (3 × 20 ms): no takeover while the reader
	// has not applied what arrived.
	time.Sleep(300 * time.Millisecond)
	require.Zero(t, fo.Stats().Takeovers.Load(), "took over with replication unapplied")

	fo.SetTestBeforeBatch(nil)
	close(release)
	require.Eventually(t, func() bool { return fo.Stats().Takeovers.Load() == 1 }, 5*time.Second, time.Millisecond)
	echo("after the takeover\n")
	require.Zero(t, backupNode.Stack().TCPStats().Diverged)
}

// TestLaggingStandbyIsDropped: the backup's application accepts a
// connection and never reads it, so the inbound bytes the main ships
// pile up on the backup. Past the bound the backup drops that copy (the
// connection goes on unprotected) instead of holding more: the client
// gets every byte echoed and the session, with its heartbeats, lives on.
func TestLaggingStandbyIsDropped(t *testing.T) {
	failover.SetMaxHeldIn(t, 256<<10)
	neverReads := listeningApp(func(ctx context.Context, l net.Listener) error {
		return rfsis.Serve(ctx, l, func(net.Conn) { <-ctx.Done() })
	})
	_, client, mainNode, backupNode, _ := pairUpWith(t, echoApp, neverReads)
	c := dialEcho(t, client)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, 4<<20) // the standby's buffer, then the bound, then more
	for i := range data {
		data[i] = byte(i * 5 / 3)
	}
	go c.Write(data)
	got := make([]byte, len(data))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "echo differs")
	mst, bst := mainNode.Failover().Stats(), backupNode.Failover().Stats()
	require.Eventually(t, func() bool { return mst.ConnsDropped.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the main learns that the backup dropped the lagging copy")
	require.Equal(t, uint64(1), bst.ConnsDropped.Load())
	require.Equal(t, uint64(1), bst.Sessions.Load(), "the session survived")
	require.Zero(t, mainNode.Failover().ProtectedConns())
	r, _ := mainNode.Failover().Role()
	require.Equal(t, failover.RoleMain, r)
}

// bulkEcho sends size bytes on c while reading the echo, and checks it.
// after, if set, runs once half the bytes are back.
func bulkEcho(t *testing.T, c *stack.Conn, size int, after func()) {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*11/7 + i>>13)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		wrote <- err
	}()
	got := make([]byte, len(data))
	_, err := io.ReadFull(c, got[:size/2])
	require.NoError(t, err)
	if after != nil {
		after()
	}
	_, err = io.ReadFull(c, got[size/2:])
	require.NoError(t, err)
	require.NoError(t, <-wrote)
	require.True(t, bytes.Equal(data, got), "the echo differs from what was sent")
}

// TestBulkOutputByChecksumSurvivesTakeover: a bulk echo's output goes to
// the backup as checksums that its own application's output is checked
// against (OUTSUM, CHECKED), and the client gets every byte once and in
// order through a kill of the main.
func TestBulkOutputByChecksumSurvivesTakeover(t *testing.T) {
	hub, client, mainNode, backupNode, killMain := pairUp(t)
	c := dialEcho(t, client)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	bulkEcho(t, c, 4<<20, func() {
		hub.Cut(1, true)
		killMain()
	})
	require.NotZero(t, mainNode.Failover().Stats().OutputSummed.Load(), "the output went as checksums")
	require.Equal(t, uint64(1), backupNode.Failover().Stats().Takeovers.Load())
	require.Zero(t, backupNode.Failover().Stats().ConnsDropped.Load())
	require.Zero(t, backupNode.Stack().TCPStats().Diverged)
}

// TestDivergentOutputByChecksum: the backup's application answers
// something else than the main's. The checksum does not match; the backup
// counts it, drops its copy and tells the main, which serves the client
// on, unprotected, with its own output.
func TestDivergentOutputByChecksum(t *testing.T) {
	shouting := listeningApp(func(ctx context.Context, l net.Listener) error {
		return rfsis.Serve(ctx, l, func(c net.Conn) {
			b := make([]byte, 32<<10)
			for {
				k, err := c.Read(b)
				if err != nil {
					return
				}
				for i := range b[:k] {
					b[i]++
				}
				if _, err := c.Write(b[:k]); err != nil {
					return
				}
			}
		})
	})
	_, client, mainNode, backupNode, _ := pairUpWith(t, echoApp, shouting)
	c := dialEcho(t, client)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	bulkEcho(t, c, 1<<20, nil)
	require.NotZero(t, backupNode.Stack().TCPStats().Diverged)
	require.Equal(t, uint64(1), backupNode.Failover().Stats().ConnsDropped.Load())
	require.Eventually(t, func() bool { return mainNode.Failover().Stats().ConnsDropped.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the main learns that the backup dropped its copy")
	require.Zero(t, mainNode.Failover().ProtectedConns())
}

// TestSilentStandbyDoesNotStallOutput: the backup's application reads and
// never answers, so the main's output shipped by checksum is never
// checked. The main gives up on the connection's protection after
// sumStall, and the client gets its echo.
func TestSilentStandbyDoesNotStallOutput(t *testing.T) {
	silent := listeningApp(func(ctx context.Context, l net.Listener) error {
		return rfsis.Serve(ctx, l, func(c net.Conn) { io.Copy(io.Discard, c) })
	})
	_, client, mainNode, _, _ := pairUpWith(t, echoApp, silent)
	c := dialEcho(t, client)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	bulkEcho(t, c, 256<<10, nil)
	t.Logf("echoed after %v", time.Since(start))
	require.Equal(t, uint64(1), mainNode.Failover().Stats().ConnsDropped.Load())
	require.Zero(t, mainNode.Failover().ProtectedConns())
}

// TestLinesBehindChecksum: a handler writes a long run of output, which
// goes as a checksum, then thousands of short lines, which go as bytes
// and queue on the backup behind the checksum while its handler is late.
// The queue holds them as one run: the copy is not dropped; and none of
// it reaches the client before the backup has checked the run.
func TestLinesBehindChecksum(t *testing.T) {
	lines := func(delay time.Duration) func(chan<- *rfsis.Node) rfsis.App {
		return listeningApp(func(ctx context.Context, l net.Listener) error {
			return rfsis.Serve(ctx, l, func(c net.Conn) {
				if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
					return
				}
				time.Sleep(delay)
				if _, err := c.Write(make([]byte, 64<<10)); err != nil {
					return
				}
				for range 5000 {
					if _, err := c.Write([]byte("line...\n")); err != nil {
						return
					}
				}
				io.Copy(io.Discard, c)
			})
		})
	}
	_, client, mainNode, backupNode, _ := pairUpWith(t, lines(0), lines(300*time.Millisecond))
	c := dialEcho(t, client)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	// Output goes by checksum once the backup's first CHECKED, sent when
	// it adopts the connection, has reached the main: give it time.
	time.Sleep(100 * time.Millisecond)
	_, err := c.Write([]byte{1})
	require.NoError(t, err)
	// Nothing reaches the client before the backup's handler has written
	// the checksummed run: not it, and not the lines the backup holds
	// behind it (their acknowledgement must not open the gate).
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the client got output the backup had not checked")
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err = io.ReadFull(c, make([]byte, 64<<10+5000*8))
	require.NoError(t, err)
	require.NotZero(t, mainNode.Failover().Stats().OutputSummed.Load())
	require.Zero(t, backupNode.Failover().Stats().ConnsDropped.Load())
	require.Equal(t, 1, mainNode.Failover().ProtectedConns())
}
