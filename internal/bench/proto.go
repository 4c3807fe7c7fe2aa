// Package bench compares RFSIS with the Linux kernel's TCP, through the
// same namespace topology (internal/netns): a client namespace whose kernel
// TCP is the client, a switch bridge, and a node namespace whose bridge br0
// holds both the node's TAP (the RFSIS stack) and a kernel address (the
// kernel baseline). The only difference between the two paths is the TAP
// plus the user-space stack versus the node kernel's own TCP.
//
// The benchmarks themselves are in the package's tests: BenchmarkVsKernel,
// and BenchmarkReplicated (the cost of replication: the echo server with
// and without its backup); `make bench` runs both (see BENCHMARKS.md for
// the commands and a reading of the figures). This file holds the small
// wire protocol both kinds of server speak, so the RFSIS sink/source
// program (./rfsissink) and the kernel baseline run the very same handler
// code:
//
//   - echo (EchoPort): io.Copy(c, c), as cmd/echoserver does;
//   - sink (SinkPort): the client sends bytes and half-closes; the server
//     discards them and, at EOF, answers with the count (8 bytes, big
//     endian) and closes, so the client can time the transfer end to end;
//   - source (SourcePort): the client sends a count N (8 bytes, big
//     endian); the server writes N bytes (N = 0: until a write fails, that
//     is until the client goes away) and closes.
//
// The client side of the measurements (MeasureEcho, MeasureRR, …), the
// kernel baseline server (KernelServer) and the machine description
// (MeasureMachine, …) are ordinary code too, so that the failover
// benchmark (internal/failbench) measures the steady-state cost with the
// same code. Serve and Echo, like the protocol, build on every system.
package bench

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
)

// Ports of the three services, the same for RFSIS and the kernel baseline.
const (
	EchoPort   = 8080
	SinkPort   = 8081
	SourcePort = 8082
)

// BufSize is the read and write size of the sink and source handlers and of
// the benchmark's bulk clients.
const BufSize = 64 << 10

// Sink reads c until EOF, discarding the bytes, then writes their count as
// 8 bytes big endian. It does not close c.
func Sink(c net.Conn) (int64, error) {
	buf := make([]byte, BufSize)
	var n int64
	for {
		k, err := c.Read(buf)
		n += int64(k)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, err
		}
	}
	var reply [8]byte
	binary.BigEndian.PutUint64(reply[:], uint64(n))
	_, err := c.Write(reply[:])
	return n, err
}

// Source reads an 8-byte big-endian count N from c and writes N bytes of a
// fixed pattern to c; N = 0 means until a write fails. It does not close c.
func Source(c net.Conn) (int64, error) {
	var req [8]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return 0, err
	}
	want := int64(binary.BigEndian.Uint64(req[:]))
	buf := Pattern(BufSize)
	var n int64
	for want == 0 || n < want {
		chunk := buf
		if want != 0 && want-n < int64(len(chunk)) {
			chunk = chunk[:want-n]
		}
		k, err := c.Write(chunk)
		n += int64(k)
		if err != nil {
			if want == 0 {
				// The client ends an unbounded stream by leaving.
				return n, nil
			}
			return n, err
		}
	}
	return n, nil
}

// Pattern returns n bytes of a fixed, non-constant pattern.
func Pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// kernelEchoEnv=buffer makes the kernel baseline's echo copy through a
// 32 KiB user buffer (what io.Copy does on an RFSIS Conn) instead of
// io.Copy(c, c) on a *net.TCPConn, which Go turns into splice(2) through a
// pipe: the data then never enters user space.
const kernelEchoEnv = "RFSIS_BENCH_KERNEL_ECHO"

// Echo copies c to itself until EOF: the kernel baseline's echo handler
// (see kernelEchoEnv).
func Echo(c net.Conn) {
	if os.Getenv(kernelEchoEnv) == "buffer" {
		// Hide ReadFrom/WriteTo so io.CopyBuffer uses the buffer.
		io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 32<<10))
		return
	}
	io.Copy(c, c)
}

// Serve runs handle on every connection l accepts, each on its own
// goroutine, and closes the connection when handle returns. It returns
// when Accept fails (l closed), without waiting for the handlers.
func Serve(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}
