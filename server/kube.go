package server

import (
	"context"
	"fmt"
	"reflect"
	"slices"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/kuberoutes"
)

// The Kubernetes side: clients for the API server named by the
// kubernetes section (EndpointSlice discovery for clusters with a
// kubernetes section, clusters.go) and, with kubernetes.grpcroutes, the
// GRPCRoute source (package kuberoutes), a third config source beside the
// file and the Consul key. Its rules reach the apply loop as whole
// translations (kubeSnapshot) and are joined there: GRPCRoute routes
// first, then the Consul key's, then the file's. Each GRPCRoute's routes
// are validated on their own first, so one bad route is refused (and its
// status says why) without holding back the others.

// kubeClients are the API clients of one kubernetes section. meshd uses
// only the dynamic client (objects are converted into the k8s.io/api and
// Gateway API types): the typed clientsets would link every API group.
type kubeClients struct {
	of  config.Kubernetes // kubeconfig the clients were built from
	dyn dynamic.Interface
}

// newKubeClients builds clients from k.Kubeconfig, or the in-cluster
// service account when it is "".
func newKubeClients(k *config.Kubernetes) (*kubeClients, error) {
	var rc *rest.Config
	var err error
	if k.Kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	// Informers list once and then watch; the budget matters for status
	// writes after many routes change at once.
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "meshd"
	c := &kubeClients{of: config.Kubernetes{Kubeconfig: k.Kubeconfig}}
	if c.dyn, err = dynamic.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	return c, nil
}

func needsKube(cfg *config.Config) bool {
	if cfg.Kubernetes == nil {
		return false
	}
	if cfg.Kubernetes.GRPCRoutes != nil {
		return true
	}
	for _, c := range cfg.Clusters {
		if c.Kubernetes != nil {
			return true
		}
	}
	return false
}

// kubeWatch is a running GRPCRoute source.
type kubeWatch struct {
	of      config.Kubernetes // the section it was started for
	clients *kubeClients
	src     *kuberoutes.Source
	cancel  context.CancelFunc
}

// kubeSnapshot is a new translation from the source w. The loop sets
// rejected before answering.
type kubeSnapshot struct {
	w        *kubeWatch
	rules    kuberoutes.Rules
	rejected map[string]error
}

// syncKube starts, stops or restarts the GRPCRoute source to match cfg,
// after a successful apply (so s.kubeClients are cfg's). It runs on the
// apply loop. An old source is cancelled, not waited for: it may be
// waiting for the apply loop itself; closeAll waits for it (s.wg).
func (s *Server) syncKube(cfg *config.Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var want *config.Kubernetes
	if cfg.Kubernetes != nil && cfg.Kubernetes.GRPCRoutes != nil {
		want = cfg.Kubernetes
	}
	cur := s.kubeSrc
	if cur != nil && want != nil && reflect.DeepEqual(cur.of, *want) && cur.clients == s.kubeClients {
		return
	}
	if cur != nil {
		cur.cancel()
		s.kubeSrc = nil
		s.kubeRules = nil
	}
	if want == nil {
		return
	}
	select {
	case <-s.stopping:
		return
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &kubeWatch{of: *want, clients: s.kubeClients, cancel: cancel}
	g := want.GRPCRoutes
	opts := s.kubeOpts
	opts.Mode = kuberoutes.Mode{Gateway: g.Gateway, Mesh: g.Mesh}
	opts.Namespaces = want.Namespaces
	opts.LeaseNamespace, opts.LeaseName = want.LeaseNamespace, want.LeaseName
	opts.Logger = s.log
	w.src = kuberoutes.New(w.clients.dyn, func(ctx context.Context, rules kuberoutes.Rules) (map[string]error, error) {
		ks := &kubeSnapshot{w: w, rules: rules}
		err := s.submit(ctx, snapshot{kubeRules: ks})
		return ks.rejected, err
	}, opts)
	s.kubeSrc = w
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = w.src.Run(ctx) // returns ctx.Err(); it logs its own failures
	}()
}

// applyKube applies a new translation, on the apply loop.
func (s *Server) applyKube(ks *kubeSnapshot) error {
	s.mu.Lock()
	current := s.kubeSrc == ks.w
	s.mu.Unlock()
	if !current {
		return nil // replaced by a reload that changed the kubernetes section
	}
	base, err := s.withKV(s.fileCfg)
	if err != nil {
		return s.count(err)
	}
	eff, rejected, err := withKube(base, &ks.rules)
	if err == nil {
		err = s.apply(eff)
	}
	ks.rejected = rejected
	if s.count(err) != nil {
		s.log.Error("GRPCRoute rules rejected; the last good rules keep serving", "component", "grpcroutes", "err", err)
		return err
	}
	r := ks.rules
	s.kubeRules = &r
	for src, e := range rejected {
		s.log.Warn("GRPCRoute refused", "component", "grpcroutes", "route", src, "err", e)
	}
	return nil
}

// withKV joins cfg (a file's config) with the Consul key's rules in force.
func (s *Server) withKV(cfg *config.Config) (*config.Config, error) {
	src, data := s.kvFor(cfg)
	if data == nil {
		return cfg, nil
	}
	f, err := config.ParseFragment(data, src)
	if err == nil {
		var m *config.Config
		if m, err = config.Merge(cfg, f); err == nil {
			return m, nil
		}
	}
	return nil, fmt.Errorf("server: config with the rules from %s: %w", src, err)
}

// withKube joins base with a GRPCRoute translation: its clusters, then
// the routes of each GRPCRoute that validates with them (the others are
// returned in rejected, by source), in the translation's order, before
// base's routes.
func withKube(base *config.Config, rules *kuberoutes.Rules) (*config.Config, map[string]error, error) {
	if rules == nil || (len(rules.Routes) == 0 && len(rules.Clusters) == 0) {
		return base, nil, nil
	}
	withClusters, err := config.Merge(base, &config.Fragment{Clusters: slices.Clone(rules.Clusters), Source: "kubernetes"})
	if err != nil {
		return nil, nil, fmt.Errorf("server: GRPCRoute backends: %w", err)
	}
	var order []string
	bySource := map[string][]config.Route{}
	for _, r := range rules.Routes {
		if _, ok := bySource[r.Source]; !ok {
			order = append(order, r.Source)
		}
		bySource[r.Source] = append(bySource[r.Source], r)
	}
	rejected := map[string]error{}
	for _, src := range order {
		if _, err := config.Merge(withClusters, &config.Fragment{Routes: cloneRoutes(bySource[src]), Source: src}); err != nil {
			rejected[src] = err
		}
	}
	var routes []config.Route
	for _, r := range rules.Routes {
		if rejected[r.Source] == nil {
			routes = append(routes, r)
		}
	}
	eff, err := config.Merge(base, &config.Fragment{Routes: cloneRoutes(routes), Clusters: slices.Clone(rules.Clusters), Source: "kubernetes"})
	if err != nil {
		return nil, nil, fmt.Errorf("server: GRPCRoute rules: %w", err)
	}
	return eff, rejected, nil
}

// cloneRoutes copies routes deeply enough that Merge's defaults do not
// reach the source's copy.
func cloneRoutes(rs []config.Route) []config.Route {
	out := slices.Clone(rs)
	for i := range out {
		out[i].Match.Headers = slices.Clone(out[i].Match.Headers)
		out[i].Clusters = slices.Clone(out[i].Clusters)
	}
	return out
}

// kubeReady reports why the server is not ready as far as GRPCRoutes go:
// the first translation must have been handled, so that a fresh instance
// does not take traffic without its routes.
func (s *Server) kubeReady() error {
	s.mu.Lock()
	w := s.kubeSrc
	s.mu.Unlock()
	if w == nil {
		return nil
	}
	select {
	case <-w.src.First():
		return nil
	default:
		return fmt.Errorf("waiting for the GRPCRoutes from the Kubernetes API")
	}
}

// kubeStatus returns the GRPCRoute source's status, or nil without one.
func (s *Server) kubeStatus() *kuberoutes.Status {
	s.mu.Lock()
	w := s.kubeSrc
	s.mu.Unlock()
	if w == nil {
		return nil
	}
	st := w.src.Status()
	return &st
}

// WithKubeOptions sets the GRPCRoute source's leader-election timings and
// identity (tests shorten them); Mode, namespaces, the Lease's name and
// the logger always come from the config and the Server.
func WithKubeOptions(o kuberoutes.Options) Option { return func(s *Server) { s.kubeOpts = o } }

// kubeClientsFor returns the clients cfg needs (nil if none): the current
// ones when the kubeconfig did not change. It runs on the apply loop.
func (s *Server) kubeClientsFor(cfg *config.Config) (*kubeClients, error) {
	if !needsKube(cfg) {
		return nil, nil
	}
	s.mu.Lock()
	cur := s.kubeClients
	s.mu.Unlock()
	if cur != nil && cur.of.Kubeconfig == cfg.Kubernetes.Kubeconfig {
		return cur, nil
	}
	return newKubeClients(cfg.Kubernetes)
}
