package proxy

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/h2proxy"
	"github.com/meshd/meshd/router"
	"github.com/meshd/meshd/tracing"
)

// State is one loaded configuration's data-path view: the route table and
// the clusters it names. It is immutable once handed to Swap; a reload swaps
// in a whole new State, and calls already running keep the one they started
// with.
type State struct {
	Table    *router.Table
	Clusters map[string]*balancer.Cluster
	// Limits holds each cluster's max_requests/max_pending (absent: none).
	Limits map[string]*Limiter
	// Budgets holds each cluster's retry budget (absent: retries are
	// capped by attempts only).
	Budgets map[string]*RetryBudget
	// Policies holds each configured route's idle timeout, rate limit and
	// retry policy, by route name.
	Policies map[string]*RoutePolicy
	// RetryBuffer caps the bytes all calls hold for retries (nil: no cap).
	RetryBuffer *ByteBudget
	// Upstreams holds, by cluster name, how the frame engine reaches the
	// endpoints of clusters that are not h2c (TLS); absent or nil: h2c.
	// Each cluster's value is kept while its TLS settings are unchanged,
	// so that its pooled connections are too. The grpc engine's
	// connections carry their own credentials.
	Upstreams map[string]*h2proxy.Upstream

	// calls counts the calls running on this State, so that a reload can
	// tell when no call can use a cluster it removed any more.
	calls atomic.Int64
}

// upstream is the frame engine's Upstream for cluster name. Configs with
// no TLS cluster pay a length check, not a map lookup, per call.
func (st *State) upstream(name string) *h2proxy.Upstream {
	if len(st.Upstreams) == 0 {
		return nil
	}
	return st.Upstreams[name]
}

// Active is the number of calls running on st. Once st has been swapped
// out and Active is 0 it stays 0: new calls only start on the new State.
func (st *State) Active() int64 { return st.calls.Load() }

// acquire returns the current State with one call counted on it, or nil.
// The State is read again after counting: either a reload sees this call
// in Active, or this call sees the reload's new State and moves to it.
func (p *Proxy) acquire() *State {
	for {
		st := p.state.Load()
		if st == nil {
			return nil
		}
		st.calls.Add(1)
		if p.state.Load() == st {
			return st
		}
		st.calls.Add(-1)
	}
}

// Proxy is the grpc-go based transparent forwarder. The zero value is not
// usable; use New. Its methods are safe for concurrent use.
type Proxy struct {
	state     atomic.Pointer[State]
	tracing   bool
	log       *slog.Logger
	observers []Observer
	dst       *dstRouting       // nil: no transparent listeners (origdst.go)
	tracer    *tracing.Provider // frame engine spans; nil when tracing is off
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithTracing says meshd's tracing handlers are installed, so inbound
// traceparent/tracestate/baggage are replaced rather than passed through.
func WithTracing(on bool) Option { return func(p *Proxy) { p.tracing = on } }

// WithTracer gives the frame engine the provider it makes its spans with
// (the grpc engine's spans come from the stats handlers). A disabled or nil
// provider leaves tracing off.
func WithTracer(tp *tracing.Provider) Option {
	return func(p *Proxy) {
		if tp.Enabled() {
			p.tracer, p.tracing = tp, true
		}
	}
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(p *Proxy) { p.log = l } }

// New returns a Proxy with no State: calls fail with UNAVAILABLE until Swap.
func New(opts ...Option) *Proxy {
	p := &Proxy{log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Swap installs st for new calls and returns the previous State.
func (p *Proxy) Swap(st *State) *State { return p.state.Swap(st) }

// State returns the current State (nil before the first Swap).
func (p *Proxy) State() *State { return p.state.Load() }

// ServerOptions are the grpc.Server options that make a server a meshd
// listener: the transparent handler for every method, the pass-through codec
// and the message size limit.
func (p *Proxy) ServerOptions(maxMsg int) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(p.Handle),
		grpc.ForceServerCodecV2(passCodec{}),
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxSendMsgSize(maxMsg),
	}
}

// DialOptions are the options every upstream connection needs: the
// pass-through codec, the message size limit, and grpc-go's own retries and
// service config off (meshd decides retries; a backend must not steer the
// proxy's client through service config).
func DialOptions(maxMsg int) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(passCodec{}),
			grpc.MaxCallRecvMsgSize(maxMsg),
			grpc.MaxCallSendMsgSize(maxMsg),
		),
		grpc.WithDisableRetry(),
		grpc.WithDisableServiceConfig(),
	}
}

// bidi describes every call shape: a proxy does not know, and need not.
var bidi = grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// maxNotReachedAttempts bounds transparent retries of calls that never
// reached a backend (the stream could not be opened).
const maxNotReachedAttempts = 3

// Handle is the grpc.StreamHandler for every method.
func (p *Proxy) Handle(_ any, ss grpc.ServerStream) error {
	call := Call{Start: time.Now()}
	p.callStarted()
	err := p.handle(ss, &call)
	if len(p.observers) > 0 {
		call.Duration = time.Since(call.Start)
		call.Code = status.Code(err)
		if pr, ok := peer.FromContext(ss.Context()); ok {
			call.PeerAddr = pr.Addr
		}
		call.TraceID = trace.SpanContextFromContext(ss.Context()).TraceID()
		if call.Attempts == 0 && err != nil {
			call.Message = status.Convert(err).Message()
		}
		for _, o := range p.observers {
			o.ObserveCall(&call)
		}
	}
	return err
}

func (p *Proxy) handle(ss grpc.ServerStream, call *Call) error {
	ctx := ss.Context()
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "meshd: no method on stream")
	}
	call.Method = method
	md, _ := metadata.FromIncomingContext(ctx)
	st := p.acquire()
	if st == nil {
		return errNotReady()
	}
	defer st.calls.Add(-1)
	route := p.lookup(ctx, st, method, md)
	if route == nil {
		return errNoRoute(method)
	}
	name := route.PickCluster(rand.Uint32())
	call.Route, call.Cluster = route.Name, name
	if p.tracing {
		tracing.SetRoute(ctx, route.Name, name)
	}
	cl := p.cluster(ctx, st, name)
	if cl == nil {
		return errUnknownCluster(route.Name, name)
	}
	pol := st.Policies[route.Name]
	if pol != nil && !pol.RateLimit.Allow() {
		return errRateLimited(route.Name, pol.RateLimit.Rate())
	}
	lim := st.Limits[name]
	if !lim.Acquire() {
		return errMaxRequests(name, lim.maxRequests)
	}
	defer lim.Release()
	ctx, cancel := callContext(ctx, route)
	defer cancel()
	// Attempts, retries and the relay in both directions: retry.go.
	return p.newCallRun(ctx, ss, method, md, call, name, cl, st, pol).run()
}

// callContext applies the route's max_grpc_timeout cap and timeout to the
// inbound context. Both only ever shorten the deadline, so the effective
// one is the tightest of the client's, the cap and the route's, and the
// backend gets it as grpc-timeout. Each carries a cause naming its setting
// for the DEADLINE_EXCEEDED message; when the client's deadline is the
// tighter, the context keeps the client's (plain) cause.
func callContext(ctx context.Context, r *router.Route) (context.Context, context.CancelFunc) {
	cancel := func() {}
	if r.MaxGRPCTimeout > 0 {
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) > r.MaxGRPCTimeout {
			te := &timeoutError{setting: settingMaxGRPC, d: r.MaxGRPCTimeout}
			ctx, cancel = context.WithTimeoutCause(ctx, r.MaxGRPCTimeout, te)
			ctx = withDeadlineOwner(ctx, te)
		}
	}
	if r.Timeout > 0 {
		c1 := cancel
		var c2 context.CancelFunc
		te := &timeoutError{setting: settingTimeout, d: r.Timeout}
		ctx, c2 = context.WithTimeoutCause(ctx, r.Timeout, te)
		ctx = withDeadlineOwner(ctx, te)
		cancel = func() { c2(); c1() }
	}
	return ctx, cancel
}

// filterMD drops the headers meshd never relays from a backend's response.
func filterMD(md metadata.MD) metadata.MD {
	for k := range md {
		if DroppedHeader(k, false) {
			delete(md, k)
		}
	}
	return md
}
