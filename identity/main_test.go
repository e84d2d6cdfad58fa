package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/internal/consultest"
)

// shared is one Consul agent for the tests that do not stop, restart or
// reconfigure it; TestMain closes it.
var shared consultest.Shared

func sharedAgent(t *testing.T) *consultest.Agent { return shared.Agent(t) }

func TestMain(m *testing.M) { shared.Main(m) }

// testLogger logs into the test's output (benchmarks discard it).
func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// run runs s for the life of the test: cancelled and joined in Cleanup,
// which also checks that Run returned ctx.Err().
func run(t testing.TB, s *identity.Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
}

// waitReady waits for s's first Material.
func waitReady(t testing.TB, s *identity.Source, d time.Duration) *identity.Material {
	t.Helper()
	select {
	case <-s.Ready():
	case <-time.After(d):
		t.Fatalf("source not ready within %v: %+v", d, s.Status())
	}
	m := s.Current()
	if m == nil {
		t.Fatal("Ready closed but Current is nil")
	}
	return m
}

// outcome is what both ends of one handshake saw.
type outcome struct {
	serverErr, clientErr error
	server, client       tls.ConnectionState // each side's state
}

// peer is the server side's authenticated peer.
func (o outcome) peer() (identity.ID, bool) { return identity.PeerID(&o.server) }

// serverSerial is the serial of the leaf the server presented.
func (o outcome) serverSerial() *big.Int {
	if len(o.client.PeerCertificates) == 0 {
		return nil
	}
	return o.client.PeerCertificates[0].SerialNumber
}

// handshake runs one TLS handshake over 127.0.0.1 between server and
// client and waits for both ends. In TLS 1.3 the client finishes before
// the server has checked its certificate, so a refused client shows in
// serverErr (and in clientErr only if the client reads).
func handshake(t testing.TB, server, client *tls.Config) outcome {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type end struct {
		err error
		cs  tls.ConnectionState
	}
	srv := make(chan end, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			srv <- end{err: err}
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		err = tc.HandshakeContext(ctx)
		srv <- end{err, tc.ConnectionState()}
	}()
	var o outcome
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, client)
	o.clientErr = tc.HandshakeContext(ctx)
	o.client = tc.ConnectionState()
	s := <-srv
	o.serverErr, o.server = s.err, s.cs
	return o
}

// selfSigned is a self-signed leaf carrying uri, shaped like a mesh leaf.
func selfSigned(t testing.TB, uri string) tls.Certificate {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// netPipe is net.Pipe, named for the benchmark's readers.
func netPipe() (net.Conn, net.Conn) { return net.Pipe() }
