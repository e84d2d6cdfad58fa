package main

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/internal/consultest"
)

const explainMeshConfig = `
listeners: [{name: mesh, address: 127.0.0.1:0, mesh_tls: permissive}]
routes: [{name: local, match: {prefix: /}, cluster: local}]
clusters: [{name: local, endpoints: [127.0.0.1:9001]}]
mesh:
  service: api
  identity: files
  cert_file: /etc/meshd/leaf.pem
  key_file: /etc/meshd/leaf-key.pem
  ca_file: /etc/meshd/ca.pem
  intentions:
    - {source: "*", action: deny}
    - source: web
      permissions:
        - {action: allow, http: {path_prefix: /users.v1.Users/Get}}
`

// TestRouteExplainSource: -source says whether the intentions let a caller
// make the call, before the routing, from the config's own intentions or
// from Consul's.
func TestRouteExplainSource(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	if _, _, err := agent.Client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionAllow}, {Name: "*", Action: api.IntentionActionDeny}}}, nil); err != nil {
		t.Fatal(err)
	}
	files := writeConfig(t, explainMeshConfig)
	fromConsul := writeConfig(t, fmt.Sprintf(`
consul: {address: %s}
mesh: {service: api}
listeners: [{name: mesh, address: 127.0.0.1:0, mesh_tls: strict}]
routes: [{name: local, match: {prefix: /}, cluster: local}]
clusters: [{name: local, endpoints: [127.0.0.1:9001]}]
`, agent.Addr))
	plain := writeConfig(t, explainConfig)
	for _, tc := range []struct {
		name, file, source, method string
		want                       []string
		absent                     []string
	}{
		{"allowed by a permission", files, "web", "/users.v1.Users/GetUser",
			[]string{"authorization: web → api allowed by mesh.intentions[1]: permission 0", `result: route "local"`}, nil},
		{"L7 rule, no permission matches", files, "web", "/users.v1.Users/DeleteUser",
			[]string{"authorization: web → api denied by mesh.intentions[1]: no permission matched, so mesh.default_action deny", "result: meshd answers PERMISSION_DENIED"}, []string{"result: route"}},
		{"wildcard deny", files, "billing", "/users.v1.Users/GetUser",
			[]string{"billing → api denied by mesh.intentions[0]: its L4 action"}, []string{"result: route"}},
		{"unauthenticated", files, "-", "/users.v1.Users/GetUser",
			[]string{"an unauthenticated caller → api denied"}, nil},
		{"from consul", fromConsul, "web", "/any.S/M", []string{"web → api allowed", "from consul's intentions", `result: route "local"`}, nil},
		{"from consul, denied", fromConsul, "billing", "/any.S/M", []string{"billing → api denied"}, []string{"result: route"}},
		{"no mesh section", plain, "web", "/users.v1.Users/GetUser", []string{"authorization: none", `result: route "users"`}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCmd("route", "explain", "-config", tc.file, "-source", tc.source, tc.method)
			if code != 0 {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			wantInOrder(t, out, tc.want, tc.absent)
		})
	}
}
