package healthwatch

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for a report. It is generous because the
// suite runs with -race on two shared cores; passing runs take milliseconds.
const waitTimeout = 10 * time.Second

// fast are the options every network test uses, so that reconnects,
// polls and re-probes happen within milliseconds.
func fast() []Option {
	return []Option{
		WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		WithCheckInterval(20 * time.Millisecond),
		WithReprobeInterval(50 * time.Millisecond),
	}
}

var (
	serving    = healthpb.HealthCheckResponse_SERVING
	notServing = healthpb.HealthCheckResponse_NOT_SERVING
)

// backend is a real grpc-go server on a loopback port.
type backend struct {
	t    *testing.T
	addr string
	srv  *grpc.Server
	done chan struct{} // closed when Serve returns
}

// startBackend serves on addr ("127.0.0.1:0" for any port) with the
// services that register adds. It is stopped at the end of the test.
func startBackend(t *testing.T, addr string, register func(*grpc.Server)) *backend {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	b := &backend{t: t, addr: lis.Addr().String(), srv: grpc.NewServer(), done: make(chan struct{})}
	if register != nil {
		register(b.srv)
	}
	go func() {
		defer close(b.done)
		_ = b.srv.Serve(lis) // returns nil after Stop; other errors show up as failed RPCs
	}()
	t.Cleanup(b.stop)
	return b
}

// stop stops the server and waits for Serve to return. Safe to repeat.
func (b *backend) stop() {
	b.srv.Stop()
	<-b.done
}

// withHealth registers hs as the full health service.
func withHealth(hs *health.Server) func(*grpc.Server) {
	return func(s *grpc.Server) { healthpb.RegisterHealthServer(s, hs) }
}

// checkOnly is a health service that implements Check (answering exactly
// as grpc-go's health.Server does) but leaves Watch unimplemented.
type checkOnly struct {
	healthpb.UnimplementedHealthServer
	hs    *health.Server
	calls chan struct{} // if not nil, gets a value per Check call (dropped when full)
}

func (c checkOnly) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if c.calls != nil {
		select {
		case c.calls <- struct{}{}:
		default:
		}
	}
	return c.hs.Check(ctx, req)
}

// dial opens a client conn to addr whose own reconnect backoff is short, so
// that a restarted backend is reachable again within milliseconds.
func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 50 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
	)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// watching runs Watch in the background and collects its reports.
type watching struct {
	t       *testing.T
	reports chan Report
	cancel  context.CancelFunc
	done    chan struct{} // closed when Watch returns
}

// startWatch runs Watch until the test ends (or stopAndWait is called).
func startWatch(t *testing.T, conn grpc.ClientConnInterface, service string, opts ...Option) *watching {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watching{t: t, reports: make(chan Report, 64), cancel: cancel, done: make(chan struct{})}
	report := func(r Report) {
		select {
		case w.reports <- r:
		case <-ctx.Done(): // nobody reads any more; do not hold Watch up
		}
	}
	go func() {
		defer close(w.done)
		Watch(ctx, conn, service, report, opts...)
	}()
	t.Cleanup(w.stopAndWait)
	return w
}

// stopAndWait cancels Watch and fails the test unless it returns promptly.
func (w *watching) stopAndWait() {
	w.t.Helper()
	w.cancel()
	select {
	case <-w.done:
	case <-time.After(waitTimeout):
		w.t.Fatal("Watch did not return after ctx was cancelled")
	}
}

// next returns the next report or fails the test after waitTimeout.
func (w *watching) next() Report {
	w.t.Helper()
	select {
	case r := <-w.reports:
		return r
	case <-time.After(waitTimeout):
		w.t.Fatal("timed out waiting for a report")
		return Report{}
	}
}

// expect fails the test unless the next report is exactly want: dedup and
// ordering mean no other report may come in between.
func (w *watching) expect(want Report) {
	w.t.Helper()
	if got := w.next(); got != want {
		w.t.Fatalf("report = %+v, want %+v", got, want)
	}
}

// until skips reports until one satisfies ok and returns it. For
// transitions whose intermediate reports depend on timing (a backend going
// down and coming back), where only the end state is deterministic.
func (w *watching) until(what string, ok func(Report) bool) Report {
	w.t.Helper()
	deadline := time.After(waitTimeout)
	var seen []Report
	for {
		select {
		case r := <-w.reports:
			if ok(r) {
				return r
			}
			seen = append(seen, r)
		case <-deadline:
			w.t.Fatalf("timed out waiting for %s; saw %+v", what, seen)
			return Report{}
		}
	}
}

func watchReport(s healthpb.HealthCheckResponse_ServingStatus) Report {
	return fromStatus(SourceWatch, s)
}

func checkReport(s healthpb.HealthCheckResponse_ServingStatus) Report {
	return fromStatus(SourceCheck, s)
}

func TestStateString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s    State
		want string
	}{
		{StateUnknown, "unknown"},
		{StateServing, "serving"},
		{StateNotServing, "not_serving"},
		{State(7), "State(7)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("State(%d).String() = %q, want %q", int(tc.s), got, tc.want)
		}
	}
}

func TestFromStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   healthpb.HealthCheckResponse_ServingStatus
		want Report
	}{
		{healthpb.HealthCheckResponse_SERVING, Report{StateServing, SourceWatch, "SERVING", false}},
		{healthpb.HealthCheckResponse_NOT_SERVING, Report{StateNotServing, SourceWatch, "NOT_SERVING", false}},
		{healthpb.HealthCheckResponse_SERVICE_UNKNOWN, Report{StateNotServing, SourceWatch, "SERVICE_UNKNOWN", false}},
		{healthpb.HealthCheckResponse_UNKNOWN, Report{StateNotServing, SourceWatch, "UNKNOWN", false}},
		{healthpb.HealthCheckResponse_ServingStatus(42), Report{StateNotServing, SourceWatch, "42", false}},
	} {
		if got := fromStatus(SourceWatch, tc.in); got != tc.want {
			t.Errorf("fromStatus(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	for _, tc := range []struct {
		name    string
		base    time.Duration
		max     time.Duration
		rand    float64
		attempt int
		want    time.Duration
	}{
		{"first attempt, no jitter", 100 * ms, 5 * time.Second, 0.5, 0, 100 * ms},
		{"doubles", 100 * ms, 5 * time.Second, 0.5, 3, 800 * ms},
		{"capped", 100 * ms, 5 * time.Second, 0.5, 10, 5 * time.Second},
		{"huge attempt does not overflow", 100 * ms, 5 * time.Second, 0.5, 1 << 20, 5 * time.Second},
		{"jitter down 20%", 100 * ms, 5 * time.Second, 0, 1, 160 * ms},
		{"jitter up 20%", 100 * ms, 5 * time.Second, 1, 1, 240 * ms},
		{"jitter never exceeds max", 100 * ms, 5 * time.Second, 1, 10, 5 * time.Second},
		{"max below base is raised", 100 * ms, 10 * ms, 0.5, 2, 100 * ms},
		{"non-positive values keep defaults", 0, -1, 0.5, 0, defaultBackoffBase},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := newOptions([]Option{WithBackoff(tc.base, tc.max), WithRand(func() float64 { return tc.rand })})
			if got := o.backoff(tc.attempt); got != tc.want {
				t.Errorf("backoff(%d) = %v, want %v", tc.attempt, got, tc.want)
			}
		})
	}
}

func TestReprobeDefault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts []Option
		want time.Duration
	}{
		{"default interval", nil, minReprobe},
		{"short interval keeps the minimum", []Option{WithCheckInterval(100 * time.Millisecond)}, minReprobe},
		{"long interval scales", []Option{WithCheckInterval(3 * time.Second)}, 30 * time.Second},
		{"explicit", []Option{WithCheckInterval(3 * time.Second), WithReprobeInterval(time.Second)}, time.Second},
	} {
		if got := newOptions(tc.opts).reprobe; got != tc.want {
			t.Errorf("%s: reprobe = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestWatchTransitions(t *testing.T) {
	t.Parallel()
	hs := health.NewServer() // "" starts SERVING
	b := startBackend(t, "127.0.0.1:0", withHealth(hs))
	w := startWatch(t, dial(t, b.addr), "", fast()...)

	w.expect(watchReport(serving))
	hs.SetServingStatus("", notServing)
	w.expect(watchReport(notServing))
	hs.SetServingStatus("", serving)
	w.expect(watchReport(serving))
}

func TestWatchServiceName(t *testing.T) {
	t.Parallel()
	hs := health.NewServer()
	hs.SetServingStatus("", notServing)
	hs.SetServingStatus("svc.A", serving)
	b := startBackend(t, "127.0.0.1:0", withHealth(hs))
	conn := dial(t, b.addr)

	whole := startWatch(t, conn, "", fast()...)
	svcA := startWatch(t, conn, "svc.A", fast()...)
	whole.expect(watchReport(notServing))
	svcA.expect(watchReport(serving))

	// Changing one name reaches only its own watcher: each watcher's very
	// next report is its own change, not the other's.
	hs.SetServingStatus("svc.A", notServing)
	svcA.expect(watchReport(notServing))
	hs.SetServingStatus("", serving)
	whole.expect(watchReport(serving))
	hs.SetServingStatus("svc.A", serving)
	svcA.expect(watchReport(serving))
}

func TestWatchServiceUnknown(t *testing.T) {
	t.Parallel()
	hs := health.NewServer()
	b := startBackend(t, "127.0.0.1:0", withHealth(hs))
	w := startWatch(t, dial(t, b.addr), "no.such.Service", fast()...)

	w.expect(Report{StateNotServing, SourceWatch, "SERVICE_UNKNOWN", false})
	// Once the backend learns the name, the same stream carries the news.
	hs.SetServingStatus("no.such.Service", serving)
	w.expect(watchReport(serving))
}

func TestWatchReconnect(t *testing.T) {
	t.Parallel()
	b := startBackend(t, "127.0.0.1:0", withHealth(health.NewServer()))
	w := startWatch(t, dial(t, b.addr), "", fast()...)
	w.expect(watchReport(serving))

	b.stop()
	r := w.next()
	if r.State != StateNotServing || r.Source != SourceWatch || !strings.HasPrefix(r.Reason, "stream error: ") {
		t.Fatalf("after stop: report = %+v, want NotServing watch \"stream error: ...\"", r)
	}

	// Same port, new server and health service: Watch reopens the stream
	// on its own. Reports in between depend on timing (repeated failures
	// may differ in text), but each one is NotServing until the backend is back.
	hs := health.NewServer()
	hs.SetServingStatus("", notServing)
	startBackend(t, b.addr, withHealth(hs))
	w.until("NOT_SERVING from the restarted backend", func(r Report) bool {
		if r.State != StateNotServing {
			t.Fatalf("unexpected %+v before the restarted backend answered", r)
		}
		return r == watchReport(notServing)
	})
	hs.SetServingStatus("", serving)
	w.expect(watchReport(serving))
}

// closingWatch answers each Watch with one SERVING and then ends the
// stream with an OK status, which a health server must never do.
type closingWatch struct {
	healthpb.UnimplementedHealthServer
}

func (closingWatch) Watch(_ *healthpb.HealthCheckRequest, s grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	return s.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

func TestWatchClosedByServer(t *testing.T) {
	t.Parallel()
	b := startBackend(t, "127.0.0.1:0", func(s *grpc.Server) { healthpb.RegisterHealthServer(s, closingWatch{}) })
	w := startWatch(t, dial(t, b.addr), "", fast()...)

	// Every reopened stream repeats the cycle, so the reports alternate.
	closed := Report{StateNotServing, SourceWatch, "stream error: stream closed by server", false}
	for range 2 {
		w.expect(watchReport(serving))
		w.expect(closed)
	}
}

func TestCheckFallback(t *testing.T) {
	t.Parallel()
	hs := health.NewServer()
	hs.SetServingStatus("svc.A", notServing)
	b := startBackend(t, "127.0.0.1:0", func(s *grpc.Server) {
		healthpb.RegisterHealthServer(s, checkOnly{hs: hs})
	})
	conn := dial(t, b.addr)

	whole := startWatch(t, conn, "", fast()...)
	svcA := startWatch(t, conn, "svc.A", fast()...)
	unknown := startWatch(t, conn, "no.such.Service", fast()...)

	// Watch's Unimplemented is not reported: the first report is already Check's.
	whole.expect(checkReport(serving))
	svcA.expect(checkReport(notServing))
	unknown.expect(checkReport(healthpb.HealthCheckResponse_SERVICE_UNKNOWN))

	hs.SetServingStatus("svc.A", serving)
	svcA.expect(checkReport(serving))
	hs.SetServingStatus("", notServing)
	whole.expect(checkReport(notServing))
	hs.SetServingStatus("", serving)
	whole.expect(checkReport(serving))

	// A backend that is gone fails its polls; that is NotServing too.
	b.stop()
	r := whole.next()
	if r.State != StateNotServing || r.Source != SourceCheck || !strings.HasPrefix(r.Reason, "check error: ") {
		t.Fatalf("after stop: report = %+v, want NotServing check \"check error: ...\"", r)
	}
}

// TestDedup polls an unchanging backend several times and checks that the
// caller hears of it once: the next report is the next change.
func TestDedup(t *testing.T) {
	t.Parallel()
	hs := health.NewServer()
	calls := make(chan struct{}, 16)
	b := startBackend(t, "127.0.0.1:0", func(s *grpc.Server) {
		healthpb.RegisterHealthServer(s, checkOnly{hs: hs, calls: calls})
	})
	w := startWatch(t, dial(t, b.addr), "", fast()...)
	w.expect(checkReport(serving))

	// calls also counts the poll behind the first report. Once the server
	// has seen four polls, the second and third have been answered and
	// handled: two identical answers that must not reach the caller.
	timeout := time.After(waitTimeout)
	for range 4 {
		select {
		case <-calls:
		case <-timeout:
			t.Fatal("timed out waiting for Check polls")
		}
	}
	hs.SetServingStatus("", notServing)
	w.expect(checkReport(notServing))
}

func TestMissingService(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		serving bool
		want    State
	}{
		{"default not serving", false, StateNotServing},
		{"configured serving", true, StateServing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := startBackend(t, "127.0.0.1:0", nil) // no services at all
			opts := append(fast(), WithMissingService(tc.serving))
			w := startWatch(t, dial(t, b.addr), "", opts...)
			w.expect(Report{tc.want, SourceAbsent, "no health service", false})
		})
	}
}

func TestMissingServiceGained(t *testing.T) {
	t.Parallel()
	b := startBackend(t, "127.0.0.1:0", nil)
	w := startWatch(t, dial(t, b.addr), "", fast()...)
	w.expect(Report{StateNotServing, SourceAbsent, "no health service", false})

	// Redeployed on the same port with a health service: a re-probe finds it.
	b.stop()
	startBackend(t, b.addr, withHealth(health.NewServer()))
	w.until("SERVING from the redeployed backend", func(r Report) bool {
		return r == watchReport(serving)
	})
}

// TestCancel checks that Watch returns promptly from every kind of wait it
// has: a long-lived stream, a backoff, a poll interval and a re-probe.
// The waits are made long so that only ctx can end them.
func TestCancel(t *testing.T) {
	t.Parallel()
	long := []Option{
		WithBackoff(time.Hour, time.Hour),
		WithCheckInterval(time.Hour),
		WithReprobeInterval(time.Hour),
	}
	for _, tc := range []struct {
		name     string
		register func(*grpc.Server)
		down     bool // stop the backend before watching: Watch sits in a backoff
		want     func(Report) bool
	}{
		{"streaming", withHealth(health.NewServer()), false, func(r Report) bool { return r == watchReport(serving) }},
		{"backing off", nil, true, func(r Report) bool { return r.Source == SourceWatch && r.State == StateNotServing }},
		{"polling", func(s *grpc.Server) { healthpb.RegisterHealthServer(s, checkOnly{hs: health.NewServer()}) }, false,
			func(r Report) bool { return r == checkReport(serving) }},
		{"absent", nil, false, func(r Report) bool { return r.Source == SourceAbsent }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := startBackend(t, "127.0.0.1:0", tc.register)
			if tc.down {
				b.stop()
			}
			w := startWatch(t, dial(t, b.addr), "", long...)
			if r := w.next(); !tc.want(r) {
				t.Fatalf("first report = %+v", r)
			}
			start := time.Now()
			w.stopAndWait()
			if d := time.Since(start); d > time.Second {
				t.Errorf("Watch took %v to return after cancel", d)
			}
		})
	}
}

func TestCancelledBeforeStart(t *testing.T) {
	t.Parallel()
	b := startBackend(t, "127.0.0.1:0", withHealth(health.NewServer()))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	Watch(ctx, dial(t, b.addr), "", func(r Report) { t.Errorf("unexpected report %+v", r) }, fast()...)
}
