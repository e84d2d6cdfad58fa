package engine

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

type connKey struct{}

// TestConnContext: the context ConnContext derives once per connection
// is the one Direct gets for each of the connection's calls, and it sees
// the connection itself (meshd reads the peer's certificate there).
func TestConnContext(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	var mu sync.Mutex
	var derived int
	var seen []string
	cfg := Config{ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
		mu.Lock()
		derived++
		mu.Unlock()
		return context.WithValue(ctx, connKey{}, nc.RemoteAddr().String())
	}}
	srv := NewServer(DirectorFunc(func(ctx context.Context, req *Request) (Target, error) {
		v, _ := ctx.Value(connKey{}).(string)
		mu.Lock()
		seen = append(seen, v)
		mu.Unlock()
		if v != req.RemoteAddr.String() {
			return Target{}, errors.New("connection context lost")
		}
		return Target{Addr: b.addr}, nil
	}), cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	_, c := dial(t, ln.Addr().String())
	for range 3 {
		if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if derived != 1 || len(seen) != 3 || seen[0] == "" {
		t.Fatalf("ConnContext ran %d times, Direct saw %q; want once and the connection's address 3 times", derived, seen)
	}
}
