// Command echoserver is the RFSIS demo: a TCP echo server on the
// user-space stack, configured by conf/config.json as in the original
// project (`make && sudo ./echoserver`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/zppratt/rfsis"
	"github.com/zppratt/rfsis/config"
)

func main() {
	// Before anything else: the program may start again (gcpauses.go in
	// package rfsis says why).
	if err := rfsis.ExecWithoutAsyncPreemption(); err != nil {
		fmt.Fprintln(os.Stderr, "echoserver: warning:", err)
	}
	path := flag.String("config", "conf/config.json", "configuration file")
	flag.Parse()
	if err := run(*path); err != nil {
		fmt.Fprintln(os.Stderr, "echoserver:", err)
		os.Exit(1)
	}
}

func run(path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	return rfsis.Run(cfg, func(ctx context.Context, n *rfsis.Node) error {
		l, err := n.Listen()
		if err != nil {
			return err
		}
		log := n.Logger()
		log.Info("echo server listening", "addr", l.Addr())
		err = rfsis.Serve(ctx, l, func(c net.Conn) {
			log.Debug("connection", "remote", c.RemoteAddr())
			if _, err := io.Copy(c, c); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Debug("connection ended", "remote", c.RemoteAddr(), "err", err)
			}
		})
		log.Info("echo server stopped")
		return err
	})
}
