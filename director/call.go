package director

import (
	"context"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/tracing"
)

// call is one call between Direct and its Done. The engine never calls
// done, Reroute or retryAttempt concurrently, and never after done, so
// the fields need no lock: their owner is whichever of those runs.
type call struct {
	d   *Director
	st  *State
	cl  *balancer.Cluster
	up  *engine.Upstream // cl's: every attempt goes through its pool
	ep  *balancer.Endpoint
	lim *policy.Limiter
	// start is when the current attempt started (rec.Start: the call).
	start time.Time
	rec   callrecord.Call
	// sctx, when tracing is on, is the SERVER span's context (it holds the
	// span and the caller's baggage, for the CLIENT spans of later
	// attempts), client the current attempt's span; both nil otherwise.
	sctx   context.Context
	client trace.Span
	// rt is the retry state of a call on a route with retries (retry.go),
	// else nil.
	rt *retryState
	// rerouted counts the attempts that did not reach a backend and were
	// sent elsewhere.
	rerouted int
	// A hedged call's attempts (hedge.go): cur is the id of the one ep,
	// start and client hold (-1: none), hedges the others in flight,
	// lastID the last id given out. Zero for calls that are not hedged.
	cur    int
	hedges []hedgeAttempt
	lastID int
}

// startSpans starts the SERVER span and the first attempt's CLIENT span,
// and returns the fields that carry the CLIENT span's context upstream.
func (c *call) startSpans(ctx context.Context, req *engine.Request) fieldCarrier {
	tp := c.d.tracer
	sctx, sspan := tp.StartServer(ctx, req.Method, headerCarrier{req.Header}, remote(req))
	tracing.SetRoute(sctx, c.rec.Route, c.rec.Cluster)
	tracing.SetPeer(sctx, c.rec.Peer)
	tracing.SetFault(sctx, c.rec.Fault)
	var out fieldCarrier
	_, cspan := tp.StartClient(sctx, req.Method, c.ep.Address(), 1, &out)
	c.sctx, c.client = sctx, cspan
	c.rec.TraceID = sspan.SpanContext().TraceID()
	return out
}

// done runs once when the engine finishes the stream.
func (c *call) done(res engine.Result) {
	c.use(res.Attempt)
	if c.ep != nil {
		c.cl.Done(c.ep, c.start, res.Code, res.NotReached)
	}
	c.lim.Release()
	c.st.calls.Add(-1)
	if c.sctx != nil {
		msg := errText(res.Err)
		if c.client != nil {
			tracing.EndSpan(c.client, res.Code, msg)
		}
		tracing.EndSpan(trace.SpanFromContext(c.sctx), res.Code, msg)
	}
	if len(c.d.observers) == 0 {
		return
	}
	r := &c.rec
	r.Code, r.Duration = res.Code, time.Since(r.Start)
	r.BytesIn, r.BytesOut = res.BytesIn, res.BytesOut
	if res.Err != nil && !res.Committed {
		r.Message = res.Err.Error()
	}
	for _, o := range c.d.observers {
		o.ObserveCall(r)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// failed reports a call meshd answered itself and returns err. rec holds
// what is known of the call: its route, cluster and caller's mesh identity
// (Peer), and whether meshd's authorization refused it (Denied).
func (d *Director) failed(req *engine.Request, start time.Time, rec callrecord.Call, err error) error {
	st := status.Convert(err)
	if d.tracer != nil {
		sctx, span := d.tracer.StartServer(context.Background(), req.Method, headerCarrier{req.Header}, remote(req))
		if rec.Route != "" {
			tracing.SetRoute(sctx, rec.Route, rec.Cluster)
		}
		tracing.SetPeer(sctx, rec.Peer)
		tracing.SetFault(sctx, rec.Fault)
		tracing.EndSpan(span, st.Code(), st.Message())
	}
	if len(d.observers) == 0 {
		return err
	}
	d.callStarted()
	rec.Method, rec.Code, rec.Message = req.Method, st.Code(), st.Message()
	rec.Start, rec.Duration, rec.PeerAddr = start, time.Since(start), req.RemoteAddr
	for _, o := range d.observers {
		o.ObserveCall(&rec)
	}
	return err
}

func remote(req *engine.Request) string {
	if req.RemoteAddr == nil {
		return ""
	}
	return req.RemoteAddr.String()
}

// headerCarrier reads the caller's W3C context from the request's fields.
type headerCarrier struct{ h *engine.Header }

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
