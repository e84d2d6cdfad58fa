package proxy

import (
	"context"
	"math/rand/v2"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http2/hpack"

	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/h2proxy"
	"github.com/meshd/meshd/router"
	"github.com/meshd/meshd/tracing"
)

var _ h2proxy.Director = (*Proxy)(nil)

// Direct implements h2proxy.Director: the frame engine's per-call decision,
// over the same State (routes, clusters, limits) the grpc engine uses. It
// runs on the client connection's reader goroutine, so it only does what
// Handle does before opening the upstream stream: lookup, rate limit,
// concurrency limit and pick — all non-blocking.
//
// With a tracer it makes the same spans as the grpc engine's stats
// handlers: a SERVER span continuing the caller's W3C context and a CLIENT
// span for the upstream attempt, whose traceparent replaces the caller's on
// the way to the backend.
//
// A route's idle_timeout and retry policy are handed to the engine in the
// Target (frame_retry.go): it keeps the request for replay and asks
// retryAttempt, with the grpc engine's rules, before each new attempt;
// each attempt gets its own CLIENT span and grpc-previous-rpc-attempts.
//
// On an original_dst listener ctx carries the connection's origdst.Info
// (the server's accept loop puts it there), so lookup and cluster route by
// original destination exactly as Handle does; on any other listener they
// cost one context lookup and allocate nothing.
//
// Every call's Target names fc as its Rerouter (frame_retry.go): a call
// that never reached its backend (failed dial, no stream capacity, refused
// stream with nothing but HEADERS forwarded) goes to another endpoint on
// every route, as in Handle.
func (p *Proxy) Direct(ctx context.Context, req *h2proxy.Request) (h2proxy.Target, error) {
	start := time.Now()
	st := p.acquire()
	if st == nil {
		return h2proxy.Target{}, p.frameFailed(req, start, "", "", errNotReady())
	}
	route := p.lookup(ctx, st, req.Method, req.Header)
	if route == nil {
		st.calls.Add(-1)
		return h2proxy.Target{}, p.frameFailed(req, start, "", "", errNoRoute(req.Method))
	}
	name := route.PickCluster(rand.Uint32())
	fail := func(err error) (h2proxy.Target, error) {
		st.calls.Add(-1)
		return h2proxy.Target{}, p.frameFailed(req, start, route.Name, name, err)
	}
	cl := p.cluster(ctx, st, name)
	if cl == nil {
		return fail(errUnknownCluster(route.Name, name))
	}
	pol := st.Policies[route.Name]
	if pol != nil && !pol.RateLimit.Allow() {
		return fail(errRateLimited(route.Name, pol.RateLimit.Rate()))
	}
	lim := st.Limits[name]
	if !lim.Acquire() {
		return fail(errMaxRequests(name, lim.maxRequests))
	}
	ep, err := cl.Pick(&balancer.PickInfo{Method: req.Method, Header: req.Header})
	if err != nil {
		lim.Release()
		return fail(errNoEndpoint(name, err))
	}
	p.callStarted()
	fc := &frameCall{p: p, st: st, cl: cl, ep: ep, lim: lim, start: start,
		call: Call{Method: req.Method, Route: route.Name, Cluster: name, Endpoint: ep.Address(), Start: start, Attempts: 1}}
	fc.call.PeerAddr = req.RemoteAddr
	// Reroute: fc is a pointer, so it goes into the interface without an
	// allocation (a method value such as fc.done costs one).
	target := h2proxy.Target{Addr: ep.Address(), Upstream: st.upstream(name), Done: fc.done, Reroute: fc}
	if d, capped := frameTimeout(route, req.Deadline); d > 0 {
		// The engine sends it only when d, not the client, sets the
		// deadline; the same value for every call of the route.
		target.Timeout, target.TimeoutErr = d, pol.timeoutErr(route, capped)
	}
	// max_pending: only a cluster with the limit hands it to the engine.
	target.Pending, target.PendingErr = lim.framePending(name)
	if p.tracer != nil {
		sctx, sspan := p.tracer.StartServer(ctx, req.Method, headerCarrier{req.Header}, remote(req))
		tracing.SetRoute(sctx, route.Name, name)
		var out fieldCarrier
		_, cspan := p.tracer.StartClient(sctx, req.Method, ep.Address(), 1, &out)
		fc.sctx, fc.client = sctx, cspan
		target.Header = out
		fc.call.TraceID = sspan.SpanContext().TraceID()
	}
	// The retry budget counts every call, as the grpc engine's does.
	st.Budgets[name].Deposit()
	if pol != nil && (pol.IdleTimeout > 0 || pol.Retry != nil) {
		fc.frameResilience(&target, pol, req) // frame_retry.go
	}
	return target, nil
}

func remote(req *h2proxy.Request) string {
	if req.RemoteAddr == nil {
		return ""
	}
	return req.RemoteAddr.String()
}

// headerCarrier reads the caller's W3C context from the request's fields.
type headerCarrier struct{ h *h2proxy.Header }

func (c headerCarrier) Get(k string) string {
	if v := c.h.Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (headerCarrier) Set(string, string) {} // the inbound side is read-only
func (c headerCarrier) Keys() []string {
	fs := c.h.Fields()
	keys := make([]string, 0, len(fs))
	for _, f := range fs {
		keys = append(keys, f.Name)
	}
	return keys
}

// fieldCarrier collects the trace fields injected upstream.
type fieldCarrier []hpack.HeaderField

func (c *fieldCarrier) Get(k string) string {
	for _, f := range *c {
		if f.Name == k {
			return f.Value
		}
	}
	return ""
}
func (c *fieldCarrier) Set(k, v string) {
	*c = append(*c, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
}
func (c *fieldCarrier) Keys() []string {
	keys := make([]string, len(*c))
	for i, f := range *c {
		keys[i] = f.Name
	}
	return keys
}

// frameTimeout is the route's budget for the engine: the route timeout, and
// max_grpc_timeout when the client's own deadline is later than that cap.
// The engine then takes the tighter of this and the client's deadline.
// capped reports that the cap, not the route timeout, is the budget (as in
// callContext, the route timeout names an equal budget).
func frameTimeout(r *router.Route, deadline time.Time) (t time.Duration, capped bool) {
	t = r.Timeout
	if r.MaxGRPCTimeout > 0 && !deadline.IsZero() && time.Until(deadline) > r.MaxGRPCTimeout {
		if t == 0 || r.MaxGRPCTimeout < t {
			t, capped = r.MaxGRPCTimeout, true
		}
	}
	return t, capped
}

// timeoutErr is the status the frame engine sends when r's route timeout
// (capped false) or max_grpc_timeout cap (capped true) ends a call: the
// grpc engine's, naming the setting. Every call of the route gets the same
// error value, so this allocates nothing after the route's first call. A
// nil pol (a State without policies) builds it per call.
func (pol *RoutePolicy) timeoutErr(r *router.Route, capped bool) error {
	var e *timeoutErrs
	if pol != nil {
		e = pol.timeouts.Load()
	}
	if e == nil || e.timeout != r.Timeout || e.maxGRPC != r.MaxGRPCTimeout {
		// The policy is the route's, so the settings only differ if a
		// State pairs policies and routes oddly: correct, if not free.
		e = newTimeoutErrs(r.Timeout, r.MaxGRPCTimeout)
		if pol != nil {
			pol.timeouts.CompareAndSwap(nil, e)
		}
	}
	if capped {
		return e.maxGRPCErr
	}
	return e.timeoutErr
}

// frameCall is one frame-engine call between Direct and its Done.
type frameCall struct {
	p   *Proxy
	st  *State
	cl  *balancer.Cluster
	ep  *balancer.Endpoint
	lim *Limiter
	// start is when the current attempt started (call.Start: the call).
	start time.Time
	call  Call
	// sctx, when tracing is on, is the SERVER span's context (it holds the
	// span and the caller's baggage, for the CLIENT spans of later
	// attempts), client the current attempt's span; both nil otherwise.
	// The struct stays in its allocation size class: nothing here is kept
	// twice.
	sctx   context.Context
	client trace.Span
	// rt is the retry state of a call on a route with retries
	// (frame_retry.go), else nil.
	rt *frameRetry
	// transparent counts the attempts that did not reach a backend and
	// were sent elsewhere (Reroute, retryAttempt).
	transparent int
}

// done runs once when the engine finishes the stream.
func (fc *frameCall) done(res h2proxy.Result) {
	fc.cl.Done(fc.ep, fc.start, res.Code, res.NotReached)
	fc.lim.Release()
	fc.st.calls.Add(-1)
	if fc.sctx != nil {
		msg := ""
		if res.Err != nil {
			msg = res.Err.Error()
		}
		tracing.EndSpan(fc.client, res.Code, msg)
		tracing.EndSpan(trace.SpanFromContext(fc.sctx), res.Code, msg)
	}
	if len(fc.p.observers) == 0 {
		return
	}
	c := &fc.call
	c.Code, c.Duration = res.Code, time.Since(c.Start)
	c.BytesIn, c.BytesOut = res.BytesIn, res.BytesOut
	if res.Err != nil && !res.Committed {
		c.Message = res.Err.Error()
	}
	for _, o := range fc.p.observers {
		o.ObserveCall(c)
	}
}

// frameFailed reports a call meshd answered itself and returns err.
func (p *Proxy) frameFailed(req *h2proxy.Request, start time.Time, route, cluster string, err error) error {
	st := status.Convert(err)
	if p.tracer != nil {
		sctx, span := p.tracer.StartServer(context.Background(), req.Method, headerCarrier{req.Header}, remote(req))
		if route != "" {
			tracing.SetRoute(sctx, route, cluster)
		}
		tracing.EndSpan(span, st.Code(), st.Message())
	}
	if len(p.observers) == 0 {
		return err
	}
	p.callStarted()
	c := &Call{Method: req.Method, Route: route, Cluster: cluster, Code: st.Code(), Message: st.Message(), Start: start, Duration: time.Since(start)}
	c.PeerAddr = req.RemoteAddr
	for _, o := range p.observers {
		o.ObserveCall(c)
	}
	return err
}

// framePending returns what the frame engine's Target needs to enforce
// max_pending for cluster (h2proxy.Target.Pending and PendingErr), or nils
// when there is no such limit, so that ordinary calls carry nothing. The
// error is built once per Limiter, not per call.
func (l *Limiter) framePending(cluster string) (h2proxy.PendingLimiter, error) {
	if l == nil || l.maxPending <= 0 {
		return nil, nil
	}
	if e := l.pendingErr.Load(); e != nil {
		return l, *e
	}
	err := errMaxPending(cluster, l.maxPending)
	l.pendingErr.CompareAndSwap(nil, &err)
	return l, *l.pendingErr.Load()
}
