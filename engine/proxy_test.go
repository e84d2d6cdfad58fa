package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/testkit"
)

func params(sizes ...int) []*testpb.ResponseParameters {
	ps := make([]*testpb.ResponseParameters, len(sizes))
	for i, s := range sizes {
		ps[i] = &testpb.ResponseParameters{Size: int32(s)}
	}
	return ps
}

func checkBody(t *testing.T, got *testpb.Payload, n int) {
	t.Helper()
	if !bytes.Equal(got.GetBody(), payload(n).GetBody()) {
		t.Fatalf("payload of %d bytes differs from the %d bytes sent", len(got.GetBody()), n)
	}
}

// TestCallShapes runs every call shape through the proxy.
func TestCallShapes(t *testing.T) {
	t.Parallel()
	p, c := setup(t, &testBackend{}, Config{})
	tests := []struct {
		name string
		run  func(t *testing.T, ctx context.Context)
	}{
		{"unary empty", func(t *testing.T, ctx context.Context) {
			resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			if err != nil {
				t.Fatal(err)
			}
			checkBody(t, resp.GetPayload(), 0)
		}},
		{"unary 1KiB", func(t *testing.T, ctx context.Context) {
			resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: payload(1024)})
			if err != nil {
				t.Fatal(err)
			}
			checkBody(t, resp.GetPayload(), 1024)
		}},
		{"unary 100KiB response", func(t *testing.T, ctx context.Context) {
			resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 100 << 10})
			if err != nil {
				t.Fatal(err)
			}
			checkBody(t, resp.GetPayload(), 100<<10)
		}},
		{"server streaming", func(t *testing.T, ctx context.Context) {
			sizes := []int{0, 1, 100, 16384, 70000, 5}
			s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params(sizes...)})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range sizes {
				resp, err := s.Recv()
				if err != nil {
					t.Fatal(err)
				}
				checkBody(t, resp.GetPayload(), n)
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("Recv after last = %v, want EOF", err)
			}
		}},
		{"server streaming empty", func(t *testing.T, ctx context.Context) {
			s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("Recv = %v, want EOF", err)
			}
		}},
		{"client streaming", func(t *testing.T, ctx context.Context) {
			s, err := c.StreamingInputCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			total := 0
			for i := 0; i < 20; i++ {
				if err := s.Send(&testpb.StreamingInputCallRequest{Payload: payload(i * 1000)}); err != nil {
					t.Fatal(err)
				}
				total += i * 1000
			}
			resp, err := s.CloseAndRecv()
			if err != nil {
				t.Fatal(err)
			}
			if int(resp.GetAggregatedPayloadSize()) != total {
				t.Fatalf("aggregated %d, want %d", resp.GetAggregatedPayloadSize(), total)
			}
		}},
		{"client streaming empty", func(t *testing.T, ctx context.Context) {
			s, err := c.StreamingInputCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := s.CloseAndRecv()
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetAggregatedPayloadSize() != 0 {
				t.Fatalf("aggregated %d, want 0", resp.GetAggregatedPayloadSize())
			}
		}},
		{"bidi ping-pong", func(t *testing.T, ctx context.Context) {
			s, err := c.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i++ {
				if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: params(i * 100)}); err != nil {
					t.Fatal(err)
				}
				resp, err := s.Recv()
				if err != nil {
					t.Fatal(err)
				}
				checkBody(t, resp.GetPayload(), i*100)
			}
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("Recv = %v, want EOF", err)
			}
		}},
		{"bidi empty", func(t *testing.T, ctx context.Context) {
			s, err := c.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("Recv = %v, want EOF", err)
			}
		}},
		{"half duplex: server sends after client half-close", func(t *testing.T, ctx context.Context) {
			s, err := c.HalfDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 5; i++ {
				if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: params(1000, 20000)}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 10; i++ {
				resp, err := s.Recv()
				if err != nil {
					t.Fatal(err)
				}
				checkBody(t, resp.GetPayload(), []int{1000, 20000}[i%2])
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("Recv = %v, want EOF", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, ctxT(t, 10*time.Second))
		})
	}
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, r := range p.results {
			if r.Code != codes.OK || r.Err != nil || !r.Committed || r.NotReached {
				t.Errorf("unexpected result %+v", r)
			}
		}
	})
}

// TestHalfCloseWhileServerSends checks that END_STREAM from the client does
// not end the response direction.
func TestHalfCloseWhileServerSends(t *testing.T) {
	t.Parallel()
	halfClosed := make(chan struct{})
	b := &testBackend{fullDuplex: func(s testgrpc.TestService_FullDuplexCallServer) error {
		if _, err := s.Recv(); err != nil {
			return err
		}
		if _, err := s.Recv(); err != io.EOF {
			return fmt.Errorf("want EOF, got %v", err)
		}
		close(halfClosed)
		for i := 0; i < 50; i++ {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(i * 300)}); err != nil {
				return err
			}
		}
		return nil
	}}
	_, c := setup(t, b, Config{})
	s, err := c.FullDuplexCall(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	<-halfClosed
	for i := 0; i < 50; i++ {
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		checkBody(t, resp.GetPayload(), i*300)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("Recv = %v, want EOF", err)
	}
}

// TestResponseHeadersBeforeMessages: headers reach the client as soon as
// the backend sends them, with or without a message following.
func TestResponseHeadersBeforeMessages(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := &testBackend{streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		if err := s.SendHeader(metadata.Pairs("x-early", "yes")); err != nil {
			return err
		}
		select {
		case <-release:
		case <-s.Context().Done():
			return s.Context().Err()
		}
		for _, p := range req.GetResponseParameters() {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(int(p.GetSize()))}); err != nil {
				return err
			}
		}
		return nil
	}}
	_, c := setup(t, b, Config{})

	t.Run("headers then message", func(t *testing.T) {
		s, err := c.StreamingOutputCall(ctxT(t, 10*time.Second), &testpb.StreamingOutputCallRequest{ResponseParameters: params(10)})
		if err != nil {
			t.Fatal(err)
		}
		hdr, err := s.Header() // returns only if headers were forwarded before any message
		if err != nil {
			t.Fatal(err)
		}
		if got := hdr.Get("x-early"); len(got) != 1 || got[0] != "yes" {
			t.Fatalf("header x-early = %q", got)
		}
		close(release)
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		checkBody(t, resp.GetPayload(), 10)
		if _, err := s.Recv(); err != io.EOF {
			t.Fatalf("Recv = %v, want EOF", err)
		}
	})
	t.Run("headers only", func(t *testing.T) {
		s, err := c.StreamingOutputCall(ctxT(t, 10*time.Second), &testpb.StreamingOutputCallRequest{})
		if err != nil {
			t.Fatal(err)
		}
		hdr, err := s.Header()
		if err != nil || hdr.Get("x-early")[0] != "yes" {
			t.Fatalf("Header() = %v, %v", hdr, err)
		}
		if _, err := s.Recv(); err != io.EOF {
			t.Fatalf("Recv = %v, want EOF", err)
		}
	})
}

// TestErrorsAndTrailers covers headers followed by an error status,
// trailers-only responses and exact status round-trips.
func TestErrorsAndTrailers(t *testing.T) {
	t.Parallel()
	detailed, err := status.New(codes.FailedPrecondition, "héllo wörld ✓ 100% done\n\t%41 \x01").WithDetails(
		&errdetails.ErrorInfo{Reason: "QUOTA", Domain: "meshd.test", Metadata: map[string]string{"k": "v ✓"}},
		&errdetails.RetryInfo{})
	if err != nil {
		t.Fatal(err)
	}
	b := &testBackend{
		streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
			if err := s.SendHeader(metadata.Pairs("x-h", "1")); err != nil {
				return err
			}
			s.SetTrailer(metadata.Pairs("x-t", "2", "x-t-bin", string([]byte{0, 255, 1})))
			return status.Error(codes.Aborted, "after headers")
		},
		unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			_ = grpc.SetTrailer(ctx, metadata.Pairs("x-only", "t"))
			if req.GetResponseSize() == 1 {
				return nil, detailed.Err()
			}
			return nil, status.Error(codes.NotFound, "nothing here")
		},
	}
	p, c := setup(t, b, Config{})

	t.Run("headers then error", func(t *testing.T) {
		s, err := c.StreamingOutputCall(ctxT(t, 10*time.Second), &testpb.StreamingOutputCallRequest{})
		if err != nil {
			t.Fatal(err)
		}
		hdr, err := s.Header()
		if err != nil || len(hdr.Get("x-h")) != 1 {
			t.Fatalf("Header() = %v, %v", hdr, err)
		}
		_, err = s.Recv()
		if st := status.Convert(err); st.Code() != codes.Aborted || st.Message() != "after headers" {
			t.Fatalf("Recv error = %v", err)
		}
		tr := s.Trailer()
		if tr.Get("x-t")[0] != "2" || tr.Get("x-t-bin")[0] != string([]byte{0, 255, 1}) {
			t.Fatalf("trailer = %v", tr)
		}
		if r := p.nextResult(t); r.Code != codes.Aborted || !r.Committed || r.Err != nil {
			t.Fatalf("result %+v", r)
		}
	})
	t.Run("trailers only", func(t *testing.T) {
		var tr metadata.MD
		_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{}, grpc.Trailer(&tr))
		if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "nothing here" {
			t.Fatalf("error = %v", err)
		}
		if got := tr.Get("x-only"); len(got) != 1 || got[0] != "t" {
			t.Fatalf("trailer = %v", tr)
		}
		if r := p.nextResult(t); r.Code != codes.NotFound || r.Err != nil {
			t.Fatalf("result %+v", r)
		}
	})
	t.Run("status round trip", func(t *testing.T) {
		_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{ResponseSize: 1})
		got := status.Convert(err)
		if !proto.Equal(got.Proto(), detailed.Proto()) {
			t.Fatalf("status = %v, want %v", got.Proto(), detailed.Proto())
		}
		if r := p.nextResult(t); r.Code != codes.FailedPrecondition {
			t.Fatalf("result %+v", r)
		}
	})
}

// TestRequestMetadata: ASCII, binary, repeated and large metadata reach the
// backend unchanged.
func TestRequestMetadata(t *testing.T) {
	t.Parallel()
	_, c := setup(t, &testBackend{}, Config{})
	big := strings.Repeat("abcdefgh", 1024) // 8 KiB
	bin := string([]byte{0, 1, 2, 0x7f, 0x80, 0xfe, 0xff})
	md := metadata.Pairs(
		"x-echo-ascii", "hello world",
		"x-echo-bin-bin", bin,
		"x-echo-multi", "one",
		"x-echo-multi", "two",
		"x-echo-big", big,
	)
	ctx := metadata.NewOutgoingContext(ctxT(t, 10*time.Second), md)
	var hdr metadata.MD
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	for k, want := range md {
		got := hdr.Get(k)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("backend saw %s = %.40q, want %.40q", k, got, want)
		}
	}
}

// TestDeadline: the client's deadline is propagated and enforced.
func TestDeadline(t *testing.T) {
	t.Parallel()
	backendDone := make(chan error, 1)
	b := &testBackend{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		select {
		case <-ctx.Done():
			backendDone <- ctx.Err()
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
			backendDone <- nil
			return &testpb.SimpleResponse{}, nil
		}
	}}
	p, c := setup(t, b, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
	elapsed := time.Since(start)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if elapsed > 700*time.Millisecond {
		t.Fatalf("DeadlineExceeded after %v, want about 200ms", elapsed)
	}
	select {
	case err := <-backendDone:
		if err == nil {
			t.Fatal("backend ran to completion; its context was not cancelled")
		}
	case <-time.After(time.Second):
		t.Fatal("backend context not cancelled within 1s of the deadline")
	}
	if r := p.nextResult(t); r.Code != codes.DeadlineExceeded && r.Code != codes.Canceled {
		t.Fatalf("result %+v", r)
	}
}

// TestRouteTimeout: with no client deadline, Target.Timeout is enforced by
// meshd itself, and sent upstream as grpc-timeout.
func TestRouteTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	defer close(release)
	gotDeadline := make(chan time.Duration, 1)
	ctxDone := make(chan struct{})
	b := &testBackend{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			gotDeadline <- -1
		} else {
			gotDeadline <- time.Until(dl)
		}
		<-ctx.Done()
		close(ctxDone)
		<-release // ignore the deadline: only meshd's timer can answer the client
		return &testpb.SimpleResponse{}, nil
	}}
	startBackend(t, b)
	p := startProxy(t, b.addr, Config{})
	p.route(func(*Request) (Target, error) { return Target{Addr: b.addr, Timeout: 200 * time.Millisecond}, nil })
	_, c := dial(t, p.addr)
	start := time.Now()
	_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{})
	elapsed := time.Since(start)
	if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "meshd") {
		t.Fatalf("err = %v, want meshd's DeadlineExceeded", err)
	}
	if elapsed < 190*time.Millisecond || elapsed > 700*time.Millisecond {
		t.Fatalf("answered after %v, want about 200ms", elapsed)
	}
	if d := <-gotDeadline; d <= 0 || d > 200*time.Millisecond {
		t.Fatalf("backend deadline in %v, want (0, 200ms]", d)
	}
	select {
	case <-ctxDone:
	case <-time.After(time.Second):
		t.Fatal("backend context not cancelled")
	}
	if r := p.nextResult(t); r.Code != codes.DeadlineExceeded || !errors.Is(r.Err, ErrDeadline) {
		t.Fatalf("result %+v", r)
	}
	if got := p.srv.Stats().DeadlinesExceeded; got != 1 {
		t.Fatalf("DeadlinesExceeded = %d, want 1", got)
	}
}

// TestClientCancel: a client cancel cancels the backend call.
func TestClientCancel(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{}, 2)
	cancelled := make(chan struct{}, 2)
	b := &testBackend{
		unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			entered <- struct{}{}
			<-ctx.Done()
			cancelled <- struct{}{}
			return nil, ctx.Err()
		},
		fullDuplex: func(s testgrpc.TestService_FullDuplexCallServer) error {
			if _, err := s.Recv(); err != nil {
				return err
			}
			entered <- struct{}{}
			<-s.Context().Done()
			cancelled <- struct{}{}
			return s.Context().Err()
		},
	}
	p, c := setup(t, b, Config{})
	tests := []struct {
		name  string
		start func(ctx context.Context) error
	}{
		{"unary", func(ctx context.Context) error {
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			return err
		}},
		{"bidi", func(ctx context.Context) error {
			s, err := c.FullDuplexCall(ctx)
			if err != nil {
				return err
			}
			if err := s.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- tt.start(ctx) }()
		<-entered
		cancel()
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Fatalf("%s: err = %v, want Canceled", tt.name, err)
		}
		select {
		case <-cancelled:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: backend context not cancelled", tt.name)
		}
		if r := p.nextResult(t); r.Code != codes.Canceled || !errors.Is(r.Err, ErrClientGone) {
			t.Fatalf("%s: result %+v", tt.name, r)
		}
	}
}

func TestGzip(t *testing.T) {
	t.Parallel()
	_, c := setup(t, &testBackend{}, Config{})
	for _, n := range []int{0, 100, 300 << 10} {
		resp, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: payload(n)}, grpc.UseCompressor(gzip.Name))
		if err != nil {
			t.Fatal(err)
		}
		checkBody(t, resp.GetPayload(), n)
	}
	s, err := c.FullDuplexCall(ctxT(t, 10*time.Second), grpc.UseCompressor(gzip.Name))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: params(50000), Payload: payload(40000)}); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		checkBody(t, resp.GetPayload(), 50000)
	}
	_ = s.CloseSend()
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("Recv = %v, want EOF", err)
	}
}

// TestMessageSizes: messages up to MaxRecvMsgSize pass; a larger one gets
// RESOURCE_EXHAUSTED and the connection keeps working.
func TestMessageSizes(t *testing.T) {
	t.Parallel()
	p, c := setup(t, &testBackend{}, Config{})
	for _, n := range []int{5 << 20, 15 << 20} {
		resp, err := c.UnaryCall(ctxT(t, 20*time.Second), &testpb.SimpleRequest{Payload: payload(n)})
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		checkBody(t, resp.GetPayload(), n)
		if r := p.nextResult(t); r.Code != codes.OK || r.BytesIn < int64(n) || r.BytesOut < int64(n) {
			t.Fatalf("result %+v", r)
		}
	}
	_, err := c.UnaryCall(ctxT(t, 20*time.Second), &testpb.SimpleRequest{Payload: payload(17 << 20)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("17 MiB: err = %v, want ResourceExhausted", err)
	}
	if r := p.nextResult(t); r.Code != codes.ResourceExhausted || !errors.Is(r.Err, ErrMessageTooLarge) {
		t.Fatalf("result %+v", r)
	}
	resp, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: payload(1000)})
	if err != nil {
		t.Fatalf("call after RESOURCE_EXHAUSTED: %v", err)
	}
	checkBody(t, resp.GetPayload(), 1000)
	if got := p.srv.Stats().ActiveConns; got != 1 {
		t.Fatalf("ActiveConns = %d, want 1 (the same connection)", got)
	}
}

// TestConcurrentStreams: 100 streams at once on one client connection.
func TestConcurrentStreams(t *testing.T) {
	t.Parallel()
	p, c := setup(t, &testBackend{}, Config{})
	const n = 100
	var wg sync.WaitGroup
	errc := make(chan error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			s, err := c.FullDuplexCall(ctx)
			if err != nil {
				errc <- err
				return
			}
			for j := 0; j < 5; j++ {
				size := (i*31 + j*1000) % 40000
				if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: params(size), Payload: payload(size)}); err != nil {
					errc <- err
					return
				}
				resp, err := s.Recv()
				if err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(resp.GetPayload().GetBody(), payload(size).GetBody()) {
					errc <- fmt.Errorf("stream %d: payload mismatch", i)
					return
				}
			}
			_ = s.CloseSend()
			if _, err := s.Recv(); err != io.EOF {
				errc <- fmt.Errorf("stream %d: Recv = %v, want EOF", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if got := p.srv.Stats().StreamsTotal; got != n {
		t.Errorf("StreamsTotal = %d, want %d", got, n)
	}
	if got := p.srv.Stats().ActiveConns; got != 1 {
		t.Errorf("ActiveConns = %d, want 1", got)
	}
}

// TestDirectorErrors: Director errors and backend failures reach the client
// as gRPC statuses.
func TestDirectorErrors(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	deadAddr := testkit.FreeAddr(t)

	var seen atomic.Pointer[Request]
	p := startProxy(t, b.addr, Config{DialTimeout: 2 * time.Second})
	p.route(func(req *Request) (Target, error) {
		cp := *req
		cp.Header = &Header{fields: append(req.Header.fields[:0:0], req.Header.fields...)}
		seen.Store(&cp)
		switch req.Method {
		case "/grpc.testing.TestService/EmptyCall":
			return Target{}, status.Error(codes.Unimplemented, "no route for /x.Y/Z ✓ 100%\n")
		case "/grpc.testing.TestService/UnaryCall":
			return Target{Addr: deadAddr}, nil
		}
		return Target{}, errors.New("plain error")
	})
	_, c := dial(t, p.addr)

	_, err := c.EmptyCall(ctxT(t, 5*time.Second), &testpb.Empty{})
	if st := status.Convert(err); st.Code() != codes.Unimplemented || st.Message() != "no route for /x.Y/Z ✓ 100%\n" {
		t.Fatalf("EmptyCall: %v", err)
	}
	req := seen.Load()
	if req.Method != "/grpc.testing.TestService/EmptyCall" || req.Authority == "" || req.Deadline.IsZero() ||
		req.Header.Get("content-type")[0] != "application/grpc" || req.RemoteAddr == nil {
		t.Fatalf("Director saw %+v", req)
	}

	_, err = c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), deadAddr) {
		t.Fatalf("unreachable backend: %v", err)
	}
	if r := p.nextResult(t); r.Code != codes.Unavailable || !r.NotReached || r.Committed || r.Err == nil {
		t.Fatalf("result %+v", r)
	}

	s, err := c.StreamingInputCall(ctxT(t, 5*time.Second))
	if err == nil {
		_, err = s.CloseAndRecv()
	}
	if status.Code(err) != codes.Unknown {
		t.Fatalf("plain Director error: %v, want Unknown", err)
	}
	if got := p.srv.Stats().DialErrors; got != 1 {
		t.Fatalf("DialErrors = %d, want 1", got)
	}
}

// TestSlowReaderBounded: a client that stops reading a large server stream
// back-pressures the backend through meshd; meshd's buffer for the stream
// stays within the window it advertised upstream.
func TestSlowReaderBounded(t *testing.T) {
	t.Parallel()
	const (
		window = 64 << 10
		msg    = 32 << 10
		count  = 256 // 8 MiB in total
	)
	var sent atomic.Int64
	b := &testBackend{streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		for i := 0; i < count; i++ {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(msg)}); err != nil {
				return err
			}
			sent.Add(1)
		}
		return nil
	}}
	// Fixed client windows (no BDP growth) so only flow control limits the
	// client side.
	p, c := setup(t, b, Config{InitialWindowSize: window, ConnWindowSize: 4 * window},
		grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window))
	s, err := c.StreamingOutputCall(ctxT(t, 20*time.Second), &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	// The client's window fills; meshd then holds data it cannot send.
	testkit.WaitFor(t, 5*time.Second, "meshd to buffer data for the stalled client", func() bool {
		return p.srv.Stats().BufferedBytes >= window/2
	})
	// Watch for a while: an unbounded proxy would have drained the whole
	// 8 MiB from the backend into its memory by now.
	bound := int64(window + DefaultMaxFrameSize)
	var peak int64
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		peak = max(peak, p.srv.Stats().BufferedBytes)
	}
	if peak > bound {
		t.Fatalf("meshd buffered %d bytes for one stream, want <= %d", peak, bound)
	}
	if n := sent.Load(); n >= count/2 {
		t.Fatalf("backend sent %d of %d messages to a stalled client: not back-pressured", n, count)
	}
	t.Logf("stalled: backend sent %d messages, meshd buffered peak %d bytes", sent.Load(), peak)
	for i := 1; i < count; i++ {
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		checkBody(t, resp.GetPayload(), msg)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("Recv = %v, want EOF", err)
	}
	testkit.WaitFor(t, 2*time.Second, "buffers to drain", func() bool { return p.srv.Stats().BufferedBytes == 0 })
}

// TestGracefulShutdown: Shutdown lets open streams finish and refuses new
// connections.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{})
	release := make(chan struct{})
	b := &testBackend{streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(10)}); err != nil {
			return err
		}
		close(entered)
		<-release
		return s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(20)})
	}}
	p, c := setup(t, b, Config{})
	s, err := c.StreamingOutputCall(ctxT(t, 10*time.Second), &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	<-entered
	shutErr := make(chan error, 1)
	go func() { shutErr <- p.srv.Shutdown(ctxT(t, 10*time.Second)) }()
	// New connections are refused once the listener is closed.
	testkit.WaitFor(t, 5*time.Second, "listener to close", func() bool {
		nc, err := net.Dial("tcp", p.addr)
		if err == nil {
			_ = nc.Close()
		}
		return err != nil
	})
	select {
	case err := <-shutErr:
		t.Fatalf("Shutdown returned %v with a stream open", err)
	default:
	}
	close(release)
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("in-flight stream after Shutdown: %v", err)
	}
	checkBody(t, resp.GetPayload(), 20)
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("Recv = %v, want EOF", err)
	}
	if err := <-shutErr; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if st := p.srv.Stats(); st.ActiveConns != 0 || st.UpstreamConns != 0 {
		t.Fatalf("after Shutdown: %+v", st)
	}
}

// TestForget: Pool.Forget closes idle connections to a removed endpoint.
func TestForget(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	p := startProxy(t, b.addr, Config{})
	_, c := dial(t, p.addr)
	if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if p.srv.Stats().UpstreamConns == 0 {
		t.Fatal("no upstream connection after a call")
	}
	p.srv.Pool().Forget(b.addr)
	testkit.WaitFor(t, 5*time.Second, "upstream connections to close", func() bool { return p.srv.Stats().UpstreamConns == 0 })
	// A new call dials again.
	if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
}

// TestBackendGracefulStop: a backend going away with GOAWAY lets in-flight
// streams finish; later calls fail cleanly.
func TestBackendGracefulStop(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{})
	release := make(chan struct{})
	b := &testBackend{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if req.GetResponseSize() == 1 {
			close(entered)
			<-release
		}
		return &testpb.SimpleResponse{Payload: payload(5)}, nil
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, b)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(ln)
	}()
	t.Cleanup(func() { gs.Stop(); <-served })
	p := startProxy(t, ln.Addr().String(), Config{DialTimeout: time.Second})
	_, c := dial(t, p.addr)

	errc := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{ResponseSize: 1})
		errc <- err
	}()
	<-entered
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		gs.GracefulStop()
	}()
	testkit.WaitFor(t, 5*time.Second, "backend listener to close", func() bool {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			_ = nc.Close()
		}
		return err != nil
	})
	close(release)
	if err := <-errc; err != nil {
		t.Fatalf("in-flight call across backend GOAWAY: %v", err)
	}
	<-stopped
	_, err = c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call to stopped backend: %v, want Unavailable", err)
	}
}
