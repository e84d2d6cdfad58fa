package config_test

import (
	"strings"
	"testing"

	"github.com/meshd/meshd/config"
)

const edgeBase = `
listeners:
  - {name: public, address: 127.0.0.1:15001}
  - {name: internal, address: 127.0.0.1:15002}
jwt_providers:
  - {name: auth0, issuer: https://example.auth0.com/, audiences: [api], jwks_file: /etc/meshd/jwks.json}
routes:
  - name: users
    listeners: [public]
    match: {authority: "*.example.com", service: users.v1.Users}
    request_headers:
      set: {x-edge: "1"}
      add: {x-forwarded-client: edge}
      remove: [x-internal-debug]
    response_headers: {set: {x-served-by: meshd}, remove: [x-backend-host]}
    jwt: {provider: auth0}
    cluster: users
clusters:
  - {name: users, endpoints: [127.0.0.1:9001], authority: users.internal}
`

func TestEdgeParses(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(doc(edgeBase), "edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Routes[0]
	if got := r.Listeners; len(got) != 1 || got[0] != "public" {
		t.Errorf("listeners = %v", got)
	}
	if r.Match.Authority != "*.example.com" || r.RequestHeaders.Set["x-edge"] != "1" || r.ResponseHeaders.Remove[0] != "x-backend-host" || r.JWT.Provider != "auth0" {
		t.Errorf("route = %+v", r)
	}
	if cfg.Clusters[0].Authority != "users.internal" {
		t.Errorf("cluster authority = %q", cfg.Clusters[0].Authority)
	}
	if p := cfg.JWTProvider("auth0"); p == nil || p.JWKSRefresh.D() != config.DefaultJWKSRefresh || p.Forward {
		t.Errorf("provider defaults = %+v", p)
	}
}

// TestEdgeRejects: every refused edge setting is reported at its line and
// field, with a message that says why.
func TestEdgeRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		old, new string // substitution in edgeBase
		line     int
		field    string
		msg      string
	}{
		{"unknown listener", "listeners: [public]", "listeners: [public, pubic]", 8, "routes[0].listeners[1]", `unknown listener "pubic"`},
		{"listener twice", "listeners: [public]", "listeners: [public, public]", 8, "routes[0].listeners[1]", "named twice"},
		{"authority bad wildcard", `"*.example.com"`, `"api.*.example.com"`, 9, "routes[0].match.authority", "only a leading"},
		{"authority empty label", `"*.example.com"`, `"*..example.com"`, 9, "routes[0].match.authority", "empty host or label"},
		{"authority bad port", `"*.example.com"`, `"api.example.com:x"`, 9, "routes[0].match.authority", "invalid port"},
		{"pseudo header", "set: {x-edge: \"1\"}", "set: {\":authority\": evil}", 11, "routes[0].request_headers.set.:authority", "pseudo header"},
		{"grpc reserved", "remove: [x-internal-debug]", "remove: [grpc-timeout]", 13, "routes[0].request_headers.remove[0]", "reserved by gRPC"},
		{"grpc-status response", "remove: [x-backend-host]", "remove: [grpc-status]", 14, "routes[0].response_headers.remove[0]", "reserved by gRPC"},
		{"te", "add: {x-forwarded-client: edge}", "add: {te: gzip}", 12, "routes[0].request_headers.add.te", "part of the gRPC protocol"},
		{"content-type", "set: {x-served-by: meshd}", "set: {content-type: text/html}", 14, "routes[0].response_headers.set.content-type", "part of the gRPC protocol"},
		{"connection", "remove: [x-internal-debug]", "remove: [connection]", 13, "routes[0].request_headers.remove[0]", "hop-by-hop"},
		{"keep-alive", "add: {x-forwarded-client: edge}", "add: {keep-alive: \"1\"}", 12, "routes[0].request_headers.add.keep-alive", "hop-by-hop"},
		{"proxy-connection", "remove: [x-internal-debug]", "remove: [proxy-connection]", 13, "routes[0].request_headers.remove[0]", "hop-by-hop"},
		{"transfer-encoding", "set: {x-served-by: meshd}", "set: {transfer-encoding: chunked}", 14, "routes[0].response_headers.set.transfer-encoding", "hop-by-hop"},
		{"upgrade", "set: {x-edge: \"1\"}", "set: {upgrade: h2c}", 11, "routes[0].request_headers.set.upgrade", "hop-by-hop"},
		{"uppercase", "set: {x-edge: \"1\"}", "set: {X-Edge: \"1\"}", 11, "routes[0].request_headers.set.X-Edge", "lowercase"},
		{"set and add", "add: {x-forwarded-client: edge}", "add: {x-edge: \"2\"}", 12, "routes[0].request_headers.add.x-edge", "both set and added"},
		{"unknown provider", "jwt: {provider: auth0}", "jwt: {provider: okta}", 15, "routes[0].jwt.provider", `unknown jwt provider "okta"`},
		{"provider without keys", "jwks_file: /etc/meshd/jwks.json", "jwks_refresh: 1m", 5, "jwt_providers[0]", "jwks_file or jwks_url is required"},
		{"provider both keys", "jwks_file: /etc/meshd/jwks.json", "jwks_file: f, jwks_url: https://x/jwks", 5, "jwt_providers[0]", "not both"},
		{"provider bad url", "jwks_file: /etc/meshd/jwks.json", "jwks_url: ftp://x/jwks", 5, "jwt_providers[0].jwks_url", "http(s) URL"},
		{"provider no issuer", "issuer: https://example.auth0.com/, ", "", 5, "jwt_providers[0].issuer", "required"},
		{"claim to reserved header", "jwks_file: /etc/meshd/jwks.json", "jwks_file: f, claims_to_headers: {sub: grpc-user}", 5, "jwt_providers[0].claims_to_headers.sub", "reserved by gRPC"},
		{"cluster wildcard authority", "authority: users.internal", "authority: \"*.internal\"", 18, "clusters[0].authority", "invalid authority"},
		{"unknown key in header rules", "remove: [x-internal-debug]", "remove: [x-internal-debug]\n      replace: {a: b}", 14, "routes[0].request_headers.replace", `unknown field "replace"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if !strings.Contains(edgeBase, tt.old) {
				t.Fatalf("edgeBase lacks %q", tt.old)
			}
			es := errs(t, doc(edgeBase, tt.old, tt.new))
			for _, e := range es {
				if e.Line == tt.line && e.Field == tt.field && strings.Contains(e.Msg, tt.msg) {
					return
				}
			}
			t.Errorf("no error at line %d, field %q, containing %q; got:\n%v", tt.line, tt.field, tt.msg, es)
		})
	}
}

func TestCheckFilesJWKS(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(doc(edgeBase, "/etc/meshd/jwks.json", "/nonexistent/jwks.json"), "edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.CheckFiles()
	if err == nil || !strings.Contains(err.Error(), "jwt_providers[0].jwks_file") {
		t.Fatalf("CheckFiles = %v, want the missing jwks_file", err)
	}
}
