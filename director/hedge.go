package director

import (
	"errors"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/tracing"
)

// hedging hands the engine the route's hedge policy (engine.Hedge, with c
// as its Hedger). The route's retry policy is always set with it (the
// configured one, or policy's implicit one), so the call is retryable:
// its attempts replay the request from the retry buffer.
func (c *call) hedging(t *engine.Target, h *policy.Hedge) {
	if c.rt == nil || t.Retry == nil {
		return
	}
	t.Hedge = &engine.Hedge{Delay: h.Delay, MaxAttempts: h.MaxAttempts, Hedger: c}
}

var _ engine.Hedger = (*call)(nil)

// hedgeAttempt is an attempt of a hedged call that the call's current
// attempt fields (ep, start, client) do not hold.
type hedgeAttempt struct {
	id    int
	ep    *balancer.Endpoint
	start time.Time
	span  trace.Span
}

// Hedge implements engine.Hedger: another attempt, on another endpoint
// than the current one's when the cluster has one, while the call's
// attempts stay within retry.attempts and the cluster's retry budget
// gives a retry for it.
func (c *call) Hedge() (engine.Target, int, bool) {
	rt := c.rt
	if c.rec.Attempts >= rt.policy.Attempts {
		return engine.Target{}, 0, false
	}
	// The budget before the pick (unlike a retry's): a pick cannot be
	// given back without feeding the endpoint's load and outlier
	// statistics, and a cluster with no endpoint, the pick's one error,
	// has nothing for its budget to protect.
	if !c.st.Budgets[c.rec.Cluster].Withdraw() {
		return engine.Target{}, 0, false
	}
	ep, err := c.cl.Pick(&balancer.PickInfo{Method: c.rec.Method, Exclude: c.ep, Header: rt.hdr})
	if err != nil {
		return engine.Target{}, 0, false
	}
	n := c.rec.Attempts + 1
	c.rec.Attempts = n
	var out fieldCarrier
	var span trace.Span
	if c.sctx != nil {
		_, span = c.d.tracer.StartClient(c.sctx, c.rec.Method, ep.Address(), n, &out)
		tracing.SetHedge(span)
	}
	out = append(out, hpack.HeaderField{Name: "grpc-previous-rpc-attempts", Value: strconv.Itoa(n - 1)})
	c.lastID++
	c.hedges = append(c.hedges, hedgeAttempt{id: c.lastID, ep: ep, start: time.Now(), span: span})
	return engine.Target{Addr: ep.Address(), Upstream: c.up, Header: out}, c.lastID, true
}

// Fatal implements engine.Hedger: policy.Fatal rules.
func (c *call) Fatal(failed engine.Result) bool { return policy.Fatal(c.rt.policy, failed.Code) }

// Ended implements engine.Hedger: attempt id ended while another carries
// the call; the balancer and the trace hear of it.
func (c *call) Ended(id int, r engine.Result) {
	if id == c.cur {
		// The engine moved on from the attempt the current fields hold;
		// the next Result names the one it moved to (use).
		c.endAttempt(c.ep, c.start, c.client, r)
		c.ep, c.client, c.cur = nil, nil, -1
		return
	}
	for i := range c.hedges {
		if h := c.hedges[i]; h.id == id {
			c.endAttempt(h.ep, h.start, h.span, r)
			c.hedges = append(c.hedges[:i], c.hedges[i+1:]...)
			return
		}
	}
}

// endAttempt reports an attempt that does not carry the call. One that
// lost (engine.ErrHedgeLost) is no failure of its endpoint, even if it
// never reached it: outlier detection counts a not-reached attempt as a
// connection failure.
func (c *call) endAttempt(ep *balancer.Endpoint, start time.Time, span trace.Span, r engine.Result) {
	if ep != nil {
		c.cl.Done(ep, start, r.Code, r.NotReached && !errors.Is(r.Err, engine.ErrHedgeLost))
	}
	if span != nil {
		tracing.EndSpan(span, r.Code, errText(r.Err))
	}
}

// use makes attempt id, which a Result from the engine names, the one the
// call's current fields hold (ep, start, client: what Retry, Reroute and
// done act on). Calls that are not hedged have one id, 0, and pay a
// comparison.
func (c *call) use(id int) {
	if id == c.cur {
		return
	}
	for i := range c.hedges {
		h := c.hedges[i]
		if h.id != id {
			continue
		}
		if c.cur >= 0 {
			c.hedges[i] = hedgeAttempt{id: c.cur, ep: c.ep, start: c.start, span: c.client}
		} else {
			c.hedges = append(c.hedges[:i], c.hedges[i+1:]...)
		}
		c.cur, c.ep, c.start, c.client = id, h.ep, h.start, h.span
		c.rec.Endpoint = h.ep.Address()
		return
	}
}
