package main

import (
	"strings"
	"testing"
)

const explainEdgeConfig = `
listeners:
  - {name: public, address: 127.0.0.1:0}
  - {name: internal, address: 127.0.0.1:1}
jwt_providers:
  - name: auth0
    issuer: https://example.auth0.com/
    audiences: [api]
    jwks_url: https://example.auth0.com/.well-known/jwks.json
    claims_to_headers: {sub: x-user-id}
routes:
  - name: admin
    listeners: [internal]
    match: {service: users.v1.Users}
    cluster: users
  - name: api
    match: {authority: "*.example.com", service: users.v1.Users}
    request_headers: {set: {x-edge: "1"}, add: {x-forwarded-client: edge}, remove: [x-internal-debug]}
    response_headers: {set: {x-served-by: meshd}, remove: [x-backend-host]}
    jwt: {provider: auth0}
    cluster: users
clusters:
  - {name: users, endpoints: [127.0.0.1:9001], authority: users.internal}
`

func TestRouteExplainEdge(t *testing.T) {
	t.Parallel()
	file := writeConfig(t, explainEdgeConfig)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{
			name: "listener limits the route",
			args: []string{"/users.v1.Users/Get", "-listener", "public", "-authority", "API.example.com:443"},
			want: []string{
				`call /users.v1.Users/Get to API.example.com:443 on listener public`,
				`- route 0 "admin": listener "public" is not one of the route's ["internal"]`,
				`✔ route 1 "api": matched`,
				`listeners: all`,
				`jwt: provider "auth0" (issuer https://example.auth0.com/, audiences api, keys from https://example.auth0.com/.well-known/jwks.json)`,
				`jwt: claim sub forwarded as x-user-id`,
				`header: request remove x-internal-debug`,
				`header: request remove authorization`,
				`header: request set x-edge: "1"`,
				`header: request add x-forwarded-client: "edge"`,
				`header: response remove x-backend-host`,
				`header: response set x-served-by: "meshd"`,
				`cluster "users": :authority sent upstream is users.internal`,
			},
		},
		{
			name: "internal listener",
			args: []string{"-listener", "internal", "/users.v1.Users/Get"},
			want: []string{`✔ route 0 "admin": matched`, `listeners: only internal`},
		},
		{
			name: "host does not match",
			args: []string{"-listener", "public", "-authority", "example.com", "/users.v1.Users/Get"},
			want: []string{`- route 1 "api": authority "example.com" does not match "*.example.com"`, `result: no route matches: meshd answers UNIMPLEMENTED`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCmd(append([]string{"route", "explain", "-config", file}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			rest := out
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output lacks %q (in order):\n%s", w, out)
				}
				rest = rest[i+len(w):]
			}
		})
	}
	if code, _, errOut := runCmd("route", "explain", "-config", file, "-listener", "nope", "/a.B/C"); code == 0 || !strings.Contains(errOut, `no such listener`) {
		t.Errorf("unknown -listener: exit %d, %q", code, errOut)
	}
}

func TestValidateUnknownListener(t *testing.T) {
	t.Parallel()
	file := writeConfig(t, strings.Replace(explainEdgeConfig, "listeners: [internal]", "listeners: [internl]", 1))
	code, _, errOut := runCmd("validate", "-config", file)
	if code == 0 || !strings.Contains(errOut, file+`:13: routes[0].listeners[0]: unknown listener "internl" (listeners: internal, public)`) {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
}
