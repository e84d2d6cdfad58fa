package director

import (
	"context"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
)

// TestDirectEdge: the listener in the connection context limits the
// routes, the authority selects one, and the Target carries the route's
// header edits and the cluster's authority.
func TestDirectEdge(t *testing.T) {
	t.Parallel()
	routes := []config.Route{
		{Name: "internal-only", Listeners: []string{"internal"}, Match: config.Match{Service: "admin.v1.Admin"}, Cluster: "c"},
		{Name: "api", Match: config.Match{Service: "users.v1.Users", Authority: "*.example.com"}, Cluster: "c",
			ResponseHeaders: &config.HeaderRules{Set: map[string]string{"x-served-by": "meshd"}}},
		{Name: "plain", Match: config.Match{Service: "users.v1.Users"}, Cluster: "d"},
	}
	table, err := router.New(routes)
	if err != nil {
		t.Fatal(err)
	}
	d := New()
	d.Swap(&State{Table: table,
		Clusters:    map[string]*balancer.Cluster{"c": cluster(t, "c", "127.0.0.1:1"), "d": cluster(t, "d", "127.0.0.1:2")},
		Limits:      map[string]*policy.Limiter{},
		Budgets:     map[string]*policy.RetryBudget{},
		Authorities: map[string]string{"c": "users.internal"},
	})
	tests := []struct {
		name, listener, method, authority string
		code                              codes.Code
		addr, upAuthority                 string
		edits                             bool
	}{
		{"limited route on its listener", "internal", "/admin.v1.Admin/Reset", "", codes.OK, "127.0.0.1:1", "users.internal", false},
		{"limited route elsewhere", "public", "/admin.v1.Admin/Reset", "", codes.Unimplemented, "", "", false},
		{"no listener in context", "", "/admin.v1.Admin/Reset", "", codes.Unimplemented, "", "", false},
		{"wildcard host", "public", "/users.v1.Users/Get", "www.Example.com:443", codes.OK, "127.0.0.1:1", "users.internal", true},
		{"other host", "public", "/users.v1.Users/Get", "example.org", codes.OK, "127.0.0.1:2", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			if tt.listener != "" {
				ctx = WithListener(ctx, tt.listener)
			}
			tg, err := d.Direct(ctx, &engine.Request{Method: tt.method, Authority: tt.authority, Header: &engine.Header{}})
			if status.Code(err) != tt.code {
				t.Fatalf("Direct: %v, want %v", err, tt.code)
			}
			if err != nil {
				return
			}
			defer tg.Done(engine.Result{})
			if tg.Addr != tt.addr || tg.Authority != tt.upAuthority || (tg.Edits != nil) != tt.edits {
				t.Errorf("target: addr %q authority %q edits %v", tg.Addr, tg.Authority, tg.Edits)
			}
		})
	}
}

// fakeVerifier accepts the token "good" and refuses the rest.
type fakeVerifier struct{}

type fakeDenial struct{}

func (fakeDenial) Error() string      { return "meshd: jwt: token expired" }
func (fakeDenial) DenyReason() string { return "expired" }

func (fakeVerifier) Verify(provider string, h interface{ Get(string) []string }) ([]hpack.HeaderField, error) {
	if v := h.Get("authorization"); len(v) == 1 && v[0] == "Bearer good" {
		return []hpack.HeaderField{{Name: "x-user-id", Value: "alice"}}, nil
	}
	return nil, fakeDenial{}
}

// TestDirectJWT: a route naming a provider is refused UNAUTHENTICATED
// before admission, with the reason recorded; a verified call carries
// its claim headers; no verifier at all fails closed.
func TestDirectJWT(t *testing.T) {
	t.Parallel()
	table, err := router.New([]config.Route{{Name: "r", Match: config.Match{Prefix: "/"}, Cluster: "c", JWT: &config.RouteJWT{Provider: "idp"}}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	d := New(WithObserver(rec))
	st := &State{Table: table, Clusters: map[string]*balancer.Cluster{"c": cluster(t, "c", "127.0.0.1:1")},
		Limits: map[string]*policy.Limiter{}, Budgets: map[string]*policy.RetryBudget{}}
	d.Swap(st)
	hdr := func(auth string) *engine.Header {
		return engine.NewHeader([]hpack.HeaderField{{Name: "authorization", Value: auth}})
	}
	if _, err := d.Direct(context.Background(), &engine.Request{Method: "/a.B/C", Header: hdr("Bearer good")}); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "no provider loaded") {
		t.Fatalf("no verifier: %v", err)
	}
	st.JWT = fakeVerifier{}
	_, err = d.Direct(context.Background(), &engine.Request{Method: "/a.B/C", Header: hdr("Bearer bad")})
	if s := status.Convert(err); s.Code() != codes.Unauthenticated || s.Message() != "meshd: jwt: token expired" {
		t.Fatalf("bad token: %v", err)
	}
	last := rec.calls[len(rec.calls)-1]
	if last.JWTProvider != "idp" || last.JWTDenied != "expired" || last.Code != codes.Unauthenticated || last.Route != "r" {
		t.Fatalf("record: %+v", last)
	}
	tg, err := d.Direct(context.Background(), &engine.Request{Method: "/a.B/C", Header: hdr("Bearer good")})
	if err != nil || len(tg.Header) != 1 || tg.Header[0].Name != "x-user-id" || tg.Edits == nil {
		t.Fatalf("good token: %+v, %v", tg, err)
	}
	tg.Done(engine.Result{})
	if st.Active() != 0 {
		t.Fatalf("%d calls left counted", st.Active())
	}
}
