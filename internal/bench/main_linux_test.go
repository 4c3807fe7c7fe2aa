//go:build linux

package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// kernelServerEnv, when set to an IPv4 address, turns the test binary into
// the kernel-TCP baseline server (see kernelServer): BenchmarkVsKernel
// re-executes itself that way inside the node namespace, so the baseline is
// a separate process whose CPU time can be measured like the RFSIS one's.
const kernelServerEnv = "RFSIS_BENCH_KERNEL_SERVER"

// runCtx is cancelled at the first SIGINT or SIGTERM: the benchmark then
// stops measuring and returns, so the netns cleanups delete its namespaces
// and kill its servers. A second signal exits at once (the servers still
// die with the test binary through Pdeathsig, and the next netns.New removes
// the namespaces left behind).
var runCtx = context.Background()

func TestMain(m *testing.M) {
	if addr := os.Getenv(kernelServerEnv); addr != "" {
		if err := kernelServer(addr); err != nil {
			fmt.Fprintln(os.Stderr, "kernel server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runCtx = ctx
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: stopping and cleaning up (again to exit at once)\n", s)
		cancel()
		<-sigs
		os.Exit(2)
	}()
	os.Exit(m.Run())
}

// kernelEchoEnv=buffer makes the kernel baseline's echo copy through a
// 32 KiB user buffer (what io.Copy does on an RFSIS Conn) instead of
// io.Copy(c, c) on a *net.TCPConn, which Go turns into splice(2) through a
// pipe: the data then never enters user space.
const kernelEchoEnv = "RFSIS_BENCH_KERNEL_ECHO"

func echo(c net.Conn) {
	if os.Getenv(kernelEchoEnv) == "buffer" {
		// Hide ReadFrom/WriteTo so io.CopyBuffer uses the buffer.
		io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 32<<10))
		return
	}
	io.Copy(c, c)
}

// kernelServer is the kernel-TCP baseline: the echo, sink and source
// services of package bench on addr, with the same handler code as the RFSIS
// programs (echo is io.Copy(c, c), exactly as cmd/echoserver does; see
// kernelEchoEnv). It runs
// until SIGINT or SIGTERM.
func kernelServer(addr string) error {
	svcs := []struct {
		port   int
		handle func(net.Conn)
	}{
		{EchoPort, func(c net.Conn) { echo(c) }},
		{SinkPort, func(c net.Conn) { Sink(c) }},
		{SourcePort, func(c net.Conn) { Source(c) }},
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
		wg.Wait()
	}()
	for _, s := range svcs {
		l, err := net.Listen("tcp4", net.JoinHostPort(addr, strconv.Itoa(s.port)))
		if err != nil {
			return err
		}
		ls = append(ls, l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					s.handle(c)
				}()
			}
		}()
	}
	fmt.Println("kernel server listening on", addr)
	<-ctx.Done()
	return nil
}
