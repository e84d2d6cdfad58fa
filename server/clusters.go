package server

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/director"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/healthwatch"
	"github.com/meshd/meshd/policy"
)

// resolver is what a cluster's endpoints come from.
type resolver interface {
	Watch(ctx context.Context, update func([]discovery.Endpoint)) error
}

// statusReporter is implemented by resolvers that can be unhealthy (Consul).
type statusReporter interface {
	Status() discovery.WatchStatus
}

// clusterRun is one live cluster and the discovery loop feeding it.
type clusterRun struct {
	cfg      config.Cluster // as loaded, for change detection on reload
	maxMsg   int
	cl       *balancer.Cluster
	resolver resolver
	cancel   context.CancelFunc
	done     chan struct{}
	forget   func(*clusterRun) // drops the run from the original-dst owner index
	// limiter and budget hold the cluster's call counters; each State gets
	// a view with the limits of its config (resilience.go).
	limiter *policy.Limiter
	budget  *policy.RetryBudget
	// pool holds the cluster's connections for calls, shared by every
	// listener: the cluster discovered the endpoints, so it alone forgets
	// a removed one's connections (balancer.Options.OnClosed) and closes
	// the pool when the run stops.
	pool *engine.Pool
	// upstream is how the engine reaches the endpoints: through pool, over
	// TLS or h2c. A run is rebuilt when its TLS settings change, so a new
	// Upstream and pool (new connections) come with it.
	upstream *engine.Upstream
}

// poolCloseGrace bounds how long a stopping cluster waits for its idle
// connections to close gracefully (GOAWAY, then the backend's EOF).
const poolCloseGrace = time.Second

// sameAs reports whether the run can serve cfg unchanged.
func (r *clusterRun) sameAs(cfg config.Cluster, maxMsg int) bool {
	return r.maxMsg == maxMsg && reflect.DeepEqual(connIdentity(r.cfg), connIdentity(cfg))
}

// connIdentity is the part of a cluster's config its connections, health
// state and discovery depend on. Limits and the retry budget apply per
// call, so changing them keeps the cluster (and its counters) as it is.
func connIdentity(c config.Cluster) config.Cluster {
	c.MaxRequests, c.MaxPending, c.RetryBudget = 0, 0, config.RetryBudget{}
	return c
}

// stop ends the discovery loop, closes the cluster's health connections
// and closes its pool: gracefully, within ctx, when no call uses the
// cluster any more; at once (stopNow) when calls may still be in flight.
func (r *clusterRun) stop(ctx context.Context) {
	r.halt()
	_ = r.pool.Shutdown(ctx) // ctx's end only makes it close at once
}

// stopNow is stop with no grace: calls still on the pool's connections
// end as with a lost backend.
func (r *clusterRun) stopNow() {
	r.halt()
	_ = r.pool.Close()
}

// halt ends the discovery loop and closes the balancer cluster, whose
// endpoints' closing forgets their addresses in the pool.
func (r *clusterRun) halt() {
	r.cancel()
	<-r.done
	if r.forget != nil {
		r.forget(r)
	}
	r.cl.Close()
}

// outstanding is the number of calls in flight on the cluster.
func (r *clusterRun) outstanding() int64 {
	var n int64
	for _, e := range r.cl.Status().Endpoints {
		n += e.Outstanding
	}
	return n
}

// balancerOptions translates a cluster's config section.
func balancerOptions(c config.Cluster, log *slog.Logger) balancer.Options {
	fc := make([]codes.Code, len(c.Outlier.FailureCodes))
	for i, x := range c.Outlier.FailureCodes {
		fc[i] = x.C()
	}
	// The balancer reads zero as "default" and negative as "off"; the config
	// has already applied its defaults, so an explicit 0 here means off.
	consecutive := c.Outlier.ConsecutiveFailures
	if consecutive == 0 {
		consecutive = -1
	}
	maxEject := *c.Outlier.MaxEjectionPercent
	if maxEject == 0 {
		maxEject = -1
	}
	var loc balancer.LocalityOptions
	if l := c.Locality; l != nil {
		loc = balancer.LocalityOptions{LocalZone: l.LocalZone, MinHealthyPercent: *l.MinHealthyPercent}
	}
	out := balancer.OutlierOptions{
		ConsecutiveFailures: consecutive,
		BaseEjectionTime:    c.Outlier.BaseEjectionTime.D(),
		MaxEjectionTime:     c.Outlier.MaxEjectionTime.D(),
		MaxEjectionPercent:  maxEject,
		FailureCodes:        fc,
	}
	if fp := c.Outlier.FailurePercentage; fp != nil {
		out.FailurePercentage = fp.Threshold
		out.FailureMinRequests = fp.MinimumRequests
		out.Interval = fp.Interval.D()
	}
	return balancer.Options{
		Name:       c.Name,
		Policy:     c.LB,
		HashHeader: c.HashHeader,
		Health: balancer.HealthOptions{
			Service:        c.Health.Service,
			Disabled:       c.Health.Disabled,
			MissingServing: c.Health.Missing != "ejected",
			CheckInterval:  c.Health.CheckInterval.D(),
			BackoffMax:     c.Health.ReconnectMax.D(),
		},
		Outlier:               out,
		AllDown:               c.AllDown,
		HealthyPanicThreshold: c.HealthyPanicThreshold,
		SlowStart:             c.SlowStart.D(),
		Locality:              loc,
		Logger:                log, // the Cluster adds component and cluster
	}
}

// zoneKey is the Consul metadata key of c's endpoints' zones, "" when the
// cluster is not zone-aware (then no zone is looked up at all).
func zoneKey(c config.Cluster) string {
	if c.Locality == nil {
		return ""
	}
	return c.Locality.ZoneKey
}

// upstreamCreds builds how meshd reaches a cluster's endpoints: h2c
// (insecure credentials, an Upstream that dials plain TCP), or TLS whose
// files are reloaded when they change (tls.go), as grpc-go credentials for
// the health checks and as the engine's Upstream for calls. The caller
// sets the Upstream's Pool.
func upstreamCreds(name string, t *config.UpstreamTLS, log *slog.Logger) (credentials.TransportCredentials, *engine.Upstream, error) {
	if t == nil {
		return insecure.NewCredentials(), &engine.Upstream{Name: name}, nil
	}
	u, err := loadUpstreamTLS(t, log)
	if err != nil {
		return nil, nil, err
	}
	return u.creds(), u.upstream(name), nil
}

// poolConfig is the engine's backend-side settings for cfg's clusters'
// pools. Response header lists are held to the largest limit a listener
// sets, as they were when each listener's engine had its own pool; the
// rest are the engine's defaults, as they were.
func poolConfig(cfg *config.Config) engine.PoolConfig {
	var hdr uint32
	for _, lc := range cfg.Listeners {
		hdr = max(hdr, lc.MaxHeaderListSize)
	}
	return engine.PoolConfig{MaxHeaderListSize: hdr}
}

// newClusterRun builds a cluster with its connection pool (pc, Logger
// narrowed to the cluster) and starts its discovery loop.
func (s *Server) newClusterRun(c config.Cluster, maxMsg int, pc engine.PoolConfig, consul *api.Client, kube *kubeClients) (*clusterRun, error) {
	creds, upstream, err := upstreamCreds(c.Name, c.TLS, s.log.With("cluster", c.Name))
	if err != nil {
		return nil, fmt.Errorf("cluster %q: tls: %w", c.Name, err)
	}
	if c.MeshTLS != nil {
		if s.mesh == nil {
			return nil, fmt.Errorf("cluster %q: mesh_tls needs the mesh section meshd started with", c.Name)
		}
		// Health checks and calls both handshake as this workload and
		// require the peer to be the cluster's service.
		creds, upstream = s.mesh.upstream(c.Name, c.MeshTLS.Service)
	}
	pc.Logger = s.log.With("cluster", c.Name) // the engine adds its component
	pool := engine.NewPool(pc)
	upstream.Pool = pool
	// grpc-go connections to endpoints carry their health checks only;
	// calls go through the engine's pool. grpc-go's own retries and
	// service config are off: a backend must not steer meshd's client.
	// Reconnects are capped at health.reconnect_max and each try gets the
	// engine's dial timeout, so health checking and calls give a backend
	// the same bound (healthwatch.ConnectParams).
	dopts := []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithDisableRetry(), grpc.WithDisableServiceConfig(),
		grpc.WithConnectParams(healthwatch.ConnectParams(c.Health.ReconnectMax.D(), engine.DefaultDialTimeout))}
	dial := func(ep discovery.Endpoint) (*grpc.ClientConn, error) {
		return grpc.NewClient(ep.Address, dopts...)
	}
	bopts := balancerOptions(c, s.log)
	// A removed endpoint's connections are this cluster's to close; other
	// clusters' connections to the same address are in their own pools.
	bopts.OnClosed = pool.Forget
	cl, err := balancer.NewCluster(bopts, dial)
	if err != nil {
		_ = pool.Close()
		return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	var res resolver
	if c.Consul != nil {
		if consul == nil {
			cl.Close()
			_ = pool.Close()
			return nil, fmt.Errorf("cluster %q: no consul client", c.Name)
		}
		res = discovery.NewConsul(consul, discovery.ConsulQuery{
			Service:     c.Consul.Service,
			Tag:         c.Consul.Tag,
			Datacenter:  c.Consul.Datacenter,
			PassingOnly: *c.Consul.PassingOnly,
			Connect:     c.Consul.Connect,
			ZoneKey:     zoneKey(c),
		}, discovery.WithLogger(s.log.With("cluster", c.Name))) // discovery adds component and service
	} else if c.Kubernetes != nil {
		if kube == nil {
			cl.Close()
			_ = pool.Close()
			return nil, fmt.Errorf("cluster %q: no kubernetes client", c.Name)
		}
		k := c.Kubernetes
		res = discovery.NewKubernetes(kube.dyn, discovery.KubernetesQuery{Namespace: k.KubernetesNamespace(), Service: k.Service, Port: k.Port},
			discovery.WithKubernetesLogger(s.log.With("cluster", c.Name)))
	} else {
		eps := make([]discovery.Endpoint, len(c.Endpoints))
		for i, e := range c.Endpoints {
			eps[i] = discovery.Endpoint{ID: e.Address, Address: e.Address, Weight: e.Weight, Zone: e.Zone}
		}
		res = discovery.NewStatic(eps)
		// Static endpoints are known now: apply them before the cluster
		// can take a call, so the first call after start or reload does
		// not race the discovery goroutine and find the cluster empty.
		// The Static resolver then re-sends the same list, which Update
		// treats as unchanged.
		cl.Update(eps)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &clusterRun{cfg: c, maxMsg: maxMsg, cl: cl, resolver: res, cancel: cancel, done: make(chan struct{}), forget: s.dests.forget,
		limiter: policy.NewLimiter(0, 0), budget: policy.NewRetryBudget(0, 0, nil), pool: pool, upstream: upstream}
	go func() {
		defer close(r.done)
		// Watch returns ctx.Err() when stopped; anything else is logged
		// here, by the loop's owner.
		// The owner index of original destinations sees each snapshot first.
		if err := res.Watch(ctx, s.dests.watch(r, c.Name, cl.Update)); err != nil && ctx.Err() == nil {
			s.log.Error("discovery stopped", "cluster", c.Name, "err", err)
		}
	}()
	return r, nil
}

// retire closes a cluster that a reload dropped, with its pool, once no
// call can use it any more (every State that holds it has no call left,
// including calls between two retry attempts) or the drain timeout
// passes. It runs on a goroutine the Server owns; the caller holds s.mu
// and has checked that the Server is not stopping.
func (s *Server) retire(r *clusterRun, states []*director.State, drain time.Duration) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		deadline := time.NewTimer(drain)
		defer deadline.Stop()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for !drained(states) {
			select {
			case <-deadline.C:
				s.log.Warn("closing retired cluster with calls in flight", "cluster", r.cfg.Name, "outstanding", r.outstanding())
				r.stopNow()
				return
			case <-tick.C:
			case <-s.stopping:
				r.stopNow()
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), poolCloseGrace)
		defer cancel()
		r.stop(ctx)
	}()
}
