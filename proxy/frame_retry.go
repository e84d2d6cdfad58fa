package proxy

import (
	"slices"
	"strconv"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/h2proxy"
	"github.com/meshd/meshd/tracing"
)

// frameResilience asks the frame engine for the route's idle timeout and
// retries, with the grpc engine's statuses (errors.go) and decisions
// (retry.go): the engine keeps the request for replay and asks
// frameCall.retryAttempt before each new attempt.
func (fc *frameCall) frameResilience(t *h2proxy.Target, pol *RoutePolicy, req *h2proxy.Request) {
	if d := pol.IdleTimeout; d > 0 {
		t.IdleTimeout = d
		t.IdleErr = pol.callLimitErrs().idle
	}
	r := pol.Retry
	if r == nil || r.Attempts <= 1 {
		return
	}
	rt := &frameRetry{policy: r, hdr: fieldHeader(slices.Clone(req.Header.Fields()))}
	fc.rt = rt
	t.Retry = fc.retryAttempt
	t.RetryBufferBytes = r.MaxBufferBytes
	if fc.st.RetryBuffer != nil {
		t.RetryBuffer = fc.st.RetryBuffer
	}
	if d := r.PerTryTimeout; d > 0 {
		t.PerTryTimeout = d
		t.PerTryErr = pol.callLimitErrs().perTry
	}
	rt.base = *t
}

// frameRetry is a retryable frame call's state across attempts. The
// engine serialises retryAttempt and done, so it needs no lock.
type frameRetry struct {
	policy *RetryPolicy
	base   h2proxy.Target // the first attempt's Target; retries change Addr and Header
	hdr    fieldHeader    // the request's fields, for ring_hash picks
	// tries counts failed attempts that reached a backend (frameCall
	// counts the transparent retries of those that did not).
	tries int
}

// retryAttempt decides whether the failed attempt a is retried, as
// callRun.run and retryAfter do for the grpc engine: attempts that never
// reached a backend are retried transparently (at most
// maxNotReachedAttempts in a row, no budget); others up to the policy's
// attempts, on a retry_on status or a per-try timeout, when the time left
// covers the backoff plus what the failed attempt took, and last within the
// cluster's retry budget. The next attempt goes to another endpoint when
// the cluster has one, with grpc-previous-rpc-attempts and its own CLIENT
// span. The engine calls it under the call's lock, never concurrently with
// done.
func (fc *frameCall) retryAttempt(a h2proxy.RetryInfo) (h2proxy.Target, time.Duration, bool) {
	rt, r := fc.rt, fc.rt.policy
	var wait time.Duration
	if a.NotReached {
		if fc.transparent >= maxNotReachedAttempts-1 {
			return h2proxy.Target{}, 0, false
		}
	} else {
		rt.tries++
		if rt.tries >= r.Attempts {
			return h2proxy.Target{}, 0, false
		}
		if !a.PerTry && !slices.Contains(r.RetryOn, a.Code) {
			return h2proxy.Target{}, 0, false
		}
		wait = r.backoff(rt.tries)
		if !a.Deadline.IsZero() {
			need := a.Took
			if a.PerTry {
				need = r.PerTryTimeout
			}
			if time.Until(a.Deadline)-wait < need {
				return h2proxy.Target{}, 0, false
			}
		}
	}
	ep, err := fc.cl.Pick(&balancer.PickInfo{Method: fc.call.Method, Header: rt.hdr, Exclude: fc.ep})
	if err != nil {
		return h2proxy.Target{}, 0, false
	}
	// Last, so a retry refused for another reason costs no budget.
	if !a.NotReached && !fc.st.Budgets[fc.call.Cluster].Withdraw() {
		return h2proxy.Target{}, 0, false
	}
	if a.NotReached {
		fc.transparent++
	}
	t := rt.base
	t.Addr, t.Header = ep.Address(), fc.moveTo(ep, &a.Result)
	return t, wait, true
}

// Reroute implements h2proxy.Rerouter for every frame call: an attempt
// that never reached its backend (failed dial, no stream capacity, refused
// stream) goes to another endpoint, as callRun.run retries it on every
// route: at most maxNotReachedAttempts attempts in a row, no retry budget,
// no backoff. On a route with retries the engine asks retryAttempt
// instead. Like retryAttempt, it runs under the engine's lock for the call,
// never concurrently with done.
func (fc *frameCall) Reroute(a h2proxy.Result) (h2proxy.Target, bool) {
	if fc.transparent >= maxNotReachedAttempts-1 {
		return h2proxy.Target{}, false
	}
	info := balancer.PickInfo{Method: fc.call.Method, Exclude: fc.ep}
	if fc.rt != nil {
		info.Header = fc.rt.hdr
	}
	ep, err := fc.cl.Pick(&info)
	if err != nil {
		return h2proxy.Target{}, false
	}
	fc.transparent++
	return h2proxy.Target{Addr: ep.Address(), Upstream: fc.st.upstream(fc.call.Cluster), Header: fc.moveTo(ep, &a)}, true
}

// moveTo ends the failed attempt (the balancer and the trace hear of it)
// and starts the next one on ep, the endpoint already picked: it returns
// the header fields that attempt sends, its traceparent and
// grpc-previous-rpc-attempts.
func (fc *frameCall) moveTo(ep *balancer.Endpoint, a *h2proxy.Result) fieldCarrier {
	fc.cl.Done(fc.ep, fc.start, a.Code, a.NotReached)
	n := fc.call.Attempts + 1
	fc.ep, fc.start = ep, time.Now()
	fc.call.Attempts, fc.call.Endpoint = n, ep.Address()
	var out fieldCarrier
	if fc.sctx != nil {
		msg := ""
		if a.Err != nil {
			msg = a.Err.Error()
		}
		tracing.EndSpan(fc.client, a.Code, msg)
		_, fc.client = fc.p.tracer.StartClient(fc.sctx, fc.call.Method, ep.Address(), n, &out)
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
