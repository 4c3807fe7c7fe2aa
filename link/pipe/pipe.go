// Package pipe is an in-memory link.Device pair, the test twin of a TAP
// device: a frame written on one end is read on the other.
//
// Like a NIC ring, each direction holds a bounded queue of frames; a frame
// written while the peer's queue is full is dropped and counted, never
// blocking the writer. Frames are copied into pooled buffers, so the writer
// keeps its buffer and steady-state traffic allocates nothing.
//
// SetFilter lets a test drop (or capture and later re-inject, to reorder)
// chosen frames deterministically.
package pipe

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/zppratt/rfsis/link"
)

// DefaultQueueLen is the per-direction queue length New uses.
const DefaultQueueLen = 512

// ethernetHeaderLen is the frame overhead on top of the MTU.
const ethernetHeaderLen = 14

// ErrFrameTooLarge is returned by WriteFrame for a frame over MTU+14 bytes.
var ErrFrameTooLarge = errors.New("pipe: frame larger than MTU+14")

// queue is one direction: frames in flight and recycled buffers. Both are
// channels of slice headers, so passing a buffer around does not allocate.
type queue struct {
	frames chan []byte
	free   chan []byte
	bufLen int
}

func newQueue(n, bufLen int) *queue {
	return &queue{frames: make(chan []byte, n), free: make(chan []byte, n), bufLen: bufLen}
}

func (q *queue) get() []byte {
	select {
	case b := <-q.free:
		return b
	default:
		return make([]byte, 0, q.bufLen)
	}
}

func (q *queue) put(b []byte) {
	select {
	case q.free <- b[:0]:
	default: // more buffers than the queue can hold: let this one go
	}
}

// Device is one end of a pipe. It implements link.Device.
type Device struct {
	name   string
	mtu    int
	rx, tx *queue
	peer   *Device

	filter atomic.Pointer[func([]byte) bool]

	closeOnce sync.Once
	done      chan struct{}
	closed    atomic.Bool

	sent, received, dropped, filtered atomic.Uint64
}

var _ link.Device = (*Device)(nil)

// New returns the two ends of a pipe carrying frames of up to mtu+14 bytes,
// with DefaultQueueLen frames of queue in each direction.
func New(mtu int) (a, b *Device) { return NewWithQueue(mtu, DefaultQueueLen) }

// NewWithQueue is New with a chosen per-direction queue length (at least 1).
func NewWithQueue(mtu, queueLen int) (a, b *Device) {
	if queueLen < 1 {
		queueLen = 1
	}
	ab := newQueue(queueLen, mtu+ethernetHeaderLen)
	ba := newQueue(queueLen, mtu+ethernetHeaderLen)
	a = &Device{name: "pipe-a", mtu: mtu, rx: ba, tx: ab, done: make(chan struct{})}
	b = &Device{name: "pipe-b", mtu: mtu, rx: ab, tx: ba, done: make(chan struct{})}
	a.peer, b.peer = b, a
	return a, b
}

// ReadFrame blocks until a frame arrives or the device is closed.
func (d *Device) ReadFrame(buf []byte) (int, error) {
	if d.closed.Load() {
		return 0, link.ErrClosed
	}
	select {
	case f := <-d.rx.frames:
		n := copy(buf, f)
		d.rx.put(f)
		d.received.Add(1)
		return n, nil
	case <-d.done:
		return 0, link.ErrClosed
	}
}

// WriteFrame copies frame into the peer's queue. A full queue, a closed
// peer or the filter drops the frame silently, as a real link would.
func (d *Device) WriteFrame(frame []byte) error {
	if d.closed.Load() {
		return link.ErrClosed
	}
	if len(frame) > d.mtu+ethernetHeaderLen {
		return ErrFrameTooLarge
	}
	// The filter runs with no lock held, so it may call WriteFrame itself
	// (to re-inject a held frame).
	if f := d.filter.Load(); f != nil && !(*f)(frame) {
		d.filtered.Add(1)
		return nil
	}
	if d.peer.closed.Load() {
		d.dropped.Add(1)
		return nil
	}
	buf := append(d.tx.get(), frame...)
	select {
	case d.tx.frames <- buf:
		d.sent.Add(1)
	default:
		d.tx.put(buf)
		d.dropped.Add(1)
	}
	return nil
}

// SetFilter installs keep, called for every frame this end writes, before
// it is queued; a false result drops the frame (counted in Filtered). frame
// is the writer's buffer, valid only during the call. nil removes the filter.
// keep may be called from several goroutines at once.
func (d *Device) SetFilter(keep func(frame []byte) bool) {
	if keep == nil {
		d.filter.Store(nil)
		return
	}
	d.filter.Store(&keep)
}

// MTU is the largest IP packet the pipe carries.
func (d *Device) MTU() int { return d.mtu }

// Name is "pipe-a" or "pipe-b".
func (d *Device) Name() string { return d.name }

// Close makes this end's ReadFrame and WriteFrame return link.ErrClosed and
// unblocks a pending ReadFrame. Frames the peer writes afterwards are
// dropped. Close is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.closed.Store(true)
		close(d.done)
	})
	return nil
}

// Stats counts the frames of one end.
type Stats struct {
	Sent     uint64 // written by this end and queued for the peer
	Received uint64 // read by this end
	Dropped  uint64 // written by this end but lost: peer queue full or peer closed
	Filtered uint64 // written by this end and dropped by the filter
}

// Stats returns a snapshot of this end's counters.
func (d *Device) Stats() Stats {
	return Stats{
		Sent:     d.sent.Load(),
		Received: d.received.Load(),
		Dropped:  d.dropped.Load(),
		Filtered: d.filtered.Load(),
	}
}
