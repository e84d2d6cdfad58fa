package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
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

// Server is the admin HTTP server.
type Server struct {
	src     Source
	metrics http.Handler
	extra   map[string]http.Handler
	log     *slog.Logger
	srv     *http.Server
	lis     net.Listener
}

// Option configures a Server.
type Option func(*Server)

// WithMetrics serves h on /metrics.
func WithMetrics(h http.Handler) Option { return func(s *Server) { s.metrics = h } }

// WithHandler serves h on path (for additions such as pprof).
func WithHandler(path string, h http.Handler) Option {
	return func(s *Server) { s.extra[path] = h }
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// Listen binds addr and returns a Server ready to Serve.
func Listen(addr string, src Source, opts ...Option) (*Server, error) {
	s := &Server{src: src, extra: map[string]http.Handler{}, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(s)
	}
	lis, err := net.Listen("tcp", addr)
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
	if s.metrics != nil {
		mux.Handle("GET /metrics", s.metrics)
	}
	for p, h := range s.extra {
		mux.Handle(p, h)
	}
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	if err := s.src.Ready(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
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
