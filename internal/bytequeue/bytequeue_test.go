package bytequeue

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestQueueIsFIFO checks the queue against a plain slice model under
// random appends and consumes.
func TestQueueIsFIFO(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var q Queue
	var model []byte
	next := byte(0)
	for range 20000 {
		if r.IntN(2) == 0 {
			p := make([]byte, r.IntN(5000))
			for i := range p {
				p[i] = next
				next++
			}
			q.Append(p)
			model = append(model, p...)
		} else {
			n := r.IntN(6000) - 10 // sometimes negative, sometimes past the end
			q.Consume(n)
			model = model[min(max(n, 0), len(model)):]
		}
		require.Equal(t, len(model), q.Len())
		require.True(t, bytes.Equal(model, q.Bytes()), "queue content differs from the model")
	}
}

func TestQueueGivesBackBurstBuffer(t *testing.T) {
	var q Queue
	q.Append(make([]byte, 4*keepCap))
	q.Consume(q.Len())
	assert.Zero(t, q.Len())
	assert.Zero(t, cap(q.buf), "an emptied burst buffer is released")

	q.Append(make([]byte, 1000))
	q.Consume(1000)
	assert.NotZero(t, cap(q.buf), "a small buffer is kept for reuse")
}

func TestQueueReusesConsumedFront(t *testing.T) {
	var q Queue
	q.Append(bytes.Repeat([]byte{1}, 1000))
	c := cap(q.buf)
	q.Consume(400) // less than half: no move yet
	q.Append(bytes.Repeat([]byte{2}, c-1000+100))
	assert.Equal(t, c, cap(q.buf), "grown although the consumed front had room")
	want := append(bytes.Repeat([]byte{1}, 600), bytes.Repeat([]byte{2}, c-1000+100)...)
	assert.True(t, bytes.Equal(want, q.Bytes()))
}

// BenchmarkBacklog moves 32 KiB through a queue that holds a 4 MiB
// backlog (one OUT frame's worth against a full send buffer, the hot
// standby's steady state when its application lags): the Queue against
// the baseline that consumes by moving the rest down, as the standby's
// buffers did before this package, in the same run. Compare the two
// MB/s figures.
func BenchmarkBacklog(b *testing.B) {
	const backlog, step = 4 << 20, 32 << 10
	chunk := make([]byte, step)
	b.Run("Queue", func(b *testing.B) {
		b.SetBytes(step)
		var q Queue
		q.Append(make([]byte, backlog))
		for b.Loop() {
			q.Append(chunk)
			q.Consume(step)
		}
	})
	b.Run("Shift", func(b *testing.B) {
		b.SetBytes(step)
		buf := make([]byte, backlog)
		for b.Loop() {
			buf = append(buf, chunk...)
			buf = buf[:copy(buf, buf[step:])]
		}
	})
}
