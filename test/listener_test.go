package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

func emptyCall(cc *grpc.ClientConn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := testpb.NewTestServiceClient(cc).EmptyCall(ctx, &testpb.Empty{})
	return err
}

// TestListenerMaxConnections: a connection over max_connections is closed at
// once (the client fails fast with UNAVAILABLE), and a slot freed by a
// client that leaves is taken by the next.
func TestListenerMaxConnections(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "maxconn", 1)
	m := startMesh(t, fmt.Sprintf(`
listeners: [{name: main, address: 127.0.0.1:0, max_connections: 2}]
drain_timeout: 5s
routes: [{name: all, match: {prefix: /}, cluster: b}]
clusters: [{name: b, endpoints: %s}]
`, addrs(bs)))
	first := dial(t, m.Addr)
	waitServing(t, first)
	second := dial(t, m.Addr)
	if err := emptyCall(second, 5*time.Second); err != nil {
		t.Fatalf("second connection: %v", err)
	}
	third := dial(t, m.Addr)
	if err := emptyCall(third, 2*time.Second); status.Code(err) != codes.Unavailable {
		t.Fatalf("third connection over max_connections 2: err = %v, want UNAVAILABLE", err)
	}
	// The first two keep working while the third is refused.
	for i, cc := range []*grpc.ClientConn{first, second} {
		if err := emptyCall(cc, 5*time.Second); err != nil {
			t.Errorf("connection %d: %v", i+1, err)
		}
	}
	first.Close()
	waitFor(t, 10*time.Second, "the freed slot to admit the third connection", func() bool {
		return emptyCall(third, time.Second) == nil
	})
}

// TestListenerIdleTimeout: a connection with no calls for idle_timeout is
// sent GOAWAY and closed; the client goes IDLE and reconnects on its next
// call.
func TestListenerIdleTimeout(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "idle", 1)
	m := startMesh(t, fmt.Sprintf(`
listeners: [{name: main, address: 127.0.0.1:0, idle_timeout: 300ms}]
drain_timeout: 5s
routes: [{name: all, match: {prefix: /}, cluster: b}]
clusters: [{name: b, endpoints: %s}]
`, addrs(bs)))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	waitFor(t, 10*time.Second, "the idle connection to be closed (client IDLE)", func() bool {
		return cc.GetState() == connectivity.Idle
	})
	if err := emptyCall(cc, 5*time.Second); err != nil {
		t.Errorf("call after the idle close: %v", err)
	}
}
