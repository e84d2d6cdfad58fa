package jwtauth

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testkit"
)

const (
	issuer   = "https://issuer.example/"
	audience = "api"
)

var now = time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)

func claims(mod func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{"iss": issuer, "aud": []string{"other", audience}, "sub": "alice",
		"exp": now.Add(time.Hour).Unix(), "iat": now.Add(-time.Minute).Unix(), "admin": true, "tier": 3}
	if mod != nil {
		mod(c)
	}
	return c
}

func bearer(tok string) metadata.MD { return metadata.Pairs("authorization", "Bearer "+tok) }

func writeJWKS(t *testing.T, path string, keys ...*testkit.JWTKey) {
	t.Helper()
	// Write and rename, as an operator's tooling would, so a reader never
	// sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, testkit.JWKS(keys...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func provider(file string, mod func(*config.JWTProvider)) config.JWTProvider {
	p := config.JWTProvider{Name: "idp", Issuer: issuer, Audiences: []string{audience}, JWKSFile: file,
		ClaimsToHeaders: map[string]string{"sub": "x-user-id", "admin": "x-admin", "tier": "x-tier", "missing": "x-missing", "aud": "x-aud"}}
	if mod != nil {
		mod(&p)
	}
	return p
}

func TestVerify(t *testing.T) {
	t.Parallel()
	rs, es, ed := testkit.NewJWTKey(t, "RS256", "rs"), testkit.NewJWTKey(t, "ES256", "es"), testkit.NewJWTKey(t, "EdDSA", "ed")
	stranger := testkit.NewJWTKey(t, "ES256", "es") // same kid, other key
	unknown := testkit.NewJWTKey(t, "ES256", "nope")
	file := filepath.Join(t.TempDir(), "jwks.json")
	writeJWKS(t, file, rs, es, ed)
	set, err := New([]config.JWTProvider{provider(file, nil)}, WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	hs := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(nil))
	hs.Header["kid"] = "rs"
	hsTok, _ := hs.SignedString([]byte("secret"))
	good := es.Sign(t, claims(nil))

	tests := []struct {
		name   string
		md     metadata.MD
		reason string // "" = accepted
		msg    string
	}{
		{"RS256", bearer(rs.Sign(t, claims(nil))), "", ""},
		{"ES256", bearer(good), "", ""},
		{"EdDSA", bearer(ed.Sign(t, claims(nil))), "", ""},
		{"lowercase scheme", metadata.Pairs("authorization", "bearer "+good), "", ""},
		{"skew: expired 20s ago", bearer(es.Sign(t, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-20 * time.Second).Unix() }))), "", ""},
		{"missing", metadata.MD{}, ReasonMissing, "missing token"},
		{"basic auth", metadata.Pairs("authorization", "Basic YTpi"), ReasonMissing, "not a bearer token"},
		{"two headers", metadata.Pairs("authorization", "Bearer "+good, "authorization", "Bearer "+good), ReasonMalformed, "more than one"},
		{"garbage", bearer("not.a.jwt"), ReasonMalformed, "malformed token"},
		{"expired", bearer(es.Sign(t, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() }))), ReasonExpired, "token expired"},
		{"no exp", bearer(es.Sign(t, claims(func(c jwt.MapClaims) { delete(c, "exp") }))), ReasonClaims, "lacks a required claim (exp)"},
		{"not yet valid", bearer(es.Sign(t, claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Minute).Unix() }))), ReasonNotYetValid, "not valid yet"},
		{"wrong issuer", bearer(es.Sign(t, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil/" }))), ReasonIssuer, "issuer"},
		{"wrong audience", bearer(es.Sign(t, claims(func(c jwt.MapClaims) { c["aud"] = "other" }))), ReasonAudience, "audience"},
		{"no audience", bearer(es.Sign(t, claims(func(c jwt.MapClaims) { delete(c, "aud") }))), ReasonAudience, "audience"},
		{"unknown kid", bearer(unknown.Sign(t, claims(nil))), ReasonUnknownKey, "unknown key"},
		{"forged with a known kid", bearer(stranger.Sign(t, claims(nil))), ReasonSignature, "signature"},
		{"HS256 with an RSA kid", bearer(hsTok), ReasonSignature, "signature"},
		{"tampered payload", bearer(tamper(good)), ReasonSignature, "signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hdrs, err := set.Verify("idp", tt.md)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				want := []hpack.HeaderField{{Name: "x-admin", Value: "true"}, {Name: "x-user-id", Value: "alice"}, {Name: "x-tier", Value: "3"}}
				if !slices.Equal(hdrs, want) {
					t.Fatalf("claim headers %v, want %v", hdrs, want)
				}
				return
			}
			var d *Denial
			if !errors.As(err, &d) || d.Reason != tt.reason || !strings.Contains(err.Error(), tt.msg) || !strings.HasPrefix(err.Error(), "meshd: jwt: ") {
				t.Fatalf("err %v (%#v), want reason %s and %q", err, d, tt.reason, tt.msg)
			}
			// The token never appears in the reason.
			for _, v := range tt.md.Get("authorization") {
				if tok := strings.TrimPrefix(v, "Bearer "); len(tok) > 8 && strings.Contains(err.Error(), tok) {
					t.Fatal("reason holds the token")
				}
			}
		})
	}
	if _, err := set.Verify("nobody", bearer(good)); err == nil {
		t.Fatal("an unknown provider accepted a token")
	}
}

// tamper changes the token's subject, keeping its signature.
func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), "alice", "admin", 1)))
	return strings.Join(parts, ".")
}

func TestParseJWKS(t *testing.T) {
	t.Parallel()
	rs := testkit.NewJWTKey(t, "RS256", "rs")
	tests := []struct {
		name, doc string
		keys      int
		err       string
	}{
		{"not json", `{`, 0, "jwks"},
		{"empty", `{"keys":[]}`, 0, "no usable"},
		{"encryption key only", `{"keys":[{"kty":"RSA","use":"enc","kid":"a","n":"AQAB","e":"AQAB"}]}`, 0, "no usable"},
		{"unsupported curve", `{"keys":[{"kty":"EC","crv":"P-384","kid":"a","x":"AA","y":"AA"}]}`, 0, "P-256"},
		{"short rsa", `{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}`, 0, "2048"},
		{"bad point", `{"keys":[{"kty":"EC","crv":"P-256","kid":"a","x":"` + strings.Repeat("A", 43) + `","y":"` + strings.Repeat("A", 43) + `"}]}`, 0, "EC point"},
		{"one good among bad", strings.Replace(string(testkit.JWKS(rs)), `[`, `[{"kty":"oct","kid":"h","k":"c2VjcmV0"},`, 1), 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ks, err := parseJWKS([]byte(tt.doc))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || len(ks.byKID) != tt.keys {
				t.Fatalf("%v, %v", ks, err)
			}
		})
	}
}

// TestFileRotation: a rewritten jwks_file is picked up; a broken rewrite
// keeps the last good keys.
func TestFileRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := testkit.NewJWTKey(t, "ES256", "k1"), testkit.NewJWTKey(t, "ES256", "k2")
	file := filepath.Join(t.TempDir(), "jwks.json")
	writeJWKS(t, file, oldKey)
	set, err := New([]config.JWTProvider{provider(file, nil)}, WithClock(func() time.Time { return now }), WithFilePollInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	set.Start()
	defer set.Stop()
	oldTok, newTok := bearer(oldKey.Sign(t, claims(nil))), bearer(newKey.Sign(t, claims(nil)))
	if _, err := set.Verify("idp", oldTok); err != nil {
		t.Fatal(err)
	}
	writeJWKS(t, file, newKey)
	testkit.WaitFor(t, 5*time.Second, "the new key", func() bool { _, err := set.Verify("idp", newTok); return err == nil })
	if _, err := set.Verify("idp", oldTok); err == nil {
		t.Fatal("the rotated-out key still verifies")
	}
	p := set.Provider("idp")
	before := p.failures.Load()
	if err := os.WriteFile(file, []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the broken file to be read", func() bool { return p.failures.Load() > before })
	if _, err := set.Verify("idp", newTok); err != nil {
		t.Fatalf("a broken rewrite dropped the good keys: %v", err)
	}
	if _, err := New([]config.JWTProvider{provider(file, nil)}); err == nil {
		t.Fatal("New accepted a broken jwks_file")
	}
}

// TestURL: a jwks_url is fetched over real HTTP; until then calls get
// "jwks not loaded yet" and Ready fails; an unknown kid brings a refetch
// forward (rotation); a failing server keeps the last good keys.
func TestURL(t *testing.T) {
	t.Parallel()
	k1, k2 := testkit.NewJWTKey(t, "RS256", "k1"), testkit.NewJWTKey(t, "EdDSA", "k2")
	var doc atomic.Pointer[[]byte]
	var fail atomic.Bool
	var hits atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		hits.Add(1)
		if fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(*doc.Load())
	}))
	defer srv.Close()
	b := testkit.JWKS(k1)
	doc.Store(&b)
	set, err := New([]config.JWTProvider{provider("", func(p *config.JWTProvider) {
		p.JWKSFile, p.JWKSURL, p.JWKSRefresh = "", srv.URL+"/jwks.json", config.Duration(time.Hour)
	})}, WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	set.Start()
	defer set.Stop()
	tok1, tok2 := bearer(k1.Sign(t, claims(nil))), bearer(k2.Sign(t, claims(nil)))

	// Cold: the fetch is held by the server.
	var d *Denial
	if _, err := set.Verify("idp", tok1); !errors.As(err, &d) || d.Reason != ReasonNotLoaded || !strings.Contains(err.Error(), "jwks not loaded yet") {
		t.Fatalf("cold cache: %v", err)
	}
	if set.Ready() == nil {
		t.Fatal("Ready before the first fetch")
	}
	close(release)
	testkit.WaitFor(t, 5*time.Second, "the first fetch", func() bool { return set.Ready() == nil })
	if _, err := set.Verify("idp", tok1); err != nil {
		t.Fatal(err)
	}
	// Rotation: the server now serves k2; a k2 token nudges a refetch
	// (the refresh is an hour away).
	b2 := testkit.JWKS(k2)
	doc.Store(&b2)
	testkit.WaitFor(t, 5*time.Second, "the rotated key", func() bool { _, err := set.Verify("idp", tok2); return err == nil })
	// The server fails: unknown kids nudge fetches that fail, the last
	// good keys stay.
	fail.Store(true)
	before := hits.Load()
	testkit.WaitFor(t, 5*time.Second, "a failed refetch", func() bool { _, _ = set.Verify("idp", tok1); return hits.Load() > before })
	if _, err := set.Verify("idp", tok2); err != nil {
		t.Fatalf("a failed fetch dropped the last good keys: %v", err)
	}
}

// TestStopWithoutStart and a Set stopped mid-fetch leave no goroutine
// (goleak in TestMain).
func TestStopWithoutStart(t *testing.T) {
	t.Parallel()
	set, err := New([]config.JWTProvider{provider("", func(p *config.JWTProvider) { p.JWKSFile, p.JWKSURL = "", "http://127.0.0.1:1/jwks" })})
	if err != nil {
		t.Fatal(err)
	}
	set.Stop()
	set.Start() // after Stop: no-op
	set.Stop()
	var nilSet *Set
	nilSet.Stop()
	if nilSet.Ready() != nil {
		t.Fatal("nil Set not ready")
	}
}
