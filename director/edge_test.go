package director

import (
	"context"
	"testing"

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
