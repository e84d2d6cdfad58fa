package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/config"
)

// tpDoc is a config whose only cluster has the given extra lines and
// endpoints.
func tpDoc(endpoints, cluster string) []byte {
	return []byte(`listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - name: r
    match: {prefix: /}
    cluster: c
clusters:
  - name: c
    endpoints: ` + endpoints + `
` + cluster + "\n")
}

func TestTrafficPolicyKeys(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(tpDoc("[{address: 10.0.0.5:9000, zone: us-east-1a}, 10.0.0.6:9000]", `    slow_start: 30s
    locality:
      zone_key: az
      local_zone: us-east-1a
      min_healthy_percent: 0
    outlier:
      failure_percentage: {threshold: 50, minimum_requests: 20, interval: 10s}`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cl := cfg.Clusters[0]
	if cl.SlowStart.D() != 30*time.Second {
		t.Errorf("slow_start = %v", cl.SlowStart.D())
	}
	if cl.Endpoints[0].Zone != "us-east-1a" || cl.Endpoints[1].Zone != "" {
		t.Errorf("endpoint zones %q %q", cl.Endpoints[0].Zone, cl.Endpoints[1].Zone)
	}
	if l := cl.Locality; l.ZoneKey != "az" || l.LocalZone != "us-east-1a" || *l.MinHealthyPercent != 0 {
		t.Errorf("locality %+v (min %d)", l, *l.MinHealthyPercent)
	}
	if fp := cl.Outlier.FailurePercentage; fp.Threshold != 50 || fp.MinimumRequests != 20 || fp.Interval.D() != 10*time.Second {
		t.Errorf("failure_percentage %+v", fp)
	}
}

// TestTrafficPolicyDefaults: Envoy's failure-percentage defaults, zone key
// "zone", 70%, and the local zone from MESHD_ZONE (not parallel: it sets
// the environment).
func TestTrafficPolicyDefaults(t *testing.T) {
	t.Setenv(config.ZoneEnv, "eu-west-1b")
	cfg, err := config.Parse(tpDoc("[127.0.0.1:9001]", `    locality: {}
    outlier: {failure_percentage: {}}`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cl := cfg.Clusters[0]
	if l := cl.Locality; l.ZoneKey != "zone" || l.LocalZone != "eu-west-1b" || *l.MinHealthyPercent != 70 {
		t.Errorf("locality defaults %+v (min %d)", l, *l.MinHealthyPercent)
	}
	if fp := cl.Outlier.FailurePercentage; fp.Threshold != 85 || fp.MinimumRequests != 50 || fp.Interval.D() != 10*time.Second {
		t.Errorf("failure_percentage defaults %+v", fp)
	}
	if cl.SlowStart != 0 {
		t.Errorf("slow_start default %v, want off", cl.SlowStart)
	}
	// The file's zone wins over the environment.
	cfg, err = config.Parse(tpDoc("[127.0.0.1:9001]", `    locality: {local_zone: a}`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if z := cfg.Clusters[0].Locality.LocalZone; z != "a" {
		t.Errorf("local_zone %q, want the file's a", z)
	}
	// Without locality nothing is added.
	cfg, err = config.Parse(tpDoc("[127.0.0.1:9001]", ""), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Clusters[0].Locality != nil || cfg.Clusters[0].Outlier.FailurePercentage != nil {
		t.Errorf("locality or failure_percentage defaulted in without being asked for")
	}
}

func TestTrafficPolicyInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, endpoints, cluster string
		field                    string
	}{
		{"slow start negative", "", "    slow_start: -1s", "clusters[0].slow_start"},
		{"slow start not a duration", "", "    slow_start: 30", "clusters[0].slow_start"},
		{"min healthy over 100", "", "    locality: {min_healthy_percent: 101}", "clusters[0].locality.min_healthy_percent"},
		{"min healthy negative", "", "    locality: {min_healthy_percent: -1}", "clusters[0].locality.min_healthy_percent"},
		{"unknown locality key", "", "    locality: {zone: a}", ""},
		{"threshold over 100", "", "    outlier: {failure_percentage: {threshold: 101}}", "clusters[0].outlier.failure_percentage.threshold"},
		{"threshold negative", "", "    outlier: {failure_percentage: {threshold: -5}}", "clusters[0].outlier.failure_percentage.threshold"},
		{"minimum requests negative", "", "    outlier: {failure_percentage: {minimum_requests: -1}}", "clusters[0].outlier.failure_percentage.minimum_requests"},
		{"interval too short", "", "    outlier: {failure_percentage: {interval: 1ms}}", "clusters[0].outlier.failure_percentage.interval"},
		{"unknown failure_percentage key", "", "    outlier: {failure_percentage: {enforcing: 100}}", ""},
		{"unknown endpoint key", "[{address: 127.0.0.1:1, region: x}]", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			eps := tc.endpoints
			if eps == "" {
				eps = "[127.0.0.1:9001]"
			}
			_, err := config.Parse(tpDoc(eps, tc.cluster), "test.yaml")
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("err = %v, want config.Errors", err)
			}
			for _, e := range es {
				if (tc.field == "" || e.Field == tc.field) && e.Line > 0 {
					if tc.field == "" && !strings.Contains(e.Msg, "unknown field") {
						continue
					}
					return
				}
			}
			t.Fatalf("no error on %q among:\n%v", tc.field, err)
		})
	}
}
