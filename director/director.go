package director

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
	"github.com/meshd/meshd/tracing"
)

// State is one loaded configuration's data-path view: the route table
// (each route carrying its policy) and the clusters it names. It is
// immutable once handed to Swap; a reload swaps in a whole new State, and
// calls already running keep the one they started with.
type State struct {
	Table    *router.Table
	Clusters map[string]*balancer.Cluster
	// Limits holds each cluster's max_requests/max_pending (absent: none).
	Limits map[string]*policy.Limiter
	// Budgets holds each cluster's retry budget (absent: retries are
	// capped by attempts only).
	Budgets map[string]*policy.RetryBudget
	// RetryBuffer caps the bytes all calls hold for retries (nil: no cap).
	RetryBuffer *policy.ByteBudget
	// Upstreams holds, by cluster name, how the engine reaches the
	// cluster's endpoints: the cluster's own connection pool
	// (Upstream.Pool), shared by every listener, and its TLS dial, if any.
	// Absent or nil: the listener engine's own pool, over h2c. Each
	// cluster's value is kept while the cluster is, so that its pooled
	// connections are too.
	Upstreams map[string]*engine.Upstream

	// calls counts the calls running on this State, so that a reload can
	// tell when no call can use a cluster it removed any more.
	calls atomic.Int64
}

// upstream is the engine's Upstream for cluster name. A State without
// Upstreams (tests) pays a length check, not a map lookup, per call.
func (st *State) upstream(name string) *engine.Upstream {
	if len(st.Upstreams) == 0 {
		return nil
	}
	return st.Upstreams[name]
}

// Active is the number of calls running on st. Once st has been swapped
// out and Active is 0 it stays 0: new calls only start on the new State.
func (st *State) Active() int64 { return st.calls.Load() }

// Director is meshd's engine.Director. The zero value is not usable; use
// New. Its methods are safe for concurrent use.
type Director struct {
	state     atomic.Pointer[State]
	log       *slog.Logger
	observers []callrecord.Observer
	dst       *dstRouting       // nil: no transparent listeners (origdst.go)
	tracer    *tracing.Provider // nil when tracing is off
	// authz authorizes the calls of mesh listeners (authz.go); nil: no
	// mesh section. destination is this workload's service.
	authz       Authorizer
	destination string
}

var _ engine.Director = (*Director)(nil)

// Option configures a Director.
type Option func(*Director)

// WithTracer makes the spans of every call with tp: a SERVER span
// continuing the caller's W3C context and a CLIENT span per upstream
// attempt. A disabled or nil provider leaves tracing off.
func WithTracer(tp *tracing.Provider) Option {
	return func(d *Director) {
		if tp.Enabled() {
			d.tracer = tp
		}
	}
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(d *Director) { d.log = l } }

// WithObserver adds an observer (metrics, access log). Several may be added.
func WithObserver(o callrecord.Observer) Option {
	return func(d *Director) { d.observers = append(d.observers, o) }
}

// New returns a Director with no State: calls fail with UNAVAILABLE until
// Swap.
func New(opts ...Option) *Director {
	d := &Director{log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(d)
	}
	return d
}

// Swap installs st for new calls and returns the previous State.
func (d *Director) Swap(st *State) *State { return d.state.Swap(st) }

// State returns the current State (nil before the first Swap).
func (d *Director) State() *State { return d.state.Load() }

// acquire returns the current State with one call counted on it, or nil.
// The State is read again after counting: either a reload sees this call
// in Active, or this call sees the reload's new State and moves to it.
func (d *Director) acquire() *State {
	for {
		st := d.state.Load()
		if st == nil {
			return nil
		}
		st.calls.Add(1)
		if d.state.Load() == st {
			return st
		}
		st.calls.Add(-1)
	}
}

// Direct implements engine.Director: route, admit, pick. It runs on the
// client connection's reader goroutine, so everything it does is
// non-blocking: a lookup in an immutable table, the policy's admission and
// a pick from the cluster's snapshot.
//
// On an original_dst listener ctx carries the connection's origdst.Info
// (the server's accept loop puts it there), so lookup and cluster route by
// original destination; on any other listener they cost one context lookup
// and allocate nothing.
func (d *Director) Direct(ctx context.Context, req *engine.Request) (engine.Target, error) {
	start := time.Now()
	// Authorization comes before routing: a denied caller learns nothing
	// about the routes, and is told PERMISSION_DENIED whatever it calls.
	peer, err := d.authorize(ctx, req)
	if err != nil {
		return engine.Target{}, d.failed(req, start, callrecord.Call{Peer: peer, Denied: true}, err)
	}
	st := d.acquire()
	if st == nil {
		return engine.Target{}, d.failed(req, start, callrecord.Call{Peer: peer}, policy.ErrNotReady())
	}
	route := d.lookup(ctx, st, req.Method, routingHeaders(st, req))
	if route == nil {
		st.calls.Add(-1)
		return engine.Target{}, d.failed(req, start, callrecord.Call{Peer: peer}, policy.ErrNoRoute(req.Method))
	}
	name := route.PickCluster(rand.Uint32())
	fail := func(err error) (engine.Target, error) {
		st.calls.Add(-1)
		return engine.Target{}, d.failed(req, start, callrecord.Call{Route: route.Name, Cluster: name, Peer: peer}, err)
	}
	cl, up := d.cluster(ctx, st, name)
	if cl == nil {
		return fail(policy.ErrUnknownCluster(route.Name, name))
	}
	pol, lim := route.Policy, st.Limits[name]
	if err := policy.Admit(pol, lim); err != nil {
		return fail(err)
	}
	ep, err := cl.Pick(&balancer.PickInfo{Method: req.Method, Header: req.Header})
	if err != nil {
		lim.Release()
		return fail(policy.ErrNoEndpoint(name, err))
	}
	d.callStarted()
	c := &call{d: d, st: st, cl: cl, up: up, ep: ep, lim: lim, start: start,
		rec: callrecord.Call{Method: req.Method, Route: route.Name, Cluster: name, Endpoint: ep.Address(), Start: start, Attempts: 1, PeerAddr: req.RemoteAddr, Peer: peer}}
	// Reroute: c is a pointer, so it goes into the interface without an
	// allocation (a method value such as c.done costs one).
	target := engine.Target{Addr: ep.Address(), Upstream: up, Done: c.done, Reroute: c}
	// The engine sends the budget upstream only when it, not the client,
	// sets the deadline; the status is the route's, built once.
	target.Timeout, target.TimeoutErr = pol.Budget(req.Deadline, start)
	if lim.HasPendingLimit() {
		target.Pending, target.PendingErr = lim, lim.PendingErr()
	}
	if d.tracer != nil {
		target.Header = c.startSpans(ctx, req)
	}
	// The retry budget counts every call.
	st.Budgets[name].Deposit()
	if pol != nil && (pol.IdleTimeout > 0 || pol.Retry != nil) {
		c.resilience(&target, pol, req) // retry.go
	}
	return target, nil
}

// callStarted tells the observers that want it that a call began.
func (d *Director) callStarted() {
	for _, o := range d.observers {
		if s, ok := o.(callrecord.StartObserver); ok {
			s.CallStarted()
		}
	}
}
