package test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// clientCerts records, per TestService method, the client certificates
// (CN and serial) that calls reached an mTLS backend with.
type clientCerts struct {
	mu   sync.Mutex
	seen map[string]map[string]bool // method → "cn/serial" → true
}

func (cc *clientCerts) interceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if strings.HasPrefix(info.FullMethod, "/grpc.testing.TestService/") {
			id := "(none)"
			if p, ok := peer.FromContext(ctx); ok {
				if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
					c := ti.State.PeerCertificates[0]
					id = fmt.Sprintf("%s/%d", c.Subject.CommonName, c.SerialNumber.Int64())
				}
			}
			cc.mu.Lock()
			if cc.seen == nil {
				cc.seen = make(map[string]map[string]bool)
			}
			if cc.seen[info.FullMethod] == nil {
				cc.seen[info.FullMethod] = make(map[string]bool)
			}
			cc.seen[info.FullMethod][id] = true
			cc.mu.Unlock()
		}
		return h(ctx, req)
	}
}

// take returns the client certificates seen for method and forgets them.
func (cc *clientCerts) take(method string) map[string]bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	s := cc.seen[method]
	delete(cc.seen, method)
	return s
}

// has reports whether method was called with the client certificate id.
func (cc *clientCerts) has(method, id string) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.seen[method][id]
}

// mtlsBackends starts n backends that require a client certificate from
// ca and serve a certificate for backend.internal.
func mtlsBackends(t *testing.T, ca *testkit.CA, n int, rec *clientCerts, opts ...grpc.ServerOption) []*backend.Backend {
	t.Helper()
	srvTLS := &tls.Config{
		Certificates: []tls.Certificate{ca.KeyPair(t, "backend", "backend.internal")},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
	opts = append(opts, grpc.UnaryInterceptor(rec.interceptor()))
	return startBackends(t, "mtls", n, backend.WithTLS(srvTLS), backend.WithServerOptions(opts...))
}

const (
	methodEmptyCall = "/grpc.testing.TestService/EmptyCall"
	methodUnaryCall = "/grpc.testing.TestService/UnaryCall"
)

// TestTLSUpstreamClusters: two clusters reach the same
// backends with different client certificates, and every call arrives
// with its own cluster's certificate (no connection is shared between
// them); a cluster whose CA does not trust the backend fails its calls
// with UNAVAILABLE naming the verification error; a reload that changes
// a cluster's certificate takes effect on the next call.
func TestTLSUpstreamClusters(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "upstream CA")
	other := testkit.NewCA(t, "other CA")
	var rec clientCerts
	bs := mtlsBackends(t, ca, 2, &rec)
	dir := t.TempDir()
	caFile := writeFile(t, dir, "ca.crt", ca.PEM())
	otherCA := writeFile(t, dir, "other.crt", other.PEM())
	files := map[string][2]string{}
	serials := map[string]int64{}
	for _, cn := range []string{"meshd-a", "meshd-b", "meshd-c"} {
		c, k, serial := ca.Issue(t, cn)
		files[cn] = [2]string{writeFile(t, dir, cn+".crt", c), writeFile(t, dir, cn+".key", k)}
		serials[cn] = serial
	}
	id := func(cn string) string { return fmt.Sprintf("%s/%d", cn, serials[cn]) }
	yaml := func(bCert string) string {
		return fmt.Sprintf(`
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - {name: a, match: {method: %[1]s}, cluster: a}
  - {name: b, match: {method: %[2]s}, cluster: b}
  - {name: untrusted, match: {prefix: /}, cluster: untrusted}
clusters:
  - name: a
    endpoints: %[3]s
    tls: {ca_file: %[4]s, cert_file: %[5]s, key_file: %[6]s, server_name: backend.internal}
  - name: b
    endpoints: %[3]s
    tls: {ca_file: %[4]s, cert_file: %[7]s, key_file: %[8]s, server_name: backend.internal}
  - name: untrusted
    endpoints: %[3]s
    health: {disabled: true}
    tls: {ca_file: %[9]s, server_name: backend.internal}
`, methodEmptyCall, methodUnaryCall, addrs(bs), caFile, files["meshd-a"][0], files["meshd-a"][1], files[bCert][0], files[bCert][1], otherCA)
	}
	m := startMesh(t, yaml("meshd-b"))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)
	call := func(method string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		switch method {
		case methodEmptyCall:
			_, err = client.EmptyCall(ctx, &testpb.Empty{})
		case methodUnaryCall:
			_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{})
		default:
			_, err = client.CacheableUnaryCall(ctx, &testpb.SimpleRequest{})
		}
		return err
	}
	rec.take(methodEmptyCall)
	for range 10 {
		for _, method := range []string{methodEmptyCall, methodUnaryCall} {
			if err := call(method); err != nil {
				t.Fatalf("%s over upstream mTLS: %v", method, err)
			}
		}
	}
	check := func(method, cn string) {
		t.Helper()
		got := rec.take(method)
		if len(got) != 1 || !got[id(cn)] {
			t.Errorf("%s reached the backends with client certificates %v, want only %s", method, got, id(cn))
		}
	}
	check(methodEmptyCall, "meshd-a")
	check(methodUnaryCall, "meshd-b")
	if bs[0].Calls() == 0 || bs[1].Calls() == 0 {
		t.Errorf("calls per backend %d, %d: want both used", bs[0].Calls(), bs[1].Calls())
	}

	// The untrusted cluster's endpoints serve (no health check),
	// so the call reaches the dial, which names the cause.
	before := bs[0].Calls() + bs[1].Calls()
	err := call("untrusted")
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "x509: certificate signed by unknown authority") {
		t.Errorf("call through a cluster whose CA does not trust the backend: err = %v, want UNAVAILABLE naming the x509 error", err)
	}
	if after := bs[0].Calls() + bs[1].Calls(); after != before {
		t.Errorf("backend calls went from %d to %d through a cluster that cannot verify it", before, after)
	}

	// Reload with another certificate for cluster b: the next
	// call already presents it.
	cfg, err := config.Parse([]byte(yaml("meshd-c")), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.srv.Reload(cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
	for range 5 {
		if err := call(methodUnaryCall); err != nil {
			t.Fatalf("UnaryCall after reload: %v", err)
		}
	}
	check(methodUnaryCall, "meshd-c")
	if err := call(methodEmptyCall); err != nil {
		t.Fatalf("EmptyCall after reload: %v", err)
	}
	check(methodEmptyCall, "meshd-a")
}

// TestTLSUpstreamRotation: rewriting a cluster's client certificate and
// key files (no reload) makes new upstream connections
// present the new certificate. The backends end every connection after
// a short age, so that meshd keeps dialing new ones.
func TestTLSUpstreamRotation(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "upstream CA")
	var rec clientCerts
	bs := mtlsBackends(t, ca, 1, &rec, grpc.KeepaliveParams(keepalive.ServerParameters{
		MaxConnectionAge: 100 * time.Millisecond, MaxConnectionAgeGrace: 5 * time.Second,
	}))
	dir := t.TempDir()
	c, k, first := ca.Issue(t, "meshd-client")
	caFile, certFile, keyFile := writeFile(t, dir, "ca.crt", ca.PEM()), writeFile(t, dir, "client.crt", c), writeFile(t, dir, "client.key", k)
	m := startMesh(t, fmt.Sprintf(`
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes: [{name: all, match: {prefix: /}, cluster: b}]
clusters:
  - name: b
    endpoints: %s
    health: {disabled: true}
    tls: {ca_file: %s, cert_file: %s, key_file: %s, server_name: backend.internal}
`, addrs(bs), caFile, certFile, keyFile))
	client := testpb.NewTestServiceClient(dial(t, m.Addr))
	waitSerial := func(serial int64) {
		t.Helper()
		want := fmt.Sprintf("meshd-client/%d", serial)
		testkit.WaitFor(t, 15*time.Second, "calls to arrive with client certificate "+want, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			// A call may meet a connection the backend is just
			// closing; the wait is for the certificate.
			_, _ = client.EmptyCall(ctx, &testpb.Empty{})
			return rec.has(methodEmptyCall, want)
		})
	}
	waitSerial(first)
	c, k, second := ca.Issue(t, "meshd-client")
	// Key first, then certificate: for a moment the pair on disk
	// does not match, and meshd keeps the previous one.
	if err := os.WriteFile(keyFile, k, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, c, 0o600); err != nil {
		t.Fatal(err)
	}
	waitSerial(second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("call after rotation: %v", err)
	}
}
