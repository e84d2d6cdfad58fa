package proxy

import (
	"context"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/tracing"
)

// RetryPolicy is a route's retry settings as the data path uses them. A nil
// *RetryPolicy means no retries beyond the transparent ones (calls that
// never reached a backend), which are always on.
type RetryPolicy struct {
	// Attempts is the total number of attempts that reach a backend,
	// including the first.
	Attempts int
	// RetryOn lists the statuses that are retried.
	RetryOn []codes.Code
	// PerTryTimeout bounds an attempt until it commits (0: none).
	PerTryTimeout time.Duration
	// BackoffBase and BackoffMax shape the jittered exponential backoff.
	BackoffBase, BackoffMax time.Duration
	// MaxBufferBytes is how many request bytes one call may hold for replay.
	MaxBufferBytes int64
}

// backoff is the wait before retry n (1-based): uniform in
// [0, min(max, base·2^(n-1))), "full jitter", so that calls that failed
// together do not retry together.
func (r *RetryPolicy) backoff(n int) time.Duration {
	d := r.BackoffMax
	if n <= 30 {
		if b := r.BackoffBase << (n - 1); b > 0 && b < d {
			d = b
		}
	}
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(d)))
}

// RoutePolicy is the per-route resilience the router does not carry. The
// server builds one per configured route; routes without one (meshd's
// synthetic routes) have no idle timeout, rate limit or retry policy.
type RoutePolicy struct {
	// IdleTimeout ends a call after this long without a message in either
	// direction (0: none).
	IdleTimeout time.Duration
	// RateLimit admits calls to the route (nil: no limit).
	RateLimit *TokenBucket
	// Retry is the retry policy (nil: transparent retries only).
	Retry *RetryPolicy

	// timeouts caches the frame engine's statuses for the route's timeout
	// and max_grpc_timeout (timeoutErr), built by the route's first call.
	timeouts atomic.Pointer[timeoutErrs]
	// limits caches its statuses for idle_timeout and per_try_timeout
	// (callLimitErrs), built the same way.
	limits atomic.Pointer[callLimitErrs]
}

// callRun is one call's forwarding state across its attempts.
//
// Three goroutines touch it. The call's own goroutine runs the attempts:
// it opens each upstream stream and relays the backend's answer. A reader
// goroutine receives the client's messages for the whole call (a message
// taken off the client stream cannot be put back, so one reader outlives
// attempts). Sending to the backend is done by the reader itself once an
// attempt has caught up, and before that by a per-attempt replay goroutine
// that resends the messages a previous attempt already consumed. Exactly
// one of them sends on a given upstream stream at a time (grpc-go forbids
// concurrent SendMsg/CloseSend).
//
// The reader is not joined: it is blocked in the client stream's RecvMsg,
// which only returns when the client sends or the handler has returned and
// grpc-go ended the stream. It touches nothing of the call after finish.
type callRun struct {
	p       *Proxy
	ss      grpc.ServerStream
	ctx     context.Context // the call at meshd: effective deadline, idle and client-error causes
	cancel  context.CancelCauseFunc
	method  string
	inMD    metadata.MD // the client's metadata, for the pick (ring_hash)
	outMD   metadata.MD // what goes upstream
	call    *Call
	cluster string
	cl      *balancer.Cluster
	lim     *Limiter
	budget  *RetryBudget
	retry   *RetryPolicy
	pool    *ByteBudget
	idle    *idleTimer
	bytesIn atomic.Int64
	// wake (capacity 1) tells a waiting reader that the log shrank or the
	// call ended; spurious wake-ups are fine, it re-checks.
	wake chan struct{}

	mu sync.Mutex
	// msgs is the log of the client's messages; msgs[i] is message base+i.
	// While retaining, every message stays (one reference each) so a new
	// attempt can replay it; afterwards the log holds only messages not yet
	// sent, and sending hands the log's reference over.
	msgs      []mem.BufferSlice
	base      int
	sent      int   // next message (absolute index) the current attempt sends
	retaining bool  // messages are kept for replay
	held      int64 // bytes retained, counted against both buffer limits
	// committed: the response has started or the buffer went over a limit,
	// so the call is no longer retried.
	committed  bool
	halfClosed bool
	recvErr    error             // the client side failed (size limit, cancel)
	finished   bool              // the call is over; the log is freed
	live       grpc.ClientStream // the stream the reader sends to directly
}

// attemptResult is how one attempt ended.
type attemptResult struct {
	err     error
	trailer metadata.MD
	// notReached: the stream was never opened on the backend, so nothing
	// of the call reached it.
	notReached bool
	// perTry: per_try_timeout ended the attempt while the call was alive.
	perTry bool
	// committed: response headers or a message went to the client.
	committed bool
}

func (p *Proxy) newCallRun(ctx context.Context, ss grpc.ServerStream, method string, md metadata.MD, call *Call, cluster string, cl *balancer.Cluster, st *State, pol *RoutePolicy) *callRun {
	c := &callRun{
		p: p, ss: ss, method: method, inMD: md, outMD: copyMD(md, p.tracing), call: call,
		cluster: cluster, cl: cl, lim: st.Limits[cluster], budget: st.Budgets[cluster], pool: st.RetryBuffer,
		wake: make(chan struct{}, 1),
	}
	c.ctx, c.cancel = context.WithCancelCause(ctx)
	if pol != nil {
		if pol.Retry != nil && pol.Retry.Attempts > 1 {
			c.retry = pol.Retry
			c.retaining = true
		}
		if pol.IdleTimeout > 0 {
			c.idle = startIdle(pol.IdleTimeout, c.cancel)
		}
	}
	return c
}

// run forwards the call, retrying while the policy, the budget and the
// deadline allow, and returns the status for the client.
func (c *callRun) run() error {
	defer c.finish()
	c.budget.Deposit()
	go c.readClient()
	info := balancer.PickInfo{Method: c.method, Header: c.inMD}
	tries := 0       // attempts that reached a backend
	transparent := 0 // retries of attempts that did not
	for n := 1; ; n++ {
		if !c.lim.AcquirePending() {
			return errMaxPending(c.cluster, c.lim.maxPending)
		}
		ep, err := c.cl.Pick(&info)
		if err != nil {
			c.lim.ReleasePending()
			return errNoEndpoint(c.cluster, err)
		}
		c.call.Attempts, c.call.Endpoint = n, ep.Address()
		start := time.Now()
		res := c.attempt(ep, n)
		c.cl.Done(ep, start, status.Code(res.err), res.notReached)
		if err := c.clientErr(); err != nil {
			return err
		}
		if res.err == nil || res.committed {
			return c.final(res)
		}
		info.Exclude = ep
		if res.notReached {
			if transparent < maxNotReachedAttempts-1 && c.canReplay() {
				transparent++
				continue
			}
			return c.final(res)
		}
		tries++
		wait, ok := c.retryAfter(res, tries, time.Since(start))
		if !ok {
			return c.final(res)
		}
		if !c.sleep(wait) {
			return c.final(attemptResult{err: upstreamErr(c.ctx, res.err)})
		}
		// The client may have sent past the buffer limit meanwhile: then
		// the messages are gone and the call stays with this failure.
		if !c.canReplay() {
			return c.final(res)
		}
	}
}

// retryAfter decides whether a failed attempt that reached a backend is
// retried, and after what backoff. took is how long the attempt lasted.
func (c *callRun) retryAfter(res attemptResult, tries int, took time.Duration) (time.Duration, bool) {
	r := c.retry
	if r == nil || tries >= r.Attempts || c.ctx.Err() != nil {
		return 0, false
	}
	if !res.perTry && !slices.Contains(r.RetryOn, status.Code(res.err)) {
		return 0, false
	}
	c.mu.Lock()
	committed := c.committed
	c.mu.Unlock()
	if committed {
		return 0, false
	}
	wait := r.backoff(tries)
	// Never start an attempt that cannot finish inside the deadline: the
	// failed attempt is the estimate of how long the next one needs (a
	// per-try timeout, if that is what ended it).
	if dl, ok := c.ctx.Deadline(); ok {
		need := took
		if res.perTry {
			need = r.PerTryTimeout
		}
		if time.Until(dl)-wait < need {
			return 0, false
		}
	}
	// Last, so a retry refused for another reason costs no budget.
	if !c.budget.Withdraw() {
		return 0, false
	}
	return wait, true
}

// sleep waits d, or until the call ends (false).
func (c *callRun) sleep(d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// final hands the attempt's trailers to the client and returns its status.
func (c *callRun) final(res attemptResult) error {
	if len(res.trailer) > 0 {
		c.ss.SetTrailer(filterMD(res.trailer))
	}
	return res.err
}

// attempt runs one attempt on ep: open the upstream stream, start sending
// the client's messages to it, relay the backend's answer.
func (c *callRun) attempt(ep *balancer.Endpoint, n int) (res attemptResult) {
	actx, acancel := context.WithCancelCause(c.ctx)
	defer acancel(nil)
	var perTry *time.Timer
	if r := c.retry; r != nil && r.PerTryTimeout > 0 {
		cause := &timeoutError{setting: settingPerTry, d: r.PerTryTimeout}
		perTry = time.AfterFunc(r.PerTryTimeout, func() { acancel(cause) })
		defer perTry.Stop()
	}
	sctx := actx
	if c.p.tracing {
		sctx = tracing.WithAttempt(actx, ep.Address(), n)
	}
	md := c.outMD
	if n > 1 {
		md = withPreviousAttempts(md, n-1)
	}
	cs, err := ep.Conn().NewStream(metadata.NewOutgoingContext(sctx, md), &bidi, c.method)
	c.lim.ReleasePending()
	if err != nil {
		return attemptResult{err: upstreamErr(actx, err), notReached: actx.Err() == nil, perTry: c.endedByPerTry(actx)}
	}
	stop := c.startSending(cs)
	// Cancel first: a replay blocked on the backend's flow control returns
	// only once the stream is gone.
	defer func() { acancel(nil); stop() }()

	// Headers first, the moment they arrive, also when no message follows.
	// A nil header means a trailers-only response (or a failure before
	// any header): the call is not committed, and the client gets
	// trailers-only too.
	if hdr, _ := cs.Header(); hdr != nil {
		c.commit(perTry)
		res.committed = true
		c.idle.touch()
		if err := c.ss.SendHeader(filterMD(hdr)); err != nil {
			res.err = upstreamErr(c.ctx, err)
			return res
		}
	}
	var f frame
	for {
		if err := cs.RecvMsg(&f); err != nil {
			res.trailer = cs.Trailer()
			if err != io.EOF {
				res.err = upstreamErr(actx, err)
				res.perTry = c.endedByPerTry(actx)
			}
			return res
		}
		if !res.committed {
			c.commit(perTry)
			res.committed = true
		}
		c.idle.touch()
		c.call.BytesOut += int64(f.data.Len())
		if err := c.ss.SendMsg(&f); err != nil {
			f.free()
			res.err = upstreamErr(c.ctx, err)
			return res
		}
	}
}

// endedByPerTry reports whether the attempt's own per_try_timeout, not the
// call, ended actx.
func (c *callRun) endedByPerTry(actx context.Context) bool {
	te := timeoutOf(actx)
	return te != nil && te.setting == settingPerTry && c.ctx.Err() == nil
}

// withPreviousAttempts tells the backend how many attempts of this call
// came before (gRFC A6's grpc-previous-rpc-attempts), replacing any value
// the client sent.
func withPreviousAttempts(md metadata.MD, prev int) metadata.MD {
	out := make(metadata.MD, len(md)+1)
	for k, v := range md {
		out[k] = v
	}
	out["grpc-previous-rpc-attempts"] = []string{strconv.Itoa(prev)}
	return out
}

// commit marks the call as committed to the current attempt: the
// per-try timeout stops (it never cuts a response in progress) and the
// messages kept for replay are released.
func (c *callRun) commit(perTry *time.Timer) {
	if perTry != nil {
		perTry.Stop()
	}
	c.mu.Lock()
	c.stopRetainingLocked()
	c.mu.Unlock()
}

// stopRetainingLocked commits the call and frees the messages the current
// attempt already sent; the rest stay in the log until sent.
func (c *callRun) stopRetainingLocked() {
	c.committed = true
	if !c.retaining {
		return
	}
	c.retaining = false
	k := min(max(c.sent-c.base, 0), len(c.msgs))
	for i := range k {
		c.msgs[i].Free()
		c.msgs[i] = nil
	}
	c.msgs = c.msgs[k:]
	c.base += k
	c.pool.Release(c.held)
	c.held = 0
	c.kick()
}

// canReplay reports whether every message the client sent is still in the
// log, so another attempt can start from the beginning. (A call that went
// over a buffer limit has dropped the messages an attempt consumed.)
func (c *callRun) canReplay() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base == 0
}

// clientErr is the client side's failure, if any.
func (c *callRun) clientErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recvErr
}

// takeLocked returns the next message for the current attempt: a new
// reference while retaining, else the log's own reference.
func (c *callRun) takeLocked() mem.BufferSlice {
	i := c.sent - c.base
	d := c.msgs[i]
	c.sent++
	if c.retaining {
		d.Ref()
		return d
	}
	// Not retained: messages leave in order, so i is 0.
	c.msgs[i] = nil
	c.msgs = c.msgs[1:]
	c.base++
	c.kick()
	return d
}

// kick wakes the reader if it waits.
func (c *callRun) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// startSending makes cs receive the client's messages: at once by the
// reader when there is nothing to replay, else through a replay goroutine
// that hands over to the reader once caught up. The returned stop must be
// called after cs has been cancelled; it waits for the replay goroutine.
func (c *callRun) startSending(cs grpc.ClientStream) (stop func()) {
	c.mu.Lock()
	c.sent = c.base
	if c.sent == c.base+len(c.msgs) {
		hc := c.halfClosed
		if !hc {
			c.live = cs
		}
		c.mu.Unlock()
		if hc {
			// CloseSend never fails in a way the client should see; the
			// backend's answer carries the outcome.
			_ = cs.CloseSend()
		}
		return func() { c.unlive(cs) }
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.replay(cs)
	}()
	return func() {
		wg.Wait()
		c.unlive(cs)
	}
}

// unlive stops the reader sending to cs.
func (c *callRun) unlive(cs grpc.ClientStream) {
	c.mu.Lock()
	if c.live == cs {
		c.live = nil
	}
	c.mu.Unlock()
}

// replay sends cs the messages it has not had, then the half-close if the
// client already sent it, else hands cs to the reader.
func (c *callRun) replay(cs grpc.ClientStream) {
	for {
		c.mu.Lock()
		if c.finished {
			c.mu.Unlock()
			return
		}
		if c.sent < c.base+len(c.msgs) {
			data := c.takeLocked()
			c.mu.Unlock()
			f := frame{data: data}
			if err := cs.SendMsg(&f); err != nil {
				// The stream is over; its status comes from RecvMsg.
				f.free()
				return
			}
			continue
		}
		if c.halfClosed {
			c.mu.Unlock()
			_ = cs.CloseSend()
			return
		}
		c.live = cs
		c.mu.Unlock()
		return
	}
}

// readClient receives the client's messages for the whole call, logs them
// and sends them to the live attempt, if one has caught up.
func (c *callRun) readClient() {
	for {
		var f frame
		err := c.ss.RecvMsg(&f)
		c.mu.Lock()
		if c.finished {
			c.mu.Unlock()
			f.free()
			return
		}
		live := c.live
		if err != nil {
			if err == io.EOF {
				c.halfClosed = true
			} else {
				c.recvErr = err
			}
			c.mu.Unlock()
			switch {
			case err != io.EOF:
				// A message over the size limit, a cancel: end the call
				// with this status.
				c.cancel(err)
			case live != nil:
				_ = live.CloseSend()
			}
			return
		}
		c.idle.touch()
		n := int64(f.data.Len())
		c.bytesIn.Add(n)
		c.msgs = append(c.msgs, f.data)
		if c.retaining {
			if c.held+n > c.retry.MaxBufferBytes || !c.pool.TryAcquire(n) {
				// Over a limit: the call commits and is not retried.
				c.stopRetainingLocked()
			} else {
				c.held += n
			}
		}
		var data mem.BufferSlice
		if live != nil {
			data = c.takeLocked()
		}
		c.mu.Unlock()
		if live != nil {
			f := frame{data: data}
			if err := live.SendMsg(&f); err != nil {
				// io.EOF: the upstream stream is over; its status is read
				// by the call's goroutine.
				f.free()
			}
			continue
		}
		// No attempt sends yet. Once messages are not retained, hold at
		// most one unsent message, so the client's flow control follows
		// the backend's.
		c.mu.Lock()
		for !c.retaining && len(c.msgs) > 0 && !c.finished {
			c.mu.Unlock()
			<-c.wake
			c.mu.Lock()
		}
		c.mu.Unlock()
	}
}

// finish ends the call: the log is freed and the reader released.
func (c *callRun) finish() {
	c.idle.stop()
	c.mu.Lock()
	c.finished = true
	for _, m := range c.msgs {
		if m != nil {
			m.Free()
		}
	}
	c.msgs = nil
	c.pool.Release(c.held)
	c.held = 0
	c.live = nil
	c.mu.Unlock()
	c.kick()
	c.cancel(nil)
	c.call.BytesIn += c.bytesIn.Load()
}

// idleTimer ends a call after d without activity. Activity is one atomic
// store; the timer re-arms itself for the remaining time when it fires
// early, so no timer is reset per message.
type idleTimer struct {
	d      time.Duration
	start  time.Time
	last   atomic.Int64 // monotonic nanoseconds since start of the last activity
	cancel context.CancelCauseFunc

	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func startIdle(d time.Duration, cancel context.CancelCauseFunc) *idleTimer {
	it := &idleTimer{d: d, start: time.Now(), cancel: cancel}
	it.mu.Lock()
	it.t = time.AfterFunc(d, it.check)
	it.mu.Unlock()
	return it
}

// touch records activity (a message either way).
func (it *idleTimer) touch() {
	if it != nil {
		it.last.Store(int64(time.Since(it.start)))
	}
}

func (it *idleTimer) check() {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.stopped {
		return
	}
	idle := time.Since(it.start) - time.Duration(it.last.Load())
	if idle >= it.d {
		it.cancel(&timeoutError{setting: settingIdle, d: it.d})
		return
	}
	it.t.Reset(it.d - idle)
}

func (it *idleTimer) stop() {
	if it == nil {
		return
	}
	it.mu.Lock()
	it.stopped = true
	it.t.Stop()
	it.mu.Unlock()
}
