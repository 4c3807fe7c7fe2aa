package failover_test

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/stack"
)

// BenchmarkReplicatedEcho measures a protected main end to end on the
// in-memory hub (no kernel, no TAP): what replication itself costs in CPU
// and hand-offs. Profile it with -cpuprofile; internal/bench measures the
// real thing against the kernel.
func BenchmarkReplicatedEcho(b *testing.B) {
	for _, mode := range []string{"replicated", "unreplicated"} {
		b.Run(mode, func(b *testing.B) {
			up := func(b *testing.B) *stack.Stack {
				hub, client, main, backup, _ := pairUp(b)
				b.Cleanup(func() { b.Logf("hub dropped %d frames", hub.Dropped()) })
				if mode == "unreplicated" {
					backup.Stack().Close() // the main goes on alone
					require.Eventually(b, func() bool {
						return !main.Failover().PeerUp()
					}, 5*time.Second, time.Millisecond, "the main never noticed its backup gone")
				}
				return client
			}
			benchEcho(b, up)
		})
	}
}

func benchEcho(b *testing.B, up func(*testing.B) *stack.Stack) {
	b.Run("rr64", func(b *testing.B) {
		client := up(b)
		c := dialEcho(b, client)
		msg := make([]byte, 64)
		got := make([]byte, 64)
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, got); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bulk", func(b *testing.B) {
		client := up(b)
		c := dialEcho(b, client)
		const chunk = 64 << 10
		b.SetBytes(chunk)
		done := make(chan error, 1)
		go func() {
			buf := make([]byte, chunk)
			var err error
			for range b.N {
				if _, err = io.ReadFull(c, buf); err != nil {
					break
				}
			}
			done <- err
		}()
		msg := make([]byte, chunk)
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
		require.NoError(b, <-done)
	})
}
