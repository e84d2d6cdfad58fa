package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshd/meshd/config"
)

// meshBase is a valid mesh config: %LISTENER% adds keys to the inbound
// listener, %CLUSTER% to the api cluster, %MESH% replaces the mesh
// section's body.
const meshBase = `listeners:
  - name: inbound
    address: 127.0.0.1:15006
%LISTENER%
routes:
  - {name: r, match: {prefix: /}, cluster: api}
clusters:
  - name: api
%CLUSTER%
mesh:
%MESH%
`

func meshDoc(listener, cluster, mesh string) []byte {
	if !strings.Contains(cluster, "consul:") {
		cluster = "    endpoints: [127.0.0.1:9001]\n" + cluster
	}
	return []byte(strings.NewReplacer("%LISTENER%", listener, "%CLUSTER%", cluster, "%MESH%", mesh).Replace(meshBase))
}

func TestMeshKeys(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(meshDoc("    mesh_tls: permissive", "    mesh_tls: {service: api}\n    consul: {service: api, connect: true}",
		"  service: web"), "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Mesh
	if m.Service != "web" || m.Identity != config.IdentityConsulConnect || m.DefaultAction != config.ActionDeny {
		t.Fatalf("mesh = %+v, want service web with the defaults consul_connect and deny", m)
	}
	if cfg.Listeners[0].MeshTLS != config.MeshTLSPermissive || cfg.Clusters[0].MeshTLS.Service != "api" || !cfg.Clusters[0].Consul.Connect {
		t.Fatalf("listener %+v cluster %+v", cfg.Listeners[0], cfg.Clusters[0])
	}
	files := `  service: web
  identity: files
  default_action: allow
  cert_file: c.pem
  key_file: k.pem
  ca_file: ca.pem
  intentions:
    - {source: web, action: allow}
    - source: "*"
      permissions:
        - action: allow
          http: {path_prefix: /grpc.testing.TestService/Unary, methods: [POST], header: [{name: x-team, exact: blue}]}`
	cfg, err = config.Parse(meshDoc("    mesh_tls: strict", "", files), "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if in := cfg.Mesh.Intentions; len(in) != 2 || in[1].Permissions[0].HTTP.Header[0].Exact != "blue" {
		t.Fatalf("intentions = %+v", in)
	}
}

func TestMeshInvalid(t *testing.T) {
	t.Parallel()
	const files = "  service: web\n  identity: files\n  cert_file: c\n  key_file: k\n  ca_file: a\n"
	tests := []struct {
		name, listener, cluster, mesh string
		field                         string
	}{
		{"no service", "", "", "  default_action: deny", "mesh.service"},
		{"bad service", "", "", "  service: web/1", "mesh.service"},
		{"bad default", "", "", "  service: web\n  default_action: maybe", "mesh.default_action"},
		{"bad identity", "", "", "  service: web\n  identity: spire", "mesh.identity"},
		{"files without files", "", "", "  service: web\n  identity: files", "mesh.cert_file"},
		{"connect with files", "", "", "  service: web\n  cert_file: c", "mesh"},
		{"connect with local intentions", "", "", "  service: web\n  intentions: [{source: a, action: allow}]", "mesh.intentions"},
		{"bad listener mode", "    mesh_tls: yes-please", "", "  service: web", "listeners[0].mesh_tls"},
		{"listener tls and mesh", "    mesh_tls: strict\n    tls: {cert_file: c, key_file: k}", "", "  service: web", "listeners[0].mesh_tls"},
		{"outbound original_dst", "    mesh_tls: strict\n    original_dst: {direction: outbound}", "", "  service: web", "listeners[0].mesh_tls"},
		{"cluster no service", "", "    mesh_tls: {}", "  service: web", "clusters[0].mesh_tls.service"},
		{"cluster tls and mesh", "", "    mesh_tls: {service: api}\n    tls: {ca_file: a}", "  service: web", "clusters[0].mesh_tls"},
		{"intention both", "", "", files + "  intentions: [{source: a, action: allow, permissions: [{action: allow}]}]", "mesh.intentions[0]"},
		{"intention neither", "", "", files + "  intentions: [{source: a}]", "mesh.intentions[0]"},
		{"intention bad source", "", "", files + "  intentions: [{source: 'a b', action: allow}]", "mesh.intentions[0].source"},
		{"permission bad action", "", "", files + "  intentions: [{source: a, permissions: [{action: permit}]}]", "mesh.intentions[0].permissions[0].action"},
		{"two paths", "", "", files + "  intentions: [{source: a, permissions: [{action: allow, http: {path_exact: /a/b, path_prefix: /a}}]}]", "mesh.intentions[0].permissions[0].http"},
		{"bad path regex", "", "", files + "  intentions: [{source: a, permissions: [{action: allow, http: {path_regex: '('}}]}]", "mesh.intentions[0].permissions[0].http.path_regex"},
		{"header two kinds", "", "", files + "  intentions: [{source: a, permissions: [{action: allow, http: {header: [{name: x, exact: a, prefix: b}]}}]}]", "mesh.intentions[0].permissions[0].http.header[0]"},
		{"header upper", "", "", files + "  intentions: [{source: a, permissions: [{action: allow, http: {header: [{name: X, present: true}]}}]}]", "mesh.intentions[0].permissions[0].http.header[0].name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse(meshDoc(tc.listener, tc.cluster, tc.mesh), "mesh.yaml")
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("err = %v, want config.Errors", err)
			}
			for _, e := range es {
				if e.Field == tc.field && e.Line > 0 {
					return
				}
			}
			t.Fatalf("no error on %q with a line among:\n%v", tc.field, err)
		})
	}
	t.Run("mesh_tls without mesh", func(t *testing.T) {
		t.Parallel()
		doc := strings.Replace(string(meshDoc("    mesh_tls: strict", "    mesh_tls: {service: api}", "")), "mesh:\n", "", 1)
		_, err := config.Parse([]byte(doc), "mesh.yaml")
		if err == nil || !strings.Contains(err.Error(), "listeners[0].mesh_tls") || !strings.Contains(err.Error(), "clusters[0].mesh_tls") {
			t.Fatalf("err = %v, want both mesh_tls keys to need a mesh section", err)
		}
	})
}
