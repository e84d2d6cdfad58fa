package test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/accesslog"
	"github.com/meshd/meshd/admin"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/metrics"
	"github.com/meshd/meshd/server"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers (a process's
// two output pipes, meshd's logger) and a reading test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const jwtIssuer = "https://issuer.test/"

func jwtClaims(mod func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{"iss": jwtIssuer, "aud": "api", "sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}
	if mod != nil {
		mod(c)
	}
	return c
}

func withToken(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok, "x-user-id", "spoofed")
}

// TestEdgeJWT: tokens checked by meshd with real keys, a jwks_file that
// rotates and a jwks_url served over real HTTP; refusals are
// UNAUTHENTICATED with a reason, counted by reason, and no refused token
// reaches meshd's log or access log.
func TestEdgeJWT(t *testing.T) {
	t.Parallel()
	k1, k2 := testkit.NewJWTKey(t, "ES256", "k1"), testkit.NewJWTKey(t, "RS256", "k2")
	u1, u2 := testkit.NewJWTKey(t, "EdDSA", "u1"), testkit.NewJWTKey(t, "ES256", "u2")
	dir := t.TempDir()
	jwksFile := filepath.Join(dir, "jwks.json")
	writeFile := func(keys ...*testkit.JWTKey) {
		t.Helper()
		if err := os.WriteFile(jwksFile+".tmp", testkit.JWKS(keys...), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(jwksFile+".tmp", jwksFile); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(k1)

	var urlDoc atomic.Pointer[[]byte]
	d := testkit.JWKS(u1)
	urlDoc.Store(&d)
	release := make(chan struct{})
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(*urlDoc.Load())
	}))
	t.Cleanup(idp.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})

	bs := startBackends(t, "jwt", 1)
	accessPath := filepath.Join(dir, "access.log")
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: public, address: 127.0.0.1:0}]
drain_timeout: 5s
access_log: {enabled: true, path: %s}
jwt_providers:
  - {name: file, issuer: %q, audiences: [api, api2], jwks_file: %s, claims_to_headers: {sub: x-user-id}}
  - {name: url, issuer: %q, audiences: [api], jwks_url: %s/jwks.json, jwks_refresh: 1s, forward: true}
routes:
  - {name: by-file, match: {method: /grpc.testing.TestService/EmptyCall}, jwt: {provider: file}, cluster: b}
  - {name: by-url, match: {method: /grpc.testing.TestService/UnaryCall}, jwt: {provider: url}, cluster: b}
clusters:
  - {name: b, endpoints: %s}
`, accessPath, jwtIssuer, jwksFile, jwtIssuer, idp.URL, addrs(bs))), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	access, err := accesslog.Open(accessPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = access.Close() })
	mx := metrics.New()
	m := runMesh(t, cfg,
		server.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		server.WithObservers(mx, access),
		server.WithAdminOptions(admin.WithMetrics(mx.Handler()), admin.WithHealthPollInterval(10*time.Millisecond)))
	mx.SetSource(m.srv)
	client := testpb.NewTestServiceClient(dial(t, m.Addr))

	// jwks_url not fetched yet: calls are refused at once, /ready waits.
	_, err = client.UnaryCall(withToken(u1.Sign(t, jwtClaims(nil))), &testpb.SimpleRequest{})
	if st := status.Convert(err); st.Code() != codes.Unauthenticated || st.Message() != "meshd: jwt: jwks not loaded yet" {
		t.Fatalf("cold jwks_url: %v", err)
	}
	if code, body := adminGet(t, m.Admin, "/ready"); code == 200 || !strings.Contains(body, "jwks not loaded yet") {
		t.Fatalf("/ready before the jwks_url loaded: %d %s", code, body)
	}
	close(release)
	testkit.WaitFor(t, 10*time.Second, "/ready", func() bool { code, _ := adminGet(t, m.Admin, "/ready"); return code == 200 })

	var refused []string // every token meshd refused, to look for in the logs
	call := func(method, tok string) error {
		ctx := withToken(tok)
		var err error
		if method == "file" {
			_, err = client.EmptyCall(ctx, &testpb.Empty{})
		} else {
			_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{})
		}
		if err != nil {
			refused = append(refused, tok)
		}
		return err
	}

	// A valid token: the claim replaces the client's x-user-id, the
	// token stops at meshd.
	if err := call("file", k1.Sign(t, jwtClaims(func(c jwt.MapClaims) { c["aud"] = []string{"x", "api2"} }))); err != nil {
		t.Fatal(err)
	}
	md := bs[0].LastMetadata()
	if !slices.Equal(md.Get("x-user-id"), []string{"alice"}) || md.Get("authorization") != nil {
		t.Fatalf("backend saw x-user-id %q, authorization %q", md.Get("x-user-id"), md.Get("authorization"))
	}

	other := testkit.NewJWTKey(t, "ES256", "k1") // a forger's key with a real kid
	for _, tc := range []struct {
		name, tok, msg string
	}{
		{"expired", k1.Sign(t, jwtClaims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-2 * time.Minute).Unix() })), "meshd: jwt: token expired"},
		{"wrong audience", k1.Sign(t, jwtClaims(func(c jwt.MapClaims) { c["aud"] = "billing" })), "meshd: jwt: token audience not accepted"},
		{"wrong issuer", k1.Sign(t, jwtClaims(func(c jwt.MapClaims) { c["iss"] = "https://evil.test/" })), "meshd: jwt: token issuer not accepted"},
		{"unknown kid", k2.Sign(t, jwtClaims(nil)), "meshd: jwt: token signed by an unknown key (kid)"},
		{"forged", other.Sign(t, jwtClaims(nil)), "meshd: jwt: invalid token signature"},
	} {
		err := call("file", tc.tok)
		if st := status.Convert(err); st.Code() != codes.Unauthenticated || st.Message() != tc.msg {
			t.Errorf("%s: %v, want UNAUTHENTICATED %q", tc.name, err, tc.msg)
		}
	}
	if _, err := client.EmptyCall(context.Background(), &testpb.Empty{}); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "missing token") {
		t.Errorf("no token: %v", err)
	}

	// Rotation: the file now holds k2 only.
	writeFile(k2)
	k2tok := k2.Sign(t, jwtClaims(nil))
	testkit.WaitFor(t, 10*time.Second, "the rotated jwks_file", func() bool {
		_, err := client.EmptyCall(withToken(k2tok), &testpb.Empty{})
		return err == nil
	})
	if err := call("file", k1.Sign(t, jwtClaims(nil))); status.Code(err) != codes.Unauthenticated {
		t.Errorf("a rotated-out key still works: %v", err)
	}

	// jwks_url: loaded, the token forwarded (forward: true), then the
	// identity provider rotates to u2 and meshd follows.
	u1tok := u1.Sign(t, jwtClaims(nil))
	if err := call("url", u1tok); err != nil {
		t.Fatal(err)
	}
	if got := bs[0].LastMetadata().Get("authorization"); !slices.Equal(got, []string{"Bearer " + u1tok}) {
		t.Fatalf("forward: true: backend saw authorization %q", got)
	}
	d2 := testkit.JWKS(u2)
	urlDoc.Store(&d2)
	u2tok := u2.Sign(t, jwtClaims(nil))
	testkit.WaitFor(t, 10*time.Second, "the rotated jwks_url", func() bool {
		_, err := client.UnaryCall(withToken(u2tok), &testpb.SimpleRequest{})
		return err == nil
	})

	mt := scrapeMetrics(t, m.Admin)
	for _, reason := range []string{"expired", "wrong_audience", "wrong_issuer", "unknown_kid", "bad_signature", "missing"} {
		if v := mt.Value(t, "meshd_jwt_denied_total", map[string]string{"provider": "file", "reason": reason}); v < 1 {
			t.Errorf("meshd_jwt_denied_total{file,%s} = %v", reason, v)
		}
	}
	if v := mt.Value(t, "meshd_jwt_denied_total", map[string]string{"provider": "url", "reason": "jwks_not_loaded"}); v != 1 {
		t.Errorf("meshd_jwt_denied_total{url,jwks_not_loaded} = %v, want 1", v)
	}

	// No refused token in meshd's log or its access log.
	testkit.WaitFor(t, 5*time.Second, "the access log", func() bool {
		b, _ := os.ReadFile(accessPath)
		return strings.Count(string(b), "\n") >= len(refused)
	})
	accessLog, _ := os.ReadFile(accessPath)
	for _, tok := range refused {
		sig := tok[strings.LastIndexByte(tok, '.')+1:]
		if strings.Contains(logs.String(), sig) || strings.Contains(string(accessLog), sig) {
			t.Fatalf("a refused token appears in meshd's logs")
		}
	}
	if !strings.Contains(string(accessLog), "token expired") {
		t.Errorf("access log lacks the refusal reason:\n%s", accessLog)
	}
}
