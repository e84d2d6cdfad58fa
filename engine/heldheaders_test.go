package engine

import (
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// headersThen is a unary handler that sends header metadata x-backend:
// name at once, then answers with err (nil: a response message).
func headersThen(name string, err error) func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if e := grpc.SendHeader(ctx, metadata.Pairs("x-backend", name)); e != nil {
			return nil, e
		}
		if err != nil {
			return nil, err
		}
		return &testpb.SimpleResponse{}, nil
	}
}

// TestRetryAfterHeaders: a backend that sends response HEADERS and then
// UNAVAILABLE with no message is retried on a retryable call (its HEADERS
// were held, never forwarded): the client sees only the second backend's
// HEADERS and its answer.
func TestRetryAfterHeaders(t *testing.T) {
	t.Parallel()
	first := startBackend(t, &testBackend{unary: headersThen("first", status.Error(codes.Unavailable, "after headers"))})
	second := startBackend(t, &testBackend{unary: headersThen("second", nil)})
	rr := &retryRecorder{next: second.addr, max: 1}
	p, c := retryProxy(t, first.addr, rr, nil)
	var hdr metadata.MD
	if _, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: payload(100)}, grpc.Header(&hdr)); err != nil {
		t.Fatalf("call: %v, want the retry's answer", err)
	}
	if got := hdr.Get("x-backend"); len(got) != 1 || got[0] != "second" {
		t.Fatalf("client saw x-backend %q, want only the second backend's", got)
	}
	infos := rr.asked()
	if len(infos) != 1 || infos[0].Code != codes.Unavailable || infos[0].NotReached || infos[0].Committed {
		t.Fatalf("Retry asked %+v, want once for UNAVAILABLE after headers", infos)
	}
	if res := p.nextResult(t); res.Code != codes.OK || !res.Committed {
		t.Fatalf("Result = %+v, want OK, committed", res)
	}
	if n := p.srv.Stats().HeadersHeld; n != 2 {
		t.Fatalf("Stats.HeadersHeld = %d, want 2 (both attempts)", n)
	}
}

// TestHeldHeadersForwardedOnFinalStatus: when Retry declines the status
// that followed held HEADERS, the client gets both, as the backend sent
// them.
func TestHeldHeadersForwardedOnFinalStatus(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{unary: headersThen("only", status.Error(codes.Unavailable, "after headers"))})
	rr := &retryRecorder{next: b.addr, max: 0}
	p, c := retryProxy(t, b.addr, rr, nil)
	var hdr metadata.MD
	_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{}, grpc.Header(&hdr))
	if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "after headers" {
		t.Fatalf("call: %v, want the backend's status", err)
	}
	if got := hdr.Get("x-backend"); len(got) != 1 || got[0] != "only" {
		t.Fatalf("client saw x-backend %q, want the backend's held HEADERS", got)
	}
	if res := p.nextResult(t); res.Code != codes.Unavailable || !res.Committed {
		t.Fatalf("Result = %+v, want UNAVAILABLE, committed (the HEADERS went out)", res)
	}
}

// TestRetryAfterMessageNotRetried: a message commits the call; a status
// after it is the call's.
func TestRetryAfterMessageNotRetried(t *testing.T) {
	t.Parallel()
	first := startBackend(t, &testBackend{streamOut: func(_ *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(10)}); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "after a message")
	}})
	second := startBackend(t, &testBackend{})
	rr := &retryRecorder{next: second.addr, max: 1}
	p, c := retryProxy(t, first.addr, rr, nil)
	s, err := c.StreamingOutputCall(ctxT(t, 10*time.Second), &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("first Recv: %v, want the message", err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("second Recv: %v, want UNAVAILABLE", err)
	}
	if n := len(rr.asked()); n != 0 {
		t.Fatalf("Retry asked %d times after a message, want never", n)
	}
	if res := p.nextResult(t); res.Code != codes.Unavailable || !res.Committed {
		t.Fatalf("Result = %+v", res)
	}
}

// TestHeaderHoldBounded: HEADERS followed by nothing for a while (a
// server stream whose first message is late) are held only as long as
// the per-try timeout's remainder, or HeaderHoldLimit without one; then
// they reach the client, the call commits and is no longer cut or retried.
func TestHeaderHoldBounded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		perTry time.Duration
	}{
		{"per-try timeout", 200 * time.Millisecond},
		{"built-in limit", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			b := startBackend(t, &testBackend{streamOut: func(_ *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
				if err := s.SendHeader(metadata.Pairs("x-backend", "slow")); err != nil {
					return err
				}
				select {
				case <-release: // the client has the HEADERS
				case <-s.Context().Done():
					return s.Context().Err()
				}
				return s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(10)})
			}})
			rr := &retryRecorder{next: b.addr, max: 1}
			p, c := retryProxy(t, b.addr, rr, func(tg *Target) { tg.PerTryTimeout = tc.perTry })
			s, err := c.StreamingOutputCall(ctxT(t, 10*time.Second), &testpb.StreamingOutputCallRequest{})
			if err != nil {
				t.Fatal(err)
			}
			hdr, err := s.Header() // blocks while meshd holds them
			if err != nil || len(hdr.Get("x-backend")) != 1 {
				t.Fatalf("Header: %v %v, want the held HEADERS once the hold ran out", hdr, err)
			}
			close(release)
			if _, err := s.Recv(); err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("final Recv: %v, want EOF", err)
			}
			if n := len(rr.asked()); n != 0 {
				t.Fatalf("Retry asked %d times, want never", n)
			}
			if res := p.nextResult(t); res.Code != codes.OK {
				t.Fatalf("Result = %+v", res)
			}
		})
	}
}

// TestHeadersNotHeldWithoutRetry: a call that is not retryable forwards
// response HEADERS as they come: the backend waits for the client to see
// them before it sends anything else.
func TestHeadersNotHeldWithoutRetry(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	p, c := setup(t, &testBackend{streamOut: func(_ *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		if err := s.SendHeader(metadata.Pairs("x-backend", "b")); err != nil {
			return err
		}
		select {
		case <-release:
		case <-s.Context().Done():
			return s.Context().Err()
		}
		return status.Error(codes.Unavailable, "after headers")
	}}, Config{})
	s, err := c.StreamingOutputCall(ctxT(t, 10*time.Second), &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if hdr, err := s.Header(); err != nil || len(hdr.Get("x-backend")) != 1 {
		t.Fatalf("Header: %v %v", hdr, err)
	}
	close(release)
	if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("Recv: %v, want UNAVAILABLE", err)
	}
	if res := p.nextResult(t); res.Code != codes.Unavailable || !res.Committed {
		t.Fatalf("Result = %+v", res)
	}
	if n := p.srv.Stats().HeadersHeld; n != 0 {
		t.Fatalf("Stats.HeadersHeld = %d, want 0 without retries", n)
	}
}
