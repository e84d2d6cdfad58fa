package test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/test/backend"
)

// TestSoak mixes everything for minutes: every abuse case in turn against
// the real binary, broken backends (a black hole, one that resets every
// stream) in a cluster next to a good one, all while the steady client
// runs. It checks what TestAbuse checks, phase after phase, plus that the
// calls to the broken cluster are answered in time, and that meshd's
// goroutines and file descriptors (its own /metrics) come back to where
// they were once the attacks stop.
//
// It is not run by default: MESHD_SOAK=1 enables it, MESHD_SOAK_DURATION
// (Go duration, default 3m) sets its length.
func TestSoak(t *testing.T) {
	if os.Getenv("MESHD_SOAK") != "1" {
		t.Skip("soak test: set MESHD_SOAK=1 (and MESHD_SOAK_DURATION, default 3m) to run it")
	}
	dur := 3 * time.Minute
	if s := os.Getenv("MESHD_SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("MESHD_SOAK_DURATION: %v", err)
		}
		dur = d
	}
	bin := buildMeshd(t)
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) { testSoak(t, bin, engine, dur) })
	}
}

func testSoak(t *testing.T, bin, engine string, dur time.Duration) {
	good := startBackends(t, "soak", 2)
	reset := startH2Backend(t, resetStream)
	bh := startBlackHole(t)
	faultyGood := startBackends(t, "soak-faulty", 1, backend.WithHealth(backend.HealthNone))
	// EmptyCall goes to the faulty cluster, with a 300ms route timeout.
	cfg := abuseConfigWith(engine, good,
		"  - {name: faulty, match: {method: /grpc.testing.TestService/EmptyCall}, cluster: faulty, timeout: 300ms}\n",
		fmt.Sprintf(`  - name: faulty
    endpoints: [%s, %s, %s]
    health: {disabled: true}
    outlier: {consecutive_failures: 3, failure_codes: [INTERNAL, DEADLINE_EXCEEDED, UNAVAILABLE], base_ejection_time: 2s, max_ejection_percent: 70}
`, bh.Addr(), reset.Addr(), faultyGood[0].Addr))
	p := startBinary(t, bin, writeConfig(t, cfg))
	cc := dial(t, p.addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)

	mon := startMonitor(t, p.cmd.Process.Pid, client)
	mon.next("warmup")
	sleepPhase(time.Second)
	quiet := newPhase("quiet")
	mon.sliced(quiet, abuseQuietBaseline)
	start := scrapeMetrics(t, p.admin)

	// The faulty cluster's client: every call answered within its route
	// timeout (plus slack), whatever the code.
	faulty := startFaultyLoad(t, client)

	opt := attackOpts{maxStreams: abuseMaxStreams, maxHeaderListSize: abuseMaxHeaderList}
	end := time.Now().Add(dur)
	rounds := 0
	for time.Now().Before(end) {
		for _, tc := range abuseCases {
			want := tc.want[engine]
			if want.gap != "" || time.Now().After(end) {
				continue
			}
			ref, ph, rs := measureAttack(mon, tc, p.addr, opt, "")
			if len(rs) > 0 {
				want.answer(t, rs)
			}
			if slow := steadySlow(quiet, ref, ph); slow != "" || ph.failures() > 0 {
				checkSteady(t, quiet, ref, ph)
			}
			if !mon.alive() {
				t.Fatalf("meshd died:\n%s", p.Log())
			}
		}
		rounds++
	}
	faulty.stop()
	final := newPhase("quiet after")
	mon.sliced(final, abuseQuietBaseline)
	mon.stop()
	checkSteady(t, quiet, quiet, final)
	if peak := mon.peakRSSKiB(); peak > abuseRSSBoundMiB<<10 {
		t.Errorf("meshd peak RSS %.1f MiB, bound %d MiB", float64(peak)/1024, abuseRSSBoundMiB)
	}
	faulty.check(t)

	// meshd's own goroutines and fds come back once the attacks stopped
	// (attack connections are all closed by now, or closing).
	var after map[string]float64
	settled := func() bool {
		after = scrapeMetrics(t, p.admin)
		return after["go_goroutines"] <= start["go_goroutines"]+10 && after["process_open_fds"] <= start["process_open_fds"]+5
	}
	deadline := time.Now().Add(15 * time.Second)
	for !settled() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	if !settled() {
		t.Errorf("meshd after the soak: %g goroutines, %g fds; at the start %g, %g", after["go_goroutines"], after["process_open_fds"], start["go_goroutines"], start["process_open_fds"])
	}
	t.Logf("soak %s, %d rounds of every attack: steady p99 undisturbed %s, after %s; meshd peak RSS %.1f MiB; goroutines %g→%g, fds %g→%g; faulty cluster: %s",
		dur, rounds, quiet.typicalP99(), final.typicalP99(), float64(mon.peakRSSKiB())/1024,
		start["go_goroutines"], after["go_goroutines"], start["process_open_fds"], after["process_open_fds"], faulty)
}

// faultyLoad calls the faulty cluster 50 times a second and records how
// long each answer took.
type faultyLoad struct {
	quit           chan struct{}
	wg             sync.WaitGroup
	calls, ok      atomic.Int64
	late           atomic.Int64
	worst          atomic.Int64 // ns
	mu             sync.Mutex
	codes          map[codes.Code]int
	firstLateError error
}

// faultyBound: route timeout 300ms plus slack.
const faultyBound = 300*time.Millisecond + faultSlack

func startFaultyLoad(t *testing.T, client testpb.TestServiceClient) *faultyLoad {
	f := &faultyLoad{quit: make(chan struct{}), codes: map[codes.Code]int{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-f.quit:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			start := time.Now()
			_, err := client.EmptyCall(ctx, &testpb.Empty{})
			took := time.Since(start)
			cancel()
			f.calls.Add(1)
			if err == nil {
				f.ok.Add(1)
			}
			f.mu.Lock()
			f.codes[status.Code(err)]++
			if took > faultyBound {
				f.late.Add(1)
				if f.firstLateError == nil {
					f.firstLateError = fmt.Errorf("%s after %s", status.Code(err), took)
				}
			}
			f.mu.Unlock()
			for {
				w := f.worst.Load()
				if int64(took) <= w || f.worst.CompareAndSwap(w, int64(took)) {
					break
				}
			}
		}
	}()
	t.Cleanup(f.stop)
	return f
}

func (f *faultyLoad) stop() {
	select {
	case <-f.quit:
	default:
		close(f.quit)
	}
	f.wg.Wait()
}

func (f *faultyLoad) check(t *testing.T) {
	t.Helper()
	if n := f.late.Load(); n > 0 {
		t.Errorf("faulty cluster: %d of %d calls answered after %s; first: %v", n, f.calls.Load(), faultyBound, f.firstLateError)
	}
	// The good endpoint keeps the cluster useful: outlier detection ejects
	// the broken ones again and again.
	if f.ok.Load()*2 < f.calls.Load() {
		t.Errorf("faulty cluster: only %d of %d calls succeeded", f.ok.Load(), f.calls.Load())
	}
}

func (f *faultyLoad) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("%d calls, %d ok, worst answer %s, codes %v", f.calls.Load(), f.ok.Load(), time.Duration(f.worst.Load()).Round(time.Millisecond), f.codes)
}
