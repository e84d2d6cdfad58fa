package healthwatch

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestConnectParams(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	for _, tc := range []struct {
		max, timeout       time.Duration
		wantBase, wantCap  time.Duration
		wantConnectTimeout time.Duration
	}{
		{time.Second, 5 * time.Second, 100 * ms, time.Second * 2 / 3, 5 * time.Second},
		{9 * time.Second, time.Second, 100 * ms, 6 * time.Second, time.Second},
		{100 * ms, time.Second, 100 * ms * 2 / 3, 100 * ms * 2 / 3, time.Second}, // base never above the cap
		{0, 0, 100 * ms, time.Second * 2 / 3, 20 * time.Second},                  // defaults
	} {
		p := ConnectParams(tc.max, tc.timeout)
		if p.Backoff.BaseDelay != tc.wantBase || p.Backoff.MaxDelay != tc.wantCap || p.MinConnectTimeout != tc.wantConnectTimeout {
			t.Errorf("ConnectParams(%v, %v) = base %v cap %v timeout %v, want %v %v %v", tc.max, tc.timeout,
				p.Backoff.BaseDelay, p.Backoff.MaxDelay, p.MinConnectTimeout, tc.wantBase, tc.wantCap, tc.wantConnectTimeout)
		}
		// grpc-go jitters the capped delay by ±Jitter: the longest wait
		// must stay within 80% of the maximum.
		max := tc.max
		if max <= 0 {
			max = time.Second
		}
		if longest := time.Duration(float64(p.Backoff.MaxDelay) * (1 + p.Backoff.Jitter)); longest > max*8/10+time.Microsecond {
			t.Errorf("ConnectParams(%v): longest jittered wait %v, above 80%% of the maximum", tc.max, longest)
		}
	}
}

// dialReconnect dials addr the way meshd does, with ConnectParams.
func dialReconnect(t *testing.T, addr string, reconnectMax, connectTimeout time.Duration) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(ConnectParams(reconnectMax, connectTimeout)))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestWatchBackAfterOutage stops a backend long enough for the
// connection's backoff to reach its cap, restarts it on the same port and
// measures how long after it listens again Watch reports SERVING: within
// the reconnect maximum (plus headroom for a loaded machine), because the
// stream after a failure waits for the connection instead of sleeping
// through its own backoff.
func TestWatchBackAfterOutage(t *testing.T) {
	t.Parallel()
	const reconnectMax = 500 * time.Millisecond
	for _, mode := range []string{"watch", "check"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			register := withHealth(health.NewServer())
			if mode == "check" {
				register = func(s *grpc.Server) { healthpb.RegisterHealthServer(s, checkOnly{hs: health.NewServer()}) }
			}
			b := startBackend(t, "127.0.0.1:0", register)
			w := startWatch(t, dialReconnect(t, b.addr, reconnectMax, time.Second), "",
				WithBackoff(10*time.Millisecond, reconnectMax), WithCheckInterval(100*time.Millisecond))
			w.until("SERVING", func(r Report) bool { return r.State == StateServing })

			b.stop()
			r := w.until("NotServing after the stop", func(r Report) bool { return r.State == StateNotServing })
			if !r.Unreachable {
				t.Errorf("report after the backend stopped: %+v, want Unreachable", r)
			}
			// The outage: long enough for several failed reconnects, so
			// the backoff is at its cap when the backend returns.
			outage := time.NewTimer(2 * time.Second)
			<-outage.C
			lis, err := net.Listen("tcp", b.addr)
			if err != nil {
				t.Fatalf("listen again on %s: %v", b.addr, err)
			}
			listening := time.Now()
			srv := grpc.NewServer()
			register(srv)
			var wg sync.WaitGroup
			wg.Go(func() { _ = srv.Serve(lis) })
			t.Cleanup(func() { srv.Stop(); wg.Wait() })

			w.until("SERVING from the restarted backend", func(r Report) bool { return r.State == StateServing })
			took := time.Since(listening)
			t.Logf("%s mode: SERVING %v after the backend listened again (reconnect max %v)", mode, took.Round(time.Millisecond), reconnectMax)
			if took > reconnectMax+time.Second {
				t.Errorf("SERVING %v after listening, want within the reconnect maximum %v (+1s headroom)", took, reconnectMax)
			}
		})
	}
}

// TestWatchBlackHole points Watch at a port that accepts TCP connections
// and never speaks HTTP/2: one NotServing verdict, never SERVING, and one
// connection per connect timeout plus backoff, not a hot loop.
func TestWatchBlackHole(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		lis.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})

	const connectTimeout, window = 300 * time.Millisecond, 3 * time.Second
	start := time.Now()
	w := startWatch(t, dialReconnect(t, lis.Addr().String(), 200*time.Millisecond, connectTimeout), "", fast()...)
	r := w.next()
	if r.State != StateNotServing || !r.Unreachable || !strings.HasPrefix(r.Reason, "stream error: ") {
		t.Fatalf("first report %+v, want NotServing, unreachable, stream error", r)
	}
	select {
	case r := <-w.reports:
		t.Fatalf("second report %+v from a black hole", r)
	case <-time.After(window - time.Since(start)):
	}
	mu.Lock()
	n := len(conns)
	mu.Unlock()
	// Each try holds its connection for the connect timeout and then
	// backs off: fewer than one connection per connect timeout.
	t.Logf("black hole: %d connections in %v (connect timeout %v)", n, window, connectTimeout)
	if max := int(window/connectTimeout) + 1; n > max {
		t.Errorf("%d connections to a black hole in %v, want at most %d", n, window, max)
	}
}
