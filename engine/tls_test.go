package engine

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// tlsUpstream dials TLS with roots, server name backend.test and, if cert
// is not nil, a client certificate, as meshd's clusters do.
func tlsUpstream(name string, roots *x509.CertPool, cert *tls.Certificate) *Upstream {
	cfg := &tls.Config{RootCAs: roots, ServerName: "backend.test", NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &Upstream{Name: name, Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		d := tls.Dialer{Config: cfg}
		return d.DialContext(ctx, "tcp", addr)
	}}
}

// tlsBackend serves a testBackend over TLS with a certificate from ca,
// requiring a client certificate from ca when mutual is set. It records
// the client certificate CN each call arrived with.
type tlsBackend struct {
	testBackend
	mu  sync.Mutex
	cns []string
}

func startTLSBackend(t *testing.T, ca *testkit.CA, mutual bool) *tlsBackend {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.KeyPair(t, "backend", "backend.test")}, MinVersion: tls.VersionTLS12}
	if mutual {
		cfg.ClientCAs = ca.Pool()
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	b := &tlsBackend{}
	b.unary = func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		cn := "(no client certificate)"
		if p, ok := peer.FromContext(ctx); ok {
			info, ok := p.AuthInfo.(credentials.TLSInfo)
			if !ok {
				return nil, status.Errorf(codes.FailedPrecondition, "call arrived over %T, not TLS", p.AuthInfo)
			}
			if pc := info.State.PeerCertificates; len(pc) > 0 {
				cn = pc[0].Subject.CommonName
			}
		}
		b.mu.Lock()
		b.cns = append(b.cns, cn)
		b.mu.Unlock()
		return &testpb.SimpleResponse{Username: cn}, nil
	}
	startBackend(t, &b.testBackend, grpc.Creds(credentials.NewTLS(cfg)))
	return b
}

// TestUpstreamTLS: a Target's Upstream dials the backend over TLS,
// verified against the CA, with a client certificate for mTLS; a failed
// verification or a backend without ALPN h2 fails the call with
// UNAVAILABLE naming the cause, before anything reaches the backend.
func TestUpstreamTLS(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "h2proxy test CA")
	client := ca.KeyPair(t, "meshd-client", "backend.test")
	other := testkit.NewCA(t, "h2proxy test CA")

	// A backend speaking HTTP/2 over TLS without ALPN: it would serve
	// meshd's streams (the server below is h2c inside the TLS), so only
	// the ALPN check refuses it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	noALPN := &testBackend{}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, noALPN)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{ca.KeyPair(t, "backend", "backend.test")}}))
	}()
	t.Cleanup(func() { gs.Stop(); <-served })

	cases := []struct {
		name    string
		mutual  bool
		addr    string // "" for the TLS backend
		up      *Upstream
		wantCN  string // on success
		wantErr string // part of the UNAVAILABLE message
	}{
		{name: "verified", up: tlsUpstream("c1", ca.Pool(), nil), wantCN: "(no client certificate)"},
		{name: "mutual", mutual: true, up: tlsUpstream("c1", ca.Pool(), &client), wantCN: "meshd-client"},
		{name: "mutual without client certificate", mutual: true, up: tlsUpstream("c1", ca.Pool(), nil), wantErr: "certificate required"},
		{name: "wrong CA", up: tlsUpstream("wrong-ca", other.Pool(), nil), wantErr: "upstream wrong-ca): tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		{name: "no ALPN h2", addr: ln.Addr().String(), up: tlsUpstream("c1", ca.Pool(), nil), wantErr: `backend did not negotiate HTTP/2 over TLS (ALPN "", want "h2")`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := startTLSBackend(t, ca, tc.mutual)
			addr := tc.addr
			if addr == "" {
				addr = b.addr
			}
			p := startProxy(t, addr, Config{})
			p.route(func(*Request) (Target, error) { return Target{Addr: addr, Upstream: tc.up}, nil })
			_, c := dial(t, p.addr)
			resp, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("call over TLS: %v", err)
				}
				if resp.GetUsername() != tc.wantCN {
					t.Errorf("backend saw client certificate %q, want %q", resp.GetUsername(), tc.wantCN)
				}
				return
			}
			st := status.Convert(err)
			if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), tc.wantErr) {
				t.Fatalf("err = %v, want UNAVAILABLE mentioning %q", err, tc.wantErr)
			}
			if r := p.nextResult(t); !r.NotReached {
				t.Errorf("Result.NotReached = false for a failed dial")
			}
			if n := p.srv.Stats().DialErrors; n == 0 {
				t.Errorf("DialErrors = 0 after a failed TLS dial")
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if len(b.cns) != 0 {
				t.Errorf("backend took %d calls through an upstream that cannot reach it", len(b.cns))
			}
		})
	}
}

// TestUpstreamIdentity: streams to one address through different Upstreams
// (two client certificates, and a new Upstream value with the same
// settings) never share a connection, and Forget(addr) releases the
// connections of every Upstream to that address.
func TestUpstreamIdentity(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "h2proxy test CA")
	b := startTLSBackend(t, ca, true)
	alice, bob := ca.KeyPair(t, "alice", "backend.test"), ca.KeyPair(t, "bob", "backend.test")
	ups := []*Upstream{
		tlsUpstream("a", ca.Pool(), &alice),
		tlsUpstream("b", ca.Pool(), &bob),
		tlsUpstream("a-reloaded", ca.Pool(), &alice), // new identity, same settings
	}
	wantCN := []string{"alice", "bob", "alice"}
	p := startProxy(t, b.addr, Config{ConnsPerBackend: 1})
	var mu sync.Mutex
	cur := 0
	p.route(func(*Request) (Target, error) {
		mu.Lock()
		defer mu.Unlock()
		return Target{Addr: b.addr, Upstream: ups[cur]}, nil
	})
	_, c := dial(t, p.addr)
	for round := range 3 {
		for i := range ups {
			mu.Lock()
			cur = i
			mu.Unlock()
			resp, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{})
			if err != nil {
				t.Fatalf("round %d upstream %d: %v", round, i, err)
			}
			if resp.GetUsername() != wantCN[i] {
				t.Fatalf("round %d: call through upstream %q arrived with client certificate %q: a connection was shared", round, ups[i].Name, resp.GetUsername())
			}
			if want := int64(i + 1); round == 0 && p.srv.Stats().UpstreamConns != want {
				t.Fatalf("UpstreamConns = %d after the first call through %d upstreams, want %d", p.srv.Stats().UpstreamConns, i+1, want)
			}
		}
	}
	if n := p.srv.Stats().UpstreamConns; n != int64(len(ups)) {
		t.Fatalf("UpstreamConns = %d, want %d (one per upstream)", n, len(ups))
	}
	p.srv.Pool().Forget(b.addr)
	testkit.WaitFor(t, 5*time.Second, "Forget to close the connections of every upstream", func() bool {
		return p.srv.Stats().UpstreamConns == 0
	})
	// A later call dials afresh.
	if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call after Forget: %v", err)
	}
}
