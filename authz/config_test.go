package authz_test

import (
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/authz"
	"github.com/meshd/meshd/config"
)

// TestFromConfig: the config's own intentions decide as Consul's would,
// exact sources before "*" whatever the file order.
func TestFromConfig(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(`
listeners: [{name: in, address: 127.0.0.1:0, mesh_tls: strict}]
routes: [{name: r, match: {prefix: /}, cluster: c}]
clusters: [{name: c, endpoints: [127.0.0.1:1]}]
mesh:
  service: api
  identity: files
  cert_file: c
  key_file: k
  ca_file: a
  intentions:
    - {source: "*", action: deny}
    - source: web
      permissions:
        - {action: allow, http: {path_prefix: /pkg.S/Get}}
        - {action: allow, http: {path_exact: /pkg.S/Put, header: [{name: x-team, exact: blue}]}}
    - {source: ops, action: allow}
`), "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tab, err := authz.Compile("api", authz.FromConfig(cfg.Mesh.Intentions), authz.ActionOf(cfg.Mesh.DefaultAction))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		source, method string
		md             metadata.MD
		allow          bool
		rule           string
	}{
		{"web", "/pkg.S/GetUser", nil, true, "mesh.intentions[1]"},
		{"web", "/pkg.S/Put", metadata.Pairs("x-team", "blue"), true, "mesh.intentions[1]"},
		{"web", "/pkg.S/Put", nil, false, "mesh.intentions[1]"},
		{"ops", "/pkg.S/Delete", nil, true, "mesh.intentions[2]"},
		{"billing", "/pkg.S/GetUser", nil, false, "mesh.intentions[0]"},
		{"", "/pkg.S/GetUser", nil, false, "mesh.intentions[0]"},
	} {
		d := tab.Decide(tc.source, tc.method, tc.md)
		if d.Allow != tc.allow || d.Rule != tc.rule {
			t.Errorf("%q %s %v: %+v, want allow=%v by %s", tc.source, tc.method, tc.md, d, tc.allow, tc.rule)
		}
	}
}
