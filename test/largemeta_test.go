package test

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/test/backend"
)

// TestLargeMetadata: response headers and trailers up to the listener's
// max_header_list_size (64 KiB by default), ASCII and -bin, and request
// metadata echoed back, cross meshd intact in both directions, split over
// CONTINUATION frames; a response over the limit ends its call with
// INTERNAL saying so, and the connections carry on. Large trailers are a
// known failure of meshes (linkerd/linkerd2#15199: 12 KB or more became
// INTERNAL).
func TestLargeMetadata(t *testing.T) {
	t.Parallel()
	f := newForward(t)
	const limit = config.DefaultMaxHeaderListSize
	kib := func(n int) string { return strconv.Itoa(n) }
	// binLen is the raw size of a -bin value whose base64 on the wire is
	// about n bytes.
	binLen := func(n int) int { return n / 4 * 3 }

	type want struct {
		header, trailer       string // x-pad: PadValue of this length ("" none)
		headerBin, trailerBin int    // x-pad-bin: PadBytes of this length (0 none)
	}
	tests := []struct {
		name string
		md   []string
		want want
		code codes.Code // with x-fail
	}{
		{name: "12 KiB response header", md: []string{"x-pad-header", kib(12 << 10)}, want: want{header: kib(12 << 10)}},
		{name: "12 KiB response trailer", md: []string{"x-pad-trailer", kib(12 << 10)}, want: want{trailer: kib(12 << 10)}},
		{name: "12 KiB -bin header and trailer", md: []string{"x-pad-header-bin", kib(binLen(12 << 10)), "x-pad-trailer-bin", kib(binLen(12 << 10))},
			want: want{headerBin: binLen(12 << 10), trailerBin: binLen(12 << 10)}},
		{name: "32 KiB response header and trailer", md: []string{"x-pad-header", kib(32 << 10), "x-pad-trailer", kib(32 << 10)},
			want: want{header: kib(32 << 10), trailer: kib(32 << 10)}},
		{name: "32 KiB -bin header and trailer", md: []string{"x-pad-header-bin", kib(binLen(32 << 10)), "x-pad-trailer-bin", kib(binLen(32 << 10))},
			want: want{headerBin: binLen(32 << 10), trailerBin: binLen(32 << 10)}},
		{name: "32 KiB trailers with an error status", md: []string{"x-fail", "FAILED_PRECONDITION", "x-pad-trailer", kib(32 << 10)},
			want: want{trailer: kib(32 << 10)}, code: codes.FailedPrecondition},
		{name: "trailer 1 KiB under the limit", md: []string{"x-pad-trailer", kib(limit - 1<<10)}, want: want{trailer: kib(limit - 1<<10)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var hdr, tr metadata.MD
			_, err := f.client.UnaryCall(ctxMD(t, tt.md...), &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
			if status.Code(err) != tt.code {
				t.Fatalf("call: %v; want code %v", err, tt.code)
			}
			checkPad(t, "header", hdr, tt.want.header, tt.want.headerBin)
			checkPad(t, "trailer", tr, tt.want.trailer, tt.want.trailerBin)
		})
	}

	// Request metadata: to the backend intact, and back in the response
	// headers and trailers (x-echo-*).
	for _, n := range []int{12 << 10, 32 << 10} {
		t.Run("request metadata "+kib(n>>10)+" KiB both ways", func(t *testing.T) {
			t.Parallel()
			val := backend.PadValue(n)
			var hdr, tr metadata.MD
			if _, err := f.client.UnaryCall(ctxMD(t, "x-echo-large", val), &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr)); err != nil {
				t.Fatal(err)
			}
			for where, md := range map[string]metadata.MD{"header": hdr, "trailer": tr} {
				if got := md.Get("x-echo-large"); len(got) != 1 || got[0] != val {
					t.Errorf("%s x-echo-large: %d values, first %d bytes; want %d bytes intact", where, len(got), firstLen(got), n)
				}
			}
		})
		t.Run("request -bin metadata "+kib(n>>10)+" KiB both ways", func(t *testing.T) {
			t.Parallel()
			val := string(backend.PadBytes(binLen(n)))
			var hdr, tr metadata.MD
			if _, err := f.client.UnaryCall(ctxMD(t, "x-echo-large-bin", val), &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr)); err != nil {
				t.Fatal(err)
			}
			for where, md := range map[string]metadata.MD{"header": hdr, "trailer": tr} {
				if got := md.Get("x-echo-large-bin"); len(got) != 1 || got[0] != val {
					t.Errorf("%s x-echo-large-bin not intact (%d values)", where, len(got))
				}
			}
		})
	}

	// Just over the limit: the backend (told four times the limit) sends
	// it, meshd refuses it with a status that names the limit.
	for _, key := range []string{"x-pad-header", "x-pad-trailer"} {
		t.Run(key+" just over the limit", func(t *testing.T) {
			t.Parallel()
			_, err := f.client.UnaryCall(ctxMD(t, key, kib(limit-100)), &testpb.SimpleRequest{})
			st := status.Convert(err)
			t.Logf("over the limit: %v", err)
			if st.Code() != codes.Internal || !strings.Contains(st.Message(), "meshd: backend response header list of") ||
				!strings.Contains(st.Message(), "over the limit of "+kib(limit)) {
				t.Fatalf("call: %v; want INTERNAL naming the %d-byte limit", err, limit)
			}
		})
	}
	// Request metadata over the limit never leaves the client: grpc-go
	// honours the SETTINGS_MAX_HEADER_LIST_SIZE meshd advertises.
	t.Run("request metadata just over the limit", func(t *testing.T) {
		t.Parallel()
		_, err := f.client.UnaryCall(ctxMD(t, "x-large", backend.PadValue(limit)), &testpb.SimpleRequest{})
		if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "header list size") {
			t.Fatalf("call: %v; want the client's header list size error", err)
		}
	})

	// Both connections carry on.
	var tr metadata.MD
	if _, err := f.client.UnaryCall(ctxMD(t, "x-pad-trailer", kib(12<<10)), &testpb.SimpleRequest{}, grpc.Trailer(&tr)); err != nil {
		t.Fatalf("call after the over-limit ones: %v", err)
	}
	checkPad(t, "trailer", tr, kib(12<<10), 0)
}

// checkPad checks the x-pad (PadValue) and x-pad-bin (PadBytes) fields of
// md, want being their lengths ("" and 0: absent).
func checkPad(t *testing.T, where string, md metadata.MD, want string, wantBin int) {
	t.Helper()
	got := md.Get("x-pad")
	if want == "" {
		if len(got) != 0 {
			t.Errorf("%s x-pad present", where)
		}
	} else if n, _ := strconv.Atoi(want); len(got) != 1 || got[0] != backend.PadValue(n) {
		t.Errorf("%s x-pad: %d values, first %d bytes; want %d bytes intact", where, len(got), firstLen(got), n)
	}
	gotBin := md.Get("x-pad-bin")
	if wantBin == 0 {
		if len(gotBin) != 0 {
			t.Errorf("%s x-pad-bin present", where)
		}
	} else if len(gotBin) != 1 || !bytes.Equal([]byte(gotBin[0]), backend.PadBytes(wantBin)) {
		t.Errorf("%s x-pad-bin: %d values, first %d bytes; want %d bytes intact", where, len(gotBin), firstLen(gotBin), wantBin)
	}
}

func firstLen(vs []string) int {
	if len(vs) == 0 {
		return 0
	}
	return len(vs[0])
}
