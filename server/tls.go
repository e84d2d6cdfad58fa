package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/internal/rawsock"
)

// certCheckInterval is how often, at most, a handshake looks at whether the
// certificate files changed. Rotation (cert-manager renewing a Kubernetes
// Secret, which swaps a ..data symlink) takes effect within it, without a
// restart; between checks a handshake costs nothing extra.
const certCheckInterval = time.Second

// reloading holds a value built from files and rebuilds it when their
// content changes. It is checked lazily, on use, at most once per interval:
// no goroutine, nothing to stop. A rebuild that fails (a certificate written
// before its key, mid-rotation) keeps the previous value and is retried at
// the next check, so no handshake ever sees a half-written pair.
type reloading[T any] struct {
	what  string
	files []string
	build func() (*T, error)
	every time.Duration
	log   *slog.Logger

	cur     atomic.Pointer[T]
	mu      sync.Mutex // serializes checks
	next    time.Time  // no check before this
	sum     []byte     // hash of the files' content behind cur
	lastErr string     // last rebuild error logged, to log each once
}

// newReloading builds the first value; it fails when the files cannot be
// read or built from.
func newReloading[T any](what string, files []string, build func() (*T, error), log *slog.Logger) (*reloading[T], error) {
	r := &reloading[T]{what: what, files: files, build: build, every: certCheckInterval, log: log}
	sum, err := r.hash()
	if err != nil {
		return nil, err
	}
	v, err := build()
	if err != nil {
		return nil, err
	}
	r.cur.Store(v)
	r.sum = sum
	r.next = time.Now().Add(r.every)
	return r, nil
}

// hash is a digest of every file's content, in order.
func (r *reloading[T]) hash() ([]byte, error) {
	h := sha256.New()
	for _, f := range r.files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return h.Sum(nil), nil
}

// get returns the current value, first rebuilding it if the check interval
// has passed and the files' content changed.
func (r *reloading[T]) get() *T {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Before(r.next) {
		return r.cur.Load()
	}
	r.next = now.Add(r.every)
	sum, err := r.hash()
	if err == nil && bytes.Equal(sum, r.sum) {
		return r.cur.Load()
	}
	var v *T
	if err == nil {
		v, err = r.build()
	}
	if err != nil {
		if msg := err.Error(); msg != r.lastErr {
			r.lastErr = msg
			r.log.Warn("certificate files changed but cannot be loaded; keeping the previous ones", "what", r.what, "err", err)
		}
		return r.cur.Load()
	}
	r.lastErr = ""
	r.cur.Store(v)
	r.sum = sum
	r.log.Info("certificates reloaded", "what", r.what)
	return v
}

// loadServerTLS builds a listener's TLS config: TLS 1.2+, ALPN h2 (and
// http/1.1 on a grpc_web listener, for browsers' HTTP/1.1), and client
// certificate verification when client_ca_file is set. The certificate, key
// and client CA are re-read when their files change, so rotation needs no
// restart.
func loadServerTLS(t *config.ListenerTLS, http1 bool, log *slog.Logger) (*tls.Config, error) {
	protos := []string{"h2"}
	if http1 {
		protos = append(protos, "http/1.1")
	}
	files := []string{t.CertFile, t.KeyFile}
	if t.ClientCAFile != "" {
		files = append(files, t.ClientCAFile)
	}
	build := func() (*tls.Config, error) {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load certificate: %w", err)
		}
		tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: protos}
		if t.ClientCAFile != "" {
			pool, err := loadPool("client_ca_file", t.ClientCAFile)
			if err != nil {
				return nil, err
			}
			tc.ClientCAs = pool
			tc.ClientAuth = tls.RequireAndVerifyClientCert
		}
		return tc, nil
	}
	r, err := newReloading("listener tls "+t.CertFile, files, build, log)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
		// Every handshake gets the config built from the files' current
		// content: certificate, key and client CAs rotate together.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.get(), nil },
	}, nil
}

func loadPool(key, file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s: no PEM certificates", key, file)
	}
	return pool, nil
}

// upstreamTLSBuild is one build of a cluster's upstream TLS settings, in
// the form each engine uses, so both read the same files through one
// reloading and rotate together.
type upstreamTLSBuild struct {
	tc    *tls.Config                      // the frame engine dials with it
	creds credentials.TransportCredentials // the grpc engine's, over tc
}

// upstreamTLS is TLS to a cluster's endpoints (TLS 1.2+, ALPN h2; a client
// certificate for mTLS when cert_file is set). The CA and client
// certificate are re-read when their files change; each new connection,
// of either engine, uses the current ones.
type upstreamTLS struct {
	r *reloading[upstreamTLSBuild]
}

// loadUpstreamTLS reads a cluster's TLS files; it fails when they cannot
// be read or built from.
func loadUpstreamTLS(t *config.UpstreamTLS, log *slog.Logger) (*upstreamTLS, error) {
	var files []string
	for _, f := range []string{t.CAFile, t.CertFile, t.KeyFile} {
		if f != "" {
			files = append(files, f)
		}
	}
	build := func() (*upstreamTLSBuild, error) {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, NextProtos: []string{"h2"}}
		if t.CAFile != "" {
			pool, err := loadPool("ca_file", t.CAFile)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = pool
		}
		if t.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("load client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		// credentials.NewTLS clones tc: the frame engine's dials cannot
		// change what the grpc engine's handshakes see.
		return &upstreamTLSBuild{tc: tc, creds: credentials.NewTLS(tc)}, nil
	}
	// With no files (system roots only) there is nothing to reload, and
	// each check hashes nothing.
	r, err := newReloading("upstream tls "+t.ServerName, files, build, log)
	if err != nil {
		return nil, err
	}
	return &upstreamTLS{r: r}, nil
}

// creds is the grpc engine's transport credentials.
func (u *upstreamTLS) creds() credentials.TransportCredentials {
	return &reloadingCreds{r: u.r, info: u.r.cur.Load().creds.Info()}
}

// upstream is the frame engine's way to the cluster's endpoints: a TLS
// dial with the current settings. The server name defaults to the
// endpoint's host, as grpc-go's authority does; the engine requires ALPN h2.
func (u *upstreamTLS) upstream(cluster string) *engine.Upstream {
	return &engine.Upstream{Name: cluster, Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		return dialTLS(ctx, addr, u.r.get().tc)
	}}
}

// dialTLS is tls.Dialer's DialContext over a socket that crypto/tls reads
// and writes with raw system calls (package rawsock): a TCP dial, then the
// handshake bounded by ctx. As tls.Dialer does, an empty ServerName
// becomes addr's host.
func dialTLS(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(rawsock.Wrap(nc), cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return tc, nil
}

// rawListener wraps its connections with rawsock before a TLS listener
// gets them.
type rawListener struct{ net.Listener }

func (l rawListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return rawsock.Wrap(nc), nil
}

// reloadingCreds hands each client handshake to the TLS credentials built
// from the current files. Verification stays grpc-go's and crypto/tls's
// own; only which roots and certificate they use changes.
type reloadingCreds struct {
	r    *reloading[upstreamTLSBuild]
	info credentials.ProtocolInfo
}

func (c *reloadingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c.r.get().creds.ClientHandshake(ctx, authority, conn)
}

func (c *reloadingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c.r.get().creds.ServerHandshake(conn)
}

func (c *reloadingCreds) Info() credentials.ProtocolInfo { return c.info }

func (c *reloadingCreds) Clone() credentials.TransportCredentials {
	return &reloadingCreds{r: c.r, info: c.info}
}

// OverrideServerName is deprecated in grpc-go and unused by meshd.
func (c *reloadingCreds) OverrideServerName(string) error { return nil }
