package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Query runs one Consul blocking query with opts (WaitIndex and WaitTime
// set by the loop, the context bounded by it) and returns its answer.
type Query[T any] func(opts *api.QueryOptions) (T, *api.QueryMeta, error)

// Follower runs one blocking query over and over, the way a service's
// watch loop does: the same index rules (nextIndex: start over with a
// non-blocking query after an error or an index that went backwards), the
// same jittered exponential backoff, the same bound on a query that hangs,
// the same logging of transitions only. Mesh identity (CA roots, leaf
// certificate) and authorization (intentions) follow Consul through it.
// Create it with NewFollower; Run must not be called concurrently; Status
// may be called from any goroutine.
type Follower[T any] struct {
	what  string
	query Query[T]
	opts  consulOptions
	log   *slog.Logger

	mu     sync.Mutex
	status WatchStatus
}

// NewFollower returns a loop for query, named what in logs and errors
// ("connect ca roots"). Of the options, WithLogger, WithWaitTime and
// WithBackoff apply; WithEmptyHold does not (answers are not lists of
// instances).
func NewFollower[T any](what string, query Query[T], opts ...ConsulOption) *Follower[T] {
	o := consulOptions{
		logger:      slog.New(slog.DiscardHandler),
		waitTime:    DefaultWaitTime,
		backoffBase: DefaultBackoffBase,
		backoffMax:  DefaultBackoffMax,
	}
	for _, opt := range opts {
		opt(&o)
	}
	return &Follower[T]{what: what, query: query, opts: o, log: o.logger.With("component", "consul", "watch", what)}
}

// Status returns a copy of the loop's current state (Holding is always
// false).
func (f *Follower[T]) Status() WatchStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// Run queries until ctx is done and returns ctx.Err(). deliver gets the
// first answer and every answer whose index moved; the index also moves
// for changes the caller does not use, so the caller compares content
// before rebuilding anything. A failed query delivers nothing: whatever
// the caller built from the last answer stays in force while Run retries
// with backoff. deliver runs on Run's goroutine; Status shows an answer
// as synced only after deliver returned.
func (f *Follower[T]) Run(ctx context.Context, deliver func(T)) error {
	var index, failures uint64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		v, meta, err := f.once(ctx, index)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			index = 0 // start over with a non-blocking query, as consul's api/watch does
			delay := backoff(f.opts.backoffBase, f.opts.backoffMax, failures)
			f.setFailure(err, failures)
			if failures == 1 {
				f.log.Warn("consul query failing; keeping the last answer", "error", err, "retry_in", delay)
			}
			if err := sleepCtx(ctx, delay); err != nil {
				return err
			}
			continue
		}
		if failures > 0 {
			f.log.Info("consul query recovered", "failures", failures)
			failures = 0
		}
		next := nextIndex(index, meta.LastIndex)
		if index == 0 || next != index {
			deliver(v)
		}
		index = next
		f.setSuccess(meta.LastIndex)
	}
}

// once runs one query, bounded by more than the wait Consul may take
// (WaitTime plus its up to WaitTime/16 jitter), so that a connection that
// died silently is noticed.
func (f *Follower[T]) once(ctx context.Context, index uint64) (T, *api.QueryMeta, error) {
	wait := f.opts.waitTime
	ctx, cancel := context.WithTimeout(ctx, wait+wait/8+10*time.Second)
	defer cancel()
	opts := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	v, meta, err := f.query(opts)
	if err == nil && meta == nil {
		err = fmt.Errorf("no query metadata")
	}
	if err != nil {
		var zero T
		return zero, nil, fmt.Errorf("consul %s: %w", f.what, err)
	}
	return v, meta, nil
}

func (f *Follower[T]) setFailure(err error, failures uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status.Healthy = false
	f.status.LastError = err.Error()
	f.status.Failures = failures
}

func (f *Follower[T]) setSuccess(index uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = WatchStatus{Synced: true, Healthy: true, LastSuccess: time.Now(), Index: index}
}
