package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/nettest"

	"github.com/zppratt/rfsis/link/pipe"
	"github.com/zppratt/rfsis/stack/tcp"
)

// pair is two stacks joined by an in-memory link: a server and a client.
type pair struct {
	srv, cli         *Stack
	srvDev, cliDev   *pipe.Device
	srvAddr, cliAddr netip.Addr
}

func newPair(t testing.TB) *pair {
	t.Helper()
	a, b := pipe.New(1500)
	p := &pair{srvDev: a, cliDev: b,
		srvAddr: netip.MustParseAddr("10.77.1.1"), cliAddr: netip.MustParseAddr("10.77.1.2")}
	mk := func(dev *pipe.Device, addr netip.Addr, mac byte) *Stack {
		cfg := Default()
		cfg.Addr = addr
		cfg.Prefix = netip.MustParsePrefix("10.77.1.0/24")
		cfg.MAC = net.HardwareAddr{0x02, 0, 0, 0, 0, mac}
		s, err := New(dev, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	}
	p.srv = mk(a, p.srvAddr, 1)
	p.cli = mk(b, p.cliAddr, 2)
	return p
}

func (p *pair) listen(t testing.TB, port uint16) *Listener {
	t.Helper()
	l, err := p.srv.ListenTCP(netip.AddrPortFrom(p.srvAddr, port), ListenConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// accept takes the next connection from l.
func (p *pair) accept(t testing.TB, l *Listener) *Conn {
	t.Helper()
	c, err := l.AcceptTCP()
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func (p *pair) dial(t testing.TB, port uint16) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, port))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestNetConn runs golang.org/x/net/nettest's conformance suite for
// net.Conn over two stacks.
func TestNetConn(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		p := newPair(t)
		l, err := p.srv.ListenTCP(netip.AddrPortFrom(p.srvAddr, 9000), ListenConfig{})
		if err != nil {
			return nil, nil, nil, err
		}
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			c, err := l.Accept()
			ch <- res{c, err}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c1, err = p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, 9000))
		if err != nil {
			return nil, nil, nil, err
		}
		r := <-ch
		if r.err != nil {
			return nil, nil, nil, r.err
		}
		stop = func() {
			c1.Close()
			r.c.Close()
			l.Close()
			p.cli.Close()
			p.srv.Close()
		}
		return c1, r.c, stop, nil
	})
}

func TestEchoManyConnections(t *testing.T) {
	p := newPair(t)
	l := p.listen(t, 7)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	const conns = 32
	var cw sync.WaitGroup
	for i := range conns {
		cw.Add(1)
		go func() {
			defer cw.Done()
			c := p.dial(t, 7)
			msg := bytes.Repeat([]byte{byte(i)}, 1000+i*100)
			for range 20 {
				_, err := c.Write(msg)
				assert.NoError(t, err)
				got := make([]byte, len(msg))
				_, err = io.ReadFull(c, got)
				assert.NoError(t, err)
				assert.Equal(t, msg, got)
			}
			assert.NoError(t, c.CloseWrite())
			n, err := c.Read(make([]byte, 1))
			assert.Equal(t, 0, n)
			assert.ErrorIs(t, err, io.EOF)
		}()
	}
	cw.Wait()
	l.Close()
	wg.Wait()
}

func TestBulkWithFrameLoss(t *testing.T) {
	p := newPair(t)
	var mu sync.Mutex
	n := 0
	drop := func([]byte) bool { // keep 97% of frames, deterministically
		mu.Lock()
		defer mu.Unlock()
		n++
		return n%33 != 0
	}
	p.srvDev.SetFilter(drop)
	p.cliDev.SetFilter(drop)
	l := p.listen(t, 9)
	data := make([]byte, 4<<20)
	rand.Read(data)
	got := make(chan []byte, 1)
	go func() {
		c, err := l.Accept()
		if !assert.NoError(t, err) {
			got <- nil
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		assert.NoError(t, err)
		got <- b
	}()
	c := p.dial(t, 9)
	_, err := c.Write(data)
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	select {
	case b := <-got:
		require.True(t, bytes.Equal(data, b), "received %d bytes, differing", len(b))
	case <-time.After(60 * time.Second):
		t.Fatal("bulk transfer under loss did not finish")
	}
}

func TestConnectionRefused(t *testing.T) {
	p := newPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, 4444))
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	assert.GreaterOrEqual(t, p.srv.TCPStats().ResetsSent, uint64(1))
}

func TestCloseWithUnreadDataResets(t *testing.T) {
	p := newPair(t)
	l := p.listen(t, 10)
	c := p.dial(t, 10)
	s, err := l.Accept()
	require.NoError(t, err)
	_, err = c.Write([]byte("unread"))
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, s.Close())
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 10))
	assert.ErrorIs(t, err, syscall.ECONNRESET)
}

func TestClosedConnErrors(t *testing.T) {
	p := newPair(t)
	l := p.listen(t, 11)
	c := p.dial(t, 11)
	require.NoError(t, c.Close())
	err := c.Close()
	assert.ErrorIs(t, err, net.ErrClosed)
	_, err = c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, net.ErrClosed)
	var op *net.OpError
	assert.True(t, errors.As(err, &op))
	_, err = c.Write([]byte("x"))
	assert.ErrorIs(t, err, net.ErrClosed)
	require.NoError(t, l.Close())
	_, err = l.Accept()
	assert.ErrorIs(t, err, net.ErrClosed)
	assert.NoError(t, l.Close(), "Close is idempotent")
}

func TestReadDeadline(t *testing.T) {
	p := newPair(t)
	p.listen(t, 12)
	c := p.dial(t, 12)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	_, err := c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
}

func TestSYNBacklogBounded(t *testing.T) {
	p := newPair(t)
	_, err := p.srv.ListenTCP(netip.AddrPortFrom(p.srvAddr, 13), ListenConfig{SYNBacklog: 2, Backlog: 1})
	require.NoError(t, err)
	// Drop the server's TCP (not its ARP): handshakes stay half-open.
	p.srvDev.SetFilter(func(f []byte) bool { return !(len(f) > 23 && f[12] == 0x08 && f[13] == 0 && f[23] == 6) })
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_, err := p.cli.DialTCP(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, 13))
		cancel()
		require.Error(t, err)
	}
	st := p.srv.TCPStats()
	assert.Equal(t, uint64(2), st.PassiveOpens)
	assert.GreaterOrEqual(t, st.SYNBacklogDrops, uint64(3))
}

// TestLastDataReceived: zero until the peer sends, then the time its
// bytes arrived, before the application reads them. A connection that
// ends without bytes from the peer never reports any.
func TestLastDataReceived(t *testing.T) {
	p := newPair(t)
	l := p.listen(t, 14)
	c := p.dial(t, 14)
	sc := p.accept(t, l)
	p.dial(t, 14)
	sc2 := p.accept(t, l)
	require.True(t, sc.LastDataReceived().IsZero(), "data reported before any arrived")

	before := time.Now()
	_, err := c.Write([]byte("hello"))
	require.NoError(t, err)
	waitFor(t, "the bytes to arrive", func() bool { return !sc.LastDataReceived().IsZero() })
	at := sc.LastDataReceived()
	assert.False(t, at.Before(before) || at.After(time.Now()), "arrival at %v", at)
	sc.ep.mu.Lock()
	unread := sc.ep.c.Readable()
	sc.ep.mu.Unlock()
	assert.Equal(t, 5, unread, "the bytes are still unread")
	require.NoError(t, sc.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(sc, make([]byte, 5))
	require.NoError(t, err)
	assert.Equal(t, at, sc.LastDataReceived(), "reading is not arriving")

	require.NoError(t, p.srv.Close()) // ends sc2, which never got a byte
	assert.True(t, sc2.LastDataReceived().IsZero(), "the connection's end reported as data")
}

// TestDialInvalidConfig: DialTCPConfig validates the configuration, as
// ListenTCP does.
func TestDialInvalidConfig(t *testing.T) {
	p := newPair(t)
	p.listen(t, 15)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.cli.DialTCPConfig(ctx, p.cliAddr, netip.AddrPortFrom(p.srvAddr, 15), tcp.Config{MSS: 50})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	require.ErrorIs(t, err, tcp.ErrInvalidConfig)
	var op *net.OpError
	assert.ErrorAs(t, err, &op)
	_, err = p.srv.ListenTCP(netip.AddrPortFrom(p.srvAddr, 16), ListenConfig{TCP: tcp.Config{MSS: 50}})
	assert.ErrorIs(t, err, tcp.ErrInvalidConfig)
}

// TestCloseReadWhileReading: CloseRead from one goroutine ends a Read
// blocked in another with io.EOF (and, under the race detector, shares no
// unguarded state with it).
func TestCloseReadWhileReading(t *testing.T) {
	p := newPair(t)
	l := p.listen(t, 17)
	c := p.dial(t, 17)
	p.accept(t, l)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		read <- err
	}()
	time.Sleep(50 * time.Millisecond) // the Read is waiting
	require.NoError(t, c.CloseRead())
	assert.ErrorIs(t, <-read, io.EOF)
}

// TestTCPSendErrorsCounted: a segment the IP layer refuses (here one too
// big for any frame) is counted, not silently taken for sent: a bug that
// made every such segment vanish went unseen for want of this counter.
func TestTCPSendErrorsCounted(t *testing.T) {
	p := newPair(t)
	id := tcp.FourTuple{LocalAddr: p.cliAddr, LocalPort: 40000, RemoteAddr: p.srvAddr, RemotePort: 9000}
	before := p.cli.TCPStats()
	p.cli.tcp.send(id, &tcp.Segment{SrcPort: 40000, DstPort: 9000, Flags: tcp.FlagACK, WScale: -1, Payload: make([]byte, 1<<17)}, 1460)
	after := p.cli.TCPStats()
	require.Equal(t, before.SendErrors+1, after.SendErrors)
	require.Equal(t, before.SegmentsOut, after.SegmentsOut, "not counted as sent")
}
