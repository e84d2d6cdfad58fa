package test

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
	"github.com/meshd/meshd/test/backend"
)

// The abuse tests run the real meshd binary, not an in-process Server: a
// crash or a hang shows as what it is, and in the soak (soak_test.go) its
// RSS and CPU are meshd's alone (the attackers, the steady client and the
// backend live in the test process, under -race when the suite is).
//
// TestAbuse, in the default run, checks the protocol behaviour: each
// attack once, meshd's exact answer, the meshd_listener_* counter, and a
// neighbour on another connection served right after. What the attacks
// cost a steady client (p99, CPU, RSS) is measured by TestSoakAbuse and
// TestSoak, with MESHD_SOAK=1.

// Limits of the listener under attack. Small enough that the attacks
// reach them quickly on a 2-core machine.
const (
	abuseMaxStreams    = 100
	abuseMaxConns      = 64
	abuseMaxHeaderList = 64 << 10 // the default
	abuseHandshake     = 2 * time.Second
	abusePhase         = time.Second
	// abuseAttackTimeout bounds one attacking connection in TestAbuse;
	// meshd answers every attack long before it (slowloris, the slowest,
	// at abuseHandshake).
	abuseAttackTimeout = 10 * time.Second
)

func abuseConfig(bs []*backend.Backend) string {
	return abuseConfigWith(bs, "", "")
}

// abuseConfigWith adds routes (before the catch-all) and clusters, as
// YAML block sequence items.
func abuseConfigWith(bs []*backend.Backend, routes, clusters string) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
drain_timeout: 2s
listeners:
  - name: main
    address: 127.0.0.1:0
    max_concurrent_streams: %d
    max_connections: %d
    max_header_list_size: %d
    handshake_timeout: %s
routes:
%s  - {name: all, match: {prefix: /}, cluster: backends, timeout: 5s}
clusters:
  - {name: backends, endpoints: %s}
%s`, abuseMaxStreams, abuseMaxConns, abuseMaxHeaderList, abuseHandshake, routes, addrs(bs), clusters)
}

// abuseCase is one attack and what meshd must answer.
type abuseCase struct {
	name   string
	attack attackFunc
	// parallel connections attack at once (default 1).
	parallel int
	// answered says meshd's answer on a connection is complete; nil: when
	// meshd has closed it. Cases whose connection stays open by design
	// set it, so that they need not wait for a timeout.
	answered func(h2raw.Result) bool

	// answer checks what the attacking connections saw and returns a
	// one-line summary for the report.
	answer func(t *testing.T, rs []h2raw.Result) string
	// counter is the /metrics series that must grow by at least min; ""
	// when meshd exports none for this answer.
	counter string
	min     float64

	// How the soak repeats the case (soak_test.go's runAttack). With once,
	// each of the parallel connections attacks once; otherwise each makes
	// a new connection as soon as meshd closes the last, until the phase
	// ends (at most abuseMaxAttackConns).
	once bool
	// phase, when set, runs the case once for this long between two quiet
	// slices, rather than in slices (for connections held for seconds).
	phase time.Duration
	// settle is how long meshd gets to finish answering a connection once
	// the attack on it stopped (default 1.5s); cases whose connection
	// stays open by design set it short.
	settle time.Duration
}

func closedFor(reason string) string {
	return `meshd_listener_connections_closed_total{listener="main",reason="` + reason + `"}`
}

// wantGoAway: every connection that got an answer got GOAWAY with code
// (and one of the debug texts, if any are given), and meshd then closed
// it.
func wantGoAway(code http2.ErrCode, debug ...string) func(*testing.T, []h2raw.Result) string {
	debugOK := func(d string) bool {
		for _, w := range debug {
			if d == w {
				return true
			}
		}
		return len(debug) == 0
	}
	return func(t *testing.T, rs []h2raw.Result) string {
		t.Helper()
		n, seen := 0, ""
		for i, r := range rs {
			if r.GoAway == nil {
				if r.Ended || i == 0 {
					t.Errorf("connection %d: %v; want GOAWAY %s", i, r, code)
				}
				continue
			}
			if r.GoAway.Code != code || !debugOK(r.GoAway.Debug) {
				t.Errorf("connection %d: %v; want GOAWAY %s %q", i, r, code, debug)
			}
			if !r.Ended {
				t.Errorf("connection %d: %v; want it closed after the GOAWAY", i, r)
			}
			n++
			seen = r.GoAway.Debug
		}
		return fmt.Sprintf("GOAWAY %s %q, then close (%d connections)", code, seen, n)
	}
}

// wantClosed: meshd closed every connection without a GOAWAY (it never
// saw an HTTP/2 client).
func wantClosed(t *testing.T, rs []h2raw.Result) string {
	t.Helper()
	var worst time.Duration
	for i, r := range rs {
		if !r.Ended || r.GoAway != nil || len(r.Statuses) > 0 {
			t.Errorf("connection %d: %v; want it closed without an answer", i, r)
		}
		worst = max(worst, r.EndedAt)
	}
	return fmt.Sprintf("close, after meshd's SETTINGS (%d connections, slowest closed in %s)", len(rs), worst.Round(time.Millisecond))
}

// wantRefused: the streams past max_concurrent_streams are refused one
// by one and the connection stays open.
func wantRefused(t *testing.T, rs []h2raw.Result) string {
	r := rs[0]
	if got := r.Settings[http2.SettingMaxConcurrentStreams]; got != abuseMaxStreams {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want %d", got, abuseMaxStreams)
	}
	if r.Resets[http2.ErrCodeRefusedStream] != 50 || r.GoAway != nil || r.Ended {
		t.Errorf("%v; want 50 RST_STREAM REFUSED_STREAM, the connection left open", r)
	}
	return fmt.Sprintf("RST_STREAM REFUSED_STREAM on each of the %d excess streams; the connection stays open", r.Resets[http2.ErrCodeRefusedStream])
}

// wantSlowlorisClosed: each connection closed at handshake_timeout.
func wantSlowlorisClosed(t *testing.T, rs []h2raw.Result) string {
	var first, last time.Duration
	for i, r := range rs {
		if !r.Ended || r.EndedAt < abuseHandshake-100*time.Millisecond || r.EndedAt > abuseHandshake+time.Second {
			t.Errorf("slowloris connection %d: %v; want it closed at handshake_timeout %s", i, r, abuseHandshake)
		}
		if i == 0 || r.EndedAt < first {
			first = r.EndedAt
		}
		last = max(last, r.EndedAt)
	}
	return fmt.Sprintf("close at handshake_timeout (%d connections, closed after %s-%s)", len(rs), first.Round(10*time.Millisecond), last.Round(10*time.Millisecond))
}

func wantRejected(t *testing.T, rs []h2raw.Result) string {
	rejected, admitted := 0, 0
	for _, r := range rs {
		if r.Ended && r.Frames[http2.FrameSettings] == 0 {
			rejected++
		} else {
			admitted++
		}
	}
	// The neighbour (in the soak: the steady client) holds one connection.
	if admitted > abuseMaxConns-1 || rejected < 20 {
		t.Errorf("%d connections admitted, %d closed at once; want at most %d admitted", admitted, rejected, abuseMaxConns-1)
	}
	return fmt.Sprintf("%d closed at once, %d admitted (max_connections %d, one held by the neighbour)", rejected, admitted, abuseMaxConns)
}

// noCounter marks an answer that has no meshd_listener_* series.
const noCounter = ""

var abuseCases = []abuseCase{
	{name: "rapid_reset", attack: rapidReset,
		answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "rapid_reset"), counter: closedFor("rapid_reset"), min: 1},
	// Keepalive enforcement (after 3 PINGs, grpc-go's rules) or the flood
	// rule (after 100), whichever the connection meets first.
	{name: "ping_flood", attack: pingFlood,
		answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "too_many_pings", "ping_flood"), counter: `meshd_listener_goaways_sent_total{code="ENHANCE_YOUR_CALM",listener="main"}`, min: 1},
	{name: "settings_flood", attack: settingsFlood,
		answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "settings_flood"), counter: closedFor("settings_flood"), min: 1},
	{name: "empty_data_flood", attack: emptyDataFlood,
		answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "empty_frames"), counter: closedFor("empty_frames"), min: 1},
	{name: "window_update_flood", attack: windowUpdateFlood,
		answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "window_update_flood"), counter: closedFor("window_update_flood"), min: 1},
	{name: "continuation_flood", attack: continuationFlood,
		answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "headers_too_large"), counter: closedFor("headers_too_large"), min: 1},
	{name: "empty_continuation_flood", attack: emptyContinuationFlood,
		answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "empty_frames"), counter: closedFor("empty_frames"), min: 1},
	{name: "oversized_header_list", attack: oversizedHeaders,
		answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "headers_too_large"), counter: closedFor("headers_too_large"), min: 1},
	// A small block that decodes to a list over the limit: the stream
	// alone is refused, with an answer the client can read.
	{name: "oversized_header_list_hpack_bomb", attack: oversizedIndexedHeaders,
		answered: func(r h2raw.Result) bool { return r.Statuses["8"] > 0 },
		answer: func(t *testing.T, rs []h2raw.Result) string {
			r := rs[0]
			if r.Statuses["http:431"] != 1 || r.Statuses["8"] != 1 || r.GoAway != nil || r.Ended {
				t.Errorf("%v; want HTTP 431 with grpc-status RESOURCE_EXHAUSTED, the connection left open", r)
			}
			return "HTTP 431, grpc-status RESOURCE_EXHAUSTED " + strconv.Quote(r.Message) + "; the connection stays open"
		},
		counter: noCounter,
		once:    true, phase: abusePhase, settle: 100 * time.Millisecond},
	{name: "more_streams_than_advertised", attack: tooManyStreams,
		answered: func(r h2raw.Result) bool { return r.Resets[http2.ErrCodeRefusedStream] >= 50 },
		answer:   wantRefused, counter: `meshd_listener_stream_resets_sent_total{code="REFUSED_STREAM",listener="main"}`, min: 50,
		once: true, phase: abusePhase, settle: 100 * time.Millisecond},
	{name: "garbage", attack: garbage,
		answer: wantClosed, counter: closedFor("not_http2"), min: 1},
	{name: "http1_on_grpc_port", attack: http1,
		answer: wantClosed, counter: closedFor("not_http2"), min: 1},
	{name: "preface_then_junk", attack: prefaceThenJunk,
		answer: wantGoAway(http2.ErrCodeFrameSize, "frame_too_large"), counter: closedFor("frame_too_large"), min: 1},
	{name: "slowloris", attack: slowloris, parallel: 10,
		answer: wantSlowlorisClosed, counter: closedFor("handshake_timeout"), min: 10,
		once: true, phase: abuseHandshake + time.Second, settle: 100 * time.Millisecond},
	// Admitted connections are held (until every attacker has its answer)
	// so that the ones over the limit find it reached.
	{name: "connections_over_max", attack: holdConn, parallel: abuseMaxConns + 20,
		answered: func(r h2raw.Result) bool { return r.Frames[http2.FrameSettings] > 0 },
		answer:   wantRejected, counter: `meshd_listener_connections_rejected_total{listener="main"}`, min: 20,
		once: true, phase: abusePhase, settle: 100 * time.Millisecond},
}

// holdConn opens a well-behaved connection and holds it until the attack
// ends (or, with opt.answered, until meshd admitted it).
func holdConn(ctx context.Context, addr string, opt attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	waitCtx(ctx, c, opt, time.Minute)
	return c, nil
}

// TestAbuse attacks a running meshd with each abuse case in turn, once:
// the attacker gets the exact protocol answer (GOAWAY or RST_STREAM code
// and debug data, HTTP status, or a silent close), the case's
// meshd_listener_* counter grows, and a neighbour client on a connection
// of its own is served right after. It measures nothing over time:
// TestSoakAbuse does, with MESHD_SOAK=1.
func TestAbuse(t *testing.T) {
	bin := buildMeshd(t)
	bs := startBackends(t, "abuse", 1)
	p := startBinary(t, bin, writeConfig(t, abuseConfig(bs)))
	neighbour := dial(t, p.addr)
	waitServing(t, neighbour)

	var report strings.Builder
	for _, tc := range abuseCases {
		ok := t.Run(tc.name, func(t *testing.T) {
			before := scrapeMetrics(t, p.admin).Samples()
			rs := attackOnce(tc, p.addr)
			answer := tc.answer(t, rs)
			if tc.counter == noCounter {
				answer += "; no meshd_listener_* counter"
			} else {
				var after map[string]float64
				testkit.WaitFor(t, 5*time.Second, tc.counter+" to grow", func() bool {
					after = scrapeMetrics(t, p.admin).Samples()
					return after[tc.counter]-before[tc.counter] >= tc.min
				})
				answer += fmt.Sprintf("; %s +%g", shortSeries(tc.counter), after[tc.counter]-before[tc.counter])
			}
			if err := emptyCall(neighbour, 5*time.Second); err != nil {
				t.Errorf("neighbour's call right after the attack: %v", err)
			}
			fmt.Fprintf(&report, "| %s | %s |\n", tc.name, answer)
		})
		select {
		case <-p.exited:
			t.Fatalf("meshd exited after %s (subtest ok: %v): %v\n%s", tc.name, ok, p.err, p.Log())
		default:
		}
	}
	var series []string
	for k, v := range scrapeMetrics(t, p.admin).Samples() {
		if strings.HasPrefix(k, "meshd_listener_") && v != 0 {
			series = append(series, fmt.Sprintf("%s %g", k, v))
		}
	}
	sort.Strings(series)
	t.Logf("meshd's listener counters at the end:\n%s", strings.Join(series, "\n"))
	t.Log("\n| input | meshd's response |\n|---|---|\n" + report.String())
}

// attackOnce runs tc's attack on tc.parallel connections at once, each
// once, and returns what each saw once meshd's answer on it was complete
// (tc.answered, or the connection closed). Connections are closed only
// when every attacker has its answer, so that held ones count against
// the listener's limits until then.
func attackOnce(tc abuseCase, addr string) []h2raw.Result {
	answered := tc.answered
	if answered == nil {
		answered = func(r h2raw.Result) bool { return r.Ended }
	}
	opt := attackOpts{maxStreams: abuseMaxStreams, maxHeaderListSize: abuseMaxHeaderList, answered: answered}
	par := max(tc.parallel, 1)
	conns := make([]*h2raw.Recorder, par)
	rs := make([]h2raw.Result, par)
	var wg sync.WaitGroup
	for i := range par {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), abuseAttackTimeout)
			defer cancel()
			c, err := tc.attack(ctx, addr, opt)
			if err != nil {
				// meshd closed the connection before the client preface
				// was out (max_connections): that is an answer too.
				rs[i] = h2raw.Result{Frames: map[http2.FrameType]int{}, Ended: true, EndErr: err}
				return
			}
			// A flood stops writing once meshd closed the connection; the
			// close itself may still be on its way.
			waitCtx(ctx, c, opt, abuseAttackTimeout)
			conns[i] = c
			rs[i] = c.Result()
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	return rs
}

func shortSeries(s string) string { return strings.TrimPrefix(s, "meshd_listener_") }
