package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// retryRecorder is a Target.Retry that sends every retry to next, up to
// max times, and records what it was asked.
type retryRecorder struct {
	next    string
	max     int
	backoff time.Duration

	mu    sync.Mutex
	infos []RetryInfo
}

func (r *retryRecorder) retry(a RetryInfo) (Target, time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.infos = append(r.infos, a)
	if len(r.infos) > r.max {
		return Target{}, 0, false
	}
	return Target{Addr: r.next, Header: []hpack.HeaderField{{Name: "grpc-previous-rpc-attempts", Value: "1"}}}, r.backoff, true
}

func (r *retryRecorder) asked() []RetryInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]RetryInfo(nil), r.infos...)
}

// retryProxy starts a proxy whose streams go to first, retryable through rr.
func retryProxy(t *testing.T, first string, rr *retryRecorder, edit func(*Target)) (*proxy, testgrpc.TestServiceClient) {
	t.Helper()
	p := startProxy(t, first, Config{})
	p.route(func(*Request) (Target, error) {
		tg := Target{Addr: first, Retry: rr.retry, RetryBufferBytes: 1 << 20}
		if edit != nil {
			edit(&tg)
		}
		return tg, nil
	})
	_, c := dial(t, p.addr)
	return p, c
}

// msgBody is request message i of a stream: distinct bytes per message and
// position, so a replay that drops, repeats or reorders bytes is caught.
func msgBody(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*31 + j*7 + j>>8)
	}
	return b
}

// TestRetryReplaysStreamingRequest: the first backend reads part of a
// client stream and fails trailers-only with UNAVAILABLE; the retry on the
// second backend gets the whole request, byte for byte, with the retry's
// header fields, and the client sees only the second answer.
func TestRetryReplaysStreamingRequest(t *testing.T) {
	t.Parallel()
	const msgs, size = 12, 10 << 10
	var firstGot atomic.Int32
	a := startBackend(t, &testBackend{streamIn: func(s testgrpc.TestService_StreamingInputCallServer) error {
		for range 3 {
			if _, err := s.Recv(); err != nil {
				return err
			}
			firstGot.Add(1)
		}
		return status.Error(codes.Unavailable, "first backend gives up")
	}})
	var prev atomic.Value
	b := startBackend(t, &testBackend{streamIn: func(s testgrpc.TestService_StreamingInputCallServer) error {
		md, _ := metadata.FromIncomingContext(s.Context())
		prev.Store(md.Get("grpc-previous-rpc-attempts"))
		for i := 0; ; i++ {
			req, err := s.Recv()
			if errors.Is(err, io.EOF) {
				if i != msgs {
					return status.Errorf(codes.DataLoss, "got %d messages, want %d", i, msgs)
				}
				return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(i)})
			}
			if err != nil {
				return err
			}
			if !bytes.Equal(req.GetPayload().GetBody(), msgBody(i, size)) {
				return status.Errorf(codes.DataLoss, "message %d differs", i)
			}
		}
	}})
	rr := &retryRecorder{next: b.addr, max: 1, backoff: 10 * time.Millisecond}
	p, c := retryProxy(t, a.addr, rr, nil)

	ctx := ctxT(t, 10*time.Second)
	st, err := c.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range msgs {
		if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: msgBody(i, size)}}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	resp, err := st.CloseAndRecv()
	if err != nil {
		t.Fatalf("call failed: %v", err)
	}
	if resp.GetAggregatedPayloadSize() != msgs {
		t.Fatalf("second backend counted %d messages", resp.GetAggregatedPayloadSize())
	}
	if firstGot.Load() == 0 {
		t.Fatal("the first backend never got the request")
	}
	if got, _ := prev.Load().([]string); len(got) != 1 || got[0] != "1" {
		t.Fatalf("grpc-previous-rpc-attempts at the second backend = %q, want [1]", got)
	}
	infos := rr.asked()
	if len(infos) != 1 || infos[0].Code != codes.Unavailable || infos[0].NotReached || infos[0].PerTry || infos[0].Committed {
		t.Fatalf("Retry asked %+v, want once with UNAVAILABLE", infos)
	}
	// BytesIn counts what the client sent (message bytes, prefixes
	// excluded), not the replay.
	want := int64(msgs * (proto.Size(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: msgBody(0, size)}})))
	if res := p.nextResult(t); res.Code != codes.OK || res.Err != nil || res.BytesIn != want {
		t.Fatalf("Result = %+v, want OK with %d bytes in", res, want)
	}
}

// TestRetryRules: the cases where a retryable call is not retried.
func TestRetryRules(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// first is the first backend's handler.
		first    func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error)
		edit     func(*Target)
		reqBytes int
		wantCode codes.Code
		asked    int // calls of Retry
	}{
		{
			name: "retried",
			first: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				return nil, status.Error(codes.Unavailable, "no")
			},
			wantCode: codes.OK, asked: 1,
		},
		{
			// The HEADERS are held until the attempt's next frame: a
			// status with no message is as retryable as a trailers-only
			// answer.
			name: "status after response headers",
			first: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				if err := grpc.SendHeader(ctx, metadata.Pairs("x-sent", "1")); err != nil {
					return nil, err
				}
				return nil, status.Error(codes.Unavailable, "after headers")
			},
			wantCode: codes.OK, asked: 1,
		},
		{
			name: "status after response headers, request over the buffer",
			first: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				if err := grpc.SendHeader(ctx, metadata.Pairs("x-sent", "1")); err != nil {
					return nil, err
				}
				return nil, status.Error(codes.Unavailable, "after headers")
			},
			edit:     func(tg *Target) { tg.RetryBufferBytes = 4 << 10 },
			reqBytes: 16 << 10,
			wantCode: codes.Unavailable, asked: 0,
		},
		{
			name: "request over the buffer",
			first: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				return nil, status.Error(codes.Unavailable, "no")
			},
			edit:     func(tg *Target) { tg.RetryBufferBytes = 4 << 10 },
			reqBytes: 16 << 10,
			wantCode: codes.Unavailable, asked: 0,
		},
		{
			name: "shared buffer refuses",
			first: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				return nil, status.Error(codes.Unavailable, "no")
			},
			edit:     func(tg *Target) { tg.RetryBuffer = &countingLimiter{limit: 1 << 10} },
			reqBytes: 4 << 10,
			wantCode: codes.Unavailable, asked: 0,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			first := startBackend(t, &testBackend{unary: tc.first})
			var secondCalls atomic.Int32
			second := startBackend(t, &testBackend{unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				secondCalls.Add(1)
				return &testpb.SimpleResponse{}, nil
			}})
			rr := &retryRecorder{next: second.addr, max: 1}
			var lim *countingLimiter
			edit := func(tg *Target) {
				if tc.edit != nil {
					tc.edit(tg)
				}
				lim, _ = tg.RetryBuffer.(*countingLimiter)
			}
			p, c := retryProxy(t, first.addr, rr, edit)
			_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, tc.reqBytes)}})
			if status.Code(err) != tc.wantCode {
				t.Fatalf("call: %v, want %v", err, tc.wantCode)
			}
			if n := len(rr.asked()); n != tc.asked {
				t.Fatalf("Retry asked %d times, want %d", n, tc.asked)
			}
			if res := p.nextResult(t); res.Code != tc.wantCode {
				t.Fatalf("Result.Code = %v, want %v", res.Code, tc.wantCode)
			}
			if want := int32(tc.asked); secondCalls.Load() != want {
				t.Fatalf("the second backend got %d calls, want %d", secondCalls.Load(), want)
			}
			if lim != nil && lim.used.Load() != 0 {
				t.Fatalf("shared buffer still holds %d bytes", lim.used.Load())
			}
		})
	}
}

// countingLimiter is a BufferLimiter with a fixed limit.
type countingLimiter struct {
	limit int64
	used  atomic.Int64
}

func (l *countingLimiter) TryAcquire(n int64) bool {
	if l.used.Add(n) > l.limit {
		l.used.Add(-n)
		return false
	}
	return true
}

func (l *countingLimiter) Release(n int64) { l.used.Add(-n) }

// TestRetryPerTryTimeout: an attempt that has not answered within the
// per-try timeout is cut and retried; when the retry is refused, the
// client gets PerTryErr's status.
func TestRetryPerTryTimeout(t *testing.T) {
	t.Parallel()
	hang := func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		<-ctx.Done() // until meshd cancels the attempt
		return nil, status.Error(codes.Unavailable, "late answer of a cut attempt")
	}
	first := startBackend(t, &testBackend{unary: hang})
	second := startBackend(t, &testBackend{})
	perTry := func(tg *Target) {
		tg.PerTryTimeout = 200 * time.Millisecond
		tg.PerTryErr = status.Error(codes.DeadlineExceeded, "meshd: per_try_timeout 200ms exceeded")
	}

	t.Run("retried", func(t *testing.T) {
		t.Parallel()
		rr := &retryRecorder{next: second.addr, max: 1}
		p, c := retryProxy(t, first.addr, rr, perTry)
		start := time.Now()
		if _, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call: %v", err)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Fatalf("answered after %v, before the per-try timeout", d)
		}
		infos := rr.asked()
		if len(infos) != 1 || !infos[0].PerTry || infos[0].Code != codes.DeadlineExceeded || !errors.Is(infos[0].Err, ErrPerTryTimeout) {
			t.Fatalf("Retry asked %+v, want one per-try timeout", infos)
		}
		if res := p.nextResult(t); res.Code != codes.OK {
			t.Fatalf("Result = %+v", res)
		}
	})
	t.Run("not retried", func(t *testing.T) {
		t.Parallel()
		rr := &retryRecorder{next: second.addr, max: 0}
		p, c := retryProxy(t, first.addr, rr, perTry)
		_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{})
		if s := status.Convert(err); s.Code() != codes.DeadlineExceeded || s.Message() != "meshd: per_try_timeout 200ms exceeded" {
			t.Fatalf("call: %v, want the per-try status", err)
		}
		if res := p.nextResult(t); res.Code != codes.DeadlineExceeded || !errors.Is(res.Err, ErrPerTryTimeout) {
			t.Fatalf("Result = %+v", res)
		}
	})
}

// TestRetryDeadline: a retry whose backoff outlasts the deadline is never
// started; the client gets DEADLINE_EXCEEDED.
func TestRetryDeadline(t *testing.T) {
	t.Parallel()
	first := startBackend(t, &testBackend{unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		return nil, status.Error(codes.Unavailable, "no")
	}})
	var secondCalls atomic.Int32
	second := startBackend(t, &testBackend{unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		secondCalls.Add(1)
		return &testpb.SimpleResponse{}, nil
	}})
	rr := &retryRecorder{next: second.addr, max: 1, backoff: 5 * time.Second}
	p, c := retryProxy(t, first.addr, rr, func(tg *Target) { tg.Timeout = 300 * time.Millisecond })
	_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call: %v, want DEADLINE_EXCEEDED", err)
	}
	if res := p.nextResult(t); res.Code != codes.DeadlineExceeded {
		t.Fatalf("Result = %+v", res)
	}
	if secondCalls.Load() != 0 {
		t.Fatal("an attempt was started past the deadline")
	}
}

// TestCallIdleTimeout: a call with no DATA either way for IdleTimeout ends with
// IdleErr's status; one that keeps talking does not.
func TestCallIdleTimeout(t *testing.T) {
	t.Parallel()
	// Generous: a round trip of the active call must stay well under it
	// on a loaded 2-core machine with -race.
	const idle = 800 * time.Millisecond
	b := &testBackend{fullDuplex: func(s testgrpc.TestService_FullDuplexCallServer) error {
		for {
			if _, err := s.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			if err := s.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
				return err
			}
		}
	}}
	startBackend(t, b)
	p := startProxy(t, b.addr, Config{})
	p.route(func(*Request) (Target, error) {
		return Target{Addr: b.addr, IdleTimeout: idle, IdleErr: status.Error(codes.DeadlineExceeded, "idle for too long")}, nil
	})
	_, c := dial(t, p.addr)

	t.Run("silent", func(t *testing.T) {
		st, err := c.FullDuplexCall(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = st.Recv()
		if s := status.Convert(err); s.Code() != codes.DeadlineExceeded || s.Message() != "idle for too long" {
			t.Fatalf("Recv: %v, want the idle status", err)
		}
		if d := time.Since(start); d < idle {
			t.Fatalf("cut after %v, before the idle timeout", d)
		}
		if res := p.nextResult(t); !errors.Is(res.Err, ErrIdleTimeout) {
			t.Fatalf("Result = %+v", res)
		}
	})
	t.Run("active", func(t *testing.T) {
		st, err := c.FullDuplexCall(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		// Two idle periods' worth of traffic, a message every idle/8.
		for end := time.Now().Add(2 * idle); time.Now().Before(end); {
			if err := st.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
				t.Fatalf("send: %v", err)
			}
			if _, err := st.Recv(); err != nil {
				t.Fatalf("recv: %v", err)
			}
			time.Sleep(idle / 8) // pacing the client, not waiting for state
		}
		if err := st.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("final Recv: %v, want EOF", err)
		}
		if res := p.nextResult(t); res.Code != codes.OK {
			t.Fatalf("Result = %+v", res)
		}
	})
}
