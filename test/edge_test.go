package test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// edgeConfig has two listeners, a route only the internal one sees, host
// rules and header rules both ways; cluster virt rewrites :authority.
func edgeConfig(t testing.TB, plain, virt []*backend.Backend) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: public, address: 127.0.0.1:0}
  - {name: internal, address: %s}
drain_timeout: 5s
routes:
  - name: internal-only
    listeners: [internal]
    match: {service: grpc.health.v1.Health}
    cluster: plain
  - name: api
    match: {authority: "*.example.com", service: grpc.testing.TestService}
    request_headers:
      set: {x-edge: "1"}
      add: {x-forwarded-client: edge}
      remove: [x-internal-debug]
    response_headers:
      set: {x-served-by: meshd}
      add: {x-echo-added: by-meshd}
      remove: [x-backend]
    cluster: virt
  - name: exact-host
    match: {authority: "API.other.org:8443", service: grpc.testing.TestService}
    cluster: virt
  - name: fallback
    match: {service: grpc.testing.TestService}
    cluster: plain
clusters:
  - {name: plain, endpoints: %s}
  - {name: virt, endpoints: %s, authority: users.internal}
`, testkit.FreeAddr(t), addrs(plain), addrs(virt))
}

// TestEdgeRoutesPerListener: a route limited to one listener is
// unreachable from the other (UNIMPLEMENTED); /routes shows the limit.
func TestEdgeRoutesPerListener(t *testing.T) {
	t.Parallel()
	plain := startBackends(t, "plain", 1)
	virt := startBackends(t, "virt", 1)
	m := startMesh(t, edgeConfig(t, plain, virt))
	lis := m.srv.ListenerAddrs()
	pub, internal := dial(t, lis["public"]), dial(t, lis["internal"])
	waitServing(t, pub)

	// The health service is routed on the internal listener only.
	req := &healthpb.HealthCheckRequest{}
	_, err := healthpb.NewHealthClient(pub).Check(context.Background(), req)
	if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "no route") {
		t.Fatalf("public listener: %v, want meshd's UNIMPLEMENTED (no route)", err)
	}
	resp, err := healthpb.NewHealthClient(internal).Check(context.Background(), req)
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("internal listener: %v, %v", resp, err)
	}
	// Other routes are open to both listeners.
	if _, err := testpb.NewTestServiceClient(internal).EmptyCall(context.Background(), &testpb.Empty{}); err != nil {
		t.Fatalf("internal listener, open route: %v", err)
	}

	code, body := adminGet(t, m.Admin, "/routes")
	var routes []struct {
		Name      string   `json:"name"`
		Listeners []string `json:"listeners"`
	}
	if err := json.Unmarshal([]byte(body), &routes); code != 200 || err != nil {
		t.Fatalf("/routes: %d %v\n%s", code, err, body)
	}
	if routes[0].Name != "internal-only" || !slices.Equal(routes[0].Listeners, []string{"internal"}) || routes[1].Listeners != nil {
		t.Fatalf("/routes listeners: %+v", routes)
	}
}

// TestEdgeAuthority: host rules pick the route (exact with port, wildcard,
// case-insensitive); the cluster's authority is what the backend sees.
func TestEdgeAuthority(t *testing.T) {
	t.Parallel()
	plain := startBackends(t, "plain", 1)
	virt := startBackends(t, "virt", 1)
	m := startMesh(t, edgeConfig(t, plain, virt))
	addr := m.srv.ListenerAddrs()["public"]
	waitServing(t, dial(t, addr))
	tests := []struct {
		authority string
		backend   *backend.Backend
		seen      string // :authority the backend sees
	}{
		{"www.example.com", virt[0], "users.internal"},
		{"A.B.Example.COM:443", virt[0], "users.internal"},
		{"api.other.org:8443", virt[0], "users.internal"},
		{"api.other.org", plain[0], "api.other.org"},
		{"example.com", plain[0], "example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.authority, func(t *testing.T) {
			// Not parallel: each reads its backend's last metadata.
			cc := dial(t, addr, grpc.WithAuthority(tt.authority))
			before := tt.backend.Calls()
			if _, err := testpb.NewTestServiceClient(cc).EmptyCall(context.Background(), &testpb.Empty{}); err != nil {
				t.Fatal(err)
			}
			if tt.backend.Calls() != before+1 {
				t.Fatalf("call went to the other backend")
			}
			if got := tt.backend.LastMetadata().Get(":authority"); !slices.Equal(got, []string{tt.seen}) {
				t.Fatalf("backend saw :authority %q, want %q", got, tt.seen)
			}
		})
	}
}

// TestEdgeHeaderRules: set, add and remove, on the request the backend
// sees and on the response headers a client sees, also for a
// trailers-only response; a route without rules passes everything.
func TestEdgeHeaderRules(t *testing.T) {
	t.Parallel()
	plain := startBackends(t, "plain", 1)
	virt := startBackends(t, "virt", 1)
	m := startMesh(t, edgeConfig(t, plain, virt))
	addr := m.srv.ListenerAddrs()["public"]
	waitServing(t, dial(t, addr))
	client := testpb.NewTestServiceClient(dial(t, addr, grpc.WithAuthority("api.example.com")))
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"x-edge", "spoofed", "x-forwarded-client", "client", "x-internal-debug", "on", "x-keep", "yes", "x-echo-added", "by-client")
	var hdr metadata.MD
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	md := virt[0].LastMetadata()
	for k, want := range map[string][]string{
		"x-edge":             {"1"},
		"x-forwarded-client": {"client", "edge"},
		"x-internal-debug":   nil,
		"x-keep":             {"yes"},
	} {
		if got := md.Get(k); !slices.Equal(got, want) {
			t.Errorf("backend saw %s = %q, want %q", k, got, want)
		}
	}
	for k, want := range map[string][]string{
		"x-served-by":  {"meshd"},
		"x-backend":    nil,
		"x-echo-added": {"by-client", "by-meshd"},
	} {
		if got := hdr.Get(k); !slices.Equal(got, want) {
			t.Errorf("client saw response header %s = %q, want %q", k, got, want)
		}
	}

	// Trailers-only: the one HEADERS frame is the response's headers.
	tctx := metadata.AppendToOutgoingContext(context.Background(), "x-trailers-only", "1", "x-fail", "NOT_FOUND")
	var thdr, ttr metadata.MD
	_, err := client.EmptyCall(tctx, &testpb.Empty{}, grpc.Header(&thdr), grpc.Trailer(&ttr))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("trailers-only call: %v", err)
	}
	if got := append(thdr.Get("x-served-by"), ttr.Get("x-served-by")...); !slices.Contains(got, "meshd") {
		t.Errorf("trailers-only response lacks x-served-by: header %v trailer %v", thdr, ttr)
	}

	// The fallback route has no rules: everything passes as sent.
	plainClient := testpb.NewTestServiceClient(dial(t, addr, grpc.WithAuthority("example.org")))
	hdr = nil
	if _, err := plainClient.EmptyCall(ctx, &testpb.Empty{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	pmd := plain[0].LastMetadata()
	if !slices.Equal(pmd.Get("x-edge"), []string{"spoofed"}) || !slices.Equal(pmd.Get("x-internal-debug"), []string{"on"}) {
		t.Errorf("route without rules changed the request: %v", pmd)
	}
	if hdr.Get("x-served-by") != nil || !slices.Equal(hdr.Get("x-backend"), []string{"plain-0"}) {
		t.Errorf("route without rules changed the response: %v", hdr)
	}
	_ = time.Second
}
