package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/config"
)

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// running starts a Server for cfg and returns it once it serves, or the
// error Run returned. It is stopped at the end of the test.
func running(t *testing.T, cfg *config.Config, opts ...Option) (*Server, error) {
	t.Helper()
	s, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Serving():
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		return s, nil
	case err := <-done:
		cancel()
		return nil, err
	case <-time.After(30 * time.Second):
		t.Fatal("server neither served nor failed within 30s")
		return nil, nil
	}
}

// TestReusePort binds two Servers with one config: with SO_REUSEPORT (the
// default) both serve, the listener and the admin port alike; with an
// exclusive bind on either side the second fails with EADDRINUSE.
func TestReusePort(t *testing.T) {
	t.Parallel()
	parse := func(t *testing.T) *config.Config {
		cfg, err := config.Parse(fmt.Appendf(nil, `
admin: {address: %s}
listeners: [{name: main, address: %s}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters: [{name: backends, endpoints: [%s], health: {disabled: true}}]
drain_timeout: 1s
`, freeAddr(t), freeAddr(t), freeAddr(t)), "reuse.yaml")
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	t.Run("shared by default", func(t *testing.T) {
		t.Parallel()
		cfg := parse(t)
		first, err := running(t, cfg)
		if err != nil {
			t.Fatalf("first: %v", err)
		}
		second, err := running(t, cfg)
		if err != nil {
			t.Fatalf("second server with the same config: %v", err)
		}
		if a, b := first.ListenerAddrs()["main"], second.ListenerAddrs()["main"]; a != b {
			t.Fatalf("listeners on %s and %s, want one address", a, b)
		}
		if a, b := first.AdminAddr(), second.AdminAddr(); a != b {
			t.Fatalf("admin on %s and %s, want one address", a, b)
		}
	})
	for _, tc := range []struct {
		name          string
		first, second bool // reuse-port on each side
	}{
		{"exclusive second", true, false},
		{"exclusive first", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := parse(t)
			if _, err := running(t, cfg, WithReusePort(tc.first)); err != nil {
				t.Fatalf("first: %v", err)
			}
			_, err := running(t, cfg, WithReusePort(tc.second))
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("second server: %v, want EADDRINUSE", err)
			}
		})
	}
}
