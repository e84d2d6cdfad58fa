package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Defaults of the Consul watch loop.
const (
	// DefaultWaitTime is how long one blocking query may wait for a change.
	// Consul's own default and cap is 5m/10m; a long wait keeps an idle watch
	// at one request per five minutes.
	DefaultWaitTime = 5 * time.Minute
	// DefaultBackoffBase is the first retry delay after a failed query.
	DefaultBackoffBase = 250 * time.Millisecond
	// DefaultBackoffMax caps the retry delay, so that meshd notices a
	// recovered Consul within half a minute.
	DefaultBackoffMax = 30 * time.Second
	// DefaultEmptyHold is how long an empty answer that follows an outage
	// or an index reset is held back (see [WithEmptyHold]).
	DefaultEmptyHold = 30 * time.Second
)

// ConsulQuery selects the instances of one Consul service.
type ConsulQuery struct {
	// Service is the Consul service name. Required.
	Service string
	// Tag, if set, keeps only instances carrying this tag.
	Tag string
	// Datacenter, if set, queries that datacenter instead of the agent's own.
	Datacenter string
	// PassingOnly keeps only instances whose checks all pass. The config
	// default is true; the zero value here is false, so the caller sets it.
	PassingOnly bool
	// Connect follows the service's Connect-capable instances instead:
	// its sidecars (kind connect-proxy), at their own address and port,
	// with their health (Consul's /v1/health/connect).
	Connect bool
	// ZoneKey, if set, is the metadata key holding an instance's zone
	// (Endpoint.Zone): the node's metadata first, where Consul keeps
	// facts about the machine, else the service instance's.
	ZoneKey string
}

// ConsulOption configures a Consul resolver.
type ConsulOption func(*consulOptions)

type consulOptions struct {
	logger      *slog.Logger
	waitTime    time.Duration
	backoffBase time.Duration
	backoffMax  time.Duration
	emptyHold   time.Duration
}

// WithLogger sets the logger of the watch loop (default: discard). The loop
// adds component=discovery and service=<name> (a Follower: component=consul
// and watch=<what>), so l must carry neither: slog repeats a key rather
// than replace it.
func WithLogger(l *slog.Logger) ConsulOption {
	return func(o *consulOptions) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithWaitTime sets the maximum wait of one blocking query (default
// [DefaultWaitTime]). Values <= 0 keep the default.
func WithWaitTime(d time.Duration) ConsulOption {
	return func(o *consulOptions) {
		if d > 0 {
			o.waitTime = d
		}
	}
}

// WithBackoff sets the retry delay after failed queries: base after the first
// failure, doubling per consecutive failure up to maxDelay, each delay jittered
// down by up to half so that many meshd instances do not retry in step
// (default [DefaultBackoffBase]..[DefaultBackoffMax]). A base <= 0 keeps the
// defaults; a maxDelay below base is raised to base.
func WithBackoff(base, maxDelay time.Duration) ConsulOption {
	return func(o *consulOptions) {
		if base <= 0 {
			return
		}
		o.backoffBase, o.backoffMax = base, max(base, maxDelay)
	}
}

// WithEmptyHold sets how long Watch keeps the last non-empty snapshot when
// Consul answers "no instances" right after it was unreachable or its index
// went backwards (default [DefaultEmptyHold]; 0 turns the hold off). That
// answer is what a restarted agent gives before its services are registered
// again (a dev agent forgets them; a client agent re-syncs them within
// seconds), and applying it would fail every call in between. Held
// endpoints are still health checked, so a really gone backend is ejected
// anyway; a service that really scaled to zero during the outage empties
// the cluster once the hold ends. A non-empty answer ends the hold at once.
// Negative values keep the default.
func WithEmptyHold(d time.Duration) ConsulOption {
	return func(o *consulOptions) {
		if d >= 0 {
			o.emptyHold = d
		}
	}
}

// WatchStatus is the state of a Consul watch loop, for readiness and admin
// endpoints.
type WatchStatus struct {
	// Synced is true once a query has succeeded and its snapshot has been
	// handed to the update callback: from then on the cluster has a real
	// answer from Consul (possibly "no instances") and can be ready.
	Synced bool
	// Healthy is true when the last query succeeded.
	Healthy bool
	// LastError is the error of the last query, "" when it succeeded.
	LastError string
	// LastSuccess is when a query last succeeded (zero if never).
	LastSuccess time.Time
	// Index is the X-Consul-Index of the last successful query.
	Index uint64
	// Failures counts consecutive failed queries (0 after a success).
	Failures uint64
	// Holding is true while an empty answer after an outage or an index
	// reset is held back and the last snapshot kept (WithEmptyHold).
	Holding bool
}

// Consul is a Resolver that follows one Consul service with blocking queries
// on the health endpoint. Create it with [NewConsul]. Watch runs the loop and
// must not be called concurrently on the same Consul; Status may be called
// from any goroutine at any time. Instances registered without a port are
// left out of snapshots: meshd dials host:port and could not reach them.
type Consul struct {
	client *api.Client
	q      ConsulQuery
	opts   consulOptions
	log    *slog.Logger

	mu     sync.Mutex
	status WatchStatus
}

var _ Resolver = (*Consul)(nil)

// NewConsul returns a resolver for the instances of q.Service that client
// can see. It does no I/O; Watch does.
func NewConsul(client *api.Client, q ConsulQuery, opts ...ConsulOption) *Consul {
	o := consulOptions{
		logger:      slog.New(slog.DiscardHandler),
		waitTime:    DefaultWaitTime,
		backoffBase: DefaultBackoffBase,
		backoffMax:  DefaultBackoffMax,
		emptyHold:   DefaultEmptyHold,
	}
	for _, opt := range opts {
		opt(&o)
	}
	return &Consul{
		client: client,
		q:      q,
		opts:   o,
		log:    o.logger.With("component", "discovery", "service", q.Service),
	}
}

// Status returns a copy of the loop's current state. It is safe for
// concurrent use.
func (c *Consul) Status() WatchStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Watch follows the service until ctx is done and returns ctx.Err(). The
// first successful query always produces a snapshot, even an empty one (no
// instances is an answer); later ones only when the instances changed. A
// failed query never produces one: the last snapshot stays in force while
// Watch retries with backoff, and the failure shows in Status. An empty
// answer right after an outage or an index reset is held back for a while
// (WithEmptyHold). The loop logs when queries start failing and when they
// recover, not on every retry.
func (c *Consul) Watch(ctx context.Context, update func([]Endpoint)) error {
	w := &watchLoop{c: c, update: update}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		entries, meta, err := c.query(ctx, w.index, w.waitTime())
		if err != nil {
			if err := w.failed(ctx, err); err != nil {
				return err
			}
			continue
		}
		w.answered(entries, meta)
	}
}

// watchLoop is the state of one Watch call. It belongs to the goroutine
// running that call, so it needs no lock; what other goroutines may see is
// copied into c.status (under c.mu) by setFailure and setSuccess.
type watchLoop struct {
	c      *Consul
	update func([]Endpoint)

	index    uint64 // WaitIndex of the next query; 0 = answer at once
	last     []Endpoint
	sent     bool
	failing  bool
	failures uint64
	filtered bool
	// suspect: Consul was unreachable or its index went backwards since
	// the last non-empty snapshot, so an empty answer may be a restarted
	// agent that has not re-registered its services yet.
	suspect   bool
	holdUntil time.Time // while non-zero, an empty answer is held back
}

// waitTime is the WaitTime of the next query. While an empty answer is
// held back, the query must return when the hold ends even if nothing
// changes, or the hold would last a whole WaitTime.
func (w *watchLoop) waitTime() time.Duration {
	wait := w.c.opts.waitTime
	if !w.holdUntil.IsZero() {
		wait = max(min(wait, time.Until(w.holdUntil)), time.Millisecond)
	}
	return wait
}

// failed handles a failed query: it records the failure, logs the first one
// of a run and sleeps the backoff. It returns non-nil only when ctx is done,
// which ends Watch; the last snapshot stays in force meanwhile.
func (w *watchLoop) failed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	w.failures++
	// As consul's api/watch does: after an error, start over with a
	// non-blocking query. A restarted Consul may have lower indexes, and
	// waiting on the old one would hide changes until WaitTime.
	w.index = 0
	w.suspect = true
	w.c.setFailure(err, w.failures)
	delay := w.c.backoff(w.failures)
	// Log the transition only: retries can go on for hours, and Status
	// carries the current error.
	if !w.failing {
		w.failing = true
		w.c.log.Warn("consul query failing; keeping the last snapshot",
			"error", err, "endpoints", len(w.last), "retry_in", delay)
	}
	return sleepCtx(ctx, delay)
}

// answered handles a successful query: it advances the index, then either
// holds an empty answer back or delivers the snapshot if it changed.
func (w *watchLoop) answered(entries []*api.ServiceEntry, meta *api.QueryMeta) {
	if w.failing {
		w.failing = false
		w.c.log.Info("consul query recovered", "failures", w.failures)
	}
	w.failures = 0
	w.noteACLFiltering(meta.ResultsFilteredByACLs)
	if w.index > 0 && meta.LastIndex < w.index {
		w.suspect = true
	}
	w.index = nextIndex(w.index, meta.LastIndex)

	snap := consulEndpoints(entries, w.c.q.ZoneKey)
	if w.holdEmpty(snap) {
		w.c.setSuccess(meta.LastIndex, true)
		return
	}
	w.endHold(snap)
	w.deliver(snap)
	// Record success only after the snapshot is delivered, so that a
	// reader seeing Synced (or a new Index) knows the consumer has it.
	w.c.setSuccess(meta.LastIndex, false)
}

// noteACLFiltering logs when Consul starts or stops hiding instances from
// this token: a partial answer looks like a healthy one otherwise, and the
// operator has to fix the token's rules. Only changes are logged.
func (w *watchLoop) noteACLFiltering(filtered bool) {
	if filtered == w.filtered {
		return
	}
	w.filtered = filtered
	if filtered {
		w.c.log.Warn("consul hid some instances from this token (ACLs); check its service:read and node:read rules")
	} else {
		w.c.log.Info("consul no longer hides instances from this token")
	}
}

// holdEmpty reports whether snap is to be held back: it is empty, the last
// snapshot was not, and it came right after an outage or an index reset
// (see [WithEmptyHold]). The first such answer starts the hold; once the
// hold has run out the empty answer is applied after all.
func (w *watchLoop) holdEmpty(snap []Endpoint) bool {
	hold := w.c.opts.emptyHold
	if len(snap) > 0 || len(w.last) == 0 || !w.suspect || hold <= 0 {
		return false
	}
	now := time.Now()
	if w.holdUntil.IsZero() {
		w.holdUntil = now.Add(hold)
		w.c.log.Warn("consul answered no instances right after an outage or index reset; keeping the last snapshot meanwhile (a restarted agent may not have re-registered them yet)",
			"endpoints", len(w.last), "hold", hold)
	}
	if now.Before(w.holdUntil) {
		return true
	}
	w.c.log.Warn("consul still answers no instances; the hold is over, applying it", "hold", hold)
	return false
}

// endHold ends a hold because snap is applied (instances are back, or the
// hold ran out), and clears the suspicion once Consul answers instances: a
// later empty answer is then an ordinary one.
func (w *watchLoop) endHold(snap []Endpoint) {
	if !w.holdUntil.IsZero() {
		if len(snap) > 0 {
			w.c.log.Info("consul answers instances again; hold ended", "endpoints", len(snap))
		}
		w.holdUntil = time.Time{}
	}
	if len(snap) > 0 {
		w.suspect = false
	}
}

// deliver hands snap to the update callback unless it equals the last one.
// The first answer is always delivered, even empty: "no instances" is an
// answer, and the consumer waits for one. The index also moves for changes
// meshd does not use (check output, instances filtered out by tag or
// health, a re-registration with the same data), so payloads are compared,
// as Traefik's configuration watcher does.
func (w *watchLoop) deliver(snap []Endpoint) {
	if !w.sent || !equalEndpoints(w.last, snap) {
		w.update(cloneEndpoints(snap))
		w.last, w.sent = snap, true
	}
}

// query runs one blocking query. Its context is bounded by more than the
// wait Consul may take (WaitTime plus Consul's up to WaitTime/16 jitter), so
// that a connection that died silently (no RST: a partition, a lost NAT
// entry) is noticed instead of hanging forever.
func (c *Consul) query(ctx context.Context, index uint64, wait time.Duration) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+wait/8+10*time.Second)
	defer cancel()
	opts := &api.QueryOptions{
		Datacenter: c.q.Datacenter,
		WaitIndex:  index,
		WaitTime:   wait,
	}
	health := c.client.Health().Service
	if c.q.Connect {
		health = c.client.Health().Connect
	}
	entries, meta, err := health(c.q.Service, c.q.Tag, c.q.PassingOnly, opts.WithContext(ctx))
	if err != nil {
		return nil, nil, c.describe(err)
	}
	return entries, meta, nil
}

// describe wraps a query error; an ACL refusal gets a hint, because "403
// (ACL not found)" alone rarely tells an operator which token to fix.
func (c *Consul) describe(err error) error {
	var se api.StatusError
	msg := err.Error()
	if (errors.As(err, &se) && se.Code == http.StatusForbidden) ||
		strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found") {
		return fmt.Errorf("discovery: consul query service %q: permission denied (check CONSUL_HTTP_TOKEN / consul.token): %w", c.q.Service, err)
	}
	return fmt.Errorf("discovery: consul query service %q: %w", c.q.Service, err)
}

// nextIndex applies Consul's blocking-query rules to a returned index
// (consul api/watch's WaitIndexVal.Next and the "Blocking Queries" docs).
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		// The index went backwards (a restored snapshot, a new leader with
		// a different view): start over with a non-blocking query.
		return 0
	case got == 0:
		// Never block on 0: it would return at once every time and spin.
		return 1
	default:
		return got
	}
}

// consulEndpoints converts health entries into a sorted snapshot. Entries
// without a port are skipped: meshd dials host:port and cannot reach them.
// With a zoneKey, each endpoint's Zone is that key of its node's metadata,
// else of its service metadata.
func consulEndpoints(entries []*api.ServiceEntry, zoneKey string) []Endpoint {
	eps := make([]Endpoint, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil || e.Node == nil || e.Service.Port <= 0 {
			continue
		}
		host := e.Service.Address
		if host == "" {
			// Consul's rule: a service without its own address lives at
			// its node's address.
			host = e.Node.Address
		}
		weight := uint32(1)
		if w := e.Service.Weights.Passing; w > 0 {
			weight = uint32(w)
		}
		ep := Endpoint{
			ID:      e.Node.Node + "/" + e.Service.ID,
			Address: net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Weight:  weight,
		}
		// nil rather than empty when there are none, like static endpoints:
		// Consul sends [] and {} for an instance registered without them.
		if len(e.Service.Tags) > 0 {
			ep.Tags = slices.Clone(e.Service.Tags)
		}
		if len(e.Service.Meta) > 0 {
			ep.Meta = maps.Clone(e.Service.Meta)
		}
		if zoneKey != "" {
			if z, ok := e.Node.Meta[zoneKey]; ok {
				ep.Zone = z
			} else {
				ep.Zone = e.Service.Meta[zoneKey]
			}
		}
		eps = append(eps, ep)
	}
	sortEndpoints(eps)
	return eps
}

// backoff returns the jittered delay before the retry after n consecutive
// failures (n >= 1).
func (c *Consul) backoff(n uint64) time.Duration {
	return backoff(c.opts.backoffBase, c.opts.backoffMax, n)
}

// backoff is the delay after n consecutive failures (n >= 1): base doubled
// per failure up to maxDelay, jittered down by up to half so that retries
// stay bounded by maxDelay and spread out.
func backoff(base, maxDelay time.Duration, n uint64) time.Duration {
	d := base
	for i := uint64(1); i < n && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	return d/2 + rand.N(d/2+1)
}

func (c *Consul) setFailure(err error, failures uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Healthy = false
	c.status.LastError = err.Error()
	c.status.Failures = failures
}

func (c *Consul) setSuccess(index uint64, holding bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Holding = holding
	c.status.Synced = true
	c.status.Healthy = true
	c.status.LastError = ""
	c.status.LastSuccess = time.Now()
	c.status.Index = index
	c.status.Failures = 0
}

// sleepCtx waits for d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
