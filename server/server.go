package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"

	"github.com/meshd/meshd/admin"
	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/proxy"
	"github.com/meshd/meshd/router"
)

// Server is a running meshd. Create it with New, start it with Run.
type Server struct {
	log         *slog.Logger
	proxy       *proxy.Proxy
	serverStats stats.Handler
	clientStats stats.Handler
	adminOpts   []admin.Option

	mu       sync.Mutex // serializes Reload and Run's start/stop
	cfg      atomic.Pointer[config.Config]
	runs     map[string]*clusterRun
	consul   *api.Client
	consulOf config.Consul

	listeners []*listener
	admin     *admin.Server
	started   atomic.Bool
	draining  atomic.Bool
	stopping  chan struct{}
	serving   chan struct{} // closed once every listener is bound
	wg        sync.WaitGroup
	reloads   atomic.Uint64
	failed    atomic.Uint64
	lastErr   atomic.Pointer[string]
}

type listener struct {
	cfg  config.Listener
	lis  net.Listener
	grpc *grpc.Server
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithStatsHandlers installs stats handlers (tracing) on the listeners'
// servers and on every upstream connection. Either may be nil.
func WithStatsHandlers(server, client stats.Handler) Option {
	return func(s *Server) { s.serverStats, s.clientStats = server, client }
}

// WithAdminOptions passes options to the admin server (metrics handler...).
func WithAdminOptions(opts ...admin.Option) Option {
	return func(s *Server) { s.adminOpts = append(s.adminOpts, opts...) }
}

// New builds a Server for cfg: clusters are created and their discovery
// starts, but nothing listens until Run.
func New(cfg *config.Config, opts ...Option) (*Server, error) {
	s := &Server{log: slog.New(slog.DiscardHandler), runs: map[string]*clusterRun{}, stopping: make(chan struct{}), serving: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	s.proxy = proxy.New(proxy.WithTracing(s.clientStats != nil), proxy.WithLogger(s.log.With("component", "proxy")))
	if err := s.Reload(cfg); err != nil {
		return nil, err
	}
	return s, nil
}

// Config returns the config in force.
func (s *Server) Config() *config.Config { return s.cfg.Load() }

// Reload swaps in cfg if everything it needs can be built; otherwise it
// returns why and the old config keeps serving. Listener changes need a
// restart and are reported as an error without changing anything.
func (s *Server) Reload(cfg *config.Config) error {
	err := s.reload(cfg)
	if err != nil {
		s.failed.Add(1)
		msg := err.Error()
		s.lastErr.Store(&msg)
		return err
	}
	s.reloads.Add(1)
	s.lastErr.Store(nil)
	return nil
}

func (s *Server) reload(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("server: invalid config: %w", err)
	}
	if err := cfg.CheckFiles(); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	old := s.cfg.Load()
	if old != nil && s.started.Load() && !reflect.DeepEqual(old.Listeners, cfg.Listeners) {
		return errors.New("server: listeners changed: restart meshd to apply listener changes")
	}
	consul := s.consul
	if needsConsul(cfg) && (consul == nil || s.consulOf != cfg.Consul) {
		c, err := discovery.NewConsulClient(cfg.Consul.Address, cfg.Consul.Token)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		consul = c
	}
	table, err := router.New(cfg.Routes)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	// Build every new cluster before touching anything live.
	next := make(map[string]*clusterRun, len(cfg.Clusters))
	var fresh []*clusterRun
	for _, c := range cfg.Clusters {
		if r, ok := s.runs[c.Name]; ok && r.sameAs(c, cfg.MaxMessageSize) && (c.Consul == nil || consul == s.consul) {
			next[c.Name] = r
			continue
		}
		r, err := s.newClusterRun(c, cfg.MaxMessageSize, consul)
		if err != nil {
			for _, f := range fresh {
				f.stop()
			}
			return fmt.Errorf("server: %w", err)
		}
		fresh = append(fresh, r)
		next[c.Name] = r
	}
	st := &proxy.State{Table: table, Clusters: make(map[string]*balancer.Cluster, len(next))}
	for name, r := range next {
		st.Clusters[name] = r.cl
	}
	s.proxy.Swap(st)
	drain := cfg.DrainTimeout.D()
	for name, r := range s.runs {
		if next[name] != r {
			s.retire(r, drain)
		}
	}
	s.runs = next
	s.consul, s.consulOf = consul, cfg.Consul
	s.cfg.Store(cfg)
	if old != nil {
		s.log.Info("config reloaded", "summary", cfg.Summary(), "new_clusters", len(fresh))
	}
	return nil
}

func needsConsul(cfg *config.Config) bool {
	for _, c := range cfg.Clusters {
		if c.Consul != nil {
			return true
		}
	}
	return false
}

// Run listens on every listener and the admin address, serves until ctx is
// done, then drains: /ready fails at once, listeners send GOAWAY and stop
// accepting, in-flight calls get up to drain_timeout, and Run returns nil.
// A listener that cannot bind is an error returned before serving starts.
func (s *Server) Run(ctx context.Context) error {
	cfg := s.cfg.Load()
	if err := s.listen(cfg); err != nil {
		s.closeAll()
		return err
	}
	errc := make(chan error, len(s.listeners)+1)
	var serving sync.WaitGroup
	for _, l := range s.listeners {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := l.grpc.Serve(l.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("server: listener %s: %w", l.cfg.Name, err)
			}
		}()
	}
	if s.admin != nil {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := s.admin.Serve(); err != nil {
				errc <- err
			}
		}()
	}
	s.started.Store(true)
	close(s.serving)
	s.log.Info("meshd serving", "summary", cfg.Summary(), "listeners", s.ListenerAddrs(), "admin", s.AdminAddr())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.drain(s.cfg.Load().DrainTimeout.D())
	serving.Wait()
	return runErr
}

func (s *Server) listen(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, lc := range cfg.Listeners {
		opts := append(s.proxy.ServerOptions(cfg.MaxMessageSize), grpc.MaxConcurrentStreams(lc.MaxConcurrentStreams))
		if s.serverStats != nil {
			opts = append(opts, grpc.StatsHandler(s.serverStats))
		}
		if lc.TLS != nil {
			tc, err := listenerTLS(lc.TLS)
			if err != nil {
				return fmt.Errorf("server: listener %s: %w", lc.Name, err)
			}
			opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
		}
		lis, err := net.Listen("tcp", lc.Address)
		if err != nil {
			return fmt.Errorf("server: listener %s: %w", lc.Name, err)
		}
		s.listeners = append(s.listeners, &listener{cfg: lc, lis: lis, grpc: grpc.NewServer(opts...)})
	}
	if cfg.Admin.Address != "" {
		a, err := admin.Listen(cfg.Admin.Address, s, append([]admin.Option{admin.WithLogger(s.log.With("component", "admin"))}, s.adminOpts...)...)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		s.admin = a
	}
	return nil
}

// listenerTLS loads the listener's certificate and, for mTLS, client CA.
func listenerTLS(t *config.ListenerTLS) (*tls.Config, error) {
	return loadServerTLS(t)
}

// drain stops everything gracefully within d, then hard.
func (s *Server) drain(d time.Duration) {
	s.draining.Store(true)
	s.log.Info("draining", "timeout", d)
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, l := range s.listeners {
			wg.Add(1)
			go func() { defer wg.Done(); l.grpc.GracefulStop() }()
		}
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("drain timeout passed; closing remaining calls")
		for _, l := range s.listeners {
			l.grpc.Stop()
		}
		<-done
	}
	s.closeAll()
}

// closeAll stops the admin server, every cluster and retirement goroutine.
func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stopping:
		return
	default:
	}
	close(s.stopping)
	if s.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := s.admin.Shutdown(ctx); err != nil {
			s.log.Warn("admin shutdown", "err", err)
		}
		cancel()
	}
	for _, l := range s.listeners {
		l.grpc.Stop()
	}
	s.wg.Wait()
	for _, r := range s.runs {
		r.stop()
	}
	s.runs = nil
}

// Close stops a Server that was built but never Run, or cleans up after Run.
func (s *Server) Close() { s.closeAll() }

// Serving is closed once Run has bound every listener and started serving;
// ListenerAddrs and AdminAddr are valid from then on.
func (s *Server) Serving() <-chan struct{} { return s.serving }

// ListenerAddrs returns the bound listener addresses by name.
func (s *Server) ListenerAddrs() map[string]string {
	out := map[string]string{}
	for _, l := range s.listeners {
		out[l.cfg.Name] = l.lis.Addr().String()
	}
	return out
}

// AdminAddr is the admin server's bound address ("" when disabled).
func (s *Server) AdminAddr() string {
	if s.admin == nil {
		return ""
	}
	return s.admin.Addr()
}

// Ready implements admin.Source.
func (s *Server) Ready() error {
	switch {
	case s.draining.Load():
		return errors.New("draining")
	case !s.started.Load():
		return errors.New("listeners not up")
	}
	st := s.proxy.State()
	if st == nil {
		return errors.New("no config loaded")
	}
	names := make([]string, 0, len(st.Clusters))
	for n := range st.Clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !st.Clusters[n].Ready() {
			return fmt.Errorf("cluster %q has no discovery result yet%s", n, s.discoveryNote(n))
		}
	}
	return nil
}

func (s *Server) discoveryNote(cluster string) string {
	s.mu.Lock()
	r := s.runs[cluster]
	s.mu.Unlock()
	if r == nil {
		return ""
	}
	if sr, ok := r.resolver.(statusReporter); ok {
		if e := sr.Status().LastError; e != "" {
			return ": " + e
		}
	}
	return ""
}

// ConfigDump implements admin.Source: the effective config, secrets redacted.
func (s *Server) ConfigDump() any {
	cfg := *s.cfg.Load()
	if cfg.Consul.Token != "" {
		cfg.Consul.Token = "[redacted]"
	}
	out := map[string]any{"config": cfg, "reloads_ok": s.reloads.Load(), "reloads_failed": s.failed.Load()}
	if e := s.lastErr.Load(); e != nil {
		out["last_reload_error"] = *e
	}
	return out
}

// Routes implements admin.Source.
func (s *Server) Routes() any {
	st := s.proxy.State()
	if st == nil {
		return []any{}
	}
	type routeView struct {
		Name           string                   `json:"name"`
		Match          config.Match             `json:"match"`
		Clusters       []config.WeightedCluster `json:"clusters"`
		Timeout        string                   `json:"timeout,omitempty"`
		MaxGRPCTimeout string                   `json:"max_grpc_timeout,omitempty"`
		Retry          *config.Retry            `json:"retry,omitempty"`
	}
	var out []routeView
	for _, r := range st.Table.Routes() {
		v := routeView{Name: r.Name, Match: r.Match, Clusters: r.Clusters, Retry: r.Retry}
		if r.Timeout > 0 {
			v.Timeout = r.Timeout.String()
		}
		if r.MaxGRPCTimeout > 0 {
			v.MaxGRPCTimeout = r.MaxGRPCTimeout.String()
		}
		out = append(out, v)
	}
	return out
}

// Clusters implements admin.Source.
func (s *Server) Clusters() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	type clusterView struct {
		Status    any                    `json:"status"`
		Discovery *discovery.WatchStatus `json:"discovery,omitempty"`
	}
	out := map[string]clusterView{}
	for name, r := range s.runs {
		v := clusterView{Status: r.cl.Status()}
		if sr, ok := r.resolver.(statusReporter); ok {
			ws := sr.Status()
			v.Discovery = &ws
		}
		out[name] = v
	}
	return out
}
