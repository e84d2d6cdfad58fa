package test

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Bounds of every runLoad: the machine is shared, so a load stops by itself
// even if a test forgets to close its stop channel.
const (
	loadMaxDuration = 60 * time.Second
	loadMaxCalls    = 200_000
	// loadInterval paces each worker: at most one call per interval. It
	// keeps a few loads running side by side from starving meshd's own
	// goroutines on two cores, while still sending hundreds of calls per
	// second to every backend, enough to time changes to a few milliseconds.
	loadInterval = 2 * time.Millisecond
	// loadCallTimeout bounds one call; calls are not tied to stop, so that
	// stopping a load never turns calls in flight into failures.
	loadCallTimeout = 5 * time.Second
)

// loadFailure is one failed call of a load.
type loadFailure struct {
	Start, End time.Time
	Code       codes.Code
	Msg        string
	Backend    string // from x-backend, "" when no backend answered
}

// loadResult records what a running load saw. Its methods are safe to call
// while the load runs.
type loadResult struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	issued atomic.Int64

	mu       sync.Mutex
	starts   map[string][]time.Time // per backend: start times of the calls it answered
	last     map[string]time.Time   // per backend: the latest of starts
	lastAny  time.Time              // latest start of any finished call
	failures []loadFailure
	done     int
}

// runLoad calls client (alternately EmptyCall and UnaryCall) from
// concurrency workers until stop is closed, loadMaxDuration passes,
// loadMaxCalls calls were issued, or the test ends. Each answer is counted
// for the backend named in its x-backend header (or trailer, for
// trailers-only errors), with its start time; failures are recorded too.
// Wait returns once every worker has stopped; cleanup also stops and waits.
func runLoad(t testing.TB, client testpb.TestServiceClient, concurrency int, stop <-chan struct{}) *loadResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), loadMaxDuration)
	lr := &loadResult{cancel: cancel, starts: map[string][]time.Time{}, last: map[string]time.Time{}}
	for w := range concurrency {
		lr.wg.Go(func() { lr.worker(ctx, client, w, stop) })
	}
	t.Cleanup(lr.Wait)
	return lr
}

func (lr *loadResult) worker(ctx context.Context, client testpb.TestServiceClient, w int, stop <-chan struct{}) {
	tick := time.NewTicker(loadInterval)
	defer tick.Stop()
	for i := w; ; i++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if lr.issued.Add(1) > loadMaxCalls {
			return
		}
		var hdr, tr metadata.MD
		callCtx, cancel := context.WithTimeout(context.Background(), loadCallTimeout)
		start := time.Now()
		var err error
		if i%2 == 0 {
			_, err = client.EmptyCall(callCtx, &testpb.Empty{}, grpc.Header(&hdr), grpc.Trailer(&tr))
		} else {
			_, err = client.UnaryCall(callCtx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("load")}}, grpc.Header(&hdr), grpc.Trailer(&tr))
		}
		end := time.Now()
		cancel()
		lr.record(start, end, backendOf(hdr, tr), err)
	}
}

func backendOf(hdr, tr metadata.MD) string {
	if v := hdr.Get("x-backend"); len(v) > 0 {
		return v[0]
	}
	if v := tr.Get("x-backend"); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (lr *loadResult) record(start, end time.Time, backend string, err error) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	lr.done++
	if start.After(lr.lastAny) {
		lr.lastAny = start
	}
	if backend != "" {
		lr.starts[backend] = append(lr.starts[backend], start)
		if start.After(lr.last[backend]) {
			lr.last[backend] = start
		}
	}
	if err != nil {
		st := status.Convert(err)
		lr.failures = append(lr.failures, loadFailure{Start: start, End: end, Code: st.Code(), Msg: st.Message(), Backend: backend})
	}
}

// Wait stops the load (if stop was not closed yet) and waits for its
// workers. It is idempotent.
func (lr *loadResult) Wait() {
	lr.cancel()
	lr.wg.Wait()
}

// Total is the number of calls that finished.
func (lr *loadResult) Total() int {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return lr.done
}

// Count is the number of calls backend answered.
func (lr *loadResult) Count(backend string) int {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return len(lr.starts[backend])
}

// Counts is the number of calls per backend.
func (lr *loadResult) Counts() map[string]int {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	out := make(map[string]int, len(lr.starts))
	for b, s := range lr.starts {
		out[b] = len(s)
	}
	return out
}

// Last is the latest start time of a call backend answered (zero if none).
func (lr *loadResult) Last(backend string) time.Time {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return lr.last[backend]
}

// FirstAfter is the earliest start time at or after t of a call backend
// answered; ok is false if there is none.
func (lr *loadResult) FirstAfter(backend string, t time.Time) (first time.Time, ok bool) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	for _, s := range lr.starts[backend] {
		if !s.Before(t) && (!ok || s.Before(first)) {
			first, ok = s, true
		}
	}
	return first, ok
}

// CountAfter is the number of calls started at or after t that backend
// answered.
func (lr *loadResult) CountAfter(backend string, t time.Time) int {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	n := 0
	for _, s := range lr.starts[backend] {
		if !s.Before(t) {
			n++
		}
	}
	return n
}

// LastStart is the latest start time of any finished call.
func (lr *loadResult) LastStart() time.Time {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return lr.lastAny
}

// Failures returns the failed calls so far, ordered by start time.
func (lr *loadResult) Failures() []loadFailure {
	lr.mu.Lock()
	out := append([]loadFailure(nil), lr.failures...)
	lr.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}
