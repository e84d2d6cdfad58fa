package engine

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// routeTimeoutMsg is the message of the test Directors' TimeoutErr.
const routeTimeoutMsg = "meshd: route timeout 200ms exceeded"

// rawUnary sends one UnaryCall on a new raw connection to addr, with
// grpc-timeout timeout ("" for none), and returns the final HEADERS' fields
// (grpc-status, grpc-message...). The raw client never enforces a deadline
// itself, so what it reads is exactly what meshd sent.
func rawUnary(t *testing.T, addr, timeout string) map[string]string {
	t.Helper()
	rc := h2raw.New(t, addr)
	var extra []string
	if timeout != "" {
		extra = []string{"grpc-timeout", timeout}
	}
	rc.Headers(1, h2raw.Request("/grpc.testing.TestService/UnaryCall", extra...), false)
	if err := rc.Write(func(fr *http2.Framer) error {
		return fr.WriteData(1, true, h2raw.MarshalMessage(t, &testpb.SimpleRequest{}))
	}); err != nil {
		t.Fatal(err)
	}
	f := rc.Next("final HEADERS", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1 && h.StreamEnded()
	})
	out := map[string]string{}
	for _, hf := range f.(*http2.MetaHeadersFrame).Fields {
		if _, dup := out[hf.Name]; dup {
			t.Errorf("field %s sent twice", hf.Name)
		}
		out[hf.Name] = hf.Value
	}
	return out
}

// TestTimeoutErr: when Target.Timeout, not the client, sets the deadline,
// meshd's deadline timer answers with Target.TimeoutErr's status; the
// client's own deadline keeps the generic one. The backend never answers
// (a black hole), so meshd's timer is what ends every call.
func TestTimeoutErr(t *testing.T) {
	t.Parallel()
	errRouteTimeout := status.Error(codes.DeadlineExceeded, routeTimeoutMsg)
	tests := []struct {
		name       string
		client     string // grpc-timeout; "": none
		timeout    time.Duration
		timeoutErr error
		want       string // grpc-message
	}{
		{"client deadline wins", "200m", 10 * time.Second, errRouteTimeout, "meshd: deadline exceeded"},
		{"Timeout wins", "10S", 200 * time.Millisecond, errRouteTimeout, routeTimeoutMsg},
		{"Timeout without a client deadline", "", 200 * time.Millisecond, errRouteTimeout, routeTimeoutMsg},
		{"Timeout wins, no TimeoutErr", "10S", 200 * time.Millisecond, nil, "meshd: deadline exceeded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hole := testkit.BlackHole(t).Addr()
			p := startProxy(t, hole, Config{DialTimeout: 3 * time.Second})
			p.route(func(*Request) (Target, error) {
				return Target{Addr: hole, Timeout: tc.timeout, TimeoutErr: tc.timeoutErr}, nil
			})
			fields := rawUnary(t, p.addr, tc.client)
			if got, want := fields["grpc-status"], "4"; got != want {
				t.Errorf("grpc-status %q, want %q (fields %v)", got, want, fields)
			}
			if got := fields["grpc-message"]; got != tc.want {
				t.Errorf("grpc-message %q, want %q", got, tc.want)
			}
			if r := p.nextResult(t); r.Code != codes.DeadlineExceeded || !errors.Is(r.Err, ErrDeadline) {
				t.Errorf("Result %v, %v; want DEADLINE_EXCEEDED, ErrDeadline", r.Code, r.Err)
			}
		})
	}
}

// TestTimeoutErrBackendTrailers: a backend's DEADLINE_EXCEEDED that comes
// just before meshd's deadline for Target.Timeout is that deadline firing
// on the backend first (it got it as grpc-timeout): meshd names
// TimeoutErr's setting instead of the backend's message, and drops the
// backend's grpc-status-details-bin, which would override it. Any other
// backend DEADLINE_EXCEEDED passes unchanged.
func TestTimeoutErrBackendTrailers(t *testing.T) {
	t.Parallel()
	errRouteTimeout := status.Error(codes.DeadlineExceeded, routeTimeoutMsg)
	const backendMsg = "backend: deadline"
	backendErr := func() error {
		st, err := status.New(codes.DeadlineExceeded, backendMsg).WithDetails(&testpb.Payload{Body: []byte("x")})
		if err != nil {
			panic(err)
		}
		return st.Err()
	}()
	tests := []struct {
		name    string
		client  string        // grpc-timeout
		timeout time.Duration // Target.Timeout
		// early: the backend answers this long before its deadline; 0: at once.
		early        time.Duration
		headersFirst bool // response HEADERS, then trailers (else trailers-only)
		renamed      bool
	}{
		{"near Timeout's deadline, trailers-only", "10S", 500 * time.Millisecond, 25 * time.Millisecond, false, true},
		{"near Timeout's deadline, after headers", "10S", 500 * time.Millisecond, 25 * time.Millisecond, true, true},
		{"far from Timeout's deadline", "10S", 10 * time.Second, 0, false, false},
		{"near the client's deadline", "500m", 10 * time.Second, 25 * time.Millisecond, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := startBackend(t, &testBackend{unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				if tc.headersFirst {
					if err := grpc.SendHeader(ctx, metadata.Pairs("x-first", "1")); err != nil {
						return nil, err
					}
				}
				if tc.early > 0 {
					dl, ok := ctx.Deadline()
					if !ok {
						return nil, status.Error(codes.Internal, "no deadline reached the backend")
					}
					wait := time.NewTimer(time.Until(dl) - tc.early)
					defer wait.Stop()
					select {
					case <-wait.C:
					case <-ctx.Done():
					}
				}
				return nil, backendErr
			}})
			p := startProxy(t, b.addr, Config{})
			p.route(func(*Request) (Target, error) {
				return Target{Addr: b.addr, Timeout: tc.timeout, TimeoutErr: errRouteTimeout}, nil
			})
			// The backend's answer must reach meshd before meshd's own
			// timer (25ms later) for the case to test anything; on a
			// loaded machine it may not: try again, a bounded number of
			// times.
			for try := 1; ; try++ {
				fields := rawUnary(t, p.addr, tc.client)
				r := p.nextResult(t)
				if r.Err != nil {
					if try < 5 && errors.Is(r.Err, ErrDeadline) {
						t.Logf("try %d: meshd's timer beat the backend's answer", try)
						continue
					}
					t.Fatalf("Result.Err = %v, want the backend's answer", r.Err)
				}
				if got := fields["grpc-status"]; got != "4" {
					t.Errorf("grpc-status %q, want 4", got)
				}
				msg, want := fields["grpc-message"], backendMsg
				if tc.renamed {
					want = routeTimeoutMsg
				}
				if msg != want {
					t.Errorf("grpc-message %q, want %q", msg, want)
				}
				if _, ok := fields["grpc-status-details-bin"]; ok == tc.renamed {
					t.Errorf("grpc-status-details-bin present: %v, want %v", ok, !tc.renamed)
				}
				return
			}
		})
	}
}

// TestOwnTimeoutTrailers covers the rewrite itself: only the message and
// the details change, and only for DEADLINE_EXCEEDED near a deadline
// Target.Timeout owns.
func TestOwnTimeoutTrailers(t *testing.T) {
	t.Parallel()
	errRouteTimeout := status.Error(codes.DeadlineExceeded, routeTimeoutMsg)
	in := func() []hpack.HeaderField {
		return []hpack.HeaderField{
			{Name: "grpc-status", Value: "4"}, {Name: "x-keep", Value: "k"},
			{Name: "grpc-message", Value: "backend"}, {Name: "grpc-status-details-bin", Value: "AAAA"},
		}
	}
	renamed := []hpack.HeaderField{
		{Name: "grpc-status", Value: "4"}, {Name: "x-keep", Value: "k"},
		{Name: "grpc-message", Value: routeTimeoutMsg},
	}
	soon := time.Now().Add(10 * time.Millisecond)
	tests := []struct {
		name     string
		code     codes.Code
		owned    bool
		deadline time.Time
		fields   []hpack.HeaderField
		want     []hpack.HeaderField
	}{
		{"owned, near", codes.DeadlineExceeded, true, soon, in(), renamed},
		{"owned, past", codes.DeadlineExceeded, true, time.Now().Add(-time.Second), in(), renamed},
		{"owned, near, no message", codes.DeadlineExceeded, true, soon, in()[:2], renamed},
		{"owned, far", codes.DeadlineExceeded, true, time.Now().Add(time.Hour), in(), in()},
		{"client's deadline", codes.DeadlineExceeded, false, soon, in(), in()},
		{"other code", codes.Unavailable, true, soon, in(), in()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cl := &call{target: Target{TimeoutErr: errRouteTimeout}, deadline: tc.deadline, timeoutOwned: tc.owned}
			got := cl.ownTimeoutTrailers(tc.code, tc.fields)
			if len(got) != len(tc.want) {
				t.Fatalf("fields %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("fields %v, want %v", got, tc.want)
				}
			}
		})
	}
}
