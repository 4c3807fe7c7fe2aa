// Package bytequeue is a FIFO of bytes for holding data that waits for
// room downstream: the hot standby's inbound bytes waiting for its
// application to read (failover), its application's writes waiting for
// the main's (stack). Taking bytes from the front advances an offset
// instead of moving the rest down, so draining a backlog in small steps
// costs time in proportion to the bytes, not to the backlog times the
// steps.
package bytequeue

// Queue is a FIFO of bytes. The zero value is an empty queue. It is not
// safe for concurrent use.
type Queue struct {
	buf []byte
	off int // buf[off:] is the queue
}

// keepCap is the largest buffer an emptied queue keeps for reuse; a
// larger one is given back. It matches the stack's default send buffer
// (4 MiB), which bounds a hot standby's held writes: under bulk transfer
// that queue empties and refills to megabytes many times a second, and
// with a 1 MiB bound it allocated 190 MB in 3 s, which kept the
// collector busy (BENCHMARKS.md, run I).
const keepCap = 4 << 20

// Len is the number of bytes queued.
func (q *Queue) Len() int { return len(q.buf) - q.off }

// Bytes returns the queued bytes, valid until the next change.
func (q *Queue) Bytes() []byte { return q.buf[q.off:] }

// Append queues p at the back. When p does not fit, the bytes consumed at
// the front make room first if there are enough of them: growing would
// copy the queue anyway, into a larger buffer.
func (q *Queue) Append(p []byte) {
	if len(q.buf)+len(p) > cap(q.buf) && q.off >= len(p) {
		q.buf = q.buf[:copy(q.buf, q.buf[q.off:])]
		q.off = 0
	}
	q.buf = append(q.buf, p...)
}

// Consume drops the first n bytes (all of them if n exceeds Len).
func (q *Queue) Consume(n int) {
	q.off += min(max(n, 0), q.Len())
	switch {
	case q.off == len(q.buf):
		q.Reset()
	case q.off > len(q.buf)/2:
		// Less than half is left: moving it is paid for by the bytes
		// consumed since the last move.
		q.buf = q.buf[:copy(q.buf, q.buf[q.off:])]
		q.off = 0
	}
}

// Reset empties the queue.
func (q *Queue) Reset() {
	q.buf, q.off = q.buf[:0], 0
	if cap(q.buf) > keepCap {
		q.buf = nil
	}
}
