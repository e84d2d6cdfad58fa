package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/config"
)

// recoveryBase is a valid config whose cluster takes the keys under test
// from KEYS (line 6 once doc trims the leading newline).
const recoveryBase = `
listeners: [{name: main, address: 127.0.0.1:15001}]
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [127.0.0.1:9001, 127.0.0.1:9002]
    KEYS
`

func TestRecoveryKeys(t *testing.T) {
	t.Parallel()
	t.Run("defaults", func(t *testing.T) {
		t.Parallel()
		cfg, err := config.Parse(doc(recoveryBase, "KEYS", "lb: round_robin"), "test.yaml")
		if err != nil {
			t.Fatal(err)
		}
		cl := cfg.Clusters[0]
		if cl.HealthyPanicThreshold != 0 || cl.Health.ReconnectMax.D() != time.Second {
			t.Fatalf("defaults: healthy_panic_threshold %d, health.reconnect_max %v; want 0 and 1s",
				cl.HealthyPanicThreshold, cl.Health.ReconnectMax.D())
		}
	})
	t.Run("set", func(t *testing.T) {
		t.Parallel()
		cfg, err := config.Parse(doc(recoveryBase, "KEYS", "healthy_panic_threshold: 50\n    health: {reconnect_max: 250ms}"), "test.yaml")
		if err != nil {
			t.Fatal(err)
		}
		cl := cfg.Clusters[0]
		if cl.HealthyPanicThreshold != 50 || cl.Health.ReconnectMax.D() != 250*time.Millisecond {
			t.Fatalf("healthy_panic_threshold %d, health.reconnect_max %v; want 50 and 250ms",
				cl.HealthyPanicThreshold, cl.Health.ReconnectMax.D())
		}
	})
	for _, tt := range []struct {
		name, keys, field, msg string
	}{
		{"threshold above 100", "healthy_panic_threshold: 101", "clusters[0].healthy_panic_threshold", "between 0 and 100, got 101"},
		{"negative threshold", "healthy_panic_threshold: -1", "clusters[0].healthy_panic_threshold", "between 0 and 100, got -1"},
		{"reconnect_max too small", "health: {reconnect_max: 10ms}", "clusters[0].health.reconnect_max", "at least 100ms, got 10ms"},
		{"negative reconnect_max", "health: {reconnect_max: -1s}", "clusters[0].health.reconnect_max", "negative duration"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			es := errs(t, doc(recoveryBase, "KEYS", tt.keys))
			if len(es) != 1 || es[0].Field != tt.field || es[0].Line != 6 || !strings.Contains(es[0].Msg, tt.msg) {
				t.Fatalf("errors %v, want one at line 6, field %s, saying %q", es, tt.field, tt.msg)
			}
		})
	}
}
