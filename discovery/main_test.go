package discovery_test

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/kubetest"
	"github.com/meshd/meshd/internal/testkit"
)

// shared is one Consul agent for the tests that do not stop, restart or
// reconfigure it; TestMain closes it.
var shared consultest.Shared

func sharedAgent(t *testing.T) *consultest.Agent { return shared.Agent(t) }

// sharedKube is one API server for the EndpointSlice tests, which use
// distinct namespaces; it starts on first use and TestMain stops it.
var sharedKube struct {
	once sync.Once
	env  *kubetest.Env
	err  error
}

func kubeEnv(t *testing.T) *kubetest.Env {
	t.Helper()
	assets := kubetest.Assets(t)
	sharedKube.once.Do(func() { sharedKube.env, sharedKube.err = kubetest.Launch(assets) })
	if sharedKube.err != nil {
		t.Fatal(sharedKube.err)
	}
	return sharedKube.env
}

func TestMain(m *testing.M) {
	shared.Main(m, func() {
		if sharedKube.env != nil {
			sharedKube.env.Stop()
		}
	})
}

// watcher runs a Resolver's Watch for the life of the test and collects its
// snapshots.
type watcher struct {
	t       *testing.T
	updates chan []discovery.Endpoint
}

func startWatch(t *testing.T, r discovery.Resolver) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{t: t, updates: make(chan []discovery.Endpoint, 100)}
	done := make(chan error, 1)
	go func() {
		done <- r.Watch(ctx, func(eps []discovery.Endpoint) {
			select {
			case w.updates <- eps:
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Watch did not return after cancel")
		}
	})
	return w
}

// next returns the next snapshot, failing the test if none comes within d.
func (w *watcher) next(d time.Duration) []discovery.Endpoint {
	w.t.Helper()
	select {
	case eps := <-w.updates:
		return eps
	case <-time.After(d):
		w.t.Fatalf("no snapshot within %v", d)
		return nil
	}
}

// expect fails unless the next snapshot, within d, is want.
func (w *watcher) expect(d time.Duration, want []discovery.Endpoint) {
	w.t.Helper()
	if got := w.next(d); !reflect.DeepEqual(got, want) {
		w.t.Fatalf("snapshot:\n got %+v\nwant %+v", got, want)
	}
}

// none fails if a snapshot is waiting. Callers first make sure the resolver
// has handled the change that must not produce one (see waitIndex).
func (w *watcher) none() {
	w.t.Helper()
	select {
	case eps := <-w.updates:
		w.t.Fatalf("unexpected snapshot %+v", eps)
	default:
	}
}

// waitStatus polls c.Status until ok accepts it.
func waitStatus(t *testing.T, c *discovery.Consul, what string, ok func(discovery.WatchStatus) bool) discovery.WatchStatus {
	t.Helper()
	var st discovery.WatchStatus
	if !testkit.Poll(10*time.Second, 5*time.Millisecond, func() bool {
		st = c.Status()
		return ok(st)
	}) {
		t.Fatalf("status never became %s: %+v", what, st)
	}
	return st
}
