package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/reflection"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// grpcurlBin finds the grpcurl that scripts/install-grpcurl.sh (run by
// `make test`) builds once into the cache. Without it the test skips,
// except in CI, where the script always runs.
func grpcurlBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MESHD_GRPCURL_BIN"); p != "" {
		return p
	}
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, ".cache", "meshd", "grpcurl-v1.9.4", "grpcurl")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("grpcurl not installed (scripts/install-grpcurl.sh): %v", err)
		}
		t.Skipf("grpcurl not installed: run scripts/install-grpcurl.sh (%v)", err)
	}
	return p
}

// TestGrpcurlThroughMeshd: what people do with an API behind meshd —
// grpcurl list, describe, and a call by name — works across two backends
// that serve different services, from meshd's merged reflection.
func TestGrpcurlThroughMeshd(t *testing.T) {
	t.Parallel()
	bin := grpcurlBin(t)
	a := startBackends(t, "curl-a", 1, backend.WithRegister(func(s *grpc.Server) { reflection.Register(s) }))
	b := startBackends(t, "curl-b", 1, backend.WithoutTestService(), backend.WithRegister(func(s *grpc.Server) {
		testgrpc.RegisterReconnectServiceServer(s, reconnect{})
		reflection.Register(s)
	}))
	m := startMesh(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0, reflection: true}]
routes:
  - {name: test, match: {service: grpc.testing.TestService}, cluster: a}
  - {name: reconnect, match: {service: grpc.testing.ReconnectService}, cluster: b}
clusters:
  - {name: a, endpoints: %s}
  - {name: b, endpoints: %s}
`, addrs(a), addrs(b)))
	waitServing(t, dial(t, m.Addr))
	testkit.WaitFor(t, 10*time.Second, "both clusters serving", func() bool {
		_, body := adminGet(t, m.Admin, "/clusters")
		return strings.Count(body, `"State": "serving"`) == 2
	})
	grpcurl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-plaintext", "-max-time", "10"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	list := grpcurl(m.Addr, "list")
	for _, svc := range []string{"grpc.testing.TestService", "grpc.testing.ReconnectService"} {
		if !strings.Contains(list, svc) {
			t.Errorf("grpcurl list lacks %s:\n%s", svc, list)
		}
	}
	if desc := grpcurl(m.Addr, "describe", "grpc.testing.ReconnectService"); !strings.Contains(desc, "rpc Stop") {
		t.Errorf("grpcurl describe:\n%s", desc)
	}
	if desc := grpcurl(m.Addr, "describe", "grpc.testing.SimpleRequest"); !strings.Contains(desc, "response_size") {
		t.Errorf("grpcurl describe of a message type:\n%s", desc)
	}
	out := grpcurl("-d", `{"response_size": 3}`, m.Addr, "grpc.testing.TestService/UnaryCall")
	if !strings.Contains(out, `"payload"`) {
		t.Errorf("grpcurl call by name through meshd:\n%s", out)
	}
	if out := grpcurl("-d", `{}`, m.Addr, "grpc.testing.ReconnectService/Stop"); !strings.Contains(out, "{") {
		t.Errorf("grpcurl call of the second backend's service:\n%s", out)
	}
}
