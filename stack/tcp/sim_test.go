package tcp

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zppratt/rfsis/stack/wire"
)

// sim joins two connections (0 = client, 1 = server) by a wire with a
// fixed one-way delay. Every segment is marshalled and parsed again, so
// the codec is exercised on every exchange. Time is simulated.
type sim struct {
	t        testing.TB
	now      time.Time
	c        [2]*Conn
	delay    time.Duration
	inflight []simPkt
	// drop, when set, decides whether a segment sent by side from is lost.
	drop func(from int, s *Segment) bool
	// reorder, when set, adds extra delay to a segment.
	reorder func(from int, s *Segment) time.Duration
	sent    [2][]Segment // every segment each side emitted (payload copied)
	// preFlush, when set, runs before a side's output (replication).
	preFlush func(i int)
	recv     [2]bytes.Buffer
	autoRead [2]bool
}

type simPkt struct {
	to  int
	at  time.Time
	buf []byte
}

var (
	clientAddr = netip.MustParseAddr("10.77.0.10")
	serverAddr = netip.MustParseAddr("10.77.0.1")
)

func clientID() FourTuple {
	return FourTuple{LocalAddr: clientAddr, LocalPort: 40000, RemoteAddr: serverAddr, RemotePort: 8080}
}

func reverse(id FourTuple) FourTuple {
	return FourTuple{LocalAddr: id.RemoteAddr, LocalPort: id.RemotePort, RemoteAddr: id.LocalAddr, RemotePort: id.LocalPort}
}

// newSim opens a connection from a client with cfgC to a server with cfgS
// and runs the handshake.
func newSim(t testing.TB, cfgC, cfgS Config, issC, issS Seq) *sim {
	s := &sim{t: t, now: time.Unix(1_000_000, 0), delay: 5 * time.Millisecond, autoRead: [2]bool{true, true}}
	s.c[0] = NewActive(cfgC, clientID(), issC, s.now)
	s.flush(0)
	// The server is created from the SYN, as a listener would.
	require.Len(t, s.inflight, 1)
	p := s.inflight[0]
	s.inflight = nil
	s.now = p.at
	var syn Segment
	require.NoError(t, Parse(p.buf, &syn))
	require.Equal(t, FlagSYN, syn.Flags)
	s.c[1] = NewPassive(cfgS, reverse(clientID()), issS, &syn, s.now)
	s.flush(1)
	s.runUntil(func() bool { return s.c[0].State() == StateEstablished && s.c[1].State() == StateEstablished }, time.Minute)
	return s
}

func (s *sim) flush(i int) {
	if s.preFlush != nil {
		s.preFlush(i)
	}
	c := s.c[i]
	c.Output(s.now, func(seg *Segment) {
		cp := *seg
		cp.Payload = append([]byte(nil), seg.Payload...)
		s.sent[i] = append(s.sent[i], cp)
		if s.drop != nil && s.drop(i, seg) {
			return
		}
		buf := make([]byte, HeaderLen+seg.OptionsLen()+len(seg.Payload))
		src, dst := c.id.LocalAddr, c.id.RemoteAddr
		ph := wire.PseudoHeaderChecksum(src, dst, 6, uint16(len(buf)))
		n := seg.Marshal(buf, ph, wire.Checksum)
		require.Equal(s.t, len(buf), n)
		at := s.now.Add(s.delay)
		if s.reorder != nil {
			at = at.Add(s.reorder(i, seg))
		}
		s.inflight = append(s.inflight, simPkt{to: 1 - i, at: at, buf: buf})
	})
}

// step advances to the next event (a delivery or a timer) and handles it.
// It returns false when nothing is left to happen.
func (s *sim) step() bool {
	next := time.Time{}
	pi := -1
	for i, p := range s.inflight {
		if next.IsZero() || p.at.Before(next) {
			next, pi = p.at, i
		}
	}
	ti := -1
	for i, c := range s.c {
		if c == nil {
			continue
		}
		if d := c.NextDeadline(); !d.IsZero() && (next.IsZero() || d.Before(next)) {
			next, ti, pi = d, i, -1
		}
	}
	if next.IsZero() {
		return false
	}
	if next.After(s.now) {
		s.now = next
	}
	if pi >= 0 {
		p := s.inflight[pi]
		s.inflight = append(s.inflight[:pi], s.inflight[pi+1:]...)
		var seg Segment
		require.NoError(s.t, Parse(p.buf, &seg))
		c := s.c[p.to]
		ph := wire.PseudoHeaderChecksum(c.id.RemoteAddr, c.id.LocalAddr, 6, uint16(len(p.buf)))
		require.Equal(s.t, uint16(0xffff), wire.Checksum(p.buf, ph), "checksum")
		c.Handle(s.now, &seg)
		s.after(p.to)
		return true
	}
	s.c[ti].Tick(s.now)
	s.after(ti)
	return true
}

func (s *sim) after(i int) {
	if s.preFlush != nil {
		s.preFlush(i) // before the application reads: replication ships first
	}
	c := s.c[i]
	if s.autoRead[i] {
		var buf [65536]byte
		for {
			n := c.Read(buf[:])
			if n == 0 {
				break
			}
			s.recv[i].Write(buf[:n])
		}
	}
	s.flush(i)
}

// runUntil steps until done reports true, failing after limit of
// simulated time or when nothing is left to happen.
func (s *sim) runUntil(done func() bool, limit time.Duration) {
	s.t.Helper()
	end := s.now.Add(limit)
	for !done() {
		if s.now.After(end) {
			s.t.Fatalf("not done after %v of simulated time: client %v, server %v", limit, s.c[0].State(), s.c[1].State())
		}
		if !s.step() {
			s.t.Fatalf("nothing left to happen: client %v, server %v", s.c[0].State(), s.c[1].State())
		}
	}
}

// send writes all of data on side i, feeding the buffer as it drains, and
// runs until the other side has read it all.
func (s *sim) send(i int, data []byte, limit time.Duration) {
	s.t.Helper()
	start := s.recv[1-i].Len()
	rest := data
	end := s.now.Add(limit)
	for s.recv[1-i].Len()-start < len(data) {
		if len(rest) > 0 {
			n, err := s.c[i].Write(rest)
			require.NoError(s.t, err)
			rest = rest[n:]
			s.flush(i)
		}
		if s.now.After(end) {
			s.t.Fatalf("transfer incomplete after %v: %d of %d bytes", limit, s.recv[1-i].Len()-start, len(data))
		}
		if !s.step() {
			s.t.Fatalf("transfer stalled: %d of %d bytes; client %v server %v", s.recv[1-i].Len()-start, len(data), s.c[0].State(), s.c[1].State())
		}
	}
	require.True(s.t, bytes.Equal(data, s.recv[1-i].Bytes()[start:]), "received bytes differ from sent")
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
