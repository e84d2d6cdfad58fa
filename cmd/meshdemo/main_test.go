package main

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestConfigsValidate: every config the demo writes passes meshd's own
// validation (`meshd validate`), so a config change that breaks the demo
// fails here and not in front of an audience.
func TestConfigsValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, cfg string }{
		{"act 1 meshd", meshdConfig("127.0.0.1:15000", "127.0.0.1:15001", "127.0.0.1:8500", "127.0.0.1:4317")},
		{"act 2 api sidecar", apiConfig("127.0.0.1:15100", "127.0.0.1:15101", "127.0.0.1:8500", "/tmp/api-access.log", "127.0.0.1:9000")},
		{"act 2 web sidecar", webConfig("127.0.0.1:15200", "127.0.0.1:15201", "127.0.0.1:8500")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := config.Parse([]byte(tc.cfg), tc.name); err != nil {
				t.Fatalf("%v\n%s", err, tc.cfg)
			}
		})
	}
}
