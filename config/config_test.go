package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/config"
)

// doc strips the leading newline of a raw string literal, so that the first
// line written after the backtick is line 1 of the file.
// Optional old, new pairs are substituted.
func doc(s string, oldnew ...string) []byte {
	return []byte(strings.NewReplacer(oldnew...).Replace(strings.TrimPrefix(s, "\n")))
}

// errs parses data and returns the Errors it must fail with.
func errs(t *testing.T, data []byte) config.Errors {
	t.Helper()
	cfg, err := config.Parse(data, "test.yaml")
	if err == nil {
		t.Fatalf("Parse accepted the file: %s", cfg.Summary())
	}
	if cfg != nil {
		t.Errorf("Parse returned a config along with error %v", err)
	}
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %T %v is not a config.Errors", err, err)
	}
	if len(es) == 0 {
		t.Fatalf("empty config.Errors")
	}
	for _, e := range es {
		if e.File != "test.yaml" || e.Msg == "" {
			t.Errorf("error %#v lacks its file or message", *e)
		}
		if !strings.HasPrefix(e.Error(), "test.yaml:") {
			t.Errorf("error %q does not start with the file name", e.Error())
		}
	}
	return es
}

func TestParseFullConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pem := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("placeholder"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	crt, key, ca := pem("tls.crt"), pem("tls.key"), pem("ca.crt")
	// Every key of CONTRACT.md, plus the documented additions.
	src := `
admin:
  address: 127.0.0.1:15000
listeners:
  - name: main
    address: 127.0.0.1:15001
    tls:
      cert_file: CRT
      key_file: KEY
      client_ca_file: CA
    max_concurrent_streams: 64
routes:
  - name: users-get
    match:
      method: /users.v1.Users/GetUser
      headers:
        - {name: x-tenant, exact: acme}
        - {name: x-env, regex: "prod|staging"}
        - {name: x-user, prefix: "u-", invert: true}
        - {name: x-debug, present: true}
    cluster: users
    timeout: 2s
    max_grpc_timeout: 1m
    retry:
      attempts: 3
      retry_on: [UNAVAILABLE, DEADLINE_EXCEEDED]
      per_try_timeout: 500ms
  - name: users
    match: {service: users.v1.Users}
    clusters: [{name: users, weight: 90}, {name: users-canary, weight: 10}]
  - name: rest
    match: {prefix: /}
    cluster: users
clusters:
  - name: users
    endpoints: [127.0.0.1:9001, {address: 127.0.0.1:9002, weight: 3}]
    lb: ring_hash
    hash_header: x-user
    health:
      service: ""
      missing: ejected
      check_interval: 3s
    outlier:
      consecutive_failures: 7
      base_ejection_time: 1s
      max_ejection_time: 10s
      max_ejection_percent: 0
      failure_codes: [INTERNAL]
    all_down: any
    tls: {ca_file: CA, cert_file: CRT, key_file: KEY, server_name: users.internal}
  - name: users-canary
    consul: {service: users, tag: grpc, datacenter: dc1, passing_only: false}
    lb: least_request
consul:
  address: 127.0.0.1:8500
  token: t0ken
tracing:
  otlp_endpoint: 127.0.0.1:4317
  sample_ratio: 0.25
drain_timeout: 30s
max_message_size: 1024
workers: 3
`
	src = strings.NewReplacer("CRT", crt, "KEY", key, "CA", ca).Replace(src)
	cfg, err := config.Parse(doc(src), "full.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate after Parse: %v", err)
	}

	str := func(s string) *string { return &s }
	yes, no := true, false
	d := func(v time.Duration) config.Duration { return config.Duration(v) }
	code := func(cs ...codes.Code) []config.Code {
		var out []config.Code
		for _, c := range cs {
			out = append(out, config.Code(c))
		}
		return out
	}
	l, r0, r1, r2 := cfg.Listeners[0], cfg.Routes[0], cfg.Routes[1], cfg.Routes[2]
	c0, c1 := cfg.Clusters[0], cfg.Clusters[1]
	// Field by field rather than whole structs: the schema grows, and each
	// documented key must keep decoding to its field.
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"admin.address", cfg.Admin.Address, "127.0.0.1:15000"},
		{"len(listeners)", len(cfg.Listeners), 1},
		{"listeners[0].name", l.Name, "main"},
		{"listeners[0].address", l.Address, "127.0.0.1:15001"},
		{"listeners[0].tls", l.TLS, &config.ListenerTLS{CertFile: crt, KeyFile: key, ClientCAFile: ca}},
		{"listeners[0].max_concurrent_streams", l.MaxConcurrentStreams, uint32(64)},
		{"len(routes)", len(cfg.Routes), 3},
		{"routes[0].name", r0.Name, "users-get"},
		{"routes[0].match", r0.Match, config.Match{
			Method: "/users.v1.Users/GetUser",
			Headers: []config.HeaderMatch{
				{Name: "x-tenant", Exact: str("acme")},
				{Name: "x-env", Regex: str("prod|staging")},
				{Name: "x-user", Prefix: str("u-"), Invert: true},
				{Name: "x-debug", Present: &yes},
			},
		}},
		{"routes[0].cluster", r0.Cluster, "users"},
		{"routes[0].clusters", len(r0.Clusters), 0},
		{"routes[0].timeout", r0.Timeout, d(2 * time.Second)},
		{"routes[0].max_grpc_timeout", r0.MaxGRPCTimeout, d(time.Minute)},
		{"routes[0].retry.attempts", r0.Retry.Attempts, 3},
		{"routes[0].retry.retry_on", r0.Retry.RetryOn, code(codes.Unavailable, codes.DeadlineExceeded)},
		{"routes[0].retry.per_try_timeout", r0.Retry.PerTryTimeout, d(500 * time.Millisecond)},
		{"routes[1].match", r1.Match, config.Match{Service: "users.v1.Users"}},
		{"routes[1].cluster", r1.Cluster, ""},
		{"routes[1].clusters", r1.Clusters, []config.WeightedCluster{{Name: "users", Weight: 90}, {Name: "users-canary", Weight: 10}}},
		{"routes[1].retry", r1.Retry, (*config.Retry)(nil)},
		{"routes[2].match", r2.Match, config.Match{Prefix: "/"}},
		{"len(clusters)", len(cfg.Clusters), 2},
		{"clusters[0].name", c0.Name, "users"},
		{"clusters[0].endpoints", c0.Endpoints, []config.EndpointSpec{{Address: "127.0.0.1:9001", Weight: 1}, {Address: "127.0.0.1:9002", Weight: 3}}},
		{"clusters[0].consul", c0.Consul, (*config.ConsulService)(nil)},
		{"clusters[0].lb", c0.LB, "ring_hash"},
		{"clusters[0].hash_header", c0.HashHeader, "x-user"},
		{"clusters[0].health.service", c0.Health.Service, ""},
		{"clusters[0].health.missing", c0.Health.Missing, "ejected"},
		{"clusters[0].health.check_interval", c0.Health.CheckInterval, d(3 * time.Second)},
		{"clusters[0].outlier.consecutive_failures", c0.Outlier.ConsecutiveFailures, 7},
		{"clusters[0].outlier.base_ejection_time", c0.Outlier.BaseEjectionTime, d(time.Second)},
		{"clusters[0].outlier.max_ejection_time", c0.Outlier.MaxEjectionTime, d(10 * time.Second)},
		{"clusters[0].outlier.max_ejection_percent", *c0.Outlier.MaxEjectionPercent, 0},
		{"clusters[0].outlier.failure_codes", c0.Outlier.FailureCodes, code(codes.Internal)},
		{"clusters[0].all_down", c0.AllDown, "any"},
		{"clusters[0].tls", c0.TLS, &config.UpstreamTLS{CAFile: ca, CertFile: crt, KeyFile: key, ServerName: "users.internal"}},
		{"clusters[1].name", c1.Name, "users-canary"},
		{"clusters[1].endpoints", len(c1.Endpoints), 0},
		{"clusters[1].consul", c1.Consul, &config.ConsulService{Service: "users", Tag: "grpc", Datacenter: "dc1", PassingOnly: &no}},
		{"clusters[1].lb", c1.LB, "least_request"},
		{"clusters[1].health.missing (default)", c1.Health.Missing, "serving"},
		{"clusters[1].all_down (default)", c1.AllDown, "fail"},
		{"clusters[1].tls", c1.TLS, (*config.UpstreamTLS)(nil)},
		{"consul.address", cfg.Consul.Address, "127.0.0.1:8500"},
		{"consul.token", cfg.Consul.Token, "t0ken"},
		{"tracing.otlp_endpoint", cfg.Tracing.OTLPEndpoint, "127.0.0.1:4317"},
		{"tracing.sample_ratio", *cfg.Tracing.SampleRatio, 0.25},
		{"drain_timeout", cfg.DrainTimeout, d(30 * time.Second)},
		{"max_message_size", cfg.MaxMessageSize, 1024},
		{"workers", cfg.Workers, config.Workers(3)},
		{"file", cfg.File, "full.yaml"},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", f.name, f.got, f.want)
		}
	}
	if err := cfg.CheckFiles(); err != nil {
		t.Errorf("CheckFiles: %v", err)
	}
	if got, want := cfg.Summary(), "1 listener(s), 3 route(s), 2 cluster(s) (1 from consul)"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
	if c := cfg.Cluster("users-canary"); c == nil || c.Consul == nil {
		t.Errorf("Cluster(users-canary) = %+v", c)
	}
	if c := cfg.Cluster("nope"); c != nil {
		t.Errorf("Cluster(nope) = %+v, want nil", c)
	}
}

func TestParseDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(doc(`
listeners:
  - name: main
    address: 127.0.0.1:15001
routes:
  - name: all
    match: {prefix: /}
    cluster: static
    retry: {attempts: 2}
clusters:
  - name: static
    endpoints: [127.0.0.1:9001, {address: 127.0.0.1:9002}]
  - name: discovered
    consul: {service: users}
`), "defaults.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	unavailable := []config.Code{config.Code(codes.Unavailable)}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"drain_timeout", cfg.DrainTimeout.D(), 10 * time.Second},
		{"max_message_size", cfg.MaxMessageSize, 16 << 20},
		{"workers (auto)", cfg.Workers, config.Workers(0)},
		// Unset, so OTEL_TRACES_SAMPLER can apply.
		{"tracing.sample_ratio", cfg.Tracing.SampleRatio, (*float64)(nil)},
		{"listeners[0].max_concurrent_streams", cfg.Listeners[0].MaxConcurrentStreams, uint32(1000)},
		{"routes[0].retry.retry_on", cfg.Routes[0].Retry.RetryOn, unavailable},
		{"routes[0].retry.per_try_timeout", cfg.Routes[0].Retry.PerTryTimeout.D(), time.Duration(0)},
		{"routes[0].timeout", cfg.Routes[0].Timeout.D(), time.Duration(0)},
		{"clusters[0].endpoints", cfg.Clusters[0].Endpoints, []config.EndpointSpec{{Address: "127.0.0.1:9001", Weight: 1}, {Address: "127.0.0.1:9002", Weight: 1}}},
		{"clusters[1].consul.passing_only", *cfg.Clusters[1].Consul.PassingOnly, true},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	for i, cl := range cfg.Clusters {
		o := cl.Outlier
		if o.ConsecutiveFailures != 5 || o.BaseEjectionTime.D() != 5*time.Second || o.MaxEjectionTime.D() != 300*time.Second ||
			o.MaxEjectionPercent == nil || *o.MaxEjectionPercent != 50 || !reflect.DeepEqual(o.FailureCodes, unavailable) {
			t.Errorf("clusters[%d].outlier = %+v (max_ejection_percent %v), want the defaults 5, 5s, 300s, 50, [UNAVAILABLE]",
				i, o, o.MaxEjectionPercent)
		}
		if cl.LB != "round_robin" || cl.Health.Missing != "serving" || cl.Health.Service != "" ||
			cl.Health.Disabled || cl.Health.CheckInterval.D() != time.Second || cl.AllDown != "fail" {
			t.Errorf("clusters[%d] defaults: lb %q, health %+v, all_down %q", i, cl.LB, cl.Health, cl.AllDown)
		}
	}
	if got, want := cfg.Summary(), "1 listener(s), 1 route(s), 2 cluster(s) (1 from consul)"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
}

// base is a valid config; rejection cases below are variations of it, so
// their line numbers are easy to check by eye.
const base = `
listeners:
  - name: main
    address: 127.0.0.1:15001
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
`

func TestParseRejects(t *testing.T) {
	t.Parallel()
	if _, err := config.Parse(doc(base), "base.yaml"); err != nil {
		t.Fatalf("base config: %v", err)
	}
	tests := []struct {
		name  string
		src   string
		line  int    // exact line of the reported error
		field string // exact field path
		msg   string // substring of the message
	}{
		{"unknown top-level key", base + "drain_timout: 5s\n", 11, "drain_timout", `unknown field "drain_timout" in config`},
		{"unknown key in route", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
    colour: red
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 6, "routes[0].colour", `unknown field "colour" in route`},
		{"unknown key in match", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match:
      prefix: /
      methd: /a.B/C
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 6, "routes[0].match.methd", `unknown field "methd" in match`},
		{"unknown key in endpoint item", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints:
      - 127.0.0.1:9001
      - {address: 127.0.0.1:9002, wieght: 2}
`, 7, "clusters[0].endpoints[1].wieght", `unknown field "wieght"`},
		{"endpoint weight not a number", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints:
      - {address: 127.0.0.1:9002, weight: -2}
`, 6, "clusters[0].endpoints[0].weight", `weight must be a positive integer`},
		{"bad duration", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
    timeout: 2x
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 6, "routes[0].timeout", `invalid duration "2x"`},
		{"bad duration among flow values", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
    retry: {attempts: 2, retry_on: [UNAVAILABLE], per_try_timeout: 2x}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 6, "routes[0].retry.per_try_timeout", `invalid duration "2x"`},
		{"negative duration", base + "drain_timeout: -1s\n", 11, "drain_timeout", `negative duration "-1s"`},
		{"duration not a scalar", base + "drain_timeout: [1s]\n", 11, "drain_timeout", `duration must be a string`},
		{"bad code name in retry_on", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
    retry:
      attempts: 2
      retry_on: [UNAVAILABLE, Unavailable]
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 8, "routes[0].retry.retry_on[1]", `unknown gRPC status code "Unavailable"`},
		{"OK in retry_on", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
    retry:
      attempts: 2
      retry_on:
        - UNAVAILABLE
        - OK
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 10, "routes[0].retry.retry_on[1]", `OK is not a failure`},
		{"route to a missing cluster", strings.Replace(base, "cluster: backends", "cluster: backend", 1), 7, "routes[0].cluster", `unknown cluster "backend"`},
		{"weighted leg to a missing cluster", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    clusters:
      - {name: backends, weight: 9}
      - {name: canary, weight: 1}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 7, "routes[0].clusters[1].name", `unknown cluster "canary"`},
		{"weights overflow uint32", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    clusters:
      - {name: backends, weight: 2147483648}
      - {name: backends, weight: 2147483648}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 5, "routes[0].clusters", `weights add up to 4294967296`},
		{"duplicate route names", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - {name: all, match: {prefix: /a.}, cluster: backends}
  - name: all
    match: {prefix: /}
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 4, "routes[1].name", `duplicate route name "all"`},
		{"duplicate cluster names", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
  - name: backends
    endpoints: [127.0.0.1:9002]
`, 6, "clusters[1].name", `duplicate cluster name "backends"`},
		{"duplicate listener names", `
listeners:
  - {name: main, address: 127.0.0.1:15001}
  - {name: main, address: 127.0.0.1:15002}
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 3, "listeners[1].name", `duplicate listener name "main"`},
		{"both cluster and clusters", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
    clusters: [{name: backends, weight: 1}]
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 3, "routes[0]", `set either cluster or clusters, not both`},
		{"no cluster at all", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 3, "routes[0].cluster", `required`},
		{"no method, service or prefix", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match:
      headers: [{name: x-a, present: true}]
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 4, "routes[0].match", `exactly one of method, service or prefix`},
		{"two of method, service and prefix", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    cluster: backends
    match: {service: a.B, prefix: /a.B/}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 5, "routes[0].match", `exactly one of method, service or prefix`},
		{"bad method pattern", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match:
      method: users.v1.Users/Get
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 5, "routes[0].match.method", `invalid full method "users.v1.Users/Get"`},
		{"method without a method name", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - {name: all, match: {method: /users.v1.Users/}, cluster: backends}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 3, "routes[0].match.method", `invalid full method`},
		{"service with a slash", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - {name: all, match: {service: /users.v1.Users}, cluster: backends}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 3, "routes[0].match.service", `invalid service`},
		{"prefix without a slash", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match:
      prefix: users.
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 5, "routes[0].match.prefix", `prefix "users." must start with /`},
		{"header with two matchers", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match:
      prefix: /
      headers:
        - {name: x-a, exact: a}
        - {name: x-b, exact: b, prefix: b}
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 8, "routes[0].match.headers[1]", `exactly one of exact, regex, prefix or present`},
		{"header with no matcher", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /, headers: [{name: x-b, invert: true}]}
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 4, "routes[0].match.headers[0]", `exactly one of exact, regex, prefix or present`},
		{"header name uppercase", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match:
      prefix: /
      headers:
        - name: X-Tenant
          exact: acme
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 7, "routes[0].match.headers[0]", `metadata keys are lowercase: "X-Tenant"`},
		{"header without a name", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - {name: all, match: {prefix: /, headers: [{exact: a}]}, cluster: backends}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 3, "routes[0].match.headers[0]", `name is required`},
		{"header bad regex", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match:
      prefix: /
      headers: [{name: x-a, regex: "a("}]
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 6, "routes[0].match.headers[0]", `invalid regex "a("`},
		{"header regex unbalanced but valid once anchored", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match:
      prefix: /
      headers: [{name: x-a, regex: "x)|(.*"}]
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 6, "routes[0].match.headers[0]", `invalid regex "x)|(.*"`},
		{"ring_hash without hash_header", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
    lb: ring_hash
`, 4, "clusters[0].hash_header", `required for lb ring_hash`},
		{"uppercase hash_header", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
    lb: ring_hash
    hash_header: X-User
`, 7, "clusters[0].hash_header", `lowercase`},
		{"unknown lb", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
    lb: random
`, 6, "clusters[0].lb", `unknown policy "random"`},
		{"endpoints and consul", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
    consul: {service: backends}
`, 4, "clusters[0]", `set one of endpoints, consul or kubernetes, not several`},
		{"neither endpoints nor consul", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    lb: round_robin
`, 4, "clusters[0]", `endpoints, consul or kubernetes is required`},
		{"consul without service", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    consul:
      tag: grpc
`, 5, "clusters[0].consul.service", `required`},
		{"endpoint without port", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints:
      - 127.0.0.1:9001
      - localhost
`, 7, "clusters[0].endpoints[1]", `invalid address "localhost": want host:port`},
		{"endpoint port out of range", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:65536]
`, 5, "clusters[0].endpoints[0]", `invalid port in "127.0.0.1:65536"`},
		{"duplicate endpoint", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints:
      - 127.0.0.1:9001
      - {address: 127.0.0.1:9001, weight: 2}
`, 7, "clusters[0].endpoints[1]", `duplicate endpoint "127.0.0.1:9001"`},
		{"listener address without port", strings.Replace(base, "127.0.0.1:15001", "127.0.0.1", 1), 3, "listeners[0].address", `invalid address "127.0.0.1"`},
		{"listener tls without key", `
listeners:
  - name: main
    address: 127.0.0.1:15001
    tls:
      cert_file: /etc/meshd/tls.crt
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 4, "listeners[0].tls", `cert_file and key_file are both required`},
		{"no listeners", `
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 0, "listeners", `at least one listener is required`},
		{"sample_ratio above 1", base + "tracing:\n  sample_ratio: 2\n", 12, "tracing.sample_ratio", `must be between 0 and 1, got 2`},
		{"unknown engine", base + "engine: quantum\n", 11, "engine", `unknown engine "quantum"`},
		{"max_ejection_percent above 100", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
    outlier: {max_ejection_percent: 101}
`, 6, "clusters[0].outlier.max_ejection_percent", `between 0 and 100`},
		{"retry attempts above the limit", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
    retry:
      attempts: 11
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 7, "routes[0].retry.attempts", `must be between 1 and 10, got 11`},
		{"mapping where a list belongs", `
listeners: {name: main, address: 127.0.0.1:15001}
`, 1, "listeners", `cannot unmarshal !!map into []config.Listener`},
		{"string where a number belongs", base + "max_message_size: big\n", 11, "max_message_size", `cannot unmarshal !!str`},
		{"workers neither auto nor a count", base + "workers: many\n", 11, "workers", `workers must be auto or a number of threads from 1 to 1024, got "many"`},
		{"workers above the limit", base + "workers: 5000\n", 11, "workers", `from 1 to 1024, got "5000"`},
		{"wrong type inside a flow mapping", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
    retry: {attempts: many, retry_on: [UNAVAILABLE]}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 6, "routes[0].retry", "cannot unmarshal !!str `many` into int"},
		{"wrong type across a flow mapping's lines", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /,
      headers: [{name: x-a, present: maybe}]}
    cluster: backends
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, 5, "routes[0].match.headers", "into bool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			es := errs(t, doc(tt.src))
			for _, e := range es {
				if e.Line == tt.line && e.Field == tt.field && strings.Contains(e.Msg, tt.msg) {
					return
				}
			}
			t.Errorf("no error at line %d, field %q, containing %q; got:\n%v", tt.line, tt.field, tt.msg, es)
		})
	}
}

// TestParseRejectsNameFileLineField checks the contract of `meshd validate`
// for every error a decodable file can produce: each names its file, line
// and field.
func TestParseRejectsNameFileLineField(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"invalid_unknown_keys.yaml", "invalid_values.yaml", "invalid_semantics.yaml", "invalid_weights_overflow.yaml"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(filepath.Join("testdata", name))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range errs(t, data) {
				if e.Line <= 0 || e.Field == "" {
					t.Errorf("error lacks a line or field: %#v", *e)
				}
			}
		})
	}
}

// anyLine accepts any positive line: yaml.v3 places some syntax errors at
// the start of the enclosing flow collection rather than where it breaks.
const anyLine = -1

func TestParseRejectsWholeFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		line int
		msg  string
	}{
		{"empty file", "", 0, "empty config"},
		{"only comments", "# nothing here\n# at all\n", 0, "empty config"},
		{"a second YAML document", base + "---\nroutes: []\n", 11, "more than one YAML document"},
		{"a broken second YAML document", base + "---\nroutes: [\n", 12, ""},
		{"YAML syntax error", `
listeners:
  - name: main
    address: 127.0.0.1:15001
routes:
  - name: all
    match: {prefix: /
    cluster: backends
`, anyLine, "did not find expected"},
		{"tab indentation", "listeners:\n\t- name: main\n", 2, "cannot start any token"},
		{"not a mapping", "just a string\n", 1, "cannot unmarshal"},
		{"duplicate key", base + "listeners: []\n", 11, `"listeners" already defined at line 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			es := errs(t, doc(tt.src))
			for _, e := range es {
				lineOK := e.Line == tt.line || (tt.line == anyLine && e.Line > 0)
				if lineOK && strings.Contains(e.Msg, tt.msg) {
					return
				}
			}
			t.Errorf("no error at line %d containing %q; got:\n%v", tt.line, tt.msg, es)
		})
	}
}

// TestParseReportsEveryProblem: an operator fixes a file in one pass, so
// Parse lists every problem, not the first.
func TestParseReportsEveryProblem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want []config.Error // File is always test.yaml; Msg is a substring
	}{
		{"validation problems", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /}
    cluster: nowhere
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
    lb: fastest
tracing:
  sample_ratio: 2
`, []config.Error{
			{Line: 5, Field: "routes[0].cluster", Msg: `unknown cluster "nowhere"`},
			{Line: 9, Field: "clusters[0].lb", Msg: `unknown policy "fastest"`},
			{Line: 11, Field: "tracing.sample_ratio", Msg: `between 0 and 1`},
		}},
		{"decoding problems", `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: all
    match: {prefix: /, sevice: a.B}
    cluster: backends
    timeout: 2x
    retry: {attempts: 2, retry_on: [UNAVAILABL]}
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`, []config.Error{
			{Line: 4, Field: "routes[0].match.sevice", Msg: `unknown field "sevice"`},
			{Line: 6, Field: "routes[0].timeout", Msg: `invalid duration "2x"`},
			{Line: 7, Field: "routes[0].retry.retry_on[0]", Msg: `unknown gRPC status code "UNAVAILABL"`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse(doc(tt.src), "test.yaml")
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("Parse error %v is not a config.Errors", err)
			}
			if len(es) != len(tt.want) {
				t.Errorf("got %d errors, want %d:\n%v", len(es), len(tt.want), es)
			}
			for _, w := range tt.want {
				found := false
				for _, e := range es {
					found = found || (e.File == "test.yaml" && e.Line == w.Line && e.Field == w.Field && strings.Contains(e.Msg, w.Msg))
				}
				if !found {
					t.Errorf("missing error %d:%s: %s; got:\n%v", w.Line, w.Field, w.Msg, es)
				}
			}
			// One line per problem in the combined message `meshd validate` prints.
			if n := strings.Count(err.Error(), "\n") + 1; n != len(es) {
				t.Errorf("Error() has %d lines for %d errors:\n%s", n, len(es), err)
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		e    config.Error
		want string
	}{
		{config.Error{File: "a.yaml", Line: 3, Field: "routes[0].cluster", Msg: "boom"}, "a.yaml:3: routes[0].cluster: boom"},
		{config.Error{File: "a.yaml", Msg: "empty config"}, "a.yaml: empty config"},
		{config.Error{Line: 2, Msg: "boom"}, "2: boom"},
		{config.Error{Field: "listeners", Msg: "required"}, "listeners: required"},
		{config.Error{Msg: "boom"}, "boom"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%#v.Error() = %q, want %q", tt.e, got, tt.want)
		}
	}
}

// TestValidateIdempotent: the reload path validates a parsed, defaulted
// config again; defaults must not make it invalid.
func TestValidateIdempotent(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("testdata", "valid_*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no valid_*.yaml in testdata: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			for i := range 2 {
				if err := cfg.Validate(); err != nil {
					t.Fatalf("Validate #%d after Parse: %v", i+1, err)
				}
			}
			if cfg.Summary() == "" {
				t.Error("empty Summary")
			}
		})
	}
}

func TestTestdataInvalidFilesFail(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("testdata", "invalid_*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no invalid_*.yaml in testdata: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Load(f)
			if err == nil {
				t.Fatalf("Load accepted %s: %s", f, cfg.Summary())
			}
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("error %v is not a config.Errors", err)
			}
			for _, e := range es {
				if e.File != f {
					t.Errorf("error names file %q, want %q: %v", e.File, f, e)
				}
			}
		})
	}
}

// TestValidateInMemory: a config built in code (no file, no line index)
// validates without panicking and reports fields without lines.
func TestValidateInMemory(t *testing.T) {
	t.Parallel()
	c := &config.Config{
		Listeners: []config.Listener{{Name: "l", Address: "127.0.0.1:1"}},
		Routes:    []config.Route{{Name: "r", Match: config.Match{Prefix: "/"}, Cluster: "missing"}},
	}
	err := c.Validate()
	var es config.Errors
	if !errors.As(err, &es) || len(es) != 1 {
		t.Fatalf("Validate() = %v, want one error", err)
	}
	if e := es[0]; e.Line != 0 || e.Field != "routes[0].cluster" || e.File != "" {
		t.Errorf("error = %#v", *e)
	}
	if err := (&config.Config{Listeners: c.Listeners}).Validate(); err != nil {
		t.Errorf("routes and clusters are optional: %v", err)
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "nope.yaml")
		_, err := config.Load(path)
		if err == nil {
			t.Fatal("Load of a missing file succeeded")
		}
		if !strings.Contains(err.Error(), path) || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("error %q does not name %s or is not ErrNotExist", err, path)
		}
	})
	t.Run("errors name the path", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(path, doc(base+"bogus: 1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := config.Load(path)
		if want := path + ":11: bogus: "; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Load error %q, want prefix %q", err, want)
		}
	})
	t.Run("valid file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "ok.yaml")
		if err := os.WriteFile(path, doc(base), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.File != path {
			t.Errorf("File = %q, want %q", cfg.File, path)
		}
	})
}

func TestCheckFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	crt := filepath.Join(dir, "tls.crt")
	if err := os.WriteFile(crt, []byte("placeholder"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.key")
	cfg, err := config.Parse(doc(`
listeners:
  - name: main
    address: 127.0.0.1:15001
    tls:
      cert_file: CRT
      key_file: MISSING
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001]
    tls: {ca_file: MISSING, server_name: b}
`, "CRT", crt, "MISSING", missing), "files.yaml")
	if err != nil {
		t.Fatalf("Parse (structure only): %v", err)
	}
	err = cfg.CheckFiles()
	var es config.Errors
	if !errors.As(err, &es) || len(es) != 2 {
		t.Fatalf("CheckFiles() = %v, want two errors", err)
	}
	want := []config.Error{
		{File: "files.yaml", Line: 6, Field: "listeners[0].tls.key_file"},
		{File: "files.yaml", Line: 11, Field: "clusters[0].tls.ca_file"},
	}
	for i, w := range want {
		e := es[i]
		if e.File != w.File || e.Line != w.Line || e.Field != w.Field || !strings.Contains(e.Msg, missing) {
			t.Errorf("error %d = %#v, want %s:%d %s naming %s", i, *e, w.File, w.Line, w.Field, missing)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate checks structure only, got %v", err)
	}
}

func TestCodeNames(t *testing.T) {
	t.Parallel()
	// Every code round-trips through its config name.
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		name := config.CodeName(c)
		cfg, err := config.Parse(doc(`
listeners: [{name: main, address: 127.0.0.1:15001}]
clusters:
  - name: c
    endpoints: [127.0.0.1:9001]
    outlier: {failure_codes: [`+name+`]}
`), "codes.yaml")
		if err != nil {
			t.Errorf("code %v (%s): %v", c, name, err)
			continue
		}
		code := cfg.Clusters[0].Outlier.FailureCodes[0]
		if code.C() != c {
			t.Errorf("%s decoded to %v, want %v", name, code.C(), c)
		}
		if got, err := code.MarshalYAML(); err != nil || got != name {
			t.Errorf("MarshalYAML(%v) = %v, %v; want %s", c, got, err, name)
		}
	}
	if got := config.CodeName(codes.Code(99)); got != "CODE_99" {
		t.Errorf("CodeName(99) = %q", got)
	}
	if got, _ := config.Duration(1500 * time.Millisecond).MarshalYAML(); got != "1.5s" {
		t.Errorf("Duration.MarshalYAML = %v, want 1.5s", got)
	}
}

func TestValidMethodAndService(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		s           string
		method, svc bool
	}{
		{"/a.B/C", true, false},
		{"/users.v1.Users/GetUser", true, false},
		{"users.v1.Users", false, true},
		{"/a.B/", false, false},
		{"/a.B", false, false},
		{"a.B/C", false, false},
		{"//C", false, false},
		{"/a.B/C/D", false, false},
		{"/a B/C", false, false},
		{"", false, false},
	} {
		if got := config.ValidMethod(tt.s); got != tt.method {
			t.Errorf("ValidMethod(%q) = %v, want %v", tt.s, got, tt.method)
		}
		if got := config.ValidService(tt.s); got != tt.svc {
			t.Errorf("ValidService(%q) = %v, want %v", tt.s, got, tt.svc)
		}
	}
}

// TestUnknownKeyAndValidationErrorsTogether checks a file whose only decode
// problems are unknown keys also gets its validation problems reported, so
// an operator fixes everything in one pass.
func TestUnknownKeyAndValidationErrorsTogether(t *testing.T) {
	t.Parallel()
	src := "listeners: [{name: a, address: 127.0.0.1:1}]\nroutes: [{name: r, match: {method: bad}, cluster: nope, bogus: 1}]\n"
	_, err := config.Parse([]byte(src), "f.yaml")
	var errs config.Errors
	if !errors.As(err, &errs) {
		t.Fatalf("err = %v, want config.Errors", err)
	}
	want := []string{`routes[0].bogus: unknown field "bogus"`, `routes[0].match.method: invalid full method "bad"`, `routes[0].cluster: unknown cluster "nope"`}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("errors do not mention %q:\n%v", w, err)
		}
	}
}

func TestKubernetesSection(t *testing.T) {
	t.Parallel()
	ok := `
listeners: [{name: main, address: 127.0.0.1:0}]
kubernetes:
  kubeconfig: /k
  grpcroutes: {gateway: {name: meshd-edge, namespace: edge}}
clusters:
  - {name: users, kubernetes: {service: users, namespace: app, port: 9000}}
  - {name: named, kubernetes: {service: users, port: grpc}}
`
	if _, err := config.Parse([]byte(ok), "k.yaml"); err != nil {
		t.Fatalf("valid kubernetes config refused: %v", err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"kubernetes: {grpcroutes: {mesh: true, gateway: {name: a, namespace: b}}}", "not both"},
		{"kubernetes: {grpcroutes: {}}", "gateway or mesh: true is required"},
		{"kubernetes: {grpcroutes: {gateway: {name: a}}}", "kubernetes.grpcroutes.gateway.namespace: required"},
		{"clusters: [{name: c, kubernetes: {service: users, port: 9000}}]", "needs the top-level kubernetes section"},
		{"kubernetes: {}\nclusters: [{name: c, kubernetes: {service: users, port: 70000}}]", "out of range"},
		{"kubernetes: {}\nclusters: [{name: c, kubernetes: {service: Users, port: grpc}}]", "invalid Service name"},
	} {
		_, err := config.Parse([]byte("listeners: [{name: main, address: 127.0.0.1:0}]\n"+tc.yaml), "k.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}
}
