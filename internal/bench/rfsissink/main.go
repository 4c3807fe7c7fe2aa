// Command rfsissink is the RFSIS side of the one-way throughput benchmarks
// of internal/bench: on the RFSIS stack it serves the sink (bench.SinkPort:
// discard, then report the count) and the source (bench.SourcePort: send the
// requested number of bytes) of package bench, with the same handler code as
// the kernel baseline. It is built and run inside a node namespace by
// BenchmarkVsKernel, with the same kind of configuration file as
// cmd/echoserver. On exit it logs the stack's counters.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/zppratt/rfsis"
	"github.com/zppratt/rfsis/config"
	"github.com/zppratt/rfsis/internal/bench"
)

func main() {
	// Before anything else: the program may start again (gcpauses.go in
	// package rfsis says why).
	if err := rfsis.ExecWithoutAsyncPreemption(); err != nil {
		fmt.Fprintln(os.Stderr, "rfsissink: warning:", err)
	}
	path := flag.String("config", "conf/config.json", "configuration file")
	flag.Parse()
	if err := run(*path); err != nil {
		fmt.Fprintln(os.Stderr, "rfsissink:", err)
		os.Exit(1)
	}
}

func run(path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	return rfsis.Run(cfg, func(ctx context.Context, n *rfsis.Node) error {
		log := n.Logger()
		sink, err := n.ListenPort(bench.SinkPort)
		if err != nil {
			return err
		}
		source, err := n.ListenPort(bench.SourcePort)
		if err != nil {
			sink.Close()
			return err
		}
		log.Info("rfsissink listening", "sink", sink.Addr(), "source", source.Addr())
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, s := range []struct {
			l       net.Listener
			handler func(net.Conn) (int64, error)
		}{{sink, bench.Sink}, {source, bench.Source}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = rfsis.Serve(ctx, s.l, func(c net.Conn) {
					nb, err := s.handler(c)
					if err != nil && !errors.Is(err, net.ErrClosed) {
						log.Debug("connection ended", "remote", c.RemoteAddr(), "bytes", nb, "err", err)
					}
				})
			}()
		}
		wg.Wait()
		log.Info("rfsissink stopped", "stats", fmt.Sprintf("%+v", n.Stack().Stats()), "tcp", fmt.Sprintf("%+v", n.Stack().TCPStats()))
		return errors.Join(errs...)
	})
}
