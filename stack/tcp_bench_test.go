package stack

import "testing"

// BenchmarkTCPBulkPipe moves bulk data between two stacks over the
// in-memory link: the whole receive and send path of both stacks, minus
// the device system calls. allocs/op is per 64 KiB written; in steady
// state it should be zero.
func BenchmarkTCPBulkPipe(b *testing.B) {
	p := newPair(b)
	l := p.listen(b, 5001)
	done := make(chan int64)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- -1
			return
		}
		buf := make([]byte, 64<<10)
		var n int64
		for {
			k, err := c.Read(buf)
			n += int64(k)
			if err != nil {
				break
			}
		}
		c.Close()
		done <- n
	}()
	c := p.dial(b, 5001)
	buf := make([]byte, 64<<10)
	// Warm up: buffers and windows reach their steady size.
	for range 64 {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	if n := <-done; n != int64(b.N+64)*int64(len(buf)) {
		b.Fatalf("received %d bytes", n)
	}
}
