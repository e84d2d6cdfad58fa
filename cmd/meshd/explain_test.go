package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

const explainConfig = `
listeners: [{name: main, address: 127.0.0.1:0}]
routes:
  - name: users-get-acme
    match:
      method: /users.v1.Users/GetUser
      headers: [{name: x-tenant, exact: acme}]
    cluster: users-acme
    timeout: 2s
    max_grpc_timeout: 10s
    retry: {attempts: 3, retry_on: [UNAVAILABLE, RESOURCE_EXHAUSTED], per_try_timeout: 500ms}
  - name: users
    match: {service: users.v1.Users}
    clusters: [{name: users, weight: 90}, {name: users-canary, weight: 10}]
  - name: debug
    match:
      prefix: /
      headers: [{name: x-debug, present: true}]
    cluster: users
    fault: {delay: {fixed: 100ms, percent: 5}, abort: {code: UNAVAILABLE, percent: 1}, header: x-fault-drill}
    mirror: {cluster: users-canary, percent: 10}
    hedge: {delay: 20ms, max_attempts: 2}
clusters:
  - name: users
    endpoints: [127.0.0.1:9001]
    lb: least_request
  - name: users-acme
    endpoints: [127.0.0.1:9002]
  - name: users-canary
    consul: {service: users-canary}
`

func TestRouteExplain(t *testing.T) {
	t.Parallel()
	file := writeConfig(t, explainConfig)
	for _, tc := range []struct {
		name   string
		args   []string // after "route explain -config FILE"
		want   []string // substrings, in this order
		absent []string
	}{
		{
			name: "exact method with header",
			args: []string{"/users.v1.Users/GetUser", "-H", "x-tenant=acme"},
			want: []string{
				`✔ route 0 "users-get-acme": matched`,
				`· route 1 "users": would match, but an earlier route won`,
				`- route 2 "debug": header`,
				`result: route "users-get-acme"`,
				`cluster "users-acme" (100%): lb round_robin, endpoints from static`,
				`timeout: 2s`,
				`max_grpc_timeout: 10s`,
				`retry: 3 attempts on UNAVAILABLE,RESOURCE_EXHAUSTED, per try 500ms`,
				`retry: response headers held until the first message or the status, at most 500ms (per_try_timeout)`,
			},
		},
		{
			name: "header missing falls through to the service route and its split",
			args: []string{"-H", "x-tenant=other", "/users.v1.Users/GetUser"},
			want: []string{
				`- route 0 "users-get-acme": header`,
				`✔ route 1 "users": matched`,
				`result: route "users"`,
				`cluster "users" (90%): lb least_request, endpoints from static`,
				`cluster "users-canary" (10%): lb round_robin, endpoints from consul service users-canary`,
				`timeout: none at meshd`,
				`retry: none`,
			},
			absent: []string{"max_grpc_timeout", "fault:", "mirror:", "hedge:"},
		},
		{
			name: "prefix route with present header",
			args: []string{"/orders.v1.Orders/Get", "-H", "X-Debug=1"},
			want: []string{
				`- route 0 "users-get-acme": method /orders.v1.Orders/Get is not /users.v1.Users/GetUser`,
				`- route 1 "users": service "orders.v1.Orders" is not "users.v1.Users"`,
				`✔ route 2 "debug": matched`,
				`result: route "debug"`,
				`retry: none configured; hedge implies 2 attempts on UNAVAILABLE (hedged attempts included)`,
				`hedge: another attempt on another endpoint after 20ms without response headers, at most 2 in flight (the first included); first to commit wins, the others cancelled`,
				`hedge: a status other than UNAVAILABLE from any attempt ends the call (for idempotent methods only)`,
				`mirror: 10% of calls copied to cluster "users-canary" (:authority with -shadow; responses discarded, never retried or waited for)`,
				`fault: delay 100ms for 5% of calls carrying metadata "x-fault-drill" (before the first attempt; counts against the deadline)`,
				`fault: abort with UNAVAILABLE for 1% of calls carrying metadata "x-fault-drill" ("meshd: fault injected by route debug"; never reaches a backend)`,
			},
		},
		{
			name: "no route",
			args: []string{"/orders.v1.Orders/Get"},
			want: []string{
				`- route 2 "debug": header`,
				`result: no route matches: meshd answers UNIMPLEMENTED`,
			},
			absent: []string{"✔"},
		},
		{
			name: "not a method name",
			args: []string{"GetUser", "-H", "x-debug=1"},
			want: []string{`note: "GetUser" is not a full method name`, `- route 2 "debug": path GetUser lacks prefix /`, `result: no route matches`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCmd(append([]string{"route", "explain", "-config", file}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			wantInOrder(t, out, tc.want, tc.absent)
		})
	}
}

// wantInOrder checks that out has every string of want, in that order,
// and none of absent.
func wantInOrder(t *testing.T, out string, want, absent []string) {
	t.Helper()
	rest := out
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q (in order):\n%s", w, out)
		}
		rest = rest[i+len(w):]
	}
	for _, a := range absent {
		if strings.Contains(out, a) {
			t.Errorf("output has %q:\n%s", a, out)
		}
	}
}

func TestRouteExplainUsage(t *testing.T) {
	t.Parallel()
	file := writeConfig(t, explainConfig)
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"no config", []string{"route", "explain", "/a.B/C"}, 2},
		{"no method", []string{"route", "explain", "-config", file}, 2},
		{"two methods", []string{"route", "explain", "-config", file, "/a.B/C", "/a.B/D"}, 2},
		{"header without value", []string{"route", "explain", "-config", file, "/a.B/C", "-H", "x-tenant"}, 2},
		{"missing file", []string{"route", "explain", "-config", file + ".nope", "/a.B/C"}, 1},
		{"unreachable admin", []string{"route", "explain", "-config", file, "-admin", testkit.FreeAddr(t), "/users.v1.Users/GetUser"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if code, out, errOut := runCmd(tc.args...); code != tc.code {
				t.Errorf("exit %d, want %d\nstdout %s\nstderr %s", code, tc.code, out, errOut)
			}
		})
	}
}

// TestRouteExplainLive points explain at a running in-process meshd's admin
// address and checks the live endpoints and their health.
func TestRouteExplainLive(t *testing.T) {
	t.Parallel()
	up, err := backend.Start("up")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Stop)
	up.SetServing(true)
	down, err := backend.Start("down")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(down.Stop)
	down.SetServing(false)

	yaml := fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
routes:
  - name: all
    match: {prefix: /}
    cluster: users
clusters:
  - name: users
    endpoints: [%s, {address: %s, weight: 3}]
`, up.Addr, down.Addr)
	file := writeConfig(t, yaml)
	adminAddr := startServer(t, file).admin

	var out string
	testkit.WaitFor(t, 10*time.Second, "both endpoints reported by health", func() bool {
		code, o, _ := runCmd("route", "explain", "-config", file, "-admin", adminAddr, "/users.v1.Users/GetUser")
		out = o
		return code == 0 && strings.Contains(o, "serving") && strings.Contains(o, "ejected")
	})
	for _, w := range []string{
		`live "users": 2 endpoint(s)`,
		up.Addr + " ", "serving   weight 1, in flight 0, ejections 0, health from health:watch",
		down.Addr + " ", "ejected   weight 3, in flight 0, ejections 0, health from health:watch: NOT_SERVING",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}
