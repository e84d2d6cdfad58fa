package test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// forwardFixture is one meshd in front of one backend.
type forwardFixture struct {
	client testpb.TestServiceClient
	cc     *grpc.ClientConn
	mesh   *mesh
	be     interface {
		Calls() int64
		Cancelled() int64
		LastMetadata() metadata.MD
	}
}

func newForward(t *testing.T) *forwardFixture {
	t.Helper()
	bs := startBackends(t, "be", 1)
	m := startMesh(t, simpleConfig(bs, ""))
	cc := dial(t, m.Addr, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	waitServing(t, cc)
	return &forwardFixture{client: testpb.NewTestServiceClient(cc), cc: cc, mesh: m, be: bs[0]}
}

func ctxMD(t *testing.T, kv ...string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// TestForward covers every call shape and the header/trailer/status rules,
// each through meshd to a real backend.
func TestForward(t *testing.T) {
	t.Parallel()
	f := newForward(t)
	for _, tc := range forwardCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, f)
		})
	}
}

var forwardCases = []struct {
	name string
	run  func(t *testing.T, f *forwardFixture)
}{
	{"unary", func(t *testing.T, f *forwardFixture) {
		var hdr metadata.MD
		body := bytes.Repeat([]byte("x"), 1024)
		resp, err := f.client.UnaryCall(ctxMD(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}}, grpc.Header(&hdr))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(resp.GetPayload().GetBody(), body) {
			t.Errorf("payload changed in transit")
		}
		if got := hdr.Get("x-backend"); len(got) != 1 || got[0] != "be-0" {
			t.Errorf("x-backend header = %v", got)
		}
	}},
	{"server streaming", func(t *testing.T, f *forwardFixture) {
		params := make([]*testpb.ResponseParameters, 50)
		for i := range params {
			params[i] = &testpb.ResponseParameters{Size: int32(i * 100)}
		}
		st, err := f.client.StreamingOutputCall(ctxMD(t), &testpb.StreamingOutputCallRequest{ResponseParameters: params})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			m, err := st.Recv()
			if err == io.EOF {
				if i != 50 {
					t.Fatalf("got %d messages, want 50", i)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.GetPayload().GetBody()) != i*100 {
				t.Fatalf("message %d has %d bytes", i, len(m.GetPayload().GetBody()))
			}
		}
	}},
	{"client streaming", func(t *testing.T, f *forwardFixture) {
		st, err := f.client.StreamingInputCall(ctxMD(t))
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for i := 1; i <= 20; i++ {
			want += i * 10
			if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, i*10)}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := st.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		if int(resp.GetAggregatedPayloadSize()) != want {
			t.Errorf("aggregated %d, want %d", resp.GetAggregatedPayloadSize(), want)
		}
	}},
	{"empty client stream", func(t *testing.T, f *forwardFixture) {
		st, err := f.client.StreamingInputCall(ctxMD(t))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := st.CloseAndRecv()
		if err != nil || resp.GetAggregatedPayloadSize() != 0 {
			t.Fatalf("resp %v err %v", resp, err)
		}
	}},
	{"empty server stream", func(t *testing.T, f *forwardFixture) {
		st, err := f.client.StreamingOutputCall(ctxMD(t), &testpb.StreamingOutputCallRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("Recv = %v, want EOF", err)
		}
	}},
	{"bidi ping-pong", func(t *testing.T, f *forwardFixture) {
		st, err := f.client.FullDuplexCall(ctxMD(t))
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 20; i++ {
			if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(i)}}}); err != nil {
				t.Fatal(err)
			}
			m, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if len(m.GetPayload().GetBody()) != i {
				t.Fatalf("reply %d has %d bytes", i, len(m.GetPayload().GetBody()))
			}
		}
		if err := st.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("after CloseSend: %v", err)
		}
	}},
	{"half-close then server keeps sending", func(t *testing.T, f *forwardFixture) {
		st, err := f.client.FullDuplexCall(ctxMD(t))
		if err != nil {
			t.Fatal(err)
		}
		// The first size is answered at once; the other three only after
		// the client half-closes.
		req := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}, {Size: 2, IntervalUs: 1000}, {Size: 3}, {Size: 4}}}
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
		if err := st.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for {
			m, err := st.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, len(m.GetPayload().GetBody()))
		}
		if len(sizes) != 4 || sizes[3] != 4 {
			t.Fatalf("sizes after half-close = %v", sizes)
		}
	}},
	{"half duplex", func(t *testing.T, f *forwardFixture) {
		st, err := f.client.HalfDuplexCall(ctxMD(t))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte{byte(i)}}}); err != nil {
				t.Fatal(err)
			}
		}
		st.CloseSend()
		for i := 0; i < 5; i++ {
			m, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if m.GetPayload().GetBody()[0] != byte(i) {
				t.Fatalf("out of order")
			}
		}
	}},
	{"headers before first message", func(t *testing.T, f *forwardFixture) {
		ctx, cancel := context.WithCancel(ctxMD(t, "x-header-first", "1", "x-delay", "10s", "x-echo-early", "yes"))
		defer cancel()
		st, err := f.client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan metadata.MD, 1)
		go func() {
			h, _ := st.Header()
			got <- h
		}()
		select {
		case h := <-got:
			if v := h.Get("x-echo-early"); len(v) != 1 || v[0] != "yes" {
				t.Fatalf("early header = %v", h)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("response headers did not arrive before the first message")
		}
	}},
	{"headers on error", func(t *testing.T, f *forwardFixture) {
		var hdr, tr metadata.MD
		_, err := f.client.UnaryCall(ctxMD(t, "x-fail", "NOT_FOUND", "x-fail-message", "nope", "x-echo-a", "1"), &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
		if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "nope" {
			t.Fatalf("err = %v", err)
		}
		if v := hdr.Get("x-backend"); len(v) != 1 {
			t.Errorf("headers lost on error: %v", hdr)
		}
		if v := tr.Get("x-echo-a"); len(v) != 1 || v[0] != "1" {
			t.Errorf("trailers lost on error: %v", tr)
		}
	}},
	{"trailers-only", func(t *testing.T, f *forwardFixture) {
		st, err := f.client.StreamingOutputCall(ctxMD(t, "x-trailers-only", "1", "x-fail", "PERMISSION_DENIED", "x-fail-message", "no"), &testpb.StreamingOutputCallRequest{})
		if err != nil {
			t.Fatal(err)
		}
		h, err := st.Header()
		if err != nil {
			t.Fatal(err)
		}
		if h != nil {
			t.Errorf("trailers-only response arrived with headers %v", h)
		}
		_, err = st.Recv()
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err = %v", err)
		}
	}},
	{"status message and details", func(t *testing.T, f *forwardFixture) {
		msg := "ünïcødé 100% ✓ \n newline"
		_, err := f.client.UnaryCall(ctxMD(t, "x-fail", "FAILED_PRECONDITION", "x-fail-message-bin", msg, "x-fail-details", "1"), &testpb.SimpleRequest{})
		st := status.Convert(err)
		if st.Code() != codes.FailedPrecondition || st.Message() != msg {
			t.Fatalf("status = %v %q", st.Code(), st.Message())
		}
		ds := st.Details()
		if len(ds) != 1 {
			t.Fatalf("details = %v", ds)
		}
		if info, ok := ds[0].(*errdetails.ErrorInfo); !ok || info.GetReason() != "TEST" || info.GetMetadata()["backend"] != "be-0" {
			t.Fatalf("detail = %v", ds[0])
		}
	}},
	{"metadata 8KiB and binary", func(t *testing.T, f *forwardFixture) {
		big := strings.Repeat("v", 8<<10)
		bin := string([]byte{0, 1, 2, 0xff, 0xfe})
		var hdr, tr metadata.MD
		_, err := f.client.UnaryCall(ctxMD(t, "x-echo-big", big, "x-echo-raw-bin", bin, "plain", "p"), &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
		if err != nil {
			t.Fatal(err)
		}
		if v := hdr.Get("x-echo-big"); len(v) != 1 || v[0] != big {
			t.Errorf("8 KiB value not relayed (len %d)", len(strings.Join(v, "")))
		}
		if v := tr.Get("x-echo-raw-bin"); len(v) != 1 || v[0] != bin {
			t.Errorf("-bin value = %q", v)
		}
	}},
	{"hop-by-hop and meshd headers dropped", func(t *testing.T, f *forwardFixture) {
		var tr metadata.MD
		if _, err := f.client.UnaryCall(ctxMD(t, "x-meshd-internal", "1", "keep-me", "yes"), &testpb.SimpleRequest{}, grpc.Trailer(&tr)); err != nil {
			t.Fatal(err)
		}
		seen := strings.Join(tr.Get("x-seen-keys"), ",")
		if strings.Contains(seen, "x-meshd-internal") || !strings.Contains(seen, "keep-me") {
			t.Errorf("backend saw keys %q", seen)
		}
	}},
	{"large messages", func(t *testing.T, f *forwardFixture) {
		for _, n := range []int{5 << 20, 15 << 20} {
			body := bytes.Repeat([]byte{7}, n)
			resp, err := f.client.UnaryCall(ctxMD(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
			if err != nil {
				t.Fatalf("%d bytes: %v", n, err)
			}
			if len(resp.GetPayload().GetBody()) != n {
				t.Fatalf("%d bytes came back as %d", n, len(resp.GetPayload().GetBody()))
			}
		}
	}},
	{"oversized message", func(t *testing.T, f *forwardFixture) {
		_, err := f.client.UnaryCall(ctxMD(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 17<<20)}})
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("17 MiB: %v, want RESOURCE_EXHAUSTED", err)
		}
		if _, err := f.client.EmptyCall(ctxMD(t), &testpb.Empty{}); err != nil {
			t.Fatalf("connection unusable after an oversized message: %v", err)
		}
	}},
	{"gzip", func(t *testing.T, f *forwardFixture) {
		body := bytes.Repeat([]byte("compressible "), 10000)
		resp, err := f.client.UnaryCall(ctxMD(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}}, grpc.UseCompressor(gzip.Name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(resp.GetPayload().GetBody(), body) {
			t.Fatal("gzip payload changed")
		}
	}},
	{"concurrent streams on one connection", func(t *testing.T, f *forwardFixture) {
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for i := 0; i < 100; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := f.client.FullDuplexCall(ctxMD(t))
				if err != nil {
					errs <- err
					return
				}
				for j := 0; j < 5; j++ {
					if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 64}}}); err != nil {
						errs <- err
						return
					}
					if _, err := st.Recv(); err != nil {
						errs <- err
						return
					}
				}
				st.CloseSend()
				if _, err := st.Recv(); err != io.EOF {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}},
}

// TestDeadline checks the inbound deadline reaches the backend, expires as
// DEADLINE_EXCEEDED near the client's deadline, and cancels the backend.
func TestDeadline(t *testing.T) {
	t.Parallel()
	f := newForward(t)
	before := f.be.Cancelled()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-delay", "2s"), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := f.client.UnaryCall(ctx, &testpb.SimpleRequest{})
	took := time.Since(start)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED", err)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("deadline answered after %s, want near 200ms", took)
	}
	testkit.WaitFor(t, 3*time.Second, "the backend to see the cancel", func() bool { return f.be.Cancelled() > before })
	md := f.be.LastMetadata()
	if md == nil {
		t.Fatal("backend saw no call")
	}
}

// TestClientCancel checks a client cancel cancels the backend's call.
func TestClientCancel(t *testing.T) {
	t.Parallel()
	f := newForward(t)
	before := f.be.Cancelled()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "x-delay", "30s", "x-header-first", "1"))
	st, err := f.client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil {
		t.Fatal(err)
	}
	cancel()
	testkit.WaitFor(t, 3*time.Second, "the backend to see the cancel", func() bool { return f.be.Cancelled() > before })
	if _, err := st.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("client Recv after cancel = %v", err)
	}
}

// TestMeshdErrors checks the statuses meshd produces itself.
func TestMeshdErrors(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "err", 1)
	m := startMesh(t, `
listeners: [{name: main, address: 127.0.0.1:0}]
routes:
  - {name: users, match: {service: grpc.testing.TestService}, cluster: good}
  - {name: broken, match: {method: /grpc.testing.UnimplementedService/UnimplementedCall}, cluster: dead}
clusters:
  - {name: good, endpoints: `+addrs(bs)+`}
  - {name: dead, endpoints: [127.0.0.1:1], health: {disabled: false}}
`)
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	err := cc.Invoke(ctxMD(t), "/other.v1.Svc/Call", &testpb.Empty{}, &testpb.Empty{})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "/other.v1.Svc/Call") {
		t.Errorf("no route: %v", err)
	}
	err = cc.Invoke(ctxMD(t), "/grpc.testing.UnimplementedService/UnimplementedCall", &testpb.Empty{}, &testpb.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `"dead"`) {
		t.Errorf("no endpoint: %v", err)
	}
}

// TestRoundRobinPerCall checks one client connection spreads over every
// backend (per-call, not per-connection, balancing).
func TestRoundRobinPerCall(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "rr", 3)
	m := startMesh(t, simpleConfig(bs, ""))
	cc := dial(t, m.Addr)
	c := testpb.NewTestServiceClient(cc)
	// Wait until every backend is admitted.
	testkit.WaitFor(t, 10*time.Second, "all three backends to be admitted", func() bool {
		seen := map[string]bool{}
		for i := 0; i < 6; i++ {
			var h metadata.MD
			if _, err := c.EmptyCall(context.Background(), &testpb.Empty{}, grpc.Header(&h)); err == nil {
				seen[strings.Join(h.Get("x-backend"), "")] = true
			}
		}
		return len(seen) == 3
	})
	start := make([]int64, 3)
	for i, b := range bs {
		start[i] = b.Calls()
	}
	for i := 0; i < 300; i++ {
		if _, err := c.EmptyCall(context.Background(), &testpb.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	for i, b := range bs {
		if n := b.Calls() - start[i]; n != 100 {
			t.Errorf("backend %d got %d of 300 calls, want 100", i, n)
		}
	}
}
