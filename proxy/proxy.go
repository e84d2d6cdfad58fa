package proxy

import (
	"context"
	"io"
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
}

// Proxy is the grpc-go based transparent forwarder. The zero value is not
// usable; use New. Its methods are safe for concurrent use.
type Proxy struct {
	state     atomic.Pointer[State]
	tracing   bool
	log       *slog.Logger
	observers []Observer
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithTracing says meshd's tracing handlers are installed, so inbound
// traceparent/tracestate/baggage are replaced rather than passed through.
func WithTracing(on bool) Option { return func(p *Proxy) { p.tracing = on } }

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
	err := p.handle(ss, &call)
	if len(p.observers) > 0 {
		call.Duration = time.Since(call.Start)
		call.Code = status.Code(err)
		if pr, ok := peer.FromContext(ss.Context()); ok && pr.Addr != nil {
			call.Peer = pr.Addr.String()
		}
		if sc := trace.SpanContextFromContext(ss.Context()); sc.IsValid() {
			call.TraceID = sc.TraceID().String()
		}
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
	st := p.state.Load()
	if st == nil {
		return errNotReady()
	}
	route := st.Table.Lookup(method, md)
	if route == nil {
		return errNoRoute(method)
	}
	name := route.PickCluster(rand.Uint32())
	call.Route, call.Cluster = route.Name, name
	if p.tracing {
		tracing.SetRoute(ctx, route.Name, name)
	}
	cl := st.Clusters[name]
	if cl == nil {
		return errUnknownCluster(route.Name, name)
	}
	ctx, cancel := callContext(ctx, route)
	defer cancel()

	out := copyMD(md, p.tracing)
	info := balancer.PickInfo{Method: method, Header: md}
	var err error
	for attempt := 1; attempt <= maxNotReachedAttempts; attempt++ {
		var ep *balancer.Endpoint
		ep, err = cl.Pick(&info)
		if err != nil {
			return errNoEndpoint(name, err)
		}
		call.Attempts, call.Endpoint = attempt, ep.Address()
		actx := ctx
		if p.tracing {
			actx = tracing.WithAttempt(ctx, ep.Address(), attempt)
		}
		start := time.Now()
		res := p.forward(actx, ss, ep.Conn(), method, out, call)
		cl.Done(ep, start, status.Code(res.err), res.notReached)
		if !res.notReached {
			return res.err
		}
		err = res.err
		info.Exclude = ep
	}
	return err
}

// callContext applies the route's max_grpc_timeout cap and timeout to the
// inbound context. Both only ever shorten the deadline.
func callContext(ctx context.Context, r *router.Route) (context.Context, context.CancelFunc) {
	cancel := func() {}
	if r.MaxGRPCTimeout > 0 {
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) > r.MaxGRPCTimeout {
			ctx, cancel = context.WithTimeout(ctx, r.MaxGRPCTimeout)
		}
	}
	if r.Timeout > 0 {
		c1 := cancel
		var c2 context.CancelFunc
		ctx, c2 = context.WithTimeout(ctx, r.Timeout)
		cancel = func() { c2(); c1() }
	}
	return ctx, cancel
}

// result is how one attempt ended.
type result struct {
	err error
	// notReached: the stream was never opened on the backend, so nothing
	// was consumed from the client and the call may go elsewhere.
	notReached bool
}

// forward runs one attempt: open the upstream stream, relay both directions
// and return the status for the client.
func (p *Proxy) forward(ctx context.Context, ss grpc.ServerStream, conn *grpc.ClientConn, method string, md metadata.MD, call *Call) result {
	upCtx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, md))
	defer cancel()
	cs, err := conn.NewStream(upCtx, &bidi, method)
	if err != nil {
		return result{err: upstreamErr(ctx, err), notReached: ctx.Err() == nil}
	}

	// Client → backend runs on its own goroutine. It ends when the client
	// half-closes, the call ends (the server stream's context is cancelled
	// once Handle returns), or it fails; a failure cancels the upstream so
	// the backend → client loop below stops too.
	var c2sErr atomic.Pointer[error]
	var bytesIn atomic.Int64
	go func() {
		if err := clientToBackend(ss, cs, &bytesIn); err != nil {
			c2sErr.Store(&err)
			cancel()
		}
	}()

	// Backend → client. Headers first, the moment they arrive, also when no
	// message follows. A nil header means a trailers-only response: then no
	// header is sent, so the client gets trailers-only too.
	hdr, _ := cs.Header()
	if hdr != nil {
		if err := ss.SendHeader(filterMD(hdr)); err != nil {
			return result{err: upstreamErr(ctx, err)}
		}
	}
	var f frame
	defer func() { call.BytesIn += bytesIn.Load() }()
	for {
		if err := cs.RecvMsg(&f); err != nil {
			if t := cs.Trailer(); len(t) > 0 {
				ss.SetTrailer(filterMD(t))
			}
			if e := c2sErr.Load(); e != nil {
				return result{err: *e}
			}
			if err == io.EOF {
				return result{}
			}
			return result{err: upstreamErr(ctx, err)}
		}
		call.BytesOut += int64(f.data.Len())
		if err := ss.SendMsg(&f); err != nil {
			f.free()
			return result{err: upstreamErr(ctx, err)}
		}
	}
}

// clientToBackend relays the client's messages and its half-close. It
// returns nil when the client half-closed or the upstream ended (the
// upstream's own status then comes from RecvMsg), and the error to give the
// client otherwise (a message over the size limit, a cancel).
func clientToBackend(ss grpc.ServerStream, cs grpc.ClientStream, n *atomic.Int64) error {
	var f frame
	for {
		if err := ss.RecvMsg(&f); err != nil {
			if err == io.EOF {
				// CloseSend never fails in a way the client should see;
				// the backend's answer carries the outcome.
				_ = cs.CloseSend()
				return nil
			}
			return err
		}
		n.Add(int64(f.data.Len()))
		if err := cs.SendMsg(&f); err != nil {
			f.free()
			// io.EOF: the upstream stream is over; its status is read by
			// the other direction.
			return nil
		}
	}
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
