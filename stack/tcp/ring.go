package tcp

import "hash/crc32"

// ring is a byte queue over a circular buffer that grows on demand up to a
// fixed limit. The receive side also writes ahead of the queue's end
// (out-of-order data lands where it belongs) and later extends the queue
// over it, so reassembly needs no per-segment allocation.
type ring struct {
	buf   []byte
	head  int // index in buf of the first queued byte
	size  int // queued bytes
	limit int // most bytes buf may ever hold
}

func newRing(limit int) ring { return ring{limit: limit} }

// free is how many more bytes the queue may take before it reaches limit.
func (r *ring) free() int { return r.limit - r.size }

// reserve makes buf hold at least n bytes (n <= limit), keeping every byte
// from head onwards, including bytes written ahead of the queue's end.
func (r *ring) reserve(n int) {
	if n <= len(r.buf) {
		return
	}
	c := max(len(r.buf)*2, 4096)
	for c < n {
		c *= 2
	}
	c = min(c, r.limit)
	nb := make([]byte, c)
	k := copy(nb, r.buf[r.head:])
	copy(nb[k:], r.buf[:r.head])
	r.buf, r.head = nb, 0
}

// append queues as much of p as the limit allows and returns how much.
func (r *ring) append(p []byte) int {
	n := min(len(p), r.free())
	if n == 0 {
		return 0
	}
	r.writeAt(r.size, p[:n])
	r.size += n
	return n
}

// writeAt stores p at offset off from the head without changing the queue
// length; off+len(p) must not exceed limit.
func (r *ring) writeAt(off int, p []byte) {
	if len(p) == 0 {
		return // buf may not exist yet
	}
	r.reserve(off + len(p))
	i := (r.head + off) % len(r.buf)
	k := copy(r.buf[i:], p)
	copy(r.buf, p[k:])
}

// extend adds n bytes already written by writeAt to the queue.
func (r *ring) extend(n int) { r.size += n }

// peek returns the n bytes at offset off; if they wrap around the end of
// buf they are copied into scratch, which must hold n bytes.
func (r *ring) peek(off, n int, scratch []byte) []byte {
	if n == 0 {
		return nil
	}
	if i := (r.head + off) % len(r.buf); i+n <= len(r.buf) {
		return r.buf[i : i+n]
	}
	return r.appendTo(scratch[:0], off, n)
}

// appendTo appends the n bytes at offset off to dst.
func (r *ring) appendTo(dst []byte, off, n int) []byte {
	if n <= 0 {
		return dst
	}
	i := (r.head + off) % len(r.buf)
	k := min(n, len(r.buf)-i)
	dst = append(dst, r.buf[i:i+k]...)
	return append(dst, r.buf[:n-k]...)
}

// checksum extends crc (CRC-32C) with the n bytes at offset off, in
// place.
func (r *ring) checksum(crc uint32, off, n int) uint32 {
	if n <= 0 {
		return crc
	}
	i := (r.head + off) % len(r.buf)
	k := min(n, len(r.buf)-i)
	crc = crc32.Update(crc, castagnoli, r.buf[i:i+k])
	return crc32.Update(crc, castagnoli, r.buf[:n-k])
}

// castagnoli is CRC-32C's table: the instruction set computes it.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// read moves up to len(p) queued bytes into p.
func (r *ring) read(p []byte) int {
	n := min(len(p), r.size)
	if n == 0 {
		return 0
	}
	k := copy(p[:n], r.buf[r.head:])
	copy(p[k:n], r.buf)
	r.discard(n)
	return n
}

// discard drops n queued bytes from the head.
func (r *ring) discard(n int) {
	r.size -= n
	r.head += n
	if len(r.buf) > 0 {
		r.head %= len(r.buf)
	}
}

// bytes copies out the queued bytes plus ahead bytes written past the end.
func (r *ring) bytes(ahead int) []byte {
	n := r.size + ahead
	return r.appendTo(make([]byte, 0, n), 0, n)
}
