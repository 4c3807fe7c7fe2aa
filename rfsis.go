// Package rfsis is the developer framework of RFSIS, the Redundant
// Failover Seamless IP Stack: Run is the Go form of the original
// project's runPicoStack(program). It opens the TAP device named in the
// configuration, starts the user-space stack on it, and runs the
// application, which serves clients through ordinary Go networking: a
// net.Listener whose Accept returns net.Conns.
//
//	func main() {
//		cfg, err := config.Load("conf/config.json")
//		if err != nil { log.Fatal(err) }
//		err = rfsis.Run(cfg, func(ctx context.Context, n *rfsis.Node) error {
//			l, err := n.Listen()
//			if err != nil { return err }
//			return rfsis.Serve(ctx, l, func(c net.Conn) { io.Copy(c, c) })
//		})
//		if err != nil { log.Fatal(err) }
//	}
//
// The same binary runs on both nodes; the configuration decides the
// starting role. The main serves; the backup runs the same application
// on a live copy of every connection (hot standby) and takes over when
// the main dies (package failover).
package rfsis

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/zppratt/rfsis/config"
	"github.com/zppratt/rfsis/failover"
	"github.com/zppratt/rfsis/link"
	"github.com/zppratt/rfsis/link/tap"
	"github.com/zppratt/rfsis/stack"
	"github.com/zppratt/rfsis/status"
)

// App is an application: it runs until it returns or ctx is cancelled
// (on SIGINT or SIGTERM under Run), and should return promptly then.
type App func(ctx context.Context, n *Node) error

// Options are the knobs of RunContext beyond the configuration file.
type Options struct {
	// Logger receives the framework's and the stack's logs; nil makes one
	// on standard error from the configuration (debug_mode, log_format).
	Logger *slog.Logger
	// Device replaces the TAP device named in the configuration (tests
	// use an in-memory link.Device).
	Device link.Device
}

// Run runs app on a stack configured by cfg until app returns or the
// process gets SIGINT or SIGTERM. It is the Go form of runPicoStack.
func Run(cfg config.Config, app App) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return RunContext(ctx, cfg, app, Options{})
}

// NewLogger builds the logger Run uses for cfg: text or JSON on standard
// error, at debug level when debug_mode is on.
func NewLogger(cfg config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel()}
	if cfg.LogFormat == config.LogFormatJSON {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// RunContext is Run with a context and options.
func RunContext(ctx context.Context, cfg config.Config, app App, opts Options) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := cfg.RequireSyncKey(); err != nil {
		return err
	}
	log := opts.Logger
	if log == nil {
		log = NewLogger(cfg)
	}
	dev := opts.Device
	if dev == nil {
		// Offloads (64 KiB frames each way) when the kernel allows them;
		// plain frames otherwise.
		d, err := tap.Open(tap.Config{Name: cfg.TapDeviceName, Offload: true})
		if err != nil {
			log.Warn("TAP offloads unavailable; using plain frames", "err", err)
			d, err = tap.Open(tap.Config{Name: cfg.TapDeviceName})
		}
		if err != nil {
			return fmt.Errorf("rfsis: open TAP %q: %w", cfg.TapDeviceName, err)
		}
		dev = d
	}
	// The stack's primary address is the node's own; on the main the
	// failover layer adds the service address, held silent until it may
	// serve (failover.NewNode).
	own := cfg.OwnAddr()
	scfg := stack.Default()
	scfg.Addr = own
	scfg.Prefix = cfg.Prefix()
	scfg.MAC = cfg.HardwareAddr()
	scfg.Gateway = cfg.Gateway
	scfg.Logger = log
	st, err := stack.New(dev, scfg)
	if err != nil {
		dev.Close()
		return fmt.Errorf("rfsis: start stack: %w", err)
	}
	defer st.Close()
	role := "main"
	if cfg.Backup {
		role = "backup"
	}
	fn, err := failover.NewNode(cfg, st, log, time.Now())
	if err != nil {
		return err
	}
	log.Info("stack up", "device", dev.Name(), "own", own, "service", cfg.IPv4Addr, "mac", st.MAC().String(), "port", cfg.Port, "role", role)
	collectLessOften(log)
	if !asyncPreemptOff() {
		// gcpauses.go says why; the programs in cmd/ re-exec themselves.
		log.Warn("Go async preemption is on: under load a garbage collection can silence this node for 50-180 ms; start the program with GODEBUG=asyncpreemptoff=1 or call rfsis.ExecWithoutAsyncPreemption first thing in main")
	}
	if cfg.StatusAddr != "" {
		srv, err := status.NewServer(cfg.StatusAddr, statusSource(st, fn, time.Now()), log)
		if err != nil {
			return err
		}
		if _, err := srv.Start(); err != nil {
			return fmt.Errorf("rfsis: status_addr: %w", err)
		}
		defer srv.Close() // Start logged the address
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ferr := make(chan error, 1)
	go func() {
		err := fn.Run(ctx)
		cancel() // standing down ends the application too
		ferr <- err
	}()
	n := &Node{cfg: cfg, st: st, log: log, fo: fn}
	aerr := app(ctx, n)
	cancel()
	if err := <-ferr; err != nil {
		return err
	}
	return aerr
}

// Node is a running stack as the application sees it.
type Node struct {
	cfg config.Config
	st  *stack.Stack
	log *slog.Logger
	fo  *failover.Node
}

// Listen listens on the service address and port of the configuration.
func (n *Node) Listen() (net.Listener, error) {
	return n.ListenPort(n.cfg.Port)
}

// ListenPort listens on the service address and another port.
func (n *Node) ListenPort(port uint16) (net.Listener, error) {
	l, err := n.st.ListenTCP(netip.AddrPortFrom(n.cfg.IPv4Addr, port), stack.ListenConfig{})
	if err != nil {
		return nil, err
	}
	n.fo.Serves(l) // on the backup, mirrored connections arrive here
	return l, nil
}

// Failover returns the node's failover layer (role, statistics).
func (n *Node) Failover() *failover.Node { return n.fo }

// Dial opens a connection from the node's own address.
func (n *Node) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	return n.st.DialTCP(ctx, n.cfg.OwnAddr(), addr)
}

// Config returns the node's configuration.
func (n *Node) Config() config.Config { return n.cfg }

// Logger returns the node's logger.
func (n *Node) Logger() *slog.Logger { return n.log }

// Stack returns the node's stack, for statistics and advanced use.
func (n *Node) Stack() *stack.Stack { return n.st }

// Serve accepts connections on l and runs handle for each on its own
// goroutine until ctx is done or l fails. On return, l is closed and every
// connection has been closed and its handler has returned.
func Serve(ctx context.Context, l net.Listener, handle func(net.Conn)) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := make(map[net.Conn]struct{})
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var err error
	for {
		c, aerr := l.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = aerr
			}
			break
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			handle(c)
		}()
	}
	l.Close()
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return err
}

// statusSource reports the node for the status endpoint.
func statusSource(st *stack.Stack, fn *failover.Node, start time.Time) status.Source {
	return status.SourceFunc(func() status.Report {
		role, epoch := fn.Role()
		ss, ts, fs := st.Stats(), st.TCPStats(), fn.Stats()
		peer := "down"
		if fn.PeerUp() {
			peer = "up"
		}
		return status.Report{
			Role: role.String(), Epoch: epoch, Peer: peer,
			Connections: ts.CurrentConnections, ProtectedConnections: uint64(fn.ProtectedConns()),
			ReplicationLag: fn.ReplicationLag().Seconds(),
			Takeovers:      fs.Takeovers.Load(), StandDowns: fs.StandDowns.Load(),
			SyncFramesIn: fs.FramesIn.Load(), SyncFramesOut: fs.FramesOut.Load(), SyncFramesBad: fs.BadFrames.Load(),
			StandbysAdopted: fs.StandbysAdopted.Load(), Diverged: ts.Diverged,
			ConnsDropped: fs.ConnsDropped.Load(), OutputSummed: fs.OutputSummed.Load(),
			FramesIn: ss.FramesIn, FramesOut: ss.FramesOut,
			Drops: ss.DropShortFrame + ss.DropOtherMAC + ss.DropEtherType + ss.IPv4Malformed + ss.IPv4BadChecksum +
				ss.IPv4NotOurs + ss.IPv4Fragments + ss.IPv4UnknownProto + ts.BadChecksum + ts.Malformed,
			TCPSegmentsIn: ts.SegmentsIn, TCPSegmentsOut: ts.SegmentsOut, ResetsSent: ts.ResetsSent,
			SYNBacklogDrops: ts.SYNBacklogDrops, TCPSendErrors: ts.SendErrors, Uptime: time.Since(start).Seconds(),
		}
	})
}
