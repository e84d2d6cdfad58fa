package balancer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/healthwatch"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// ErrNoEndpoint is returned (wrapped with the cluster's name) by Pick when
// no endpoint can take the call. Callers map it to UNAVAILABLE.
var ErrNoEndpoint = errors.New("balancer: no healthy endpoint")

// maxPickAttempts bounds how often Pick retries after picking an endpoint
// that was removed while it looked: one retry always sees the new picker,
// the third is slack.
const maxPickAttempts = 3

// Dialer creates the connection for one endpoint; the caller adds TLS,
// codecs and stats handlers. It must not block on connecting
// (grpc.NewClient is lazy): the Cluster calls it on its update loop, and a
// slow dial would delay every health and outlier change of the cluster.
type Dialer func(ep discovery.Endpoint) (*grpc.ClientConn, error)

// PickInfo describes the call Pick chooses an endpoint for. Pick does not
// retain it, so a caller can keep it on the stack.
type PickInfo struct {
	// Method is the full method name, "/pkg.Service/Method".
	Method string
	// Header is the request metadata (metadata.MD satisfies it); ring_hash
	// reads its hash key from it. May be nil.
	Header interface{ Get(string) []string }
	// Exclude is an endpoint to avoid, typically the one a retried call
	// failed on; it is still picked if it is the only candidate.
	Exclude *Endpoint
}

// Cluster is the set of endpoints of one upstream cluster: their
// connections, health, outlier state and load, and an immutable picker
// over the endpoints that may take calls.
//
// Pick and Done are lock-free and allocation-free and may be called from
// any number of goroutines. Every state change (discovery snapshots,
// health reports, ejections and their expiry, drains) runs on one update
// goroutine owned by the Cluster, which builds a new picker after each
// batch of changes and swaps it in atomically, so a Pick always sees one
// consistent set of endpoints. All methods are safe for concurrent use.
type Cluster struct {
	opts      Options // with defaults
	dial      Dialer
	log       *slog.Logger
	now       func() time.Time
	policy    policy
	healthOps []healthwatch.Option
	// errNoEndpoint is built once so that a failing Pick does not allocate.
	errNoEndpoint error

	// Done's configuration, read without locks.
	trackRTT    bool
	tau         float64
	outlierOn   bool
	percentRule bool
	consecLimit int64 // 0: rule off
	failMask    uint64
	// slowStartOn: SlowStart set and the policy uses it (not ring_hash).
	slowStartOn bool

	picker atomic.Pointer[pickerRef]
	synced atomic.Bool
	// panicPicks counts the calls picked while in panic mode.
	panicPicks atomic.Uint64

	// The event queue: unbounded so that a health watcher or Update never
	// waits for the loop, only for a short append.
	qmu     sync.Mutex
	queue   []event
	qclosed bool
	// wake carries "look again" to the loop: queued events, an endpoint
	// flagged by Done, a drained endpoint. One slot, never blocks a sender.
	wake      chan struct{}
	quit      chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once

	watchCtx    context.Context
	watchCancel context.CancelFunc
	watchers    sync.WaitGroup

	// mu guards the control state below. The loop holds it while applying
	// changes; Status holds it to read.
	mu       sync.Mutex
	eps      map[string]*Endpoint
	order    []*Endpoint // live endpoints sorted by ID
	draining []*Endpoint
	// panicking says whether the picker in place was built in panic mode;
	// panics counts the times the cluster entered it.
	panicking bool
	panics    uint64
	// rampNext is when the next slow-start weight step is due (zero: no
	// endpoint ramps); pickZone the zone picks stay in ("" : every zone).
	rampNext time.Time
	pickZone string
}

// pickerRef lets an interface value live behind an atomic.Pointer. A nil p
// means nothing is pickable; panic marks a picker built in panic mode.
type pickerRef struct {
	p     picker
	panic bool
}

// event is one queued change for the loop: a snapshot (done non-nil) or a
// health report for ep.
type event struct {
	snapshot []discovery.Endpoint
	done     chan struct{}
	ep       *Endpoint
	report   healthwatch.Report
}

// NewCluster validates opts and returns a Cluster with no endpoints; it is
// not Ready until the first Update. The Cluster runs an update goroutine
// (and one health watcher per endpoint) until Close.
func NewCluster(opts Options, dial Dialer) (*Cluster, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if dial == nil {
		return nil, fmt.Errorf("balancer: cluster %q: nil dialer", opts.Name)
	}
	o := opts.withDefaults()
	pol, err := newPolicy(&o)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		opts:          o,
		dial:          dial,
		log:           o.Logger.With("component", "balancer", "cluster", o.Name),
		now:           o.Now,
		policy:        pol,
		errNoEndpoint: fmt.Errorf("%w in cluster %q", ErrNoEndpoint, o.Name),
		trackRTT:      o.Policy == PeakEWMA,
		slowStartOn:   o.SlowStart > 0 && o.Policy != RingHash,
		tau:           float64(o.PeakEWMA.Decay.Nanoseconds()),
		wake:          make(chan struct{}, 1),
		quit:          make(chan struct{}),
		loopDone:      make(chan struct{}),
		eps:           make(map[string]*Endpoint),
	}
	out := &o.Outlier
	if !out.Disabled && out.MaxEjectionPercent > 0 {
		if out.ConsecutiveFailures > 0 {
			c.consecLimit = int64(out.ConsecutiveFailures)
		}
		c.percentRule = out.FailurePercentage > 0
		c.outlierOn = c.consecLimit > 0 || c.percentRule
	}
	for _, code := range out.FailureCodes {
		c.failMask |= 1 << code
	}
	h := o.Health
	if h.BackoffBase > 0 || h.BackoffMax > 0 {
		c.healthOps = append(c.healthOps, healthwatch.WithBackoff(h.BackoffBase, h.BackoffMax))
	}
	if h.CheckInterval > 0 {
		c.healthOps = append(c.healthOps, healthwatch.WithCheckInterval(h.CheckInterval))
	}
	c.healthOps = append(c.healthOps, healthwatch.WithMissingService(h.MissingServing))
	c.watchCtx, c.watchCancel = context.WithCancel(context.Background())
	c.picker.Store(&pickerRef{})
	go c.run()
	return c, nil
}

// Name returns the cluster's name.
func (c *Cluster) Name() string { return c.opts.Name }

// Ready reports whether the cluster received its first snapshot (possibly
// empty), so that readiness can wait for discovery without waiting for
// healthy endpoints.
func (c *Cluster) Ready() bool { return c.synced.Load() }

// Update replaces the cluster's endpoint set with eps, a whole snapshot,
// and returns once the new picker is in place (or the cluster is closed).
//
// Endpoints are matched by ID. A new ID is dialed and starts "pending"
// until its first SERVING health report (at once when health checking is
// disabled). A known ID with the same address keeps its connection, health
// and outlier state; a changed weight or metadata is applied in place. A
// known ID with a new address is replaced: the old endpoint drains, the new
// one is dialed. An ID missing from eps stops receiving picks at once and
// drains: its connection closes when its outstanding calls reach zero, or
// after DrainTimeout. An endpoint without an ID or with a repeated ID is
// skipped, as is one whose dial fails; both are logged.
func (c *Cluster) Update(eps []discovery.Endpoint) {
	done := make(chan struct{})
	if !c.enqueue(event{snapshot: slices.Clone(eps), done: done}) {
		return
	}
	select {
	case <-done:
	case <-c.quit:
	}
}

// Pick chooses an endpoint for one call and counts the call as outstanding
// on it; the caller must call Done exactly once for it. Pick never blocks,
// does no I/O and does not allocate. When no endpoint can take the call it
// returns an error wrapping ErrNoEndpoint that names the cluster (also
// after Close).
func (c *Cluster) Pick(info *PickInfo) (*Endpoint, error) {
	var r pickRequest
	if info != nil {
		r.exclude = info.Exclude
		if c.opts.HashHeader != "" && info.Header != nil {
			if v := info.Header.Get(c.opts.HashHeader); len(v) > 0 {
				r.key, r.hasKey = v[0], true
			}
		}
	}
	for range maxPickAttempts {
		ref := c.picker.Load()
		if ref.p == nil {
			return nil, c.errNoEndpoint
		}
		e := ref.p.pick(r)
		e.outstanding.Add(1)
		// The loop swaps the picker before it marks removed endpoints, so
		// an endpoint seen removed here means ref was stale: the next Load
		// gets the picker without it. Checking after the increment pairs
		// with the loop's "mark, then read outstanding", so either the loop
		// sees this call and waits for its Done, or this sees the mark.
		if !e.removed.Load() {
			if ref.panic {
				c.panicPicks.Add(1)
			}
			return e, nil
		}
		c.release(e)
	}
	return nil, c.errNoEndpoint
}

// Done reports the end of a call picked on e: start is when it was sent
// (from the same clock as Options.Now), code its final gRPC status and
// connFailure whether it failed at the transport level (connection refused
// or reset before a response). It decrements e's outstanding calls, feeds
// peak_ewma's latency estimate (transport failures are not latency
// samples) and outlier detection. Done is lock-free and does not allocate;
// an ejection it triggers is judged on the update loop.
func (c *Cluster) Done(e *Endpoint, start time.Time, code codes.Code, connFailure bool) {
	if e == nil {
		return
	}
	if c.trackRTT && !connFailure {
		now := c.now()
		observeRTT(e, float64(now.Sub(start)), now.UnixNano(), c.tau)
	}
	if c.outlierOn {
		failed := connFailure || (uint32(code) < 64 && c.failMask&(1<<uint32(code)) != 0)
		if c.percentRule {
			e.requests.Add(1)
			if failed {
				e.failures.Add(1)
			}
		}
		switch {
		case !failed:
			// Load first: most calls succeed, and a store on every one
			// would bounce the cache line between cores for nothing.
			if e.consecutive.Load() != 0 {
				e.consecutive.Store(0)
			}
		case c.consecLimit > 0:
			if e.consecutive.Add(1) >= c.consecLimit && !e.outlierFlag.Load() && e.outlierFlag.CompareAndSwap(false, true) {
				c.poke()
			}
		}
	}
	c.release(e)
}

// release drops one outstanding call of e and tells the loop when a
// draining endpoint has none left.
func (c *Cluster) release(e *Endpoint) {
	if e.outstanding.Add(-1) <= 0 && e.removed.Load() {
		c.poke()
	}
}

// poke wakes the loop without blocking.
func (c *Cluster) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// enqueue adds ev for the loop; false once the cluster is closed.
func (c *Cluster) enqueue(ev event) bool {
	c.qmu.Lock()
	if c.qclosed {
		c.qmu.Unlock()
		return false
	}
	c.queue = append(c.queue, ev)
	c.qmu.Unlock()
	c.poke()
	return true
}

// Close stops the cluster: the update loop and every health watcher end
// (Close waits for them) and every connection is closed, draining or not.
// Later Picks fail with ErrNoEndpoint; Done remains safe to call for
// endpoints picked before. Close is idempotent.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		c.qmu.Lock()
		c.qclosed = true
		c.queue = nil
		c.qmu.Unlock()
		close(c.quit)
		<-c.loopDone

		c.picker.Store(&pickerRef{})
		// Watchers only enqueue, and enqueue now returns at once, so this
		// wait cannot deadlock with a report in progress.
		c.watchCancel()
		c.watchers.Wait()

		c.mu.Lock()
		defer c.mu.Unlock()
		for _, e := range slices.Concat(c.order, c.draining) {
			e.removed.Store(true)
			c.closeConn(e, "cluster closed")
		}
		c.order, c.draining = nil, nil
		clear(c.eps)
		c.log.Debug("cluster closed")
	})
}

// run is the update loop. It applies queued events in batches, judges
// outliers, expires ejections and drains, and rebuilds the picker once per
// batch that changed anything.
func (c *Cluster) run() {
	defer close(c.loopDone)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var tick <-chan time.Time
	if c.percentRule {
		t := time.NewTicker(c.opts.Outlier.Interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		ticked := false
		select {
		case <-c.quit:
			return
		case <-c.wake:
		case <-timer.C:
		case <-tick:
			ticked = true
		}
		waiters, next := c.step(ticked)
		for _, w := range waiters {
			close(w)
		}
		if next > 0 {
			timer.Reset(next)
		} else {
			timer.Stop()
		}
	}
}

// step runs one batch on the loop. It returns the Update calls to release
// and how long until the next deadline (0: none).
func (c *Cluster) step(ticked bool) (waiters []chan struct{}, next time.Duration) {
	c.qmu.Lock()
	events := c.queue
	c.queue = nil
	c.qmu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	dirty := false
	var removed []*Endpoint
	for _, ev := range events {
		if ev.done != nil {
			removed = append(removed, c.applySnapshot(ev.snapshot, now)...)
			waiters = append(waiters, ev.done)
			dirty = true
			continue
		}
		dirty = c.applyHealth(ev.ep, ev.report, now) || dirty
	}
	dirty = c.expireEjections(now) || dirty
	dirty = c.judgeOutliers(now, ticked) || dirty
	// A slow-start step is due: rebuild with the next weights.
	dirty = dirty || (!c.rampNext.IsZero() && !now.Before(c.rampNext))
	if dirty {
		c.rebuild(now)
	}
	// Only now that no picker offers them may removed endpoints be marked;
	// see Pick.
	for _, e := range removed {
		e.removed.Store(true)
	}
	c.reapDraining(now)
	if len(waiters) > 0 {
		c.synced.Store(true)
	}
	return waiters, c.nextDeadline(now)
}

// applySnapshot diffs a discovery snapshot against the live endpoints and
// returns the endpoints it removed (now draining).
func (c *Cluster) applySnapshot(snap []discovery.Endpoint, now time.Time) (removed []*Endpoint) {
	seen := make(map[string]bool, len(snap))
	for _, d := range snap {
		if d.ID == "" || seen[d.ID] {
			c.log.Warn("skipping endpoint with empty or repeated ID", endpointAttrs(d.ID, d.Address)...)
			continue
		}
		seen[d.ID] = true
		if e := c.eps[d.ID]; e != nil {
			if e.address == d.Address {
				e.weight.Store(d.Weight)
				e.zone = d.Zone
				if !maps.Equal(e.meta, d.Meta) {
					e.meta = maps.Clone(d.Meta)
				}
				continue
			}
			c.remove(e, now)
			removed = append(removed, e)
		}
		if err := c.add(d, now); err != nil {
			c.log.Error("cannot dial endpoint", append(endpointAttrs(d.ID, d.Address), "err", err)...)
		}
	}
	for id, e := range c.eps {
		if !seen[id] {
			c.remove(e, now)
			removed = append(removed, e)
		}
	}
	c.order = slices.SortedFunc(maps.Values(c.eps), func(a, b *Endpoint) int { return cmp.Compare(a.id, b.id) })
	return removed
}

// add dials d and starts its health watcher.
func (c *Cluster) add(d discovery.Endpoint, now time.Time) error {
	conn, err := c.dial(d)
	if err != nil {
		return fmt.Errorf("balancer: dial %s: %w", d.Address, err)
	}
	if conn == nil {
		return fmt.Errorf("balancer: dial %s: dialer returned no connection", d.Address)
	}
	e := &Endpoint{id: d.ID, address: d.Address, conn: conn, meta: maps.Clone(d.Meta), since: now, zone: d.Zone}
	e.weight.Store(d.Weight)
	e.rttBits.Store(math.Float64bits(float64(c.opts.PeakEWMA.InitialRTT.Nanoseconds())))
	e.rttStamp.Store(now.UnixNano())
	if c.opts.Health.Disabled {
		e.health, e.healthSource, e.healthReason = healthServing, SourceDiscovery, "health checking disabled"
	} else {
		ctx, cancel := context.WithCancel(c.watchCtx)
		e.cancelWatch = cancel
		report := func(r healthwatch.Report) { c.enqueue(event{ep: e, report: r}) }
		c.watchers.Go(func() {
			healthwatch.Watch(ctx, conn, c.opts.Health.Service, report, c.healthOps...)
		})
	}
	c.eps[d.ID] = e
	e.state, _, _ = e.view()
	c.log.Info("endpoint added", append(endpointAttrs(e.id, e.address), "state", e.state)...)
	return nil
}

// remove takes e out of the live set and starts draining it.
func (c *Cluster) remove(e *Endpoint, now time.Time) {
	delete(c.eps, e.id)
	if e.cancelWatch != nil {
		e.cancelWatch()
	}
	e.draining = true
	e.drainUntil = now.Add(c.opts.DrainTimeout)
	c.draining = append(c.draining, e)
	c.transition(e, now)
}

// reapDraining closes the connections of draining endpoints that have no
// outstanding calls left or whose drain timed out.
func (c *Cluster) reapDraining(now time.Time) {
	c.draining = slices.DeleteFunc(c.draining, func(e *Endpoint) bool {
		switch n := e.outstanding.Load(); {
		case n <= 0:
			c.closeConn(e, "drained")
		case !now.Before(e.drainUntil):
			c.closeConn(e, fmt.Sprintf("drain timeout with %d calls outstanding", n))
		default:
			return false
		}
		return true
	})
}

func (c *Cluster) closeConn(e *Endpoint, why string) {
	if e.closed {
		return
	}
	e.closed = true
	if e.cancelWatch != nil {
		e.cancelWatch()
	}
	// Close only fails for a conn already closed, which e.closed rules out.
	_ = e.conn.Close()
	c.log.Info("endpoint connection closed", append(endpointAttrs(e.id, e.address), "reason", why)...)
	if c.opts.OnClosed != nil {
		c.opts.OnClosed(e.address)
	}
}

// endpointAttrs names an endpoint in a log line: endpoint is its ID, and
// address follows only when it says something more (a Consul instance
// "node/service-id"); a static endpoint's ID is its address, written once.
func endpointAttrs(id, address string) []any {
	if id == address {
		return []any{"endpoint", id}
	}
	return []any{"endpoint", id, "address", address}
}

// applyHealth records a health report for e and says whether e's class
// changed: its pickability, or what it counts for in panic mode.
func (c *Cluster) applyHealth(e *Endpoint, r healthwatch.Report, now time.Time) bool {
	if c.eps[e.id] != e {
		return false // a late report of a removed endpoint
	}
	was := e.class()
	if r.State == healthwatch.StateServing {
		e.health = healthServing
	} else {
		e.health = healthNotServing
	}
	e.healthUnreachable = r.State != healthwatch.StateServing && r.Unreachable
	e.healthSource, e.healthReason = "health:"+r.Source, r.Reason
	c.transition(e, now)
	return e.class() != was
}

// transition logs e's change of state, once, and stamps its time.
func (c *Cluster) transition(e *Endpoint, now time.Time) {
	state, source, reason := e.view()
	if state == e.state {
		return
	}
	c.log.Info("endpoint state changed", append(endpointAttrs(e.id, e.address),
		"from", e.state, "to", state, "source", source, "reason", reason)...)
	e.state, e.since = state, now
}

// rebuild swaps in a picker over the endpoints pickSet chooses: the
// serving ones, more in panic mode, every live one with AllDownAny when
// nothing else is pickable; of those, only the local zone's while it is
// healthy enough (locality.go); weighted with slow start's ramps
// (slowstart.go).
func (c *Cluster) rebuild(now time.Time) {
	eps, panicking := pickSet(c.order, c.opts.HealthyPanicThreshold, c.opts.AllDown == AllDownAny)
	eps, zone := localityFilter(c.order, eps, c.opts.Locality, panicking)
	if zone != c.pickZone && c.opts.Locality.LocalZone != "" {
		if zone == "" {
			c.log.Warn("local zone below its healthy share; spreading calls over every zone",
				"local_zone", c.opts.Locality.LocalZone, "min_healthy_percent", c.opts.Locality.MinHealthyPercent)
		} else {
			c.log.Info("picks stay in the local zone", "local_zone", zone)
		}
	}
	c.pickZone = zone
	c.rampNext = c.applySlowStart(eps, now)
	if panicking != c.panicking {
		serving := 0
		for _, e := range c.order {
			if e.pickable() {
				serving++
			}
		}
		if panicking {
			c.panics++
			c.log.Warn("cluster in panic mode: too few endpoints serving; balancing over every endpoint that answered",
				"serving", serving, "endpoints", len(c.order), "threshold_percent", c.opts.HealthyPanicThreshold, "picked_from", len(eps))
		} else {
			c.log.Info("cluster left panic mode", "serving", serving, "endpoints", len(c.order))
		}
		c.panicking = panicking
	}
	ref := &pickerRef{panic: panicking && len(eps) > 0}
	if len(eps) > 0 {
		ref.p = c.policy.build(eps)
	}
	c.picker.Store(ref)
}

// nextDeadline returns the time until the earliest ejection expiry or
// drain timeout, or 0 if there is none.
func (c *Cluster) nextDeadline(now time.Time) time.Duration {
	var first time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	for _, e := range c.order {
		consider(e.ejectedUntil)
	}
	for _, e := range c.draining {
		consider(e.drainUntil)
	}
	consider(c.rampNext)
	if first.IsZero() {
		return 0
	}
	// At least a millisecond: with an injected clock that lags real time
	// the loop re-checks at a bounded rate instead of spinning.
	return max(first.Sub(now), time.Millisecond)
}
