package authz

import (
	"context"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/discovery"
)

// Watcher follows Consul's intentions for one destination with a blocking
// query and keeps the compiled table, so that Decide never waits for the
// network. Create it with NewWatcher; Run must not be called concurrently;
// Table, Ready and Status may be called from any goroutine.
//
// While Consul is unreachable the last table keeps serving; a rule set that
// does not compile is logged once and the last good table keeps serving.
type Watcher struct {
	destination string
	def         Action
	log         *slog.Logger
	follow      *discovery.Follower[[]Rule]

	table atomic.Pointer[Table]
	ready chan struct{}

	// Owned by Run's goroutine (deliver runs on it).
	last      []Rule
	delivered bool

	mu         sync.Mutex // guards compileErr
	compileErr string     // "" when the last answer compiled
}

// NewWatcher returns a watcher of the intentions whose destination is
// destination, deciding def for callers no intention names. log may be nil
// (discard); the watcher adds component=authz and destination, its query
// loop component=consul and watch, so log carries neither; of opts, WithWaitTime and WithBackoff apply (a WithLogger in
// opts replaces log for the query loop only). It does no I/O; Run does.
func NewWatcher(client *api.Client, destination string, def Action, log *slog.Logger, opts ...discovery.ConsulOption) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		destination: destination,
		def:         def,
		log:         log.With("component", "authz", "destination", destination),
		ready:       make(chan struct{}),
	}
	query := func(q *api.QueryOptions) ([]Rule, *api.QueryMeta, error) {
		m, meta, err := client.Connect().IntentionMatch(&api.IntentionMatch{
			By:    api.IntentionMatchDestination,
			Names: []string{destination},
		}, q)
		if err != nil {
			return nil, meta, err
		}
		return FromConsul(m[destination]), meta, nil
	}
	opts = append([]discovery.ConsulOption{discovery.WithLogger(log)}, opts...)
	w.follow = discovery.NewFollower("intentions "+destination, query, opts...)
	return w
}

// Run follows Consul until ctx is done and returns ctx.Err().
func (w *Watcher) Run(ctx context.Context) error {
	return w.follow.Run(ctx, w.deliver)
}

// deliver compiles an answer whose content changed and swaps it in.
func (w *Watcher) deliver(rules []Rule) {
	if w.delivered && equalRules(rules, w.last) {
		return
	}
	w.delivered = true
	w.last = rules
	t, err := Compile(w.destination, rules, w.def)
	if err != nil {
		w.mu.Lock()
		first := w.compileErr != err.Error()
		w.compileErr = err.Error()
		w.mu.Unlock()
		if first {
			w.log.Error("intentions do not compile; keeping the last good table", "error", err, "have_table", w.table.Load() != nil)
		}
		return
	}
	w.mu.Lock()
	hadErr := w.compileErr != ""
	w.compileErr = ""
	w.mu.Unlock()
	old := w.table.Swap(t)
	if old == nil {
		close(w.ready)
	}
	w.log.Info("authorization table updated", "rules", t.Len(), "default", w.def, "recovered", hadErr)
}

// equalRules compares two answers by content; nil and empty slices are
// equal, as JSON gives either.
func equalRules(a, b []Rule) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	return reflect.DeepEqual(a, b)
}

// Table returns the current table: nil before the first answer that
// compiled. Callers load it once per call and use that value throughout.
func (w *Watcher) Table() *Table { return w.table.Load() }

// Ready is closed once the first table is in place.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Status reports the query loop's state. Synced is true only once a table
// is in place, and only after the loop has recorded the answer, a moment
// after Ready closes; LastError shows a compile error of the latest answer
// (the query itself may be healthy) until an answer compiles.
func (w *Watcher) Status() discovery.WatchStatus {
	st := w.follow.Status()
	if w.table.Load() == nil {
		st.Synced = false
	}
	w.mu.Lock()
	if w.compileErr != "" {
		st.LastError = w.compileErr
	}
	w.mu.Unlock()
	return st
}
