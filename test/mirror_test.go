package test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
)

// mirrorCount is meshd_mirror_requests_total{route, result}, 0 if absent.
func mirrorCount(t *testing.T, o *observed, route, result string) float64 {
	ms := scrapeMetrics(t, o.Admin).Series("meshd_mirror_requests_total", map[string]string{"route": route, "result": result})
	if len(ms) != 1 {
		return 0
	}
	return ms[0].GetCounter().GetValue()
}

// TestMirrorPercent: a route mirroring 10% of its calls sends 10% ± 1.5
// points of them to the shadow cluster, each counted once answered, and
// the primary answers every call.
func TestMirrorPercent(t *testing.T) {
	t.Parallel()
	primary := startBackends(t, "mp", 1)[0]
	shadow := startBackends(t, "ms", 1)[0]
	o := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: users
    match: {prefix: /}
    cluster: users
    mirror: {cluster: users-shadow, percent: 10}
clusters:
  - name: users
    endpoints: [%s]
    health: {disabled: true}
  - name: users-shadow
    endpoints: [%s]
    health: {disabled: true}
`, primary.Addr, shadow.Addr))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))
	const calls, workers = 5000, 8 // σ of the share ≈ 0.42 points
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < calls; i += workers {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("copy me")}})
				cancel()
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if n := len(errs); n > 0 {
		t.Fatalf("%d primary calls failed, first: %v", n, <-errs)
	}
	testkit.WaitFor(t, 10*time.Second, "every copy counted", func() bool {
		return mirrorCount(t, o, "users", "answered") == float64(shadow.Calls())
	})
	share := 100 * float64(shadow.Calls()) / calls
	t.Logf("shadow got %d of %d calls: %.2f%%", shadow.Calls(), calls, share)
	if share < 8.5 || share > 11.5 {
		t.Errorf("shadow got %.2f%% of the calls, want 10 ± 1.5", share)
	}
	if primary.Calls() != calls {
		t.Errorf("primary got %d calls, want %d", primary.Calls(), calls)
	}
	if a := shadow.LastMetadata().Get(":authority"); len(a) != 1 || a[0] != "127.0.0.1-shadow"+o.Addr[len("127.0.0.1"):] {
		t.Errorf("shadow saw :authority %q, want the call's with -shadow", a)
	}
}

// TestMirrorBlackHoleHarmless: a mirror cluster that black-holes every
// connection leaves the primary with no failure; each copy is given up
// and counted. The primary's p99 with that mirror and without one (two
// routes of one meshd, calls interleaved) is logged: a figure, not an
// assertion.
func TestMirrorBlackHoleHarmless(t *testing.T) {
	t.Parallel()
	primary := startBackends(t, "mb", 1)[0]
	hole := testkit.BlackHole(t)
	o := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: mirrored
    match: {method: /grpc.testing.TestService/UnaryCall}
    cluster: users
    mirror: {cluster: hole, percent: 100}
  - name: plain
    match: {prefix: /}
    cluster: users
clusters:
  - name: users
    endpoints: [%s]
    health: {disabled: true}
  - name: hole
    endpoints: [%s]
    health: {disabled: true}
    outlier: {consecutive_failures: -1}
`, primary.Addr, hole.Addr()))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))
	const calls = 500
	var with, without []time.Duration
	for i := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		with = append(with, time.Since(start))
		if err != nil {
			cancel()
			t.Fatalf("mirrored call %d: %v", i, err)
		}
		start = time.Now()
		_, err = client.EmptyCall(ctx, &testpb.Empty{})
		without = append(without, time.Since(start))
		cancel()
		if err != nil {
			t.Fatalf("plain call %d: %v", i, err)
		}
	}
	p99 := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)*99/100] }
	pw, po := p99(with), p99(without)
	t.Logf("p99 with a black-holed mirror %v, without %v: ratio %.2f", pw, po, float64(pw)/float64(po))
	testkit.WaitFor(t, 15*time.Second, "every copy given up and counted", func() bool {
		return mirrorCount(t, o, "mirrored", "dropped")+mirrorCount(t, o, "mirrored", "failed") == calls
	})
	if n := mirrorCount(t, o, "mirrored", "answered"); n != 0 {
		t.Errorf("%v copies answered by a black hole", n)
	}
}
