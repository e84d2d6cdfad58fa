package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Source is what the admin server reads. Every method must be safe for
// concurrent use and cheap: orchestrators poll /ready often.
type Source interface {
	// Ready returns nil when meshd should receive traffic, or why not.
	Ready() error
	// ConfigDump is the effective config, secrets redacted, JSON-encodable.
	ConfigDump() any
	// Routes is the route table, JSON-encodable.
	Routes() any
	// Clusters is every cluster's endpoints and their health, JSON-encodable.
	Clusters() any
}

// CertSource is implemented by a Source that can have a mesh identity.
// Certs returns what GET /certs shows (the leaf's service, serial and
// expiry, the trusted roots; never a private key), or false when meshd
// has no mesh section (404).
type CertSource interface {
	Certs() (any, bool)
}

// Server is the admin server: HTTP/1.1 and h2c on one port, with gRPC
// requests (content-type application/grpc) going to the grpc.health.v1
// service and everything else to the HTTP endpoints.
type Server struct {
	src        Source
	metrics    http.Handler
	extra      map[string]http.Handler
	log        *slog.Logger
	healthPoll time.Duration
	bind       net.ListenConfig
	pid        int
	srv        *http.Server
	lis        net.Listener
	grpc       *grpc.Server
	health     *healthServer
	tap        Tapper        // nil: no /tap
	recent     func() any    // the dashboard's last-minute figures; nil: none
	stop       chan struct{} // closed at Shutdown: streams (/tap) end
	stopOnce   sync.Once
}

// Option configures a Server.
type Option func(*Server)

// WithMetrics serves h on /metrics.
func WithMetrics(h http.Handler) Option { return func(s *Server) { s.metrics = h } }

// WithHandler serves h on path (for additions such as pprof).
func WithHandler(path string, h http.Handler) Option {
	return func(s *Server) { s.extra[path] = h }
}

// WithPprof serves the runtime profiles of net/http/pprof under
// /debug/pprof/ (heap, allocs, goroutine, CPU profile, trace...), so a
// running meshd can be profiled in place under its real load. Off unless
// the config asks for it (admin.pprof): a CPU profile or an execution trace
// costs CPU while it runs, and profiles reveal internals.
func WithPprof() Option {
	return func(s *Server) {
		s.extra["/debug/pprof/"] = http.HandlerFunc(pprof.Index) // also serves named profiles: /debug/pprof/heap
		s.extra["/debug/pprof/cmdline"] = http.HandlerFunc(pprof.Cmdline)
		s.extra["/debug/pprof/profile"] = http.HandlerFunc(pprof.Profile)
		s.extra["/debug/pprof/symbol"] = http.HandlerFunc(pprof.Symbol)
		s.extra["/debug/pprof/trace"] = http.HandlerFunc(pprof.Trace)
	}
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithHealthPollInterval sets how often grpc.health.v1 Watch streams re-read
// readiness (default DefaultHealthPollInterval). Check always reads it
// afresh.
func WithHealthPollInterval(d time.Duration) Option {
	return func(s *Server) { s.healthPoll = d }
}

// WithListenConfig binds the admin port with lc (meshd passes the
// SO_REUSEPORT config of its listeners). Default: a plain bind.
func WithListenConfig(lc net.ListenConfig) Option {
	return func(s *Server) { s.bind = lc }
}

// Listen binds addr and returns a Server ready to Serve.
func Listen(addr string, src Source, opts ...Option) (*Server, error) {
	s := &Server{src: src, extra: map[string]http.Handler{}, log: slog.New(slog.DiscardHandler), healthPoll: DefaultHealthPollInterval, pid: os.Getpid(),
		stop: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	lis, err := s.bind.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", addr, err)
	}
	s.lis = lis
	mux := http.NewServeMux()
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /ready", s.ready)
	mux.HandleFunc("GET /config_dump", s.json(src.ConfigDump))
	mux.HandleFunc("GET /routes", s.json(src.Routes))
	mux.HandleFunc("GET /clusters", s.json(src.Clusters))
	mux.HandleFunc("GET /certs", s.certs)
	if s.tap != nil {
		mux.HandleFunc("GET /tap", s.tapStream)
	}
	s.dashboardRoutes(mux)
	if s.metrics != nil {
		mux.Handle("GET /metrics", s.metrics)
	}
	for p, h := range s.extra {
		mux.Handle(p, h)
	}
	if s.healthPoll <= 0 {
		s.healthPoll = DefaultHealthPollInterval
	}
	s.health = newHealthServer(src.Ready, s.healthPoll)
	s.grpc = grpc.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	// gRPC needs HTTP/2; without TLS that is h2c with prior knowledge,
	// which is what gRPC clients (and Kubernetes gRPC probes) speak.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
				s.grpc.ServeHTTP(w, r)
				return
			}
			mux.ServeHTTP(w, r)
		}),
		Protocols:         &protos,
		ReadHeaderTimeout: 5 * time.Second,
	}
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Serve serves until Shutdown; it returns nil after a Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: %w", err)
	}
	return nil
}

// Shutdown stops the server, waiting for open requests until ctx is done.
// gRPC health Watch streams (with UNAVAILABLE) and /tap streams, which
// never end on their own, are ended first; if ctx ends before the rest,
// the remaining connections are closed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.health.shutdown()
	s.stopOnce.Do(func() { close(s.stop) })
	// The HTTP server's graceful shutdown also waits for the gRPC
	// requests (they are its handlers) to write their status; stopping
	// the gRPC server first would cut them off without trailers.
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	s.grpc.Stop()
	if err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}

// ready answers /ready. With ?pid=N it answers 200 only if this process
// is N and ready: during a zero-downtime upgrade two meshd processes share
// the admin port (SO_REUSEPORT), either may answer, and the operator must
// wait for the new one. Every answer names its process in Meshd-Pid.
func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Meshd-Pid", strconv.Itoa(s.pid))
	if want := r.URL.Query().Get("pid"); want != "" && want != strconv.Itoa(s.pid) {
		http.Error(w, fmt.Sprintf("not ready: this is meshd pid %d, not %s", s.pid, want), http.StatusServiceUnavailable)
		return
	}
	if err := s.src.Ready(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// certs serves the mesh identity, or 404 without one.
func (s *Server) certs(w http.ResponseWriter, r *http.Request) {
	cs, ok := s.src.(CertSource)
	var v any
	if ok {
		v, ok = cs.Certs()
	}
	if !ok {
		http.Error(w, "meshd has no mesh identity (no mesh section in its config)", http.StatusNotFound)
		return
	}
	s.json(func() any { return v })(w, r)
}

func (s *Server) json(get func() any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(get()); err != nil {
			s.log.Warn("admin: encode response", "err", err)
		}
	}
}
