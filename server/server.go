package server

import (
	"context"
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

	"github.com/meshd/meshd/admin"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/director"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/jwtauth"
	"github.com/meshd/meshd/kuberoutes"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
	"github.com/meshd/meshd/tap"
	"github.com/meshd/meshd/tracing"
	"github.com/meshd/meshd/workers"
)

// Server is a running meshd. Create it with New, start it with Run.
type Server struct {
	log       *slog.Logger
	dir       *director.Director
	tracer    *tracing.Provider // nil: tracing off
	adminOpts []admin.Option
	dests     *destinations // transparent interception (origdst.go)
	mesh      *meshRun      // mesh identity and authorization (mesh.go); nil without a mesh section
	observers []callrecord.Observer
	taps      *tap.Hub            // GET /tap on the admin port; installed always (one atomic load per call while nobody taps)
	reusePort bool                // bind with SO_REUSEPORT (reuseport_linux.go)
	workers   *workers.Controller // GOMAXPROCS from the config's workers key; nil: left alone

	// snapshots feeds the apply loop (apply.go), which owns the four
	// fields after it: no other goroutine touches them. mu is not held
	// while a reload warms new clusters, so the admin API and metrics do
	// not wait for a warm-up.
	snapshots chan snapshot
	fileCfg   *config.Config                 // the file's config in force
	kvData    []byte                         // the Consul config_key value in force, nil if none
	kubeRules *kuberoutes.Rules              // the GRPCRoute translation in force, nil if none
	buckets   map[string]*policy.TokenBucket // route rate limits by route name
	oldStates []*director.State              // swapped-out States calls may still run on
	retryBuf  *policy.ByteBudget             // process-wide retry buffer usage

	mu       sync.Mutex // guards runs, consul, kv and Run's start/stop
	cfg      atomic.Pointer[config.Config]
	runs     map[string]*clusterRun
	consul   *api.Client
	consulOf config.Consul
	kv       *kvWatch // the consul.config_key watch, nil when none (kv.go)
	// jwt verifies tokens for the config's jwt_providers (nil: none);
	// jwtOf is the providers it was built from. A reload that changes the
	// providers builds a new Set and stops this one once swapped out.
	jwt   *jwtauth.Set
	jwtOf []config.JWTProvider
	// kubeClients reach the API server of the kubernetes section (nil
	// without one); kubeSrc is the GRPCRoute source, nil when none
	// (kube.go).
	kubeClients *kubeClients
	kubeSrc     *kubeWatch
	kubeOpts    kuberoutes.Options

	listeners []*listener
	admin     *admin.Server
	started   atomic.Bool
	draining  atomic.Bool
	stopping  chan struct{}
	closed    chan struct{} // closed once closeAll has finished
	serving   chan struct{} // closed once every listener is bound
	wg        sync.WaitGroup
	reloads   atomic.Uint64
	failed    atomic.Uint64
	lastErr   atomic.Pointer[string]
}

type listener struct {
	cfg    config.Listener
	lis    net.Listener
	srv    frameServer  // the engine serving it (frame.go)
	capped net.Listener // the max_connections limiter, for its count
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithTracing traces every call with tp: a SERVER span per call and a
// CLIENT span per upstream attempt. A disabled provider installs nothing.
func WithTracing(tp *tracing.Provider) Option {
	return func(s *Server) {
		if tp.Enabled() {
			s.tracer = tp
		}
	}
}

// WithAdminOptions passes options to the admin server (metrics handler...).
func WithAdminOptions(opts ...admin.Option) Option {
	return func(s *Server) { s.adminOpts = append(s.adminOpts, opts...) }
}

// WithReusePort sets whether listeners and the admin port bind with
// SO_REUSEPORT (Linux), so that a second meshd with the same config can
// start while this one serves, for a zero-downtime upgrade. On by
// default; false binds exclusively, and a second meshd fails to start.
func WithReusePort(on bool) Option { return func(s *Server) { s.reusePort = on } }

// WithWorkers lets the server drive c with the config's workers key: Run
// runs c's loop, and every config applied sets it. Without it the server
// leaves GOMAXPROCS alone (tests run many servers in one process).
func WithWorkers(c *workers.Controller) Option { return func(s *Server) { s.workers = c } }

// WithObservers adds call observers (metrics, access log) to the data path;
// each is told about every call when it ends.
func WithObservers(obs ...callrecord.Observer) Option {
	return func(s *Server) { s.observers = append(s.observers, obs...) }
}

// New builds a Server for cfg: clusters are created and their discovery
// starts, but nothing listens until Run.
func New(cfg *config.Config, opts ...Option) (*Server, error) {
	s := &Server{log: slog.New(slog.DiscardHandler), runs: map[string]*clusterRun{}, stopping: make(chan struct{}), closed: make(chan struct{}), serving: make(chan struct{}),
		retryBuf: policy.NewByteBudget(0), reusePort: true}
	for _, o := range opts {
		o(s)
	}
	s.taps = &tap.Hub{}
	s.observers = append(s.observers, s.taps)
	s.adminOpts = append(s.adminOpts, admin.WithTap(s.taps))
	dopts := []director.Option{director.WithTracer(s.tracer), director.WithLogger(s.log.With("component", "director"))}
	for _, o := range s.observers {
		dopts = append(dopts, director.WithObserver(o))
	}
	s.dests = newDestinations(s.log)
	dopts = append(dopts, director.WithDestinations(s.dests))
	if cfg.Mesh != nil {
		m, err := s.startMesh(cfg)
		if err != nil {
			return nil, err
		}
		s.mesh = m
		dopts = append(dopts, director.WithAuthorizer(m, cfg.Mesh.Service))
	}
	s.dir = director.New(dopts...)
	s.startApplyLoop()
	if err := s.Reload(cfg); err != nil {
		s.closeAll()
		return nil, err
	}
	return s, nil
}

// Config returns the config in force.
func (s *Server) Config() *config.Config { return s.cfg.Load() }

// Reload swaps in cfg, the config file's content, if everything it needs
// can be built; otherwise it returns why and the old config keeps serving.
// The whole config (joined by the rules from consul.config_key, if any) is
// validated and its new clusters are built and warmed up before the swap,
// which is atomic: a call runs entirely on the old or the new routes.
// Clusters that did not change keep their connections, health state and
// discovery watches. Listener changes need a restart and are reported as
// an error without changing anything. Every outcome is counted for
// /config_dump.
func (s *Server) Reload(cfg *config.Config) error {
	return s.submit(context.Background(), snapshot{file: cfg})
}

// ReloadFile loads the config file at path and reloads it. A file that
// does not load (syntax, validation) is counted and reported like any
// failed reload.
func (s *Server) ReloadFile(path string) error {
	cfg, err := config.Load(path)
	return s.submit(context.Background(), snapshot{file: cfg, loadErr: err})
}

// count records a reload's outcome and returns err.
func (s *Server) count(err error) error {
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

// reloadFile applies a new file config, joined by the Consul rules in
// force when it still names their key. It runs on the apply loop.
func (s *Server) reloadFile(cfg *config.Config) error {
	eff, err := s.withKV(cfg)
	if err != nil {
		return err
	}
	if s.kubeFor(cfg) {
		// The GRPCRoutes' rules in force go first; those that no longer
		// validate with the new file are left out until they change.
		if eff, _, err = withKube(eff, s.kubeRules); err != nil {
			return err
		}
	}
	if err := s.apply(eff); err != nil {
		return err
	}
	s.fileCfg = cfg
	s.syncKV(cfg)
	s.syncKube(cfg)
	return nil
}

// apply builds everything cfg needs, warms up its new clusters, swaps it
// in and retires what it dropped. It runs on the apply loop.
func (s *Server) apply(cfg *config.Config) error {
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
	if err := s.applyMesh(old, cfg); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.mu.Lock()
	runs, curConsul, curConsulOf, curKube := s.runs, s.consul, s.consulOf, s.kubeClients
	s.mu.Unlock()
	consul := curConsul
	if needsConsul(cfg) && (consul == nil || curConsulOf.Address != cfg.Consul.Address || curConsulOf.Token != cfg.Consul.Token) {
		c, err := discovery.NewConsulClient(cfg.Consul.Address, cfg.Consul.Token)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		consul = c
	}
	kube, err := s.kubeClientsFor(cfg)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	policies, buckets := s.policies()
	table, err := router.New(cfg.Routes, router.WithPolicy(policies), router.WithJWTProviders(cfg.JWTProviders))
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	// Build every new cluster before touching anything live.
	next := make(map[string]*clusterRun, len(cfg.Clusters))
	var fresh []*clusterRun
	stopFresh := func() {
		for _, f := range fresh {
			f.stopNow() // no call has used it
		}
	}
	pc := poolConfig(cfg)
	for _, c := range cfg.Clusters {
		if r, ok := runs[c.Name]; ok && r.sameAs(c, cfg.MaxMessageSize) && (c.Consul == nil || consul == curConsul) && (c.Kubernetes == nil || kube == curKube) {
			next[c.Name] = r
			continue
		}
		r, err := s.newClusterRun(c, cfg.MaxMessageSize, pc, consul, kube)
		if err != nil {
			stopFresh()
			return fmt.Errorf("server: %w", err)
		}
		fresh = append(fresh, r)
		next[c.Name] = r
	}
	if old != nil {
		// The first config is warmed by Run, before it serves.
		s.warm(context.Background(), fresh)
	}
	s.mu.Lock()
	jwtSet, jwtOf := s.jwt, s.jwtOf
	s.mu.Unlock()
	var freshJWT *jwtauth.Set
	if !reflect.DeepEqual(jwtOf, cfg.JWTProviders) {
		jwtSet = nil
		if len(cfg.JWTProviders) > 0 {
			j, err := jwtauth.New(cfg.JWTProviders, jwtauth.WithLogger(s.log))
			if err != nil {
				stopFresh()
				return fmt.Errorf("server: %w", err)
			}
			j.Start() // jwks_url fetches start now, before the swap
			freshJWT, jwtSet = j, j
		}
	}
	st := s.newState(cfg, table, next)
	if jwtSet != nil {
		st.JWT = jwtSet
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stopping:
		stopFresh()
		freshJWT.Stop()
		return errors.New("server: stopping")
	default:
	}
	if prev := s.dir.Swap(st); prev != nil {
		s.oldStates = append(pruneStates(s.oldStates), prev)
	}
	drain := cfg.DrainTimeout.D()
	for name, r := range s.runs {
		if next[name] != r {
			s.retire(r, holding(s.oldStates, r.cl), drain)
		}
	}
	s.runs = next
	if s.jwt != jwtSet {
		// Calls still verifying on the old Set keep its keys; only its
		// refresh goroutines end.
		s.jwt.Stop()
	}
	s.jwt, s.jwtOf = jwtSet, cfg.JWTProviders
	s.consul, s.consulOf = consul, cfg.Consul
	s.kubeClients = kube
	s.buckets = buckets
	s.cfg.Store(cfg)
	if s.workers != nil {
		s.workers.Set(int(cfg.Workers))
	}
	if old != nil {
		s.log.Info("config reloaded", "summary", cfg.Summary(), "new_clusters", len(fresh))
	}
	return nil
}

func needsConsul(cfg *config.Config) bool {
	if cfg.Consul.ConfigKey != "" {
		return true
	}
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
// Between binding and serving, the admin port is up (/ready says why it is
// not ready) while the clusters warm, as after a reload; connections that
// arrive meanwhile wait in the listen backlog.
func (s *Server) Run(ctx context.Context) error {
	cfg := s.cfg.Load()
	if err := s.listen(cfg); err != nil {
		s.closeAll()
		return err
	}
	errc := make(chan error, len(s.listeners)+1)
	var serving sync.WaitGroup
	if s.workers != nil {
		wctx, stopWorkers := context.WithCancel(context.Background())
		wdone := make(chan struct{})
		go func() { defer close(wdone); s.workers.Run(wctx) }()
		// After the drain: the last calls keep the workers they had.
		defer func() { stopWorkers(); <-wdone }()
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
	s.warmMesh(ctx)
	s.warm(ctx, s.liveRuns())
	for _, l := range s.listeners {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := l.srv.Serve(l.lis); !serveStopped(err) {
				errc <- fmt.Errorf("server: listener %s: %w", l.cfg.Name, err)
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

// liveRuns returns the clusters in force.
func (s *Server) liveRuns() []*clusterRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	runs := make([]*clusterRun, 0, len(s.runs))
	for _, r := range s.runs {
		runs = append(runs, r)
	}
	return runs
}

// listen binds every listener and the admin port, with SO_REUSEPORT unless
// WithReusePort(false). The admin port is shared like the listeners: the
// same config starts a second meshd, and /ready?pid=N tells which process
// answered (admin.go).
func (s *Server) listen(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	bind := listenConfig(s.reusePort)
	for _, lc := range cfg.Listeners {
		lis, err := bind.Listen(context.Background(), "tcp", lc.Address)
		if err != nil {
			return fmt.Errorf("server: listener %s: %w", lc.Name, err)
		}
		capped := limit(lis, lc.MaxConnections)
		// The engine applies TLS, limits, keepalive and original_dst
		// itself and polices HTTP/2 inside its own connections (frame.go).
		srv, fl, err := s.frameListener(cfg, lc, capped)
		if err != nil {
			lis.Close()
			return fmt.Errorf("server: listener %s: %w", lc.Name, err)
		}
		s.listeners = append(s.listeners, &listener{cfg: lc, lis: fl, srv: srv, capped: capped})
	}
	if cfg.Admin.Address != "" {
		a, err := admin.Listen(cfg.Admin.Address, s, append([]admin.Option{admin.WithLogger(s.log.With("component", "admin")), admin.WithListenConfig(bind)}, s.adminOpts...)...)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		s.admin = a
	}
	return nil
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
			go func() { defer wg.Done(); l.srv.GracefulStop() }()
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
			l.srv.Stop()
		}
		<-done
	}
	s.closeAll()
}

// closeAll stops the admin server, the Consul KV watch, every cluster and
// retirement goroutine. A second call waits for the first to finish. It
// does not hold mu while it waits: a reload in progress (on the apply loop)
// may need mu to see that the Server is stopping.
func (s *Server) closeAll() {
	s.mu.Lock()
	select {
	case <-s.stopping:
		s.mu.Unlock()
		<-s.closed
		return
	default:
	}
	close(s.stopping)
	adm, listeners, kv, kube := s.admin, s.listeners, s.kv, s.kubeSrc
	s.mu.Unlock()
	defer close(s.closed)
	if kv != nil {
		kv.cancel()
	}
	if kube != nil {
		kube.cancel()
	}
	if adm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := adm.Shutdown(ctx); err != nil {
			s.log.Warn("admin shutdown", "err", err)
		}
		cancel()
	}
	for _, l := range listeners {
		l.srv.Stop()
	}
	if s.mesh != nil {
		s.mesh.stop()
	}
	s.mu.Lock()
	jwt := s.jwt
	s.mu.Unlock()
	jwt.Stop()
	s.dests.close()
	s.wg.Wait()
	s.mu.Lock()
	runs := s.runs
	s.runs = nil
	s.mu.Unlock()
	// The listeners are stopped: no call is left on the clusters' pools,
	// whose idle connections get a GOAWAY, all within one grace.
	ctx, cancel := context.WithTimeout(context.Background(), poolCloseGrace)
	defer cancel()
	for _, r := range runs {
		r.stop(ctx)
	}
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
		return errors.New("listeners not up (clusters warming)")
	}
	st := s.dir.State()
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
	if s.mesh != nil {
		if err := s.mesh.ready(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	jwt := s.jwt
	s.mu.Unlock()
	if err := jwt.Ready(); err != nil {
		return err
	}
	if err := s.kvReady(); err != nil {
		return err
	}
	return s.kubeReady()
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
	if kv := s.kvStatus(); kv != nil {
		out["consul_config_key"] = kv
	}
	if k := s.kubeStatus(); k != nil {
		out["grpcroutes"] = k
	}
	sources := make(map[string]string, len(cfg.Routes))
	for _, r := range cfg.Routes {
		sources[r.Name] = routeSource(r)
	}
	out["route_sources"] = sources
	if s.mesh != nil {
		out["mesh_intentions"] = s.mesh.dump()
	}
	return out
}

// Routes implements admin.Source.
func (s *Server) Routes() any {
	st := s.dir.State()
	if st == nil {
		return []any{}
	}
	type routeView struct {
		Name           string                   `json:"name"`
		Listeners      []string                 `json:"listeners,omitempty"`
		Source         string                   `json:"source"`
		Match          config.Match             `json:"match"`
		HeaderEdits    []string                 `json:"header_edits,omitempty"`
		JWTProvider    string                   `json:"jwt_provider,omitempty"`
		Clusters       []config.WeightedCluster `json:"clusters"`
		Timeout        string                   `json:"timeout,omitempty"`
		MaxGRPCTimeout string                   `json:"max_grpc_timeout,omitempty"`
		IdleTimeout    string                   `json:"idle_timeout,omitempty"`
		RateLimit      float64                  `json:"rate_limit_per_second,omitempty"`
		Retry          *config.Retry            `json:"retry,omitempty"`
	}
	var out []routeView
	for _, r := range st.Table.Routes() {
		v := routeView{Name: r.Name, Source: routeSource(config.Route{Source: r.Source}), Listeners: r.Listeners, Match: r.Match, Clusters: r.Clusters, Retry: r.Retry,
			HeaderEdits: r.DescribeEdits(), JWTProvider: r.JWT}
		if r.Timeout > 0 {
			v.Timeout = r.Timeout.String()
		}
		if pol := r.Policy; pol != nil {
			if pol.IdleTimeout > 0 {
				v.IdleTimeout = pol.IdleTimeout.String()
			}
			if pol.RateLimit != nil {
				v.RateLimit = pol.RateLimit.Rate()
			}
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
		Status      any                      `json:"status"`
		Discovery   *discovery.WatchStatus   `json:"discovery,omitempty"`
		Limits      *policy.LimiterStats     `json:"limits,omitempty"`
		RetryBudget *policy.RetryBudgetStats `json:"retry_budget,omitempty"`
		// Reflection says, by reflection listener, whether the
		// cluster's backends answered server reflection.
		Reflection map[string]string `json:"reflection,omitempty"`
	}
	st := s.dir.State()
	out := map[string]clusterView{}
	for name, r := range s.runs {
		v := clusterView{Status: r.cl.Status()}
		if st != nil {
			if l := st.Limits[name].Stats(); st.Limits[name] != nil {
				v.Limits = &l
			}
			if b := st.Budgets[name].Stats(); st.Budgets[name] != nil {
				v.RetryBudget = &b
			}
		}
		if sr, ok := r.resolver.(statusReporter); ok {
			ws := sr.Status()
			v.Discovery = &ws
		}
		for _, l := range s.listeners {
			if l.srv.refl == nil {
				continue
			}
			if rs, ok := l.srv.refl.merger.Status()[name]; ok {
				if v.Reflection == nil {
					v.Reflection = map[string]string{}
				}
				v.Reflection[l.cfg.Name] = rs
			}
		}
		out[name] = v
	}
	return out
}

// routeSource names where a route came from: "file" when nothing else.
func routeSource(r config.Route) string {
	if r.Source == "" {
		return "file"
	}
	return r.Source
}

// kubeFor reports whether the GRPCRoute rules in force still apply to cfg
// (it keeps the same kubernetes section). It runs on the apply loop.
func (s *Server) kubeFor(cfg *config.Config) bool {
	s.mu.Lock()
	w := s.kubeSrc
	s.mu.Unlock()
	return w != nil && cfg.Kubernetes != nil && cfg.Kubernetes.GRPCRoutes != nil && reflect.DeepEqual(w.of, *cfg.Kubernetes)
}
