// Package status serves a node's status over HTTP on the host's own
// network (config status_addr), apart from the user-space stack, so that it
// stays reachable whatever the stack and the failover pair are doing:
//
//	GET /status   the Report as JSON, for people and scripts (rfsisctl status)
//	GET /metrics  the same numbers in the Prometheus text format
//
// The package knows nothing of the stack or the failover node: a Source
// fills a Report at request time, so each answer is current and the server
// holds no state of its own.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Timeouts of the HTTP server. Every answer is built from memory in
// microseconds, so these only bound slow or idle clients, which must not
// pile up connections on a node that is busy failing over.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	// scrapeTimeout bounds one /metrics answer (promhttp answers 503
	// past it); it is below writeTimeout so the client gets that answer.
	scrapeTimeout = 5 * time.Second
	// maxScrapes bounds concurrent /metrics answers: one Prometheus (or
	// two, in a pair of them) is the expected load.
	maxScrapes = 4
)

// Server is the status HTTP server. Make one with NewServer, then Start it;
// Close or Shutdown stops it.
type Server struct {
	log *slog.Logger
	srv *http.Server

	mu      sync.Mutex
	addr    string
	started bool
	closed  bool
	done    chan struct{} // closed when Serve has returned (after Start)
}

// NewServer prepares a server for addr ("host:port" on the host's network;
// an empty host means all interfaces, port 0 picks a free port) that answers
// from src. A nil log discards the server's logs. It does not listen yet:
// see Start.
func NewServer(addr string, src Source, log *slog.Logger) (*Server, error) {
	if src == nil {
		return nil, errors.New("status: nil Source")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("status: address %q: %w", addr, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	// A private registry: the global one would mix in whatever else the
	// process (or a test running several servers) registered, and a
	// second NewServer would fail on duplicate registration.
	reg := prometheus.NewRegistry()
	if err := reg.Register(newCollector(src)); err != nil {
		return nil, fmt.Errorf("status: register metrics: %w", err)
	}
	// The Go runtime and process metrics (memory, GC, goroutines, open
	// files, CPU) are what one checks next when a node misbehaves.
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("status: register metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("status: register metrics: %w", err)
	}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: promLogger{log},
		// A metric that fails to collect should not hide the others.
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxScrapes,
		Timeout:             scrapeTimeout,
	})

	// Method patterns give the 405 (with an Allow header) for other
	// methods on a known path and the 404 elsewhere; "GET" also matches
	// HEAD, whose body net/http discards.
	mux := http.NewServeMux()
	mux.Handle("GET /status", statusHandler(src, log))
	mux.Handle("GET /metrics", metrics)

	s := &Server{
		log:  log,
		addr: addr,
		done: make(chan struct{}),
	}
	s.srv = &http.Server{
		Addr:              addr,
		Handler:           mux,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Start listens on the server's address and serves in the background. It
// returns the bound address, which tells the port when the address asked
// for port 0. A server starts at most once, and not after Close.
func (s *Server) Start() (net.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, errors.New("status: server closed")
	case s.started:
		return nil, errors.New("status: server already started")
	}
	// net.Listen, not the stack: the endpoint lives on the host's network.
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	s.started = true
	s.addr = ln.Addr().String()
	s.log.Info("status endpoint listening", "addr", s.addr)
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("status endpoint stopped", "err", err)
		}
	}()
	return ln.Addr(), nil
}

// Addr returns the address given to NewServer, or the bound one once
// started.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Close stops the server at once, closing open connections, and waits for
// it to stop. Calling it again, or after Shutdown, does nothing and returns
// nil.
func (s *Server) Close() error {
	started, ok := s.markClosed()
	if !ok {
		return nil
	}
	err := s.srv.Close()
	if started {
		<-s.done
	}
	return err
}

// Shutdown stops the server gracefully: it stops listening and waits for
// requests in progress to finish, or for ctx to end, in which case it
// closes the remaining connections and returns ctx's error. Calling it
// again, or after Close, does nothing and returns nil.
func (s *Server) Shutdown(ctx context.Context) error {
	started, ok := s.markClosed()
	if !ok {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	if err != nil {
		// Past the deadline, force: the caller is exiting and must not
		// leave a goroutine serving a slow client behind.
		s.srv.Close()
	}
	if started {
		<-s.done
	}
	return err
}

// markClosed marks the server closed. ok is false when it already was;
// started tells whether a Serve goroutine is to be waited for.
func (s *Server) markClosed() (started, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, false
	}
	s.closed = true
	return s.started, true
}

// statusHandler answers /status with src's Report as indented JSON (it is
// read by people with curl as often as by programs).
func statusHandler(src Source, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := json.MarshalIndent(src.Snapshot(), "", "  ")
		if err != nil {
			// Only a NaN or infinite float can fail here: a Source bug.
			log.Error("status: encode report", "err", err)
			http.Error(w, "cannot encode the status report", http.StatusInternalServerError)
			return
		}
		body = append(body, '\n')
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		// A status is stale at once; no proxy or browser should keep it.
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			w.Write(body)
		}
	})
}

// promLogger passes promhttp's errors (failed collections, failed writes)
// to the server's logger.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn("status: metrics: " + fmt.Sprint(v...)) }
