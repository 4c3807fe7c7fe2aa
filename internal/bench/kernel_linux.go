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
)

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

// KernelServer is the kernel-TCP baseline: the echo, sink and source
// services of package bench on addr, with the same handler code as the RFSIS
// programs (echo is io.Copy(c, c), exactly as cmd/echoserver does; see
// kernelEchoEnv). It runs
// until SIGINT or SIGTERM.
func KernelServer(addr string) error {
	svcs := []struct {
		port   int
		handle func(net.Conn)
	}{
		{EchoPort, func(c net.Conn) { Echo(c) }},
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
			Serve(l, s.handle)
		}()
	}
	fmt.Println("kernel server listening on", addr)
	<-ctx.Done()
	return nil
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

// CancelOnInterrupt returns a context cancelled at the first SIGINT or
// SIGTERM, so that a benchmark stops measuring and returns and its
// cleanups (netns: kill the servers, delete the namespaces) run. A second
// signal exits at once with status 2: the servers still die with the
// process through Pdeathsig, and the next netns.New removes the
// namespaces left behind. name prefixes the message.
func CancelOnInterrupt(name string) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "%s: %v: stopping and cleaning up (again to exit at once)\n", name, s)
		cancel()
		<-sigs
		os.Exit(2)
	}()
	return ctx
}
