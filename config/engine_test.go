package config

import (
	"strings"
	"testing"
)

func TestFrameEngineRejectsWhatItCannotDo(t *testing.T) {
	t.Parallel()
	base := `
engine: frame
listeners: [{name: main, address: 127.0.0.1:15001}]
clusters: [{name: c, endpoints: [127.0.0.1:9001]%s}]
routes: [{name: r, match: {prefix: /}, cluster: c%s}]
%s`
	cases := []struct {
		name, cluster, route, top, want string
	}{
		{"plain frame config", "", "", "", ""},
		{"retry works on both engines", "", ", retry: {attempts: 2}", "", ""},
		{"idle timeout works on both engines", "", ", idle_timeout: 1s", "", ""},
		{"upstream tls works on both engines", ", tls: {server_name: x}", "", "", ""},
		{"tracing works on both engines", "", "", "tracing: {otlp_endpoint: 127.0.0.1:4317}", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src := strings.Replace(base, "%s", tc.cluster, 1)
			src = strings.Replace(src, "%s", tc.route, 1)
			src = strings.Replace(src, "%s", tc.top, 1)
			_, err := Parse([]byte(src), "f.yaml")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid frame config rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			// The same config with engine grpc is valid.
			if _, err := Parse([]byte(strings.Replace(src, "engine: frame", "engine: grpc", 1)), "f.yaml"); err != nil {
				t.Fatalf("engine grpc rejected it too: %v", err)
			}
		})
	}
}
