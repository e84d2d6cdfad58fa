package test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/proc"
	"github.com/meshd/meshd/test/backend"
)

// The leak tests count the test process's goroutines and file descriptors
// with meshd running in it: after 10,000 calls, after 1,000 cancelled
// calls and after endpoints came and went through reloads, both return to
// what they were before (within leakSlack*). They are not parallel: other
// tests' goroutines and sockets would be counted too. Non-parallel tests
// run before the package's parallel ones start.

const (
	// leakSlackGoroutines allows for goroutines that come and go on their
	// own schedule (a grpc-go keepalive or idleness timer firing).
	leakSlackGoroutines = 5
	leakSlackFDs        = 2
	leakSettle          = 15 * time.Second
)

type usage struct{ goroutines, fds int }

func (u usage) String() string { return fmt.Sprintf("%d goroutines, %d fds", u.goroutines, u.fds) }

func currentUsage(t testing.TB) usage {
	t.Helper()
	fds, err := proc.OpenFiles()
	if err != nil {
		t.Fatalf("count fds: %v", err)
	}
	return usage{goroutines: runtime.NumGoroutine(), fds: fds}
}

// waitBaseline polls until usage is back within the slack of base, and
// fails with a goroutine dump if it does not come back in leakSettle.
func waitBaseline(t *testing.T, base usage, after string) {
	t.Helper()
	var u usage
	if testkit.Poll(leakSettle, 20*time.Millisecond, func() bool {
		u = currentUsage(t)
		return u.goroutines <= base.goroutines+leakSlackGoroutines && u.fds <= base.fds+leakSlackFDs
	}) {
		t.Logf("after %s: %s (baseline %s)", after, u, base)
		return
	}
	var dump bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
	t.Fatalf("after %s: %s, baseline %s (slack %d goroutines, %d fds), %s later\n%s",
		after, u, base, leakSlackGoroutines, leakSlackFDs, leakSettle, dump.String())
}

func TestLeak(t *testing.T) {
	bs := startBackends(t, "leak", 3)
	yaml := func(eps []*backend.Backend) string { return simpleConfig(eps, "") }
	m := startMesh(t, yaml(bs[:2]))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)

	// Warm up: every connection and lazily built structure exists.
	if err := manyCalls(client, 200, 16); err != nil {
		t.Fatal(err)
	}
	base := currentUsage(t)
	t.Logf("baseline: %s", base)

	t.Run("10000 calls", func(t *testing.T) {
		if err := manyCalls(client, 10_000, 16); err != nil {
			t.Fatal(err)
		}
		streams(t, client, 500)
		waitBaseline(t, base, "10,000 unary calls and 500 streams")
	})

	t.Run("1000 cancelled calls", func(t *testing.T) {
		before := bs[0].Cancelled() + bs[1].Cancelled()
		cancelledCalls(t, client, bs[:2], 1000, 50)
		testkit.WaitFor(t, 10*time.Second, "the backends to see every cancellation", func() bool {
			return bs[0].Cancelled()+bs[1].Cancelled()-before >= 1000
		})
		waitBaseline(t, base, "1,000 cancelled calls")
	})

	t.Run("endpoints come and go", func(t *testing.T) {
		sets := [][]*backend.Backend{bs[:1], bs[1:3], bs, bs[2:], bs[:2]}
		for round := range 4 {
			for i, set := range sets {
				cfg, err := config.Parse([]byte(yaml(set)), "leak.yaml")
				if err != nil {
					t.Fatal(err)
				}
				if err := m.srv.Reload(cfg); err != nil {
					t.Fatalf("round %d reload %d: %v", round, i, err)
				}
				if err := manyCalls(client, 20, 4); err != nil {
					t.Fatalf("round %d after reload %d: %v", round, i, err)
				}
			}
		}
		// The last set is the first one's: the same endpoints as at the
		// baseline, though every one of them was removed and re-added.
		waitBaseline(t, base, "20 reloads adding and removing endpoints")
	})
}

// manyCalls makes n unary calls over workers goroutines and returns the
// first failure.
func manyCalls(client testpb.TestServiceClient, n, workers int) error {
	var (
		next  atomic.Int64
		first atomic.Pointer[error]
		wg    sync.WaitGroup
	)
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 64)}}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && first.Load() == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.UnaryCall(ctx, req)
				cancel()
				if err != nil {
					err = fmt.Errorf("unary call: %w", err)
					first.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return *e
	}
	return nil
}

// streams runs n bidirectional streams of one message each, 10 at a time.
func streams(t *testing.T, client testpb.TestServiceClient, n int) {
	t.Helper()
	sem := make(chan struct{}, 10)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := client.FullDuplexCall(ctx)
			if err == nil {
				err = st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 32}}})
			}
			if err == nil {
				_, err = st.Recv()
			}
			if err == nil {
				err = st.CloseSend()
			}
			if err == nil {
				_, err = st.Recv() // io.EOF: the stream ended
				if status.Code(err) == codes.OK {
					err = nil
				}
			}
			if err != nil && err.Error() != "EOF" {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("stream: %v", err)
	}
}

// cancelledCalls makes n calls that the backend holds (x-delay) and
// cancels each once the backend has it, batch at a time.
func cancelledCalls(t *testing.T, client testpb.TestServiceClient, bs []*backend.Backend, n, batch int) {
	t.Helper()
	calls := func() int64 {
		var s int64
		for _, b := range bs {
			s += b.Calls()
		}
		return s
	}
	for done := 0; done < n; done += batch {
		ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "x-delay", "30s"))
		before := calls()
		var wg sync.WaitGroup
		errs := make(chan error, batch)
		for i := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if i%2 == 0 {
					_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{})
				} else {
					var st testpb.TestService_StreamingOutputCallClient
					st, err = client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 8}}})
					if err == nil {
						_, err = st.Recv()
					}
				}
				if status.Code(err) != codes.Canceled {
					errs <- fmt.Errorf("call ended with %v, want Canceled", err)
				}
			}()
		}
		testkit.WaitFor(t, 10*time.Second, "a batch of calls to reach the backends", func() bool { return calls()-before >= int64(batch) })
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
}
