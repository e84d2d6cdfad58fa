package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/admin"
)

// source is a settable admin.Source: what a running meshd would report.
type source struct {
	notReady atomic.Pointer[string]
}

func (s *source) Ready() error {
	if p := s.notReady.Load(); p != nil {
		return errors.New(*p)
	}
	return nil
}
func (s *source) ConfigDump() any {
	return map[string]any{"config": map[string]string{"token": "[redacted]"}}
}
func (s *source) Routes() any { return []map[string]string{{"name": "all"}} }
func (s *source) Clusters() any {
	return map[string]any{"users": map[string]any{"status": map[string]any{"Endpoints": []any{}}}}
}

func (s *source) setReady(ok bool, why string) {
	if ok {
		s.notReady.Store(nil)
		return
	}
	s.notReady.Store(&why)
}

// startAdmin serves an admin.Server on 127.0.0.1:0 until the test ends.
func startAdmin(t *testing.T, src admin.Source, opts ...admin.Option) *admin.Server {
	t.Helper()
	a, err := admin.Listen("127.0.0.1:0", src, opts...)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return a
}

func get(t *testing.T, addr, path string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestHTTPEndpoints(t *testing.T) {
	t.Parallel()
	src := &source{}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "meshd_up 1\n") })
	a := startAdmin(t, src, admin.WithMetrics(metrics))

	for _, tc := range []struct {
		path, want, ctype string
	}{
		{"/live", "ok", "text/plain"},
		{"/ready", "ready", "text/plain"},
		{"/metrics", "meshd_up 1", ""},
		{"/config_dump", `"token": "[redacted]"`, "application/json"},
		{"/routes", `"name": "all"`, "application/json"},
		{"/clusters", `"users"`, "application/json"},
	} {
		code, body, hdr := get(t, a.Addr(), tc.path)
		if code != http.StatusOK || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s = %d %q, want 200 containing %q", tc.path, code, body, tc.want)
		}
		if tc.ctype != "" && !strings.HasPrefix(hdr.Get("Content-Type"), tc.ctype) {
			t.Errorf("GET %s content type %q, want %s", tc.path, hdr.Get("Content-Type"), tc.ctype)
		}
		if strings.HasPrefix(tc.ctype, "application/json") && !json.Valid([]byte(body)) {
			t.Errorf("GET %s: invalid JSON %q", tc.path, body)
		}
	}
	if code, _, _ := get(t, a.Addr(), "/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}

	// /ready fails the moment the source says so (a drain begins).
	src.setReady(false, "draining")
	if code, body, _ := get(t, a.Addr(), "/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("GET /ready while draining = %d %q, want 503 naming the reason", code, body)
	}
	if code, _, _ := get(t, a.Addr(), "/live"); code != http.StatusOK {
		t.Errorf("GET /live while draining = %d, want 200", code)
	}
}

func TestNoMetricsHandler(t *testing.T) {
	t.Parallel()
	a := startAdmin(t, &source{})
	if code, _, _ := get(t, a.Addr(), "/metrics"); code != http.StatusNotFound {
		t.Errorf("GET /metrics without a handler = %d, want 404", code)
	}
}

// TestPprof: the profiles are served only when asked for (admin.pprof).
func TestPprof(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts []admin.Option
		want int
	}{
		{"on", []admin.Option{admin.WithPprof()}, http.StatusOK},
		{"off by default", nil, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := startAdmin(t, &source{}, tc.opts...)
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/cmdline"} {
				code, body, _ := get(t, a.Addr(), path)
				if code != tc.want {
					t.Errorf("GET %s = %d, want %d", path, code, tc.want)
				}
				if tc.want == http.StatusOK && path == "/debug/pprof/heap?debug=1" && !strings.Contains(body, "heap profile") {
					t.Errorf("GET %s = %.80q, want a heap profile", path, body)
				}
			}
		})
	}
}

func healthClient(t *testing.T, addr string) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// TestGRPCHealth probes the admin port with a real grpc.health.v1 client,
// the way a Kubernetes gRPC probe does, on the same port as the HTTP API.
func TestGRPCHealth(t *testing.T) {
	t.Parallel()
	src := &source{}
	a := startAdmin(t, src)
	hc := healthClient(t, a.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	check := func(svc string) (healthpb.HealthCheckResponse_ServingStatus, error) {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		return resp.GetStatus(), err
	}
	for _, tc := range []struct {
		name     string
		ready    bool
		service  string
		want     healthpb.HealthCheckResponse_ServingStatus
		wantCode codes.Code
	}{
		{"ready", true, "", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{"liveness while ready", true, "liveness", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{"not ready", false, "", healthpb.HealthCheckResponse_NOT_SERVING, codes.OK},
		{"liveness while not ready", false, "liveness", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{"unknown service", true, "users.v1.Users", healthpb.HealthCheckResponse_UNKNOWN, codes.NotFound},
		{"ready again", true, "", healthpb.HealthCheckResponse_SERVING, codes.OK},
	} {
		// Sequential: the cases share the source's state.
		src.setReady(tc.ready, "draining")
		got, err := check(tc.service)
		if status.Code(err) != tc.wantCode || got != tc.want {
			t.Errorf("%s: Check(%q) = %v, %v; want %v, %v", tc.name, tc.service, got, err, tc.want, tc.wantCode)
		}
	}

	// HTTP keeps working next to gRPC.
	if code, _, _ := get(t, a.Addr(), "/ready"); code != http.StatusOK {
		t.Errorf("GET /ready = %d next to gRPC, want 200", code)
	}
	list, err := hc.List(ctx, &healthpb.HealthListRequest{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list.GetStatuses()) != 2 {
		t.Errorf("List = %v, want readiness and liveness", list.GetStatuses())
	}
}

// TestGRPCHealthWatch: a Watch stream sees readiness change, and ends when
// the admin server shuts down instead of holding the shutdown up.
func TestGRPCHealthWatch(t *testing.T) {
	t.Parallel()
	src := &source{}
	a, err := admin.Listen("127.0.0.1:0", src, admin.WithHealthPollInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve() }()
	hc := healthClient(t, a.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("Watch Recv: %v", err)
		}
		if resp.GetStatus() != want {
			t.Fatalf("Watch = %v, want %v", resp.GetStatus(), want)
		}
	}
	next(healthpb.HealthCheckResponse_SERVING)
	src.setReady(false, "draining")
	next(healthpb.HealthCheckResponse_NOT_SERVING)
	src.setReady(true, "")
	next(healthpb.HealthCheckResponse_SERVING)

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	start := time.Now()
	if err := a.Shutdown(sctx); err != nil {
		t.Errorf("Shutdown with an open Watch: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v with an open Watch", d)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("Watch after Shutdown: %v, want UNAVAILABLE", err)
	}
}
