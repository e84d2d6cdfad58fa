package test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

func emptyCall(cc *grpc.ClientConn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := testpb.NewTestServiceClient(cc).EmptyCall(ctx, &testpb.Empty{})
	return err
}

// TestListenerMaxConnections: a connection over max_connections is closed at
// once (the client fails fast with UNAVAILABLE), and a slot freed by a
// client that leaves is taken by the next.
func TestListenerMaxConnections(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "maxconn", 1)
	m := startMesh(t, limitsConfig(addrs(bs), "max_connections: 2"))
	first := dial(t, m.Addr)
	waitServing(t, first)
	second := dial(t, m.Addr)
	if err := emptyCall(second, 5*time.Second); err != nil {
		t.Fatalf("second connection: %v", err)
	}
	third := dial(t, m.Addr)
	if err := emptyCall(third, 2*time.Second); status.Code(err) != codes.Unavailable {
		t.Fatalf("third connection over max_connections 2: err = %v, want UNAVAILABLE", err)
	}
	// The first two keep working while the third is refused.
	for i, cc := range []*grpc.ClientConn{first, second} {
		if err := emptyCall(cc, 5*time.Second); err != nil {
			t.Errorf("connection %d: %v", i+1, err)
		}
	}
	first.Close()
	testkit.WaitFor(t, 10*time.Second, "the freed slot to admit the third connection", func() bool {
		return emptyCall(third, time.Second) == nil
	})
}

// The listener limits (idle_timeout, max_connection_age(_grace),
// keepalive) have grpc-go's server semantics (engine/keepalive.go), so that
// grpc-go clients react to them as they would to a grpc-go server.

// limitsConfig is a one-listener config with the given listener keys.
func limitsConfig(addrs, listenerKeys string) string {
	return fmt.Sprintf(`
listeners: [{name: main, address: 127.0.0.1:0, %s}]
drain_timeout: 5s
routes: [{name: all, match: {prefix: /}, cluster: b}]
clusters: [{name: b, endpoints: %s}]
`, listenerKeys, addrs)
}

// waitLeaveReady waits until cc leaves READY (meshd's GOAWAY makes a
// grpc-go client IDLE) and returns when it did. With mustBeReady, cc must
// be READY when called.
func waitLeaveReady(t *testing.T, cc interface {
	GetState() connectivity.State
	WaitForStateChange(context.Context, connectivity.State) bool
}, d time.Duration, mustBeReady bool) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if s := cc.GetState(); s != connectivity.Ready {
		if mustBeReady {
			t.Fatalf("client %v, want READY", s)
		}
		return time.Now()
	}
	if !cc.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatalf("client still READY after %v: no GOAWAY", d)
	}
	return time.Now()
}

// TestListenerIdleTimeout: a connection with no calls for idle_timeout is
// sent GOAWAY and closed, not before; the client goes IDLE and reconnects
// on its next call.
func TestListenerIdleTimeout(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "idle", 1)
	const idle = 300 * time.Millisecond
	m := startMesh(t, limitsConfig(addrs(bs), "idle_timeout: 300ms"))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	ready := time.Now()
	if left := waitLeaveReady(t, cc, 10*time.Second, true); left.Sub(ready) < idle/2 {
		t.Errorf("GOAWAY %v after the last call, before idle_timeout %v", left.Sub(ready), idle)
	}
	testkit.WaitFor(t, 10*time.Second, "the idle connection to be closed (client IDLE)", func() bool {
		return cc.GetState() == connectivity.Idle
	})
	if err := emptyCall(cc, 5*time.Second); err != nil {
		t.Errorf("call after the idle close: %v", err)
	}
}

// TestListenerMaxConnectionAge: past max_connection_age (±10%) the
// connection gets GOAWAY; a call in flight finishes when there is no
// grace, and is cut max_connection_age_grace later otherwise.
func TestListenerMaxConnectionAge(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "limits-age", 1)
	const age, grace = 300 * time.Millisecond, 300 * time.Millisecond
	t.Run("no grace", func(t *testing.T) {
		t.Parallel()
		m := startMesh(t, limitsConfig(addrs(bs), "max_connection_age: 300ms"))
		cc := dial(t, m.Addr)
		waitServing(t, cc)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := testpb.NewTestServiceClient(cc).FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		echo := func() error {
			if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 10}}}); err != nil {
				return err
			}
			_, err := st.Recv()
			return err
		}
		if err := echo(); err != nil {
			t.Fatal(err)
		}
		// The call's connection reaches its age (the one waitServing
		// used may have been closed already: the call is on a new one).
		waitLeaveReady(t, cc, 10*time.Second, false)
		// The call outlives the GOAWAY and ends normally.
		if err := echo(); err != nil {
			t.Fatalf("call in flight after GOAWAY: %v", err)
		}
		if err := st.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("call end: %v, want EOF (OK)", err)
		}
		if err := emptyCall(cc, 5*time.Second); err != nil {
			t.Errorf("call on a new connection: %v", err)
		}
	})
	t.Run("grace", func(t *testing.T) {
		t.Parallel()
		m := startMesh(t, limitsConfig(addrs(bs), "max_connection_age: 300ms, max_connection_age_grace: 300ms"))
		cc := dial(t, m.Addr)
		waitServing(t, cc)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := testpb.NewTestServiceClient(cc).FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 10}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = st.Recv() // blocks until the connection is cut
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call cut with %v, want UNAVAILABLE", err)
		}
		// The connection may have been opened up to one age before
		// start (waitServing), and the age has ±10% jitter.
		if el := time.Since(start); el < grace/2 {
			t.Errorf("call cut %v after it started, before max_connection_age_grace %v", el, grace)
		}
	})
}

// TestListenerKeepalive: after keepalive.time without a frame from
// the client, meshd PINGs it and closes the connection if nothing comes
// back within keepalive.timeout. (grpc-go raises a time under 1s to 1s.)
func TestListenerKeepalive(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "limits-ka", 1)
	const kaTime, kaTimeout = time.Second, 500 * time.Millisecond
	m := startMesh(t, limitsConfig(addrs(bs), "keepalive: {time: 1s, timeout: 500ms}"))
	c, err := h2raw.Handshake(m.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var pingAt time.Duration
	testkit.WaitFor(t, 10*time.Second, "meshd's keepalive PING", func() bool {
		// The client sends none: every PING is meshd's.
		r := c.Result()
		pingAt = c.Since()
		return r.Frames[http2.FramePing] > 0 || r.Ended
	})
	if r := c.Result(); r.Frames[http2.FramePing] == 0 {
		t.Fatalf("closed without a keepalive PING: %v", r)
	}
	if pingAt < kaTime*9/10 {
		t.Errorf("PING %v after dial, before keepalive.time %v", pingAt, kaTime)
	}
	r := c.WaitEnd(10 * time.Second)
	if !r.Ended {
		t.Fatalf("unanswered keepalive PING did not close the connection: %v", r)
	}
	if r.EndedAt < kaTime*9/10+kaTimeout/2 {
		t.Errorf("closed %v after dial, before keepalive.time + timeout", r.EndedAt)
	}
}

// TestListenerPingPolicy: a client pinging more often than
// keepalive.min_time, or at all without a call when
// permit_without_stream is false, gets GOAWAY ENHANCE_YOUR_CALM
// "too_many_pings" (grpc-go's enforcement, which meshd follows: after two
// strikes); a client within the policy does not.
func TestListenerPingPolicy(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "limits-ping", 1)
	tests := []struct {
		name, keys string
		closed     bool
	}{
		{"faster than min_time", "keepalive: {min_time: 10s}", true},
		{"no call, not permitted", "keepalive: {min_time: 50ms, permit_without_stream: false}", true},
		{"no call, permitted", "keepalive: {min_time: 50ms, permit_without_stream: true}", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := startMesh(t, limitsConfig(addrs(bs), tt.keys))
			c, err := h2raw.Handshake(m.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			const pings = 6
			tick := time.NewTicker(100 * time.Millisecond) // pacing: twice min_time in the permitted cases
			defer tick.Stop()
			for i := 0; i < pings; i++ {
				<-tick.C
				if c.Write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{byte(i)}) }) != nil {
					break // closed: checked below
				}
				// Every PING gets its ACK before the next goes out.
				testkit.WaitFor(t, 5*time.Second, "the PING's ACK", func() bool {
					r := c.Result()
					return r.Frames[http2.FramePing] > i || r.Ended || r.GoAway != nil
				})
				if c.Result().GoAway != nil {
					break
				}
			}
			if !tt.closed {
				if r := c.Result(); r.GoAway != nil || r.Ended {
					t.Fatalf("pings within the policy: %v", r)
				}
				return
			}
			r := c.WaitEnd(10 * time.Second)
			if r.GoAway == nil || r.GoAway.Code != http2.ErrCodeEnhanceYourCalm || r.GoAway.Debug != "too_many_pings" || !r.Ended {
				t.Fatalf("got %v, want GOAWAY ENHANCE_YOUR_CALM \"too_many_pings\" and the close", r)
			}
			if n := r.Frames[http2.FramePing]; n < 3 {
				t.Errorf("GOAWAY after %d PINGs answered, want at least 3 (two strikes allowed)", n)
			}
		})
	}
}
