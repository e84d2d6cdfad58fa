package director

import (
	"slices"
	"strconv"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/tracing"
)

// resilience hands the engine the route's idle timeout and retries: the
// engine keeps the request for replay and asks retryAttempt before each
// new attempt.
func (c *call) resilience(t *engine.Target, pol *policy.Route, req *engine.Request) {
	if pol.IdleTimeout > 0 {
		t.IdleTimeout, t.IdleErr = pol.IdleTimeout, pol.IdleErr()
	}
	r := pol.Retry
	if r == nil || r.Attempts <= 1 {
		return
	}
	rt := &retryState{policy: r, hdr: fieldHeader(slices.Clone(req.Header.Fields()))}
	c.rt = rt
	t.Retry = c.retryAttempt
	t.RetryBufferBytes = r.MaxBufferBytes
	if c.st.RetryBuffer != nil {
		t.RetryBuffer = c.st.RetryBuffer
	}
	if r.PerTryTimeout > 0 {
		t.PerTryTimeout, t.PerTryErr = r.PerTryTimeout, pol.PerTryErr()
	}
	rt.base = *t
	if pol.Hedge != nil {
		c.hedging(t, pol.Hedge) // hedge.go
	}
}

// retryState is a retryable call's state across attempts.
type retryState struct {
	policy *policy.Retry
	base   engine.Target // the first attempt's Target; retries change Addr and Header
	hdr    fieldHeader   // the request's fields, for ring_hash picks
	// reached counts failed attempts that reached a backend.
	reached int
}

// retryAttempt asks policy.Decide about the failed attempt a; on a retry,
// the next attempt goes to another endpoint when the cluster has one, with
// grpc-previous-rpc-attempts and its own CLIENT span.
func (c *call) retryAttempt(a engine.RetryInfo) (engine.Target, time.Duration, bool) {
	rt := c.rt
	c.use(a.Attempt)
	f := c.failure(a.Result, a.Deadline)
	f.PerTry, f.Took = a.PerTry, a.Took
	if !a.NotReached {
		rt.reached++
		if c.lastID > 0 {
			// Hedged: every attempt started counts (hedge.go).
			rt.reached = max(rt.reached, c.rec.Attempts)
		}
		f.Reached, f.Wait = rt.reached, rt.policy.Backoff(rt.reached)
	}
	next, ok := c.next(policy.Decide(rt.policy, f), &a.Result)
	if !ok {
		return engine.Target{}, 0, false
	}
	t := rt.base
	t.Addr, t.Header = next.Addr, next.Header
	return t, f.Wait, true
}

// Reroute implements engine.Rerouter for every call: an attempt that
// never reached its backend (failed dial, no stream capacity, refused
// stream) goes to another endpoint, as policy.Decide rules. On a route
// with retries the engine asks retryAttempt instead.
func (c *call) Reroute(a engine.Result) (engine.Target, bool) {
	c.use(a.Attempt)
	return c.next(policy.Decide(nil, c.failure(a, time.Time{})), &a)
}

func (c *call) failure(a engine.Result, deadline time.Time) policy.Failure {
	f := policy.Failure{NotReached: a.NotReached, Code: a.Code, Rerouted: c.rerouted}
	if !deadline.IsZero() {
		f.HasDeadline, f.Left = true, time.Until(deadline)
	}
	return f
}

// next carries out a verdict: it picks the next endpoint (another one when
// the cluster has one), takes a retry from the budget (last, so that a
// retry refused for another reason costs none), and moves the call there.
func (c *call) next(v policy.Verdict, failed *engine.Result) (engine.Target, bool) {
	if v == policy.Stop {
		return engine.Target{}, false
	}
	info := balancer.PickInfo{Method: c.rec.Method, Exclude: c.ep}
	if c.rt != nil {
		info.Header = c.rt.hdr
	}
	ep, err := c.cl.Pick(&info)
	if err != nil {
		return engine.Target{}, false
	}
	if v == policy.RetryAfterWait && !c.st.Budgets[c.rec.Cluster].Withdraw() {
		return engine.Target{}, false
	}
	if v == policy.Reroute {
		c.rerouted++
	}
	return engine.Target{Addr: ep.Address(), Upstream: c.up, Header: c.moveTo(ep, failed)}, true
}

// moveTo ends the failed attempt (the balancer and the trace hear of it)
// and starts the next one on ep: it returns the header fields that attempt
// sends, its traceparent and grpc-previous-rpc-attempts.
func (c *call) moveTo(ep *balancer.Endpoint, a *engine.Result) fieldCarrier {
	if c.ep != nil {
		c.cl.Done(c.ep, c.start, a.Code, a.NotReached)
	}
	n := c.rec.Attempts + 1
	c.ep, c.start = ep, time.Now()
	c.rec.Attempts, c.rec.Endpoint = n, ep.Address()
	var out fieldCarrier
	if c.sctx != nil {
		tracing.EndSpan(c.client, a.Code, errText(a.Err))
		_, c.client = c.d.tracer.StartClient(c.sctx, c.rec.Method, ep.Address(), n, &out)
	}
	return append(out, hpack.HeaderField{Name: "grpc-previous-rpc-attempts", Value: strconv.Itoa(n - 1)})
}

// fieldHeader is a copy of the request's fields for the picks of retries
// (ring_hash reads its key from it) after the engine's Request is gone.
type fieldHeader []hpack.HeaderField

func (h fieldHeader) Get(name string) []string {
	var vs []string
	for _, f := range h {
		if f.Name == name {
			vs = append(vs, f.Value)
		}
	}
	return vs
}
