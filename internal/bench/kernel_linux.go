//go:build linux

package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
)

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
