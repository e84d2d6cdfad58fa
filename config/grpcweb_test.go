package config_test

import (
	"strings"
	"testing"

	"github.com/meshd/meshd/config"
)

func TestGRPCWebAndReflectionKeys(t *testing.T) {
	t.Parallel()
	ok := `
listeners:
  - name: public
    address: 127.0.0.1:15001
    grpc_web: {allow_origins: ["*", "https://app.example.com", "http://localhost:8080"]}
    reflection: true
  - name: same-origin
    address: 127.0.0.1:15002
    grpc_web: {}
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`
	cfg, err := config.Parse([]byte(ok), "edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Listeners[0]; l.GRPCWeb == nil || len(l.GRPCWeb.AllowOrigins) != 3 || !l.Reflection {
		t.Fatalf("listener: %+v", l)
	}
	if l := cfg.Listeners[1]; l.GRPCWeb == nil || l.Reflection {
		t.Fatalf("listener: %+v", l)
	}

	for _, tc := range []struct{ name, listener, field, msg string }{
		{"origin with a path", `grpc_web: {allow_origins: ["https://app.example.com/x"]}`, "listeners[0].grpc_web.allow_origins[0]", "want"},
		{"origin without scheme", `grpc_web: {allow_origins: ["app.example.com"]}`, "listeners[0].grpc_web.allow_origins[0]", "want"},
		{"unknown key", `grpc_web: {allow_origin: ["*"]}`, "listeners[0].grpc_web.allow_origin", "unknown field"},
		{"with original_dst", "grpc_web: {}\n    original_dst: {direction: inbound}", "listeners[0].grpc_web", "original_dst"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src := "listeners:\n  - name: public\n    address: 127.0.0.1:15001\n    " + tc.listener + `
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters: [{name: backends, endpoints: [127.0.0.1:9001]}]
`
			_, err := config.Parse([]byte(src), "edge.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("want an error at %s containing %q, got %v", tc.field, tc.msg, err)
			}
		})
	}
}
