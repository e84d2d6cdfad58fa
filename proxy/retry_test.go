package proxy

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/router"
)

// TestCallLimitErrs: the frame engine's idle and per-try statuses name
// their setting like the grpc engine's, and every call of a route gets the
// same error values (built once, no allocation per call). Not parallel:
// AllocsPerRun refuses to run beside other tests.
func TestCallLimitErrs(t *testing.T) {
	pol := &RoutePolicy{IdleTimeout: 2 * time.Second, Retry: &RetryPolicy{Attempts: 2, PerTryTimeout: 300 * time.Millisecond}}
	e := pol.callLimitErrs()
	for _, c := range []struct {
		err  error
		want string
	}{
		{e.idle, "idle_timeout 2s"},
		{e.perTry, "per_try_timeout 300ms"},
	} {
		if st := status.Convert(c.err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), c.want) {
			t.Errorf("status %v, want DEADLINE_EXCEEDED naming %q", c.err, c.want)
		}
	}
	if again := pol.callLimitErrs(); again.idle != e.idle || again.perTry != e.perTry {
		t.Error("a second call built new statuses")
	}
	if n := testing.AllocsPerRun(100, func() { _ = pol.callLimitErrs() }); n != 0 {
		t.Errorf("%v allocations per call, want 0", n)
	}
	if off := (&RoutePolicy{}).callLimitErrs(); off.idle != nil || off.perTry != nil {
		t.Errorf("a route without the settings got statuses %+v", off)
	}
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	r := &RetryPolicy{BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond}
	for n := 1; n <= 40; n++ {
		bound := min(r.BackoffMax, r.BackoffBase<<min(n-1, 20))
		for range 200 {
			if d := r.backoff(n); d < 0 || d >= bound {
				t.Fatalf("retry %d: backoff %v outside [0, %v)", n, d, bound)
			}
		}
	}
	if d := (&RetryPolicy{}).backoff(1); d != 0 {
		t.Fatalf("zero policy backoff = %v", d)
	}
}

func TestWithPreviousAttempts(t *testing.T) {
	t.Parallel()
	in := metadata.Pairs("a", "1", "grpc-previous-rpc-attempts", "7")
	out := withPreviousAttempts(in, 2)
	if got := out.Get("grpc-previous-rpc-attempts"); len(got) != 1 || got[0] != "2" {
		t.Fatalf("grpc-previous-rpc-attempts = %v", got)
	}
	if got := in.Get("grpc-previous-rpc-attempts"); got[0] != "7" || out.Get("a")[0] != "1" {
		t.Fatal("the call's metadata was modified or not copied")
	}
}

func TestUpstreamErrTimeouts(t *testing.T) {
	t.Parallel()
	expired := func(cause error) context.Context {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(cause)
		return ctx
	}
	dl, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	upstream := status.Error(codes.Canceled, "context canceled")
	// The backend's timer for the deadline meshd propagated can fire just
	// before meshd's own: still meshd's route timeout. (If this test runs
	// so slowly that near has expired, the expired path names it too.)
	near, cancelNear := callContext(context.Background(), &router.Route{Timeout: 40 * time.Millisecond})
	defer cancelNear()
	far, cancelFar := callContext(context.Background(), &router.Route{Timeout: 10 * time.Second})
	defer cancelFar()
	backendDL := status.Error(codes.DeadlineExceeded, "context deadline exceeded")
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		code codes.Code
		msg  string
	}{
		{"idle", expired(&timeoutError{setting: settingIdle, d: time.Second}), upstream, codes.DeadlineExceeded, "meshd: no message in either direction for idle_timeout 1s"},
		{"per try", expired(&timeoutError{setting: settingPerTry, d: 200 * time.Millisecond}), upstream, codes.DeadlineExceeded, "meshd: per_try_timeout 200ms exceeded"},
		{"route timeout", expired(&timeoutError{setting: settingTimeout, d: 2 * time.Second}), errors.New("transport closed"), codes.DeadlineExceeded, "meshd: route timeout 2s exceeded"},
		{"client deadline", dl, errors.New("transport closed"), codes.DeadlineExceeded, "meshd: deadline exceeded"},
		{"backend status", context.Background(), status.Error(codes.NotFound, "x"), codes.NotFound, "x"},
		{"backend deadline at meshd's", near, backendDL, codes.DeadlineExceeded, "meshd: route timeout 40ms exceeded"},
		{"backend's own deadline", far, backendDL, codes.DeadlineExceeded, "context deadline exceeded"},
		{"transport error", context.Background(), errors.New("boom"), codes.Unavailable, "meshd: upstream: boom"},
		{"client cancel", expired(context.Canceled), errors.New("boom"), codes.Canceled, "meshd: call cancelled by the client"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := status.Convert(upstreamErr(tc.ctx, tc.err))
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}

func TestIdleTimer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancelCause(context.Background())
	const idle = 50 * time.Millisecond
	it := startIdle(idle, cancel)
	defer it.stop()
	// Activity keeps the context alive past several idle periods. On a
	// loaded machine this goroutine may itself be descheduled for longer
	// than the idle period: a cut after such a gap is correct, so only a
	// cut while every gap between touches stayed short fails the test.
	start := time.Now()
	last := start
	var longest time.Duration
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < 300*time.Millisecond {
		<-tick.C
		now := time.Now()
		longest = max(longest, now.Sub(last))
		if ctx.Err() != nil {
			if longest < idle {
				t.Fatalf("cut after %v despite activity every %v or less", now.Sub(start), longest)
			}
			t.Skipf("this goroutine went %v without touching (machine overloaded): cannot judge", longest)
		}
		it.touch()
		last = now
	}
	// Then silence cuts it, with the idle cause.
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("idle timer never fired")
	}
	if te := timeoutOf(ctx); te == nil || te.setting != settingIdle {
		t.Fatalf("cause = %v", context.Cause(ctx))
	}
}
