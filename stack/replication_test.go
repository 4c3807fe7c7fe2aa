package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/link/pipe"
	"github.com/zppratt/rfsis/stack/tcp"
)

// syncHook replicates synchronously from the main's stack to standby
// connections on the backup's: a stand-in for package failover.
type syncHook struct {
	t        *testing.T
	backup   *Stack
	l        *Listener
	diverged atomic.Int64
	mu       sync.Mutex
	standbys []*Standby
	// sumMin, when set, has output runs of at least that many bytes
	// shipped by checksum (WrittenSum) instead of as bytes.
	sumMin int
}

type syncState struct {
	sb      *Standby
	in, out tcp.Seq // shipped ends
	buf     []byte
}

func (h *syncHook) Opened(r *Replica, snap tcp.Snapshot) {
	sb, err := h.backup.AdoptStandby(snap, h.l)
	if err != nil {
		h.t.Errorf("adopt: %v", err)
		return
	}
	h.attach(r, sb)
}

// attach starts replicating r to its standby sb, from inside a callback.
func (h *syncHook) attach(r *Replica, sb *Standby) {
	h.mu.Lock()
	h.standbys = append(h.standbys, sb)
	h.mu.Unlock()
	r.Value.Store(&syncState{sb: sb, in: r.ReceivedEndLocked(), out: r.WrittenEndLocked()})
	// The standby's application caught up with checksummed output: as
	// far as it is checked, the main may send.
	sb.OnChecked(func(end tcp.Seq, err error) {
		if err != nil {
			h.diverged.Add(1)
			return
		}
		r.UpdateGate(func(g *tcp.Gate) { g.SendLimit = sb.WrittenEnd() })
	})
	r.SetGateLocked(tcp.Gate{Enabled: true, OpenOK: true, AckLimit: sb.ReceivedEnd(), SendLimit: sb.WrittenEnd()})
}

func (h *syncHook) Changed(r *Replica) {
	st, _ := r.Value.Load().(*syncState)
	if st == nil {
		return
	}
	var err error
	st.buf, err = r.AppendReceivedLocked(st.buf[:0], st.in)
	require.NoError(h.t, err)
	if len(st.buf) > 0 {
		n, err := st.sb.Receive(st.in, st.buf)
		require.NoError(h.t, err)
		st.in = st.in.Add(uint32(n))
	}
	st.buf, err = r.AppendWrittenLocked(st.buf[:0], st.out, math.MaxInt)
	require.NoError(h.t, err)
	if h.sumMin > 0 && len(st.buf) >= h.sumMin {
		for len(st.buf) > 0 {
			k := min(len(st.buf), MaxSummed)
			sum, err := r.WrittenChecksumLocked(st.out, k)
			require.NoError(h.t, err)
			require.Equal(h.t, crc32.Checksum(st.buf[:k], crc32.MakeTable(crc32.Castagnoli)), sum)
			if _, _, err := st.sb.WrittenSum(st.out, k, sum); errors.Is(err, ErrDiverged) {
				h.diverged.Add(1)
			} else {
				require.NoError(h.t, err)
			}
			st.out = st.out.Add(uint32(k))
			st.buf = st.buf[k:]
		}
	}
	if len(st.buf) > 0 {
		n, err := st.sb.Written(st.out, st.buf)
		if errors.Is(err, ErrDiverged) {
			h.diverged.Add(1)
		} else {
			require.NoError(h.t, err)
		}
		st.out = st.out.Add(uint32(n))
	}
	p := r.ProgressLocked()
	require.NoError(h.t, st.sb.Progress(p))
	ack := st.sb.ReceivedEnd()
	if p.PeerFin && ack == p.ReceivedEnd {
		ack++
	}
	r.SetGateLocked(tcp.Gate{Enabled: true, OpenOK: true, AckLimit: ack, SendLimit: st.sb.WrittenEnd(), CloseOK: p.FinQueued && st.sb.WrittenEnd() == p.WrittenEnd})
}

func (h *syncHook) Gone(*Replica) {}

func echoServe(l *Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// trio is a client, a main and a backup on an in-memory hub, in
// 10.77.<n>.0/24, with listeners on the service address's port 7 on both
// nodes and the main replicating to the backup through a syncHook.
type trio struct {
	h                    *pipe.Hub
	svc                  netip.Addr
	client, main, backup *Stack
	ml, bl               *Listener
	hook                 *syncHook
}

func newTrio(t *testing.T, n byte) *trio {
	h, devs := pipe.NewHub(3, 1500)
	t.Cleanup(h.Close)
	svc := netip.MustParseAddr(fmt.Sprintf("10.77.%d.1", n))
	mk := func(dev *pipe.Device, addr string, mac byte) *Stack {
		cfg := Default()
		cfg.Addr = netip.MustParseAddr(addr)
		cfg.Prefix = netip.MustParsePrefix(fmt.Sprintf("10.77.%d.0/24", n))
		cfg.MAC = net.HardwareAddr{0x02, 0, 0, 0, n, mac}
		s, err := New(dev, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	}
	client := mk(devs[0], fmt.Sprintf("10.77.%d.10", n), 10)
	main := mk(devs[1], fmt.Sprintf("10.77.%d.2", n), 2)
	backup := mk(devs[2], fmt.Sprintf("10.77.%d.3", n), 3)
	require.NoError(t, main.AddAddress(svc))
	ml, err := main.ListenTCP(netip.AddrPortFrom(svc, 7), ListenConfig{})
	require.NoError(t, err)
	bl, err := backup.ListenTCP(netip.AddrPortFrom(svc, 7), ListenConfig{})
	require.NoError(t, err)
	hook := &syncHook{t: t, backup: backup, l: bl}
	main.SetReplicationHook(hook)
	return &trio{h: h, svc: svc, client: client, main: main, backup: backup, ml: ml, bl: bl, hook: hook}
}

func TestReplicatedEchoSurvivesMainLoss(t *testing.T) {
	tr := newTrio(t, 2)
	h, svc, client, main, backup, ml, bl, hook := tr.h, tr.svc, tr.client, tr.main, tr.backup, tr.ml, tr.bl, tr.hook
	go echoServe(ml)
	go echoServe(bl)

	const conns, msgs = 8, 200
	var progress atomic.Int64
	errs := make(chan error, conns)
	for i := range conns {
		go func() {
			errs <- func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, err := client.DialTCP(ctx, netip.MustParseAddr("10.77.2.10"), netip.AddrPortFrom(svc, 7))
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				for m := range msgs {
					msg := []byte(fmt.Sprintf("conn %d message %d %s\n", i, m, bytes.Repeat([]byte{'x'}, m*7)))
					if _, err := c.Write(msg); err != nil {
						return fmt.Errorf("write %d: %w", m, err)
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(c, got); err != nil {
						return fmt.Errorf("read %d: %w", m, err)
					}
					if !bytes.Equal(got, msg) {
						return fmt.Errorf("message %d: got %q", m, got)
					}
					progress.Add(1)
					time.Sleep(time.Millisecond)
				}
				return nil
			}()
		}()
	}
	// Mid-stream: pull the main's cable and kill it; the backup claims
	// the service address and turns its standby connections live.
	require.Eventually(t, func() bool { return progress.Load() > conns*msgs/3 }, 20*time.Second, time.Millisecond)
	h.Cut(1, true)
	main.Close()
	killed := progress.Load()
	require.NoError(t, backup.AddAddress(svc))
	require.NoError(t, backup.SendGratuitousARP(svc, 1, 0))
	hook.mu.Lock()
	for _, sb := range hook.standbys {
		require.NoError(t, sb.GoLive(sb.WrittenEnd(), 5))
	}
	hook.mu.Unlock()
	for range conns {
		require.NoError(t, <-errs)
	}
	require.Greater(t, progress.Load(), killed, "echoes continued after the takeover")
	require.Zero(t, hook.diverged.Load(), "hot standby output diverged")
	require.Zero(t, backup.TCPStats().Diverged, "hot standby writes diverged")
}

// TestStandbyAppCloseIsHeld: the backup's own application closes its copy
// (as an echo handler does at the client's FIN) before the main's output
// is all shipped: the main's later bytes must still apply, and the held
// close goes out only after them, at takeover.
func TestStandbyAppCloseIsHeld(t *testing.T) {
	tr := newTrio(t, 4)
	h, svc, client, main, backup, ml, bl, hook := tr.h, tr.svc, tr.client, tr.main, tr.backup, tr.ml, tr.bl, tr.hook

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.DialTCP(ctx, netip.MustParseAddr("10.77.4.10"), netip.AddrPortFrom(svc, 7))
	require.NoError(t, err)
	defer c.Close()
	cm, err := ml.Accept()
	require.NoError(t, err)
	cb, err := bl.Accept()
	require.NoError(t, err)
	require.NoError(t, cb.Close()) // the backup's application is done first

	// The main's application writes after that: it must replicate.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	first := []byte("written after the standby's application closed\n")
	_, err = cm.Write(first)
	require.NoError(t, err)
	got := make([]byte, len(first))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, first, got)

	// Takeover: the standby's held close follows the main's bytes.
	h.Cut(1, true)
	main.Close()
	require.NoError(t, backup.AddAddress(svc))
	require.NoError(t, backup.SendGratuitousARP(svc, 1, 0))
	hook.mu.Lock()
	require.Len(t, hook.standbys, 1)
	sb := hook.standbys[0]
	hook.mu.Unlock()
	require.NoError(t, sb.GoLive(sb.WrittenEnd(), 5))
	n, err := c.Read(make([]byte, 10))
	require.Zero(t, n)
	require.ErrorIs(t, err, io.EOF, "the held close reaches the client as a FIN")
}

// standbyEP returns the endpoint of the trio's only standby connection.
func (tr *trio) standbyEP(t *testing.T) *endpoint {
	t.Helper()
	tr.hook.mu.Lock()
	defer tr.hook.mu.Unlock()
	require.Len(t, tr.hook.standbys, 1)
	return tr.hook.standbys[0].ep
}

// takeover cuts the main off and turns the backup's standbys live.
func (tr *trio) takeover(t *testing.T) {
	t.Helper()
	tr.h.Cut(1, true)
	tr.main.Close()
	require.NoError(t, tr.backup.AddAddress(tr.svc))
	require.NoError(t, tr.backup.SendGratuitousARP(tr.svc, 1, 0))
	tr.hook.mu.Lock()
	defer tr.hook.mu.Unlock()
	for _, sb := range tr.hook.standbys {
		require.NoError(t, sb.GoLive(sb.WrittenEnd(), 5))
	}
}

// dialAccept connects the trio's client to the service and accepts the
// connection on both nodes.
func (tr *trio) dialAccept(t *testing.T, n byte) (c *Conn, cm, cb net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := tr.client.DialTCP(ctx, netip.MustParseAddr(fmt.Sprintf("10.77.%d.10", n)), netip.AddrPortFrom(tr.svc, 7))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	cm, err = tr.ml.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { cm.Close() })
	cb, err = tr.bl.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { cb.Close() })
	return c, cm, cb
}

// TestStandbyWritesAheadOfMain: the backup's application writes more than
// a send buffer holds before the main's application writes anything. Its
// writes wait for room as a live connection's do, and after the takeover
// the client gets every byte, in order, then the held close.
func TestStandbyWritesAheadOfMain(t *testing.T) {
	tr := newTrio(t, 5)
	c, _, cb := tr.dialAccept(t, 5)
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	tail := []byte("written last")
	wrote := make(chan error, 1)
	go func() {
		_, err := cb.Write(data)
		if err == nil {
			_, err = cb.Write(tail)
		}
		if err == nil {
			err = cb.(*Conn).CloseWrite()
		}
		wrote <- err
	}()
	ep := tr.standbyEP(t)
	held := func() int {
		ep.mu.Lock()
		defer ep.mu.Unlock()
		return ep.held.Len()
	}
	waitFor(t, "the standby's application to write", func() bool { return held() >= 4<<20 })
	time.Sleep(50 * time.Millisecond) // it would go on if nothing held it back
	ep.mu.Lock()
	room := ep.c.Writable()
	ep.mu.Unlock()
	require.LessOrEqual(t, held(), room, "the standby's held writes outgrew its send buffer")
	select {
	case err := <-wrote:
		t.Fatalf("the standby's write of %d bytes returned (%v) with no room for them", len(data), err)
	default:
	}

	tr.takeover(t)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.NoError(t, <-wrote)
	want := append(bytes.Clone(data), tail...)
	require.Equal(t, len(want), len(got), "bytes the client got")
	require.True(t, bytes.Equal(want, got), "the client's bytes differ from what the application wrote")
	require.Zero(t, tr.backup.TCPStats().Diverged)
}

// TestStandbyComparesAfterClientAcked: the client has acknowledged the
// start of the main's output, which the standby then no longer holds,
// when the backup's application writes the same place: what the standby
// still holds is compared, and a difference counts as divergence.
func TestStandbyComparesAfterClientAcked(t *testing.T) {
	tr := newTrio(t, 6)
	c, cm, cb := tr.dialAccept(t, 6)
	ep := tr.standbyEP(t)
	standby := func() (written tcp.Seq, unsent int) {
		ep.mu.Lock()
		defer ep.mu.Unlock()
		return ep.c.WrittenEnd(), ep.c.Unsent()
	}
	start, _ := standby()

	first := bytes.Repeat([]byte{'a'}, 1000)
	_, err := cm.Write(first)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(c, make([]byte, len(first)))
	require.NoError(t, err)
	waitFor(t, "the client's acknowledgement to reach the standby", func() bool {
		end, unsent := standby()
		return end == start.Add(1000) && unsent == 0
	})

	// The client's acknowledgements of the rest are lost.
	tr.h.Cut(0, true)
	second := bytes.Repeat([]byte{'b'}, 1000)
	_, err = cm.Write(second)
	require.NoError(t, err)
	waitFor(t, "the main's second write to reach the standby", func() bool {
		end, unsent := standby()
		return end == start.Add(2000) && unsent == 1000
	})

	mine := append(bytes.Clone(first), bytes.Repeat([]byte{'c'}, 1000)...)
	_, err = cb.Write(mine)
	require.NoError(t, err)
	require.EqualValues(t, 1, tr.backup.TCPStats().Diverged, "the standby's different bytes were not noticed")
	tr.h.Cut(0, false)
}

// TestGoneLiveStandbyDrainsHeld: a standby goes live holding more of its
// application's bytes than the send buffer takes at once (held here by
// hand: backpressure keeps a real application from it). The rest follows
// as the client acknowledges, and the application's close, or its later
// write and then its close, come after it.
func TestGoneLiveStandbyDrainsHeld(t *testing.T) {
	for i, tail := range [][]byte{nil, []byte("written after the takeover")} {
		t.Run(fmt.Sprintf("tail=%d", len(tail)), func(t *testing.T) {
			n := byte(7 + i)
			tr := newTrio(t, n)
			c, _, cb := tr.dialAccept(t, n)
			ep := tr.standbyEP(t)
			ep.mu.Lock()
			held := make([]byte, ep.c.Writable()+2<<20)
			for i := range held {
				held[i] = byte(i * 3 / 7)
			}
			ep.held.Reset()
			ep.held.Append(held)
			ep.appNext = ep.appNext.Add(uint32(len(held)))
			ep.mu.Unlock()

			tr.takeover(t)
			ep.mu.Lock()
			require.NotZero(t, ep.held.Len(), "everything fitted: the test tests nothing")
			ep.mu.Unlock()
			wrote := make(chan error, 1)
			go func() {
				var err error
				if tail != nil {
					_, err = cb.Write(tail)
				}
				if err == nil {
					err = cb.(*Conn).CloseWrite()
				}
				wrote <- err
			}()
			require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
			got, err := io.ReadAll(c)
			require.NoError(t, err)
			require.NoError(t, <-wrote)
			want := append(held, tail...)
			require.Equal(t, len(want), len(got), "bytes the client got")
			require.True(t, bytes.Equal(want, got), "the client's bytes differ from what the application wrote")
		})
	}
}

// synReceivedSnapshot is the opening record of a connection to port 7 of
// addr from a client's port, still in its handshake, as a main ships it.
func synReceivedSnapshot(addr netip.Addr, port uint16) tcp.Snapshot {
	id := tcp.FourTuple{LocalAddr: addr, LocalPort: 7, RemoteAddr: netip.MustParseAddr("10.77.1.10"), RemotePort: port}
	syn := &tcp.Segment{SrcPort: port, DstPort: 7, Seq: 1000, Flags: tcp.FlagSYN, Window: 65535, MSS: 1460, WScale: -1}
	return tcp.NewPassive(tcp.DefaultConfig(), id, 5000, syn, time.Now()).Snapshot()
}

// TestAdoptStandbyTakesSYNBacklog: a standby still in its handshake takes
// a place in the listener's SYN backlog; with none left, or the listener
// closed, it is not adopted, and nothing stays behind in the table.
func TestAdoptStandbyTakesSYNBacklog(t *testing.T) {
	p := newPair(t)
	s, addr := p.srv, p.srvAddr // the backup
	l, err := s.ListenTCP(netip.AddrPortFrom(addr, 7), ListenConfig{SYNBacklog: 1})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	halfOpen := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.halfOpen
	}

	sb, err := s.AdoptStandby(synReceivedSnapshot(addr, 40001), l)
	require.NoError(t, err)
	require.Equal(t, 1, halfOpen())
	_, err = s.AdoptStandby(synReceivedSnapshot(addr, 40002), l)
	require.ErrorIs(t, err, ErrSYNBacklogFull)
	require.Equal(t, 1, halfOpen())
	require.EqualValues(t, 1, s.TCPStats().CurrentConnections, "the refused standby stayed in the table")

	sb.Drop()
	require.Equal(t, 0, halfOpen(), "the dropped standby kept its place")
	require.NoError(t, l.Close())
	_, err = s.AdoptStandby(synReceivedSnapshot(addr, 40003), l)
	require.ErrorIs(t, err, ErrSYNBacklogFull, "adopted for a closed listener")
	require.Zero(t, s.TCPStats().CurrentConnections)
}

// TestStandbyOnRead: the standby's OnRead callback runs after each read
// of its application that took bytes (and may then deliver more, which
// it could not do under the connection's lock), and stops with
// OnRead(nil).
func TestStandbyOnRead(t *testing.T) {
	tr := newTrio(t, 6)
	c, _, cb := tr.dialAccept(t, 6)
	tr.hook.mu.Lock()
	require.Len(t, tr.hook.standbys, 1)
	sb := tr.hook.standbys[0]
	tr.hook.mu.Unlock()
	var calls atomic.Int32
	sb.OnRead(func() {
		calls.Add(1)
		sb.ReceivedEnd() // takes the connection's lock: must not be held
	})
	_, err := c.Write([]byte("hello"))
	require.NoError(t, err)
	require.NoError(t, cb.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 64)
	n, err := cb.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf[:n]))
	require.Equal(t, int32(1), calls.Load(), "called once for the read that took bytes")

	require.NoError(t, cb.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err = cb.Read(buf)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Equal(t, int32(1), calls.Load(), "not called for a read that took nothing")

	sb.OnRead(nil)
	_, err = c.Write([]byte("again"))
	require.NoError(t, err)
	require.NoError(t, cb.SetReadDeadline(time.Now().Add(5*time.Second)))
	n, err = cb.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "again", string(buf[:n]))
	require.Equal(t, int32(1), calls.Load(), "no calls after OnRead(nil)")
}

// TestTakeoverWithLaggingStandby: a standby whose application has not yet
// written what the main's did when it goes live must not send those bytes
// again when its application gets to them. (Found in review.)
func TestTakeoverWithLaggingStandby(t *testing.T) {
	tr := newTrio(t, 64)
	c, cm, cb := tr.dialAccept(t, 64)
	buf := make([]byte, 2)
	_, err := c.Write([]byte("ab"))
	require.NoError(t, err)
	_, err = io.ReadFull(cm, buf)
	require.NoError(t, err)
	_, err = cm.Write(buf)
	require.NoError(t, err)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	tr.takeover(t)
	// The backup's application only now reads and answers "ab".
	_, err = io.ReadFull(cb, buf)
	require.NoError(t, err)
	_, err = cb.Write(buf)
	require.NoError(t, err)
	_, err = c.Write([]byte("xy"))
	require.NoError(t, err)
	_, err = io.ReadFull(cb, buf)
	require.NoError(t, err)
	_, err = cb.Write(buf)
	require.NoError(t, err)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "xy", string(buf), "the client got the standby's late answer twice")
	require.Zero(t, tr.backup.TCPStats().Diverged)
}

// TestStandbyChecksummedOutput: the main ships its output by checksum
// (WrittenSum) and sends only what the standby's own application has
// written and matched. The backup's application starts late, so the first
// answer waits for it (OnChecked); then 16 KiB round trips run on, through
// a takeover, every byte once and in order.
func TestStandbyChecksummedOutput(t *testing.T) {
	tr := newTrio(t, 65)
	tr.hook.sumMin = 1
	c, cm, cb := tr.dialAccept(t, 65)
	go io.Copy(cm, cm)
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	msg := func(i int) []byte {
		b := make([]byte, 16<<10)
		for j := range b {
			b[j] = byte(i*31 + j*13/7 + j>>9)
		}
		return b
	}
	roundTrip := func(i int) {
		t.Helper()
		_, err := c.Write(msg(i))
		require.NoError(t, err)
		got := make([]byte, 16<<10)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		require.True(t, bytes.Equal(msg(i), got), "answer %d differs", i)
	}
	_, err := c.Write(msg(0))
	require.NoError(t, err)
	ep := tr.standbyEP(t)
	waitFor(t, "the main's answer, by checksum, to wait for the standby's application", func() bool {
		ep.mu.Lock()
		defer ep.mu.Unlock()
		return len(ep.outQ) > 0
	})
	require.NoError(t, c.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the client got output the backup had not checked")
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	go io.Copy(cb, cb)
	got := make([]byte, 16<<10)
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.True(t, bytes.Equal(msg(0), got), "answer 0 differs")
	for i := 1; i < 100; i++ {
		roundTrip(i)
	}
	tr.takeover(t)
	for i := 100; i < 200; i++ {
		roundTrip(i)
	}
	require.Zero(t, tr.hook.diverged.Load())
	require.Zero(t, tr.backup.TCPStats().Diverged)
}

// TestStandbyChecksumMismatch: the backup's application writes something
// else than the main's: the checksum does not match, which is counted and
// reported (the standby never had the main's bytes, so the replicating
// layer must drop it), and nothing of it is applied.
func TestStandbyChecksumMismatch(t *testing.T) {
	tr := newTrio(t, 66)
	_, _, cb := tr.dialAccept(t, 66)
	sb := tr.hook.standbys[0]
	start := sb.WrittenEnd()
	main := []byte("the main's answer")
	sum := crc32.Checksum(main, crc32.MakeTable(crc32.Castagnoli))
	// Ahead: the standby's application wrote first.
	_, err := cb.Write([]byte("the standby's own"))
	require.NoError(t, err)
	_, ok, err := sb.WrittenSum(start, len(main), sum)
	require.ErrorIs(t, err, ErrDiverged)
	require.False(t, ok)
	require.Equal(t, start, sb.WrittenEnd(), "mismatched output applied")
	require.EqualValues(t, 1, tr.backup.TCPStats().Diverged)
}

// TestStandbyBytesQueueBehindChecksum: output shipped as bytes after a
// checksum the standby cannot check yet waits behind it, and both apply
// in order once the application writes; a checksum or bytes out of place
// are refused.
func TestStandbyBytesQueueBehindChecksum(t *testing.T) {
	tr := newTrio(t, 67)
	_, _, cb := tr.dialAccept(t, 67)
	sb := tr.hook.standbys[0]
	var checked []tcp.Seq
	var mu sync.Mutex
	sb.OnChecked(func(end tcp.Seq, err error) {
		require.NoError(t, err)
		mu.Lock()
		checked = append(checked, end)
		mu.Unlock()
	})
	start := sb.WrittenEnd()
	first, second := []byte("checksummed part, "), []byte("then bytes")
	_, ok, err := sb.WrittenSum(start, len(first), crc32.Checksum(first, crc32.MakeTable(crc32.Castagnoli)))
	require.NoError(t, err)
	require.False(t, ok, "checked before the application wrote")
	_, err = sb.Written(start, second)
	require.Error(t, err, "bytes over the checksummed run")
	_, _, err = sb.WrittenSum(start.Add(1), 1, 0)
	require.Error(t, err, "a checksum out of place")
	_, _, err = sb.WrittenSum(start.Add(uint32(len(first))), MaxSummed+1, 0)
	require.Error(t, err, "a checksum over too much")
	n, err := sb.Written(start.Add(uint32(len(first))), second)
	require.NoError(t, err)
	require.Equal(t, len(second), n)
	require.Equal(t, start, sb.WrittenEnd(), "applied before the checksum was checked")
	_, err = cb.Write(append(bytes.Clone(first), second...))
	require.NoError(t, err)
	require.Equal(t, start.Add(uint32(len(first)+len(second))), sb.WrittenEnd())
	mu.Lock()
	require.Equal(t, []tcp.Seq{start.Add(uint32(len(first)))}, checked)
	mu.Unlock()
	require.Zero(t, tr.backup.TCPStats().Diverged)
	ep := tr.standbyEP(t)
	ep.mu.Lock()
	defer ep.mu.Unlock()
	require.Zero(t, ep.held.Len(), "the application's bytes left held")
	require.Empty(t, ep.outQ)
}

// TestDroppedStandbyChecksNothing: a standby dropped with a checksum
// still unchecked reports nothing more when its application then closes
// its side: the copy is gone (a report would make the replicating layer
// drop whatever copy holds that connection by then).
func TestDroppedStandbyChecksNothing(t *testing.T) {
	tr := newTrio(t, 68)
	_, _, cb := tr.dialAccept(t, 68)
	sb := tr.hook.standbys[0]
	var calls []error
	sb.OnChecked(func(end tcp.Seq, err error) { calls = append(calls, err) })
	m := []byte("the main's answer")
	_, _, err := sb.WrittenSum(sb.WrittenEnd(), len(m), crc32.Checksum(m, crc32.MakeTable(crc32.Castagnoli)))
	require.NoError(t, err)
	tr.main.SetReplicationHook(nil)
	sb.Drop()
	require.NoError(t, cb.(*Conn).CloseWrite())
	require.Empty(t, calls)
	require.Zero(t, tr.backup.TCPStats().Diverged)
}
