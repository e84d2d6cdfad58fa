package balancer

import (
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// dialPlain is the Dialer of the tests: a lazy plaintext connection. It
// does no I/O until a call (or a health watcher) uses the connection, so
// clusters with health checking disabled stay off the network.
func dialPlain(ep discovery.Endpoint) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+ep.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// fakeClock is an injectable clock the test advances by hand. It is read
// from the cluster's loop too, hence atomic.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// seededRand is a deterministic, concurrency-safe Options.Rand for tests;
// production uses the lock-free runtime generator instead.
func seededRand(seed uint64) func() uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64()
	}
}

// endpoints returns n static-style endpoints with the given weights
// (weight 1 when weights is shorter).
func endpoints(n int, weights ...uint32) []discovery.Endpoint {
	eps := make([]discovery.Endpoint, n)
	for i := range eps {
		w := uint32(1)
		if i < len(weights) {
			w = weights[i]
		}
		// Port numbers nobody listens on; these endpoints are never dialed
		// for real.
		addr := "127.0.0.1:" + strconv.Itoa(20000+i)
		eps[i] = discovery.Endpoint{ID: addr, Address: addr, Weight: w}
	}
	return eps
}

// newTestCluster builds a cluster, closing it when the test ends.
func newTestCluster(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.Name == "" {
		opts.Name = "test"
	}
	c, err := NewCluster(opts, dialPlain)
	if err != nil {
		tb.Fatalf("NewCluster: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

// endpointByID returns the cluster's live endpoint with that ID, or nil.
func endpointByID(c *Cluster, id string) *Endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.eps[id]
}

// statusOf returns the status of endpoint id, and whether it is listed.
func statusOf(c *Cluster, id string) (EndpointStatus, bool) {
	for _, s := range c.Status().Endpoints {
		if s.ID == id {
			return s, true
		}
	}
	return EndpointStatus{}, false
}

// waitState waits until endpoint id is in state and returns its status.
func waitState(tb testing.TB, c *Cluster, id, state string) EndpointStatus {
	tb.Helper()
	var st EndpointStatus
	testkit.WaitFor(tb, 5*time.Second, "endpoint "+id+" "+state, func() bool {
		s, ok := statusOf(c, id)
		st = s
		return ok && s.State == state
	})
	return st
}
