package test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// tlsMesh starts meshd with one TLS listener in front of one plaintext
// backend. clientCA, when not empty, turns on client certificate checks.
func tlsMesh(t *testing.T, dir, certFile, keyFile, clientCA string) (*mesh, *backend.Backend) {
	t.Helper()
	bs := startBackends(t, "tls", 1)
	tlsKeys := fmt.Sprintf("{cert_file: %s, key_file: %s}", certFile, keyFile)
	if clientCA != "" {
		tlsKeys = fmt.Sprintf("{cert_file: %s, key_file: %s, client_ca_file: %s}", certFile, keyFile, clientCA)
	}
	m := startMesh(t, fmt.Sprintf(`
listeners: [{name: edge, address: 127.0.0.1:0, tls: %s}]
drain_timeout: 5s
routes: [{name: all, match: {prefix: /}, cluster: b}]
clusters: [{name: b, endpoints: %s}]
`, tlsKeys, addrs(bs)))
	return m, bs[0]
}

// tlsDial dials addr with TLS; cfg's RootCAs should hold the test CA.
func tlsDial(t testing.TB, addr string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// callPeer makes one EmptyCall and returns the server's TLS state.
func callPeer(cc *grpc.ClientConn, timeout time.Duration) (tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var p peer.Peer
	_, err := testpb.NewTestServiceClient(cc).EmptyCall(ctx, &testpb.Empty{}, grpc.Peer(&p))
	if err != nil {
		return tls.ConnectionState{}, err
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return tls.ConnectionState{}, fmt.Errorf("peer auth info is %T, not TLS", p.AuthInfo)
	}
	return info.State, nil
}

func TestTLSListener(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "meshd test CA")
	dir := t.TempDir()
	c, k, serial := ca.Issue(t, "meshd")
	m, b := tlsMesh(t, dir, writeFile(t, dir, "tls.crt", c), writeFile(t, dir, "tls.key", k), "")

	cc := tlsDial(t, m.Addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})
	waitServing(t, cc) // the backend takes calls after its first SERVING
	calls := b.Calls()
	st, err := callPeer(cc, 10*time.Second)
	if err != nil {
		t.Fatalf("TLS call through meshd: %v", err)
	}
	if st.Version < tls.VersionTLS12 || st.NegotiatedProtocol != "h2" {
		t.Errorf("negotiated version %x, ALPN %q; want TLS 1.2+ and h2", st.Version, st.NegotiatedProtocol)
	}
	if got := st.PeerCertificates[0].SerialNumber.Int64(); got != serial {
		t.Errorf("served certificate serial %d, want %d", got, serial)
	}
	if b.Calls() != calls+1 {
		t.Errorf("backend calls = %d, want %d", b.Calls(), calls+1)
	}

	for _, tc := range []struct {
		name string
		cc   *grpc.ClientConn
	}{
		{"plaintext client", dial(t, m.Addr)},
		{"TLS 1.1 client", tlsDial(t, m.Addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MaxVersion: tls.VersionTLS11})},
		{"client not trusting the CA", tlsDial(t, m.Addr, &tls.Config{RootCAs: testkit.NewCA(t, "other").Pool(), ServerName: "localhost"})},
	} {
		if _, err := callPeer(tc.cc, 2*time.Second); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: err = %v, want UNAVAILABLE", tc.name, err)
		}
	}
	if b.Calls() != calls+1 {
		t.Errorf("backend calls = %d after refused clients, want %d", b.Calls(), calls+1)
	}
}

func TestTLSMutual(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "meshd test CA")
	dir := t.TempDir()
	c, k, _ := ca.Issue(t, "meshd")
	m, b := tlsMesh(t, dir, writeFile(t, dir, "tls.crt", c), writeFile(t, dir, "tls.key", k), writeFile(t, dir, "ca.crt", ca.PEM()))

	base := tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	withCert := base.Clone()
	withCert.Certificates = []tls.Certificate{ca.KeyPair(t, "client")}
	good := tlsDial(t, m.Addr, withCert)
	waitServing(t, good) // the backend takes calls after its first SERVING
	calls := b.Calls()
	if _, err := callPeer(good, 10*time.Second); err != nil {
		t.Fatalf("client with a certificate from the CA: %v", err)
	}
	foreign := base.Clone()
	foreign.Certificates = []tls.Certificate{testkit.NewCA(t, "other").KeyPair(t, "intruder")}
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"no client certificate", base.Clone()},
		{"certificate from another CA", foreign},
	} {
		if _, err := callPeer(tlsDial(t, m.Addr, tc.cfg), 2*time.Second); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: err = %v, want UNAVAILABLE", tc.name, err)
		}
	}
	if b.Calls() != calls+1 {
		t.Errorf("backend calls = %d, want %d (only the client with a valid certificate)", b.Calls(), calls+1)
	}
}

// TestTLSRotationUnderLoad replaces the listener's certificate and key on
// disk three times while clients keep calling, half of them over new
// connections (each a new handshake). Every call must succeed, and new
// handshakes must come to present each new certificate, without a restart.
// The files are rewritten in place, one after the other, so meshd also sees
// a certificate that does not match its key for a moment.
func TestTLSRotationUnderLoad(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "meshd test CA")
	dir := t.TempDir()
	c, k, first := ca.Issue(t, "meshd")
	certFile, keyFile := writeFile(t, dir, "tls.crt", c), writeFile(t, dir, "tls.key", k)
	m, _ := tlsMesh(t, dir, certFile, keyFile, "")
	clientTLS := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	waitServing(t, tlsDial(t, m.Addr, clientTLS)) // the backend is admitted on its first SERVING

	var (
		calls, failures atomic.Int64
		seen            sync.Map // serial → true, from new handshakes
		firstErr        atomic.Pointer[error]
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second) // a bound; the test stops the load well before
	worker := func(fresh bool) {
		defer wg.Done()
		var cc *grpc.ClientConn
		for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				if cc != nil {
					cc.Close()
				}
				return
			default:
			}
			if cc == nil {
				var err error
				if cc, err = grpc.NewClient(m.Addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS))); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
			st, err := callPeer(cc, 5*time.Second)
			calls.Add(1)
			if err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, &err)
			} else if fresh {
				seen.Store(st.PeerCertificates[0].SerialNumber.Int64(), true)
			}
			if fresh {
				cc.Close()
				cc = nil
			}
		}
		if cc != nil {
			cc.Close()
		}
	}
	for i := range 4 {
		wg.Add(1)
		go worker(i%2 == 0)
	}
	var stopOnce sync.Once
	stopLoad := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	defer stopLoad()

	waitSeen := func(serial int64) {
		t.Helper()
		testkit.WaitFor(t, 15*time.Second, fmt.Sprintf("new handshakes to present certificate %d", serial), func() bool {
			_, ok := seen.Load(serial)
			return ok
		})
	}
	waitSeen(first)
	for i := range 3 {
		c, k, serial := ca.Issue(t, "meshd")
		// Alternate which file lands first: either way there is a moment
		// when the pair on disk does not match.
		files := [][2]any{{certFile, c}, {keyFile, k}}
		if i%2 == 1 {
			files[0], files[1] = files[1], files[0]
		}
		for _, f := range files {
			if err := os.WriteFile(f[0].(string), f[1].([]byte), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		waitSeen(serial)
	}
	// A symlink swap, as a Kubernetes Secret volume rotates: ..data points
	// at a new directory holding both files.
	c, k, serial := ca.Issue(t, "meshd")
	swapDir := filepath.Join(dir, "v2")
	if err := os.Mkdir(swapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, swapDir, "tls.crt", c)
	writeFile(t, swapDir, "tls.key", k)
	for _, f := range []string{certFile, keyFile} {
		tmp := f + ".new"
		if err := os.Symlink(filepath.Join(swapDir, filepath.Base(f)), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f); err != nil {
			t.Fatal(err)
		}
	}
	waitSeen(serial)

	stopLoad()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d calls failed during rotation; first: %v", n, calls.Load(), *firstErr.Load())
	}
	t.Logf("%d calls, 0 failed, over 5 certificates (4 rotations)", calls.Load())
}

// TestTLSUpstream: meshd speaks mTLS to a backend that requires a client
// certificate, verifying the backend's certificate against ca_file and
// server_name.
func TestTLSUpstream(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "upstream CA")
	dir := t.TempDir()
	var clientCN atomic.Pointer[string]
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				cn := ti.State.PeerCertificates[0].Subject.CommonName
				clientCN.Store(&cn)
			}
		}
		return h(ctx, req)
	}
	srvTLS := &tls.Config{
		Certificates: []tls.Certificate{ca.KeyPair(t, "backend", "backend.internal")},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
	bs := startBackends(t, "tls-up", 2, backend.WithTLS(srvTLS), backend.WithServerOptions(grpc.UnaryInterceptor(record)))
	c, k, _ := ca.Issue(t, "meshd-client")
	caFile, certFile, keyFile := writeFile(t, dir, "ca.crt", ca.PEM()), writeFile(t, dir, "client.crt", c), writeFile(t, dir, "client.key", k)
	m := startMesh(t, fmt.Sprintf(`
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - {name: secure, match: {method: /grpc.testing.TestService/EmptyCall}, cluster: secure}
  - {name: wrong-name, match: {prefix: /}, cluster: wrong-name}
clusters:
  - name: secure
    endpoints: %s
    tls: {ca_file: %s, cert_file: %s, key_file: %s, server_name: backend.internal}
  - name: wrong-name
    endpoints: %s
    tls: {ca_file: %s, cert_file: %s, key_file: %s, server_name: not-the-backend.internal}
`, addrs(bs), caFile, certFile, keyFile, addrs(bs), caFile, certFile, keyFile))
	cc := dial(t, m.Addr)
	waitServing(t, cc) // health watching runs over mTLS too
	client := testpb.NewTestServiceClient(cc)
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.EmptyCall(ctx, &testpb.Empty{})
		cancel()
		if err != nil {
			t.Fatalf("call over upstream mTLS: %v", err)
		}
	}
	if bs[0].Calls() == 0 || bs[1].Calls() == 0 {
		t.Errorf("calls per backend %d, %d: want both used", bs[0].Calls(), bs[1].Calls())
	}
	if cn := clientCN.Load(); cn == nil || *cn != "meshd-client" {
		t.Errorf("backend saw client certificate CN %v, want meshd-client", cn)
	}
	// A server name the backend's certificate does not carry: verification
	// fails, nothing reaches the backend, the client gets UNAVAILABLE.
	before := bs[0].Calls() + bs[1].Calls()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("cluster with the wrong server_name: err = %v, want UNAVAILABLE", err)
	}
	if after := bs[0].Calls() + bs[1].Calls(); after != before {
		t.Errorf("backend calls went from %d to %d through a cluster that cannot verify it", before, after)
	}
}
