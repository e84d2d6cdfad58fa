package proxy

import (
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
)

// typicalMD is what a client's call usually carries into meshd: grpc-go's
// own keys plus a few application keys and a trace context.
func typicalMD() metadata.MD {
	return metadata.MD{
		":authority":           {"users.svc:443"},
		"content-type":         {"application/grpc"},
		"user-agent":           {"grpc-go/1.85.0"},
		"grpc-accept-encoding": {"gzip"},
		"x-tenant":             {"acme"},
		"x-request-id":         {"7f1c0c3e-5d8b-4b8e-9d3c-2b0e6f1a9c55"},
		"authorization":        {"Bearer " + strings.Repeat("t", 200)},
		"traceparent":          {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"x-meshd-internal":     {"1"},
		"blob-bin":             {"\x00\x01\x02"},
	}
}

func TestCopyMD(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		tracing bool
		want    []string
	}{
		{false, []string{"authorization", "blob-bin", "traceparent", "x-request-id", "x-tenant"}},
		{true, []string{"authorization", "blob-bin", "x-request-id", "x-tenant"}},
	} {
		out := copyMD(typicalMD(), tc.tracing)
		if len(out) != len(tc.want) {
			t.Errorf("tracing=%v: copied %v, want keys %v", tc.tracing, out, tc.want)
		}
		for _, k := range tc.want {
			if _, ok := out[k]; !ok {
				t.Errorf("tracing=%v: %s dropped", tc.tracing, k)
			}
		}
	}
}

// BenchmarkCopyMD is the per-call metadata copy of the grpc engine (the
// frame engine filters header fields as it re-encodes them, in h2proxy).
func BenchmarkCopyMD(b *testing.B) {
	md := typicalMD()
	b.ReportAllocs()
	for b.Loop() {
		_ = copyMD(md, true)
	}
}
