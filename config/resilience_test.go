package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/config"
)

// resBase is a valid config the resilience tests add keys to: %ROUTE% and
// %CLUSTER% are replaced by extra lines of the route and the cluster,
// %TOP% by top-level lines.
const resBase = `listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: r
    match: {prefix: /}
    cluster: c
%ROUTE%
clusters:
  - name: c
    endpoints: [127.0.0.1:9001]
%CLUSTER%
%TOP%
`

func resDoc(route, cluster, top string) []byte {
	return []byte(strings.NewReplacer("%ROUTE%", route, "%CLUSTER%", cluster, "%TOP%", top).Replace(resBase))
}

func TestResilienceKeys(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(resDoc(`    timeout: 2s
    max_grpc_timeout: 30s
    idle_timeout: 5m
    rate_limit: {requests_per_second: 0.5}
    retry:
      attempts: 3
      retry_on: [UNAVAILABLE, RESOURCE_EXHAUSTED]
      per_try_timeout: 500ms
      backoff: {base_interval: 10ms, max_interval: 1s}
      max_buffer_bytes: 4096`, `    max_requests: 100
    max_pending: 10
    retry_budget: {budget_percent: 0, min_retries_per_second: 2.5}`, `max_retry_buffer_bytes: 1048576
consul: {config_key: meshd/routes}`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, c := cfg.Routes[0], cfg.Clusters[0]
	if r.Timeout.D() != 2*time.Second || r.MaxGRPCTimeout.D() != 30*time.Second || r.IdleTimeout.D() != 5*time.Minute {
		t.Errorf("timeouts %v %v %v", r.Timeout.D(), r.MaxGRPCTimeout.D(), r.IdleTimeout.D())
	}
	if r.RateLimit.RequestsPerSecond != 0.5 || r.RateLimit.Burst != 1 {
		t.Errorf("rate limit %+v (burst default: rate rounded up, at least 1)", *r.RateLimit)
	}
	rt := r.Retry
	if rt.Attempts != 3 || len(rt.RetryOn) != 2 || rt.RetryOn[1].C() != codes.ResourceExhausted ||
		rt.PerTryTimeout.D() != 500*time.Millisecond || rt.Backoff.BaseInterval.D() != 10*time.Millisecond ||
		rt.Backoff.MaxInterval.D() != time.Second || rt.MaxBufferBytes != 4096 {
		t.Errorf("retry %+v", *rt)
	}
	if c.MaxRequests != 100 || c.MaxPending != 10 || *c.RetryBudget.BudgetPercent != 0 || *c.RetryBudget.MinRetriesPerSecond != 2.5 {
		t.Errorf("cluster limits %d %d budget %v %v", c.MaxRequests, c.MaxPending, *c.RetryBudget.BudgetPercent, *c.RetryBudget.MinRetriesPerSecond)
	}
	if cfg.MaxRetryBufferBytes != 1<<20 || cfg.Consul.ConfigKey != "meshd/routes" {
		t.Errorf("top level %d %q", cfg.MaxRetryBufferBytes, cfg.Consul.ConfigKey)
	}
}

func TestResilienceDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(resDoc("    retry: {attempts: 2}", "", ""), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, c := cfg.Routes[0], cfg.Clusters[0]
	// No timeout of any kind by default: a long-lived stream is never cut
	// by a default.
	if r.Timeout != 0 || r.MaxGRPCTimeout != 0 || r.IdleTimeout != 0 || r.Retry.PerTryTimeout != 0 {
		t.Errorf("a timeout has a default: %v %v %v %v", r.Timeout, r.MaxGRPCTimeout, r.IdleTimeout, r.Retry.PerTryTimeout)
	}
	if r.RateLimit != nil || c.MaxRequests != 0 || c.MaxPending != 0 {
		t.Errorf("a limit has a default")
	}
	b := r.Retry.Backoff
	if b.BaseInterval.D() != config.DefaultBackoffBase || b.MaxInterval.D() != config.DefaultBackoffMax ||
		r.Retry.MaxBufferBytes != config.DefaultRetryMaxBufferBytes || len(r.Retry.RetryOn) != 1 || r.Retry.RetryOn[0].C() != codes.Unavailable {
		t.Errorf("retry defaults %+v", *r.Retry)
	}
	if *c.RetryBudget.BudgetPercent != 20 || *c.RetryBudget.MinRetriesPerSecond != 10 {
		t.Errorf("budget defaults %v %v", *c.RetryBudget.BudgetPercent, *c.RetryBudget.MinRetriesPerSecond)
	}
	if cfg.MaxRetryBufferBytes != config.DefaultMaxRetryBufferBytes {
		t.Errorf("max_retry_buffer_bytes default %d", cfg.MaxRetryBufferBytes)
	}
	// A base above the default max raises the max with it.
	cfg, err = config.Parse(resDoc("    retry: {attempts: 2, backoff: {base_interval: 1s}}", "", ""), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.Routes[0].Retry.Backoff; b.MaxInterval.D() != time.Second {
		t.Errorf("max_interval %v below base_interval %v", b.MaxInterval.D(), b.BaseInterval.D())
	}
}

func TestResilienceInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, route, cluster, top string
		field                     string
		line                      int
	}{
		{"rate zero", "    rate_limit: {requests_per_second: 0}", "", "", "routes[0].rate_limit.requests_per_second", 0},
		{"burst negative", "    rate_limit: {requests_per_second: 1, burst: -1}", "", "", "routes[0].rate_limit.burst", 0},
		{"backoff max below base", "    retry: {attempts: 2, backoff: {base_interval: 1s, max_interval: 10ms}}", "", "", "routes[0].retry.backoff.max_interval", 0},
		{"buffer negative", "    retry: {attempts: 2, max_buffer_bytes: -1}", "", "", "routes[0].retry.max_buffer_bytes", 0},
		{"idle negative", "    idle_timeout: -1s", "", "", "routes[0].idle_timeout", 6},
		{"max_requests negative", "", "    max_requests: -1", "", "clusters[0].max_requests", 0},
		{"max_pending negative", "", "    max_pending: -5", "", "clusters[0].max_pending", 0},
		{"budget negative", "", "    retry_budget: {budget_percent: -1}", "", "clusters[0].retry_budget.budget_percent", 0},
		{"floor negative", "", "    retry_budget: {min_retries_per_second: -1}", "", "clusters[0].retry_budget.min_retries_per_second", 0},
		{"process buffer negative", "", "", "max_retry_buffer_bytes: -1", "max_retry_buffer_bytes", 0},
		{"config key slash", "", "", "consul: {config_key: /meshd/routes}", "consul.config_key", 0},
		{"unknown retry key", "    retry: {attempts: 2, budget: 3}", "", "", "", 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse(resDoc(tc.route, tc.cluster, tc.top), "test.yaml")
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("err = %v, want config.Errors", err)
			}
			for _, e := range es {
				if (tc.field == "" || e.Field == tc.field) && e.Line > 0 && (tc.line == 0 || e.Line == tc.line) {
					return
				}
			}
			t.Fatalf("no error on %q (line %d) among:\n%v", tc.field, tc.line, err)
		})
	}
}

const fileForMerge = `listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: fallback
    match: {prefix: /}
    cluster: local
clusters:
  - name: local
    endpoints: [127.0.0.1:9001]
`

func TestMergeFragment(t *testing.T) {
	t.Parallel()
	base, err := config.Parse([]byte(fileForMerge), "meshd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.ParseFragment([]byte(`routes:
  - name: users
    match: {service: users.v1.Users}
    cluster: users
    retry: {attempts: 2}
  - name: to-local
    match: {method: /a.B/C}
    cluster: local
clusters:
  - name: users
    endpoints: [127.0.0.1:9002]
`), "consul:meshd/routes")
	if err != nil {
		t.Fatal(err)
	}
	m, err := config.Merge(base, f)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range m.Routes {
		names = append(names, r.Name)
	}
	if strings.Join(names, ",") != "users,to-local,fallback" {
		t.Errorf("route order %v: the fragment's routes go first, the file's catch-all stays last", names)
	}
	if len(m.Clusters) != 2 || m.Clusters[1].Name != "users" || m.Clusters[1].LB != "round_robin" {
		t.Errorf("clusters %+v (defaults must be applied)", m.Clusters)
	}
	if len(m.Routes[0].Retry.RetryOn) != 1 {
		t.Errorf("retry defaults not applied to fragment routes")
	}
	if len(base.Routes) != 1 || len(base.Clusters) != 1 {
		t.Errorf("Merge modified the file's config")
	}
	// An empty value is an empty fragment: the file alone.
	empty, err := config.ParseFragment(nil, "consul:k")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := config.Merge(base, empty); err != nil || len(m.Routes) != 1 {
		t.Fatalf("empty fragment: %v", err)
	}
}

func TestFragmentErrors(t *testing.T) {
	t.Parallel()
	base, err := config.Parse([]byte(fileForMerge), "meshd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, frag string
		// want: source, line and field of one of the errors.
		file  string
		line  int
		field string
	}{
		{"listeners not allowed", "listeners: []\n", "consul:k", 1, "listeners"},
		{"unknown route key", "routes:\n  - name: x\n    match: {prefix: /x}\n    cluster: local\n    tiemout: 1s\n", "consul:k", 5, "routes[0].tiemout"},
		{"unknown cluster", "routes:\n  - name: x\n    match: {prefix: /x}\n    cluster: nope\n", "consul:k", 4, "routes[0].cluster"},
		{"duplicate cluster", "clusters:\n  - name: local\n    endpoints: [127.0.0.1:1]\n", "consul:k", 2, "clusters[0].name"},
		{"duplicate route", "routes:\n  - name: fallback\n    match: {prefix: /x}\n    cluster: local\n", "consul:k", 2, "routes[0].name"},
		{"syntax", "routes: [\n", "consul:k", 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, err := config.ParseFragment([]byte(tc.frag), "consul:k")
			if err == nil {
				_, err = config.Merge(base, f)
			}
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("err = %v, want config.Errors", err)
			}
			for _, e := range es {
				if e.File == tc.file && (tc.line == 0 || e.Line == tc.line) && (tc.field == "" || e.Field == tc.field) {
					return
				}
			}
			t.Fatalf("no error at %s:%d %s among:\n%v", tc.file, tc.line, tc.field, err)
		})
	}
}

// FuzzParseFragment: any Consul value either parses and merges into a
// valid config, or fails with errors that name the key as their source;
// it never panics.
func FuzzParseFragment(f *testing.F) {
	for _, seed := range []string{
		"",
		"routes: []\n",
		"routes:\n  - name: x\n    match: {prefix: /x}\n    cluster: local\n",
		"clusters:\n  - name: b\n    endpoints: [127.0.0.1:1]\n    retry_budget: {budget_percent: 5}\n",
		"routes:\n  - name: y\n    match: {service: a.B}\n    cluster: b\n    retry: {attempts: 2}\nclusters:\n  - name: b\n    endpoints: [127.0.0.1:1]\n",
		"listeners: []\n",
		"routes: [\n",
	} {
		f.Add([]byte(seed))
	}
	base, err := config.Parse([]byte(fileForMerge), "meshd.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		frag, err := config.ParseFragment(data, "consul:k")
		if err == nil {
			var m *config.Config
			if m, err = config.Merge(base, frag); err == nil {
				if verr := m.Validate(); verr != nil {
					t.Fatalf("Merge returned a config that does not validate: %v", verr)
				}
				return
			}
		}
		var es config.Errors
		if !errors.As(err, &es) || len(es) == 0 {
			t.Fatalf("error %T %v is not a config.Errors", err, err)
		}
		for _, e := range es {
			if e.File != "consul:k" && e.File != "meshd.yaml" {
				t.Fatalf("error %q names neither source", e.Error())
			}
		}
	})
}
