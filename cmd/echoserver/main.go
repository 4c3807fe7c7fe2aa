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
			if err := echo(c); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Debug("connection ended", "remote", c.RemoteAddr(), "err", err)
			}
		})
		log.Info("echo server stopped")
		return err
	})
}

// echo writes back what it reads until EOF. After each write it has acted
// on everything it read and keeps no state, so it checkpoints with none:
// a backup that joins later can then protect the connection too.
func echo(c net.Conn) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return werr
			}
			if cerr := rfsis.Checkpoint(c, nil); cerr != nil {
				return cerr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
