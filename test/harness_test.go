package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/test/backend"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if meshdBinary.dir != "" {
		os.RemoveAll(meshdBinary.dir)
	}
	// The shared API server must be gone before goleak looks.
	if kubeShared.env != nil {
		kubeShared.env.Stop()
	}
	if code == 0 {
		// klog (client-go's logger) starts its flush daemon at init.
		if err := goleak.Find(goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// mesh is one in-process meshd.
type mesh struct {
	srv   *server.Server
	Addr  string // main listener
	Admin string
	stop  context.CancelFunc
	done  chan error
}

// startMesh runs meshd with the YAML config; the listener and admin
// addresses in it may be 127.0.0.1:0. It stops (drains) at test cleanup.
// runMesh (observability_test.go) does the same for a parsed config with
// extra server options.
func startMesh(t testing.TB, yaml string) *mesh {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	return runMesh(t, cfg)
}

// Stop drains meshd and waits for Run to return.
func (m *mesh) Stop(t testing.TB) {
	m.stop()
	select {
	case err, ok := <-m.done:
		if ok && err != nil {
			t.Errorf("meshd Run: %v", err)
		}
		close(m.done)
	case <-time.After(30 * time.Second):
		t.Error("meshd did not stop within 30s")
	}
}

// dial returns a client connection to meshd (or any address).
func dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// startBackends starts n backends named prefix-0..n-1, stopped at cleanup.
func startBackends(t testing.TB, prefix string, n int, opts ...backend.Option) []*backend.Backend {
	t.Helper()
	bs := make([]*backend.Backend, n)
	for i := range bs {
		b, err := backend.Start(fmt.Sprintf("%s-%d", prefix, i), opts...)
		if err != nil {
			t.Fatal(err)
		}
		if b.Health != nil {
			b.SetServing(true)
		}
		t.Cleanup(b.Stop)
		bs[i] = b
	}
	return bs
}

// addrs lists the backends' addresses as a YAML flow sequence.
func addrs(bs []*backend.Backend) string {
	s := make([]string, len(bs))
	for i, b := range bs {
		s[i] = b.Addr
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// simpleConfig routes everything to one cluster of the given backends.
func simpleConfig(bs []*backend.Backend, extraCluster string) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
clusters:
  - name: backends
    endpoints: %s
%s`, addrs(bs), extraCluster)
}

// waitServing waits until calls through meshd succeed (endpoints are
// admitted only after their first SERVING).
func waitServing(t testing.TB, cc *grpc.ClientConn) {
	t.Helper()
	c := testpb.NewTestServiceClient(cc)
	testkit.WaitFor(t, 10*time.Second, "meshd to serve", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.EmptyCall(ctx, &testpb.Empty{})
		return err == nil
	})
}

// adminGet fetches an admin path and returns status and body.
func adminGet(t testing.TB, addr, path string) (int, string) {
	t.Helper()
	code, body, err := tryGet(addr, path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return code, body
}

// tryGet fetches an admin path that may not be served yet.
func tryGet(addr, path string) (int, string, error) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, "", err
	}
	return resp.StatusCode, string(b), nil
}

// scrapeMetrics scrapes meshd's /metrics on its admin address. Samples
// flattens it into one value per series as the text format writes it.
func scrapeMetrics(t testing.TB, admin string) testkit.Metrics {
	t.Helper()
	return testkit.Scrape(t, nil, "http://"+admin+"/metrics")
}
