package test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/test/backend"
)

// gatedHealth holds every Health/Watch stream of a backend until open is
// closed, so a test controls when meshd gets its first health verdict.
func gatedHealth(open <-chan struct{}) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod == "/grpc.health.v1.Health/Watch" {
			select {
			case <-open:
			case <-ss.Context().Done():
				return ss.Context().Err()
			}
		}
		return h(srv, ss)
	}
}

// TestWarmBeforeServing: at start, meshd does not take calls before its
// clusters have a health verdict (Envoy's initial cluster warming): /ready
// says the clusters are warming, and a call that arrives meanwhile waits in
// the listen backlog and then succeeds, instead of failing with "no
// healthy endpoint" as it would on a cluster whose endpoints are still
// pending.
func TestWarmBeforeServing(t *testing.T) {
	t.Parallel()
	open := make(chan struct{})
	bs := startBackends(t, "warm", 2, backend.WithServerOptions(grpc.StreamInterceptor(gatedHealth(open))))
	// Run publishes its addresses only once serving, so the test
	// picks them: free loopback ports, bound again at once by meshd.
	adminAddr, mainAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
admin: {address: %s}
listeners: [{name: main, address: %s}]
drain_timeout: 5s
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters: [{name: backends, endpoints: %s}]
`, adminAddr, mainAddr, addrs(bs))), "warm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(cfg, server.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// While the health verdicts are held back, /ready names the reason.
	testkit.WaitFor(t, 10*time.Second, "/ready to say the clusters are warming", func() bool {
		code, body, err := tryGet(adminAddr, "/ready")
		return err == nil && code == 503 && strings.Contains(body, "warming")
	})
	select {
	case <-srv.Serving():
		t.Fatal("meshd serves before its clusters have a health verdict")
	default:
	}

	// A call made now waits for the warm-up and then succeeds.
	client := testpb.NewTestServiceClient(dial(t, mainAddr))
	res := make(chan error, 1)
	go func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.EmptyCall(cctx, &testpb.Empty{}, grpc.WaitForReady(true))
		res <- err
	}()
	close(open)
	if err := <-res; err != nil {
		t.Fatalf("call made during warm-up: %v", err)
	}
	<-srv.Serving()
	testkit.WaitFor(t, 10*time.Second, "/ready to turn 200", func() bool {
		code, _, err := tryGet(adminAddr, "/ready")
		return err == nil && code == 200
	})
}
