package pipe

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/zppratt/rfsis/link"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBothDirections(t *testing.T) {
	a, b := New(1500)
	defer a.Close()
	defer b.Close()
	buf := make([]byte, 1514)
	for _, c := range []struct{ from, to *Device }{{a, b}, {b, a}} {
		msg := []byte("frame from " + c.from.Name())
		if err := c.from.WriteFrame(msg); err != nil {
			t.Fatal(err)
		}
		n, err := c.to.ReadFrame(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("%s read %q %v", c.to.Name(), buf[:n], err)
		}
	}
	if a.MTU() != 1500 || a.Name() == b.Name() {
		t.Fatal("MTU/Name")
	}
	if s := a.Stats(); s.Sent != 1 || s.Received != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestWriterKeepsBuffer(t *testing.T) {
	a, b := New(1500)
	defer a.Close()
	defer b.Close()
	msg := []byte("original")
	a.WriteFrame(msg)
	copy(msg, "CHANGED!")
	buf := make([]byte, 100)
	n, _ := b.ReadFrame(buf)
	if string(buf[:n]) != "original" {
		t.Fatalf("read %q: the pipe kept the writer's buffer", buf[:n])
	}
}

func TestOrderAndTruncation(t *testing.T) {
	a, b := New(1500)
	defer a.Close()
	defer b.Close()
	for i := range 10 {
		a.WriteFrame(bytes.Repeat([]byte{byte(i)}, 10+i))
	}
	for i := range 10 {
		buf := make([]byte, 12) // shorter than most frames
		n, err := b.ReadFrame(buf)
		if err != nil || n != min(12, 10+i) || buf[0] != byte(i) {
			t.Fatalf("frame %d: n=%d first=%d err=%v", i, n, buf[0], err)
		}
	}
}

func TestQueueFullDrops(t *testing.T) {
	a, b := NewWithQueue(1500, 4)
	defer a.Close()
	defer b.Close()
	for i := range 6 {
		if err := a.WriteFrame([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if s := a.Stats(); s.Sent != 4 || s.Dropped != 2 {
		t.Fatalf("stats %+v", s)
	}
	buf := make([]byte, 10)
	for i := range 4 {
		b.ReadFrame(buf)
		if buf[0] != byte(i) {
			t.Fatalf("frame %d is %d: the oldest frames must survive", i, buf[0])
		}
	}
}

func TestTooLarge(t *testing.T) {
	a, b := New(100)
	defer a.Close()
	defer b.Close()
	if err := a.WriteFrame(make([]byte, 115)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v", err)
	}
	if err := a.WriteFrame(make([]byte, 114)); err != nil {
		t.Fatal(err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	a, b := New(1500)
	defer b.Close()
	errc := make(chan error)
	go func() {
		_, err := a.ReadFrame(make([]byte, 1514))
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	a.Close()
	a.Close() // idempotent
	select {
	case err := <-errc:
		if !errors.Is(err, link.ErrClosed) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFrame still blocked after Close")
	}
	if _, err := a.ReadFrame(nil); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := a.WriteFrame([]byte{1}); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	// Writing towards a closed end is like a cable to a dead host: dropped.
	if err := b.WriteFrame([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if b.Stats().Dropped != 1 {
		t.Fatal("frame to closed peer not counted")
	}
}

func TestFilterDropAndReorder(t *testing.T) {
	a, b := New(1500)
	defer a.Close()
	defer b.Close()
	// Hold frame 1 and re-inject it after frame 2; drop every frame 9; on
	// frame 4, write frame 5 from inside the filter (no lock is held), so 5
	// overtakes 4.
	var held []byte
	a.SetFilter(func(f []byte) bool {
		switch {
		case f[0] == 1 && held == nil:
			held = bytes.Clone(f)
			return false
		case f[0] == 4:
			if err := a.WriteFrame([]byte{5}); err != nil {
				t.Error(err)
			}
		}
		return f[0] != 9
	})
	for _, f := range []byte{0, 1, 2} {
		a.WriteFrame([]byte{f})
	}
	a.WriteFrame(held)
	a.WriteFrame([]byte{9})
	a.WriteFrame([]byte{3})
	a.WriteFrame([]byte{4})
	a.SetFilter(nil)
	a.WriteFrame([]byte{9})
	var got []byte
	buf := make([]byte, 10)
	for range 7 {
		b.ReadFrame(buf)
		got = append(got, buf[0])
	}
	if want := []byte{0, 2, 1, 3, 5, 4, 9}; !bytes.Equal(got, want) {
		t.Fatalf("order %v want %v", got, want)
	}
	if s := a.Stats(); s.Filtered != 2 || s.Sent != 7 {
		t.Fatalf("stats %+v, want 2 filtered and 7 sent", s)
	}
}

func TestConcurrentWriters(t *testing.T) {
	a, b := NewWithQueue(1500, 64)
	const writers, each = 4, 1000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := make([]byte, 100)
			for i := range each {
				f[0], f[1] = byte(w), byte(i)
				a.WriteFrame(f)
			}
		}()
	}
	readDone := make(chan int)
	go func() {
		n := 0
		buf := make([]byte, 1514)
		for {
			if _, err := b.ReadFrame(buf); err != nil {
				readDone <- n
				return
			}
			n++
		}
	}()
	wg.Wait()
	// Let the reader drain, then stop it.
	deadline := time.Now().Add(5 * time.Second)
	for len(a.tx.frames) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.Close()
	n := <-readDone
	a.Close()
	s := a.Stats()
	if s.Sent+s.Dropped != writers*each || uint64(n) != s.Sent {
		t.Fatalf("sent %d dropped %d read %d", s.Sent, s.Dropped, n)
	}
}

func TestSteadyStateAllocatesNothing(t *testing.T) {
	a, b := New(1500)
	defer a.Close()
	defer b.Close()
	frame := make([]byte, 1514)
	buf := make([]byte, 1514)
	allocs := testing.AllocsPerRun(1000, func() {
		a.WriteFrame(frame)
		b.ReadFrame(buf)
	})
	if allocs != 0 {
		t.Fatalf("%v allocs per frame", allocs)
	}
}

func BenchmarkWriteRead(b *testing.B) {
	x, y := New(1500)
	defer x.Close()
	defer y.Close()
	frame := make([]byte, 1514)
	buf := make([]byte, 1514)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		x.WriteFrame(frame)
		y.ReadFrame(buf)
	}
}
