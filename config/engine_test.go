package config

import (
	"strings"
	"testing"
)

// TestEngineKey: the grpc engine is gone; a config that asks for it fails
// validation with a message saying so, and "frame" (the only engine) is
// still accepted.
func TestEngineKey(t *testing.T) {
	t.Parallel()
	base := `
listeners: [{name: main, address: 127.0.0.1:15001}]
clusters: [{name: c, endpoints: [127.0.0.1:9001]}]
routes: [{name: r, match: {prefix: /}, cluster: c}]
`
	for _, tc := range []struct{ engine, want string }{
		{"", ""},
		{"engine: frame", ""},
		{"engine: grpc", "the grpc engine was removed: the frame engine is meshd's only data path"},
		{"engine: h3", `unknown engine "h3"`},
	} {
		t.Run(tc.engine, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(base+tc.engine+"\n"), "f.yaml")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), "f.yaml:5"):
				t.Fatalf("err = %v, want file:line f.yaml:5", err)
			}
		})
	}
}
