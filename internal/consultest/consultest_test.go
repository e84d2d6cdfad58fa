package consultest_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestBinaryHonoursEnv(t *testing.T) {
	bin := consultest.Binary(t)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Binary() = %q: %v", bin, err)
	}
	t.Setenv("MESHD_CONSUL_BIN", "/nonexistent/consul")
	if got := consultest.Binary(t); got != "/nonexistent/consul" {
		t.Fatalf("with MESHD_CONSUL_BIN set, Binary() = %q", got)
	}
}

// TestBinaryInstalledPath: without MESHD_CONSUL_BIN, Binary looks where
// scripts/install-consul.sh installs (MESHD_CACHE, MESHD_CONSUL_VERSION)
// and, when nothing is there, fails naming the command to run; it never
// builds.
func TestBinaryInstalledPath(t *testing.T) {
	t.Setenv("MESHD_CONSUL_BIN", "")
	cache := t.TempDir()
	t.Setenv("MESHD_CACHE", cache)
	t.Setenv("MESHD_CONSUL_VERSION", "v0.0.0-test")
	want := filepath.Join(cache, "consul-v0.0.0-test", "consul")

	ft := &fatalRecorder{TB: t}
	func() {
		defer func() { _ = recover() }() // fatalRecorder panics to stop Binary, as t.Fatal would
		consultest.Binary(ft)
	}()
	if !strings.Contains(ft.msg, want) || !strings.Contains(ft.msg, "make consul") {
		t.Fatalf("Binary without an installed consul: %q, want a failure naming %s and `make consul`", ft.msg, want)
	}

	if err := os.MkdirAll(filepath.Dir(want), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(want, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := consultest.Binary(t); got != want {
		t.Fatalf("Binary() = %q, want the installed %q", got, want)
	}
}

// fatalRecorder records the message of Fatal and stops the caller with a
// panic, as t.Fatal stops it with runtime.Goexit.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	panic(f)
}

// waitPassing polls until the health endpoint lists exactly want passing
// instances of service.
func waitPassing(t *testing.T, c *api.Client, service string, want int) {
	t.Helper()
	var (
		entries []*api.ServiceEntry
		err     error
	)
	if !testkit.Poll(10*time.Second, 20*time.Millisecond, func() bool {
		entries, _, err = c.Health().Service(service, "", true, nil)
		return err == nil && len(entries) == want
	}) {
		t.Fatalf("%s: want %d passing instances, got %d (err %v)", service, want, len(entries), err)
	}
}

func TestAgentLifecycle(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)
	if dc, err := a.Client.Agent().Self(); err != nil || dc["Config"]["Datacenter"] != consultest.Datacenter {
		t.Fatalf("agent self: %v, %v", dc["Config"], err)
	}

	reg := func(id string) *api.AgentServiceRegistration {
		return &api.AgentServiceRegistration{
			ID: id, Name: "svc", Port: 9000, Address: "127.0.0.1",
			Check: &api.AgentServiceCheck{CheckID: id + ":ttl", TTL: "10m", Status: api.HealthPassing},
		}
	}
	a.Register(t, reg("a"))
	a.Register(t, reg("b"))
	waitPassing(t, a.Client, "svc", 2)

	a.SetTTL(t, "b:ttl", api.HealthCritical)
	waitPassing(t, a.Client, "svc", 1)
	a.SetTTL(t, "b:ttl", "pass")
	waitPassing(t, a.Client, "svc", 2)

	a.Deregister(t, "a")
	waitPassing(t, a.Client, "svc", 1)

	addr := a.Addr
	a.Stop(t)
	a.Stop(t) // idempotent
	if _, err := a.Client.Status().Leader(); err == nil {
		t.Fatal("stopped agent still answers")
	}

	a.Restart(t)
	if a.Addr != addr {
		t.Fatalf("restart moved the agent from %s to %s", addr, a.Addr)
	}
	// Dev mode forgot the services.
	waitPassing(t, a.Client, "svc", 0)
	a.Register(t, reg("a"))
	waitPassing(t, a.Client, "svc", 1)
}

func TestAgentACLs(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t, consultest.WithACLs("root-token"))
	if a.Token != "root-token" {
		t.Fatalf("Token = %q", a.Token)
	}
	// The helper's client carries the management token.
	a.Register(t, &api.AgentServiceRegistration{ID: "x", Name: "x", Port: 1})
	if _, err := a.Client.Agent().Self(); err != nil {
		t.Fatalf("management token refused: %v", err)
	}

	// A client without a token is refused.
	anon, err := api.NewClient(&api.Config{Address: a.Addr, Transport: &http.Transport{DisableKeepAlives: true}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = anon.Agent().Self()
	var se api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("anonymous agent/self: want 403, got %v", err)
	}
}
