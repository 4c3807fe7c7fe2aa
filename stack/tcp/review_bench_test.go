package tcp

import (
	"testing"
	"time"

	"github.com/zppratt/rfsis/stack/wire"
)

// benchWire is an allocation-free, zero-delay, in-order wire between two
// Conns: segments are marshalled into a fixed pool of buffers and parsed
// back on delivery, so the measured path is Output + Marshal + Parse +
// Handle, as in the stack, minus IP and the device.
type benchWire struct {
	bufs  [512][1600]byte
	lens  [512]int
	to    [512]uint8
	head  int
	n     int
	c     [2]*Conn
	emit  [2]func(*Segment)
	csum  bool
	drops int
}

func newBenchWire(c0, c1 *Conn, csum bool) *benchWire {
	w := &benchWire{c: [2]*Conn{c0, c1}, csum: csum}
	for i := range 2 {
		to := uint8(1 - i)
		w.emit[i] = func(s *Segment) {
			if w.n == len(w.bufs) {
				w.drops++
				return
			}
			k := (w.head + w.n) % len(w.bufs)
			n := HeaderLen + s.OptionsLen() + len(s.Payload)
			if w.csum {
				ph := wire.PseudoHeaderChecksum(clientAddr, serverAddr, 6, uint16(n))
				w.lens[k] = s.Marshal(w.bufs[k][:n], ph, wire.Checksum)
			} else {
				w.lens[k] = s.Marshal(w.bufs[k][:n], 0, nil)
			}
			w.to[k] = to
			w.n++
		}
	}
	return w
}

// deliver hands every queued segment to its receiver; returns how many.
func (w *benchWire) deliver(now time.Time) int {
	var seg Segment
	d := 0
	for w.n > 0 {
		k := w.head
		w.head = (w.head + 1) % len(w.bufs)
		w.n--
		if err := Parse(w.bufs[k][:w.lens[k]], &seg); err != nil {
			panic(err)
		}
		c := w.c[w.to[k]]
		c.Handle(now, &seg)
		c.Output(now, w.emit[w.to[k]])
		d++
	}
	return d
}

func benchPair(b *testing.B) (*benchWire, time.Time) {
	now := time.Unix(1_000_000, 0)
	cfg := Config{}
	cl := NewActive(cfg, clientID(), issClient, now)
	var w *benchWire
	// Handshake through the wire.
	var syn Segment
	var first [128]byte
	var n int
	cl.Output(now, func(s *Segment) { n = s.Marshal(first[:HeaderLen+s.OptionsLen()], 0, nil) })
	if err := Parse(first[:n], &syn); err != nil {
		b.Fatal(err)
	}
	srv := NewPassive(cfg, reverse(clientID()), issServer, &syn, now)
	w = newBenchWire(cl, srv, true)
	srv.Output(now, w.emit[1])
	w.deliver(now)
	w.deliver(now)
	if cl.State() != StateEstablished || srv.State() != StateEstablished {
		b.Fatalf("handshake: %v %v", cl.State(), srv.State())
	}
	return w, now
}

// BenchmarkBulkTransfer: one op is one full-sized data segment carried
// from client to server, including its share of ACKs, window updates,
// application writes and reads. Reports allocs per segment.
func BenchmarkBulkTransfer(b *testing.B) {
	for _, csum := range []bool{true, false} {
		name := "checksum"
		if !csum {
			name = "nochecksum"
		}
		b.Run(name, func(b *testing.B) {
			w, now := benchPair(b)
			w.csum = csum
			cl, srv := w.c[0], w.c[1]
			src := randomBytes(1, 64<<10)
			rbuf := make([]byte, 64<<10)
			// Warm up: grow buffers to steady-state size.
			run := func(segs int) int {
				moved := 0
				for moved < segs*cl.MSS() {
					cl.Write(src)
					cl.Output(now, w.emit[0])
					for w.n > 0 {
						w.deliver(now)
						for {
							k := srv.Read(rbuf)
							if k == 0 {
								break
							}
							moved += k
						}
						srv.Output(now, w.emit[1])
					}
					now = now.Add(50 * time.Microsecond)
					cl.Tick(now)
					srv.Tick(now)
					cl.Output(now, w.emit[0])
					srv.Output(now, w.emit[1])
				}
				return moved
			}
			run(20000)
			b.ReportAllocs()
			b.SetBytes(int64(cl.MSS()))
			b.ResetTimer()
			moved := run(b.N)
			b.StopTimer()
			if w.drops > 0 {
				b.Fatalf("wire overflowed %d times", w.drops)
			}
			_ = moved
		})
	}
}

// BenchmarkHandleOutputAck: the sender's cost per incoming pure ACK that
// opens room for one more segment (Handle + Output, no codec).
func BenchmarkHandleOutputAck(b *testing.B) {
	w, now := benchPair(b)
	cl, srv := w.c[0], w.c[1]
	src := randomBytes(2, 64<<10)
	mss := uint32(cl.MSS())
	emit := func(*Segment) {}
	ack := Segment{Flags: FlagACK, Seq: srv.sndNxt, Window: 0xffff, WScale: -1, HasTS: true}
	step := func() {
		if cl.Writable() > len(src) {
			cl.Write(src)
		}
		cl.Output(now, emit)
		// Acknowledge one segment's worth.
		ack.Ack = cl.sndUna.Add(mss)
		if ack.Ack.Greater(cl.sndNxt) {
			ack.Ack = cl.sndNxt
		}
		ack.TSVal = uint32(now.UnixMilli())
		ack.TSEcr = cl.tsLast
		cl.Handle(now, &ack)
		now = now.Add(time.Microsecond)
	}
	// Warm up: the congestion window and the send buffer grow to their
	// steady state first, or short runs measure the growth.
	for range 200_000 {
		step()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		step()
	}
}
