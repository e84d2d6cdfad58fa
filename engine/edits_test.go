package engine

import (
	"slices"
	"testing"

	"golang.org/x/net/http2/hpack"
)

func hf(kv ...string) []hpack.HeaderField {
	out := make([]hpack.HeaderField, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

func TestUpstreamHeadersEdits(t *testing.T) {
	t.Parallel()
	client := hf("content-type", "application/grpc", "te", "trailers", "x-keep", "1",
		"x-internal-debug", "on", "x-edge", "spoofed", "x-multi", "a", "authorization", "Bearer t", "grpc-timeout", "1S", "connection", "close")
	edits := &HeaderEdits{
		RequestRemove: []string{"x-internal-debug", "authorization"},
		RequestSet:    hf("x-edge", "1"),
		RequestAdd:    hf("x-multi", "b"),
	}
	tests := []struct {
		name      string
		authority string
		edits     *HeaderEdits
		extra     []hpack.HeaderField
		want      []hpack.HeaderField
	}{
		{
			name: "no edits", authority: "api.example.com",
			want: hf(":method", "POST", ":scheme", "http", ":path", "/p.S/M", ":authority", "api.example.com",
				"content-type", "application/grpc", "x-keep", "1", "x-internal-debug", "on", "x-edge", "spoofed", "x-multi", "a", "authorization", "Bearer t", "te", "trailers"),
		},
		{
			name: "edits", authority: "users.internal", edits: edits,
			want: hf(":method", "POST", ":scheme", "http", ":path", "/p.S/M", ":authority", "users.internal",
				"content-type", "application/grpc", "x-keep", "1", "x-multi", "a", "te", "trailers", "x-edge", "1", "x-multi", "b"),
		},
		{
			name: "director fields replace after edits", authority: "a", edits: edits, extra: hf("x-user-id", "alice", "x-keep", "2"),
			want: hf(":method", "POST", ":scheme", "http", ":path", "/p.S/M", ":authority", "a",
				"content-type", "application/grpc", "x-multi", "a", "te", "trailers", "x-edge", "1", "x-multi", "b", "x-user-id", "alice", "x-keep", "2"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := upstreamHeaders("POST", "/p.S/M", tt.authority, client, tt.extra, tt.edits)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestEditResponse(t *testing.T) {
	t.Parallel()
	backend := hf(":status", "200", "content-type", "application/grpc", "x-backend-host", "b1", "x-served-by", "app", "x-multi", "a", "connection", "close")
	tests := []struct {
		name  string
		edits *HeaderEdits
		in    []hpack.HeaderField
		want  []hpack.HeaderField
	}{
		{name: "nil", in: backend, want: hf(":status", "200", "content-type", "application/grpc", "x-backend-host", "b1", "x-served-by", "app", "x-multi", "a")},
		{name: "request edits only", edits: &HeaderEdits{RequestRemove: []string{"x-multi"}}, in: backend,
			want: hf(":status", "200", "content-type", "application/grpc", "x-backend-host", "b1", "x-served-by", "app", "x-multi", "a")},
		{
			name:  "set add remove",
			edits: &HeaderEdits{ResponseRemove: []string{"x-backend-host"}, ResponseSet: hf("x-served-by", "meshd"), ResponseAdd: hf("x-multi", "b")},
			in:    backend,
			want:  hf(":status", "200", "content-type", "application/grpc", "x-multi", "a", "x-served-by", "meshd", "x-multi", "b"),
		},
		{
			name:  "trailers-only keeps its status",
			edits: &HeaderEdits{ResponseSet: hf("x-served-by", "meshd")},
			in:    hf(":status", "200", "content-type", "application/grpc", "grpc-status", "5", "grpc-message", "nope"),
			want:  hf(":status", "200", "content-type", "application/grpc", "grpc-status", "5", "grpc-message", "nope", "x-served-by", "meshd"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := editResponse(tt.in, tt.edits); !slices.Equal(got, tt.want) {
				t.Fatalf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

// A call on a route without rules pays nothing for them: the response
// copy is filterResponse's.
func TestEditResponseNilAllocs(t *testing.T) {
	in := hf(":status", "200", "content-type", "application/grpc")
	a := testing.AllocsPerRun(100, func() { _ = editResponse(in, nil) })
	b := testing.AllocsPerRun(100, func() { _ = filterResponse(in) })
	if a != b {
		t.Fatalf("editResponse(nil) allocs %v, filterResponse %v", a, b)
	}
}
