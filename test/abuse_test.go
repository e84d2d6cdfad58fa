package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/test/backend"
)

// The abuse test runs the real meshd binary, not an in-process Server:
// its RSS and CPU are then meshd's alone (the attackers, the steady client
// and the backend live in the test process, under -race when the suite
// is), and a crash or a hang shows as what it is.

// Limits of the listener under attack. Small enough that the attacks
// reach them quickly on a 2-core machine.
const (
	abuseMaxStreams    = 100
	abuseMaxConns      = 64
	abuseMaxHeaderList = 64 << 10 // the default
	abuseHandshake     = 2 * time.Second
	abusePhase         = time.Second
	abuseRSSBoundMiB   = 200 // meshd's peak RSS over the whole test
	abuseP99Ratio      = 3.0
	abuseP99Floor      = 20 * time.Millisecond // see p99OK
	// abuseMaxCores bounds meshd's CPU during an attack: half the
	// machine. The attacks are bounded in rate (abuseMaxAttackConns per
	// phase), so this checks that meshd's answer costs little per attack,
	// not that it survives an unbounded one.
	abuseMaxCores       = 1.0
	steadyRate          = 800 // calls per second
	steadyTick          = 5 * time.Millisecond
	steadyMaxInFlight   = 2000
	steadyCallTimeout   = 5 * time.Second
	abuseQuietBaseline  = 3 * time.Second
	abuseQuietAfterEach = 500 * time.Millisecond
)

func abuseConfig(engine string, bs []*backend.Backend) string {
	return abuseConfigWith(engine, bs, "", "")
}

// abuseConfigWith adds routes (before the catch-all) and clusters, as
// YAML block sequence items.
func abuseConfigWith(engine string, bs []*backend.Backend, routes, clusters string) string {
	return fmt.Sprintf(`
engine: %s
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
%s`, engine, abuseMaxStreams, abuseMaxConns, abuseMaxHeaderList, abuseHandshake, routes, addrs(bs), clusters)
}

// abuseCase is one attack and what meshd must answer.
type abuseCase struct {
	name   string
	attack attackFunc
	// parallel connections attack at once (default 1); with once, each
	// makes one connection, otherwise a new one as soon as meshd closes
	// the last, until the phase ends (at most abuseMaxAttackConns).
	parallel int
	once     bool
	// phase, when set, runs the case once for this long between two quiet
	// slices, rather than in slices (for connections held for seconds).
	phase time.Duration
	// settle is how long meshd gets to finish answering a connection once
	// the attack on it stopped (default 1.5s: grpc-go closes a second
	// after its too_many_pings GOAWAY); cases whose connection stays open
	// by design set it short.
	settle time.Duration
	// want is what meshd must do, by engine.
	want map[string]abuseWant
}

// abuseWant is one engine's expected answer to an attack.
type abuseWant struct {
	// answer checks what the attacking connections saw and returns a
	// one-line summary for the report.
	answer func(t *testing.T, rs []rawResult) string
	// counter is the /metrics series that must grow by at least min;
	// "" when the engine exports none for this attack.
	counter string
	min     float64
	// gap, when set, is a known shortcoming of the engine: the case is
	// skipped with this explanation instead of failing.
	gap string
}

// abuseMaxAttackConns caps the connections of one repeated attack per
// phase: 100 a second. The attackers share the 2-core machine with meshd
// and the steady client; faster connection churn measures the attacker's
// own CPU use as much as meshd's.
const abuseMaxAttackConns = 100

func closedFor(reason string) string {
	return `meshd_listener_connections_closed_total{listener="main",reason="` + reason + `"}`
}

// wantGoAway: every connection that got an answer got GOAWAY with code
// (and one of the debug texts, if any are given), and meshd then closed
// it.
func wantGoAway(code http2.ErrCode, debug ...string) func(*testing.T, []rawResult) string {
	debugOK := func(d string) bool {
		for _, w := range debug {
			if d == w {
				return true
			}
		}
		return len(debug) == 0
	}
	return func(t *testing.T, rs []rawResult) string {
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
func wantClosed(t *testing.T, rs []rawResult) string {
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
func wantRefused(t *testing.T, rs []rawResult) string {
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
func wantSlowlorisClosed(t *testing.T, rs []rawResult) string {
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

func wantRejected(t *testing.T, rs []rawResult) string {
	rejected, admitted := 0, 0
	for _, r := range rs {
		if r.Ended && r.Frames[http2.FrameSettings] == 0 {
			rejected++
		} else {
			admitted++
		}
	}
	// The steady client holds one connection.
	if admitted > abuseMaxConns-1 || rejected < 20 {
		t.Errorf("%d connections admitted, %d closed at once; want at most %d admitted", admitted, rejected, abuseMaxConns-1)
	}
	return fmt.Sprintf("%d closed at once, %d admitted (max_connections %d, one held by the steady client)", rejected, admitted, abuseMaxConns)
}

// The frame engine (h2proxy) is not behind h2guard (server/frame.go): it
// applies h2guard's rules inside its connections and reports them under
// the same meshd_listener_* series (h2proxy/abuse.go). A shortcoming of
// it would be recorded here with frameGap and reported.
const frameNoCounters = "" // no /metrics series for this answer

func frameGap(what string) abuseWant { return abuseWant{gap: "frame engine (h2proxy): " + what} }

var abuseCases = []abuseCase{
	{name: "rapid_reset", attack: rapidReset, want: map[string]abuseWant{
		"grpc":  {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "rapid_reset"), counter: closedFor("rapid_reset"), min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "rapid_reset"), counter: closedFor("rapid_reset"), min: 1},
	}},
	{name: "ping_flood", attack: pingFlood, want: map[string]abuseWant{
		// Keepalive enforcement (after 3 PINGs: grpc-go's, or the frame
		// engine's own with the same rules) or the flood rule (after
		// 100), whichever the connection meets first.
		"grpc":  {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "too_many_pings", "ping_flood"), counter: `meshd_listener_goaways_sent_total{code="ENHANCE_YOUR_CALM",listener="main"}`, min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "too_many_pings", "ping_flood"), counter: `meshd_listener_goaways_sent_total{code="ENHANCE_YOUR_CALM",listener="main"}`, min: 1},
	}},
	{name: "settings_flood", attack: settingsFlood, want: map[string]abuseWant{
		"grpc":  {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "settings_flood"), counter: closedFor("settings_flood"), min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "settings_flood"), counter: closedFor("settings_flood"), min: 1},
	}},
	{name: "empty_data_flood", attack: emptyDataFlood, want: map[string]abuseWant{
		"grpc":  {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "empty_frames"), counter: closedFor("empty_frames"), min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "empty_frames"), counter: closedFor("empty_frames"), min: 1},
	}},
	{name: "window_update_flood", attack: windowUpdateFlood, want: map[string]abuseWant{
		"grpc":  {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "window_update_flood"), counter: closedFor("window_update_flood"), min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "window_update_flood"), counter: closedFor("window_update_flood"), min: 1},
	}},
	{name: "continuation_flood", attack: continuationFlood, want: map[string]abuseWant{
		"grpc":  {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "headers_too_large"), counter: closedFor("headers_too_large"), min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "headers_too_large"), counter: closedFor("headers_too_large"), min: 1},
	}},
	{name: "empty_continuation_flood", attack: emptyContinuationFlood, want: map[string]abuseWant{
		"grpc":  {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "empty_frames"), counter: closedFor("empty_frames"), min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "empty_frames"), counter: closedFor("empty_frames"), min: 1},
	}},
	{name: "oversized_header_list", attack: oversizedHeaders, want: map[string]abuseWant{
		"grpc":  {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "headers_too_large"), counter: closedFor("headers_too_large"), min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeEnhanceYourCalm, "headers_too_large"), counter: closedFor("headers_too_large"), min: 1},
	}},
	{name: "oversized_header_list_hpack_bomb", attack: oversizedIndexedHeaders, once: true, phase: abusePhase, settle: 100 * time.Millisecond, want: map[string]abuseWant{
		"grpc": {
			answer: func(t *testing.T, rs []rawResult) string {
				r := rs[0]
				if r.Resets[http2.ErrCodeFrameSize] != 1 || r.GoAway != nil || r.Ended {
					t.Errorf("%v; want RST_STREAM FRAME_SIZE_ERROR, the connection left open", r)
				}
				return "RST_STREAM FRAME_SIZE_ERROR on the stream; the connection stays open"
			},
			counter: `meshd_listener_stream_resets_sent_total{code="FRAME_SIZE_ERROR",listener="main"}`, min: 1,
		},
		"frame": {
			answer: func(t *testing.T, rs []rawResult) string {
				r := rs[0]
				if r.Statuses["http:431"] != 1 || r.Statuses["8"] != 1 || r.GoAway != nil || r.Ended {
					t.Errorf("%v; want HTTP 431 with grpc-status RESOURCE_EXHAUSTED, the connection left open", r)
				}
				return "HTTP 431, grpc-status RESOURCE_EXHAUSTED " + strconv.Quote(r.Message) + "; the connection stays open"
			},
			counter: frameNoCounters,
		},
	}},
	{name: "more_streams_than_advertised", attack: tooManyStreams, once: true, phase: abusePhase, settle: 100 * time.Millisecond, want: map[string]abuseWant{
		"grpc":  {answer: wantRefused, counter: `meshd_listener_stream_resets_sent_total{code="REFUSED_STREAM",listener="main"}`, min: 50},
		"frame": {answer: wantRefused, counter: `meshd_listener_stream_resets_sent_total{code="REFUSED_STREAM",listener="main"}`, min: 50},
	}},
	{name: "garbage", attack: garbage, want: map[string]abuseWant{
		"grpc":  {answer: wantClosed, counter: closedFor("not_http2"), min: 1},
		"frame": {answer: wantClosed, counter: closedFor("not_http2"), min: 1},
	}},
	{name: "http1_on_grpc_port", attack: http1, want: map[string]abuseWant{
		"grpc":  {answer: wantClosed, counter: closedFor("not_http2"), min: 1},
		"frame": {answer: wantClosed, counter: closedFor("not_http2"), min: 1},
	}},
	{name: "preface_then_junk", attack: prefaceThenJunk, want: map[string]abuseWant{
		"grpc":  {answer: wantGoAway(http2.ErrCodeFrameSize, "frame_too_large"), counter: closedFor("frame_too_large"), min: 1},
		"frame": {answer: wantGoAway(http2.ErrCodeFrameSize, "frame_too_large"), counter: closedFor("frame_too_large"), min: 1},
	}},
	{name: "slowloris", attack: slowloris, parallel: 10, once: true, phase: abuseHandshake + time.Second, settle: 100 * time.Millisecond, want: map[string]abuseWant{
		"grpc":  {answer: wantSlowlorisClosed, counter: closedFor("handshake_timeout"), min: 10},
		"frame": {answer: wantSlowlorisClosed, counter: closedFor("handshake_timeout"), min: 10},
	}},
	{name: "connections_over_max", attack: holdConn, parallel: abuseMaxConns + 20, once: true, phase: abusePhase, settle: 100 * time.Millisecond, want: map[string]abuseWant{
		"grpc":  {answer: wantRejected, counter: `meshd_listener_connections_rejected_total{listener="main"}`, min: 20},
		"frame": {answer: wantRejected, counter: `meshd_listener_connections_rejected_total{listener="main"}`, min: 20},
	}},
}

// holdConn opens a well-behaved connection and holds it for the phase.
func holdConn(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	waitCtx(ctx, c, time.Minute)
	return c, nil
}

// TestAbuse attacks a running meshd with each abuse case in turn while a
// well-behaved client keeps a steady load on it. For each case: the
// attacker gets a protocol-correct answer, a /metrics counter grows, the
// steady client sees no failure and its p99 stays within 3x of its
// undisturbed p99 (measured first, in the same run), and meshd's RSS
// stays under abuseRSSBoundMiB.
func TestAbuse(t *testing.T) {
	bin := buildMeshd(t)
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) { testAbuse(t, bin, engine) })
	}
}

func testAbuse(t *testing.T, bin, engine string) {
	bs := startBackends(t, "abuse", 1)
	p := startBinary(t, bin, writeConfig(t, abuseConfig(engine, bs)))
	pid := p.cmd.Process.Pid
	cc := dial(t, p.addr)
	waitServing(t, cc)

	mon := startMonitor(t, pid, testpb.NewTestServiceClient(cc))
	mon.next("warmup")
	sleepPhase(time.Second)
	quiet := newPhase("quiet")
	mon.sliced(quiet, abuseQuietBaseline)

	opt := attackOpts{maxStreams: abuseMaxStreams, maxHeaderListSize: abuseMaxHeaderList}
	type row struct {
		name, answer string
		ph, ref      *phase
	}
	var rows []row
	for _, tc := range abuseCases {
		want, ok := tc.want[engine]
		if !ok {
			t.Errorf("%s: no expectation for engine %s", tc.name, engine)
			continue
		}
		ok = t.Run(tc.name, func(t *testing.T) {
			if want.gap != "" {
				rows = append(rows, row{tc.name, "KNOWN GAP: " + want.gap, nil, nil})
				t.Skip(want.gap)
			}
			before := scrapeMetrics(t, p.admin)
			ref, ph, rs := measureAttack(mon, tc, p.addr, opt, "")
			if len(rs) == 0 {
				t.Fatal("no attacking connection could be made")
			}
			answer := want.answer(t, rs)
			if want.counter == "" {
				answer += "; no /metrics counter"
			} else {
				var after map[string]float64
				waitFor(t, 5*time.Second, want.counter+" to grow", func() bool {
					after = scrapeMetrics(t, p.admin)
					return after[want.counter]-before[want.counter] >= want.min
				})
				answer += fmt.Sprintf("; %s +%g", shortSeries(want.counter), after[want.counter]-before[want.counter])
			}
			// A stall of the whole machine (it is shared, 2 cores) can
			// push one phase's p99 past the bound; a real effect of the
			// attack shows again when it is measured once more.
			if slow := steadySlow(quiet, ref, ph); slow != "" {
				t.Logf("%s; measuring once more", slow)
				ref, ph, _ = measureAttack(mon, tc, p.addr, opt, " (again)")
			}
			rows = append(rows, row{tc.name, answer, ph, ref})
			checkSteady(t, quiet, ref, ph)
		})
		if !ok && !mon.alive() {
			t.Fatalf("meshd died:\n%s", p.Log())
		}
	}
	// Nothing lingers: a last quiet phase is as good as the first.
	final := newPhase("quiet after")
	mon.sliced(final, abuseQuietBaseline)
	if slow := steadySlow(quiet, quiet, final); slow != "" {
		t.Logf("%s; measuring once more", slow)
		final = newPhase("quiet after (again)")
		mon.sliced(final, abuseQuietBaseline)
	}
	mon.stop()
	checkSteady(t, quiet, quiet, final)
	var series []string
	for k, v := range scrapeMetrics(t, p.admin) {
		if strings.HasPrefix(k, "meshd_listener_") && v != 0 {
			series = append(series, fmt.Sprintf("%s %g", k, v))
		}
	}
	sort.Strings(series)
	t.Logf("meshd's listener counters at the end:\n%s", strings.Join(series, "\n"))

	peak := mon.peakRSSKiB()
	if peak > abuseRSSBoundMiB<<10 {
		t.Errorf("meshd peak RSS %.1f MiB, bound %d MiB", float64(peak)/1024, abuseRSSBoundMiB)
	}
	// The report: input → meshd's response → effect on the steady client.
	var b strings.Builder
	fmt.Fprintf(&b, "engine %s; undisturbed p99 %s over %d calls; meshd peak RSS %.1f MiB (bound %d)\n", engine, quiet.typicalP99(), quiet.n(), float64(peak)/1024, abuseRSSBoundMiB)
	fmt.Fprintf(&b, "| input | meshd's response | steady client: calls, failures, p99 (ratio) | meshd CPU | meshd peak RSS |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		if r.ph == nil {
			fmt.Fprintf(&b, "| %s | %s | | | |\n", r.name, r.answer)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %d, %d, %s (%.2fx) | %.2f cores | %.1f MiB |\n", r.name, r.answer, r.ph.n(), r.ph.failures(), r.ph.typicalP99(), ratio(r.ph.typicalP99(), reference(quiet, r.ref)), r.ph.cores(), float64(r.ph.rssPeak.Load())/1024)
	}
	fmt.Fprintf(&b, "| (none, after all) | | %d, %d, %s (%.2fx) | %.2f cores | %.1f MiB |\n", final.n(), final.failures(), final.typicalP99(), ratio(final.typicalP99(), quiet.typicalP99()), final.cores(), float64(final.rssPeak.Load())/1024)
	t.Log("\n" + b.String())
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(max(b, time.Microsecond)) }

func shortSeries(s string) string { return strings.TrimPrefix(s, "meshd_listener_") }

// sleepPhase lets a measurement phase run: the load runs on its own
// goroutines; this is the length of the sample, not a wait for state.
func sleepPhase(d time.Duration) { time.Sleep(d) }

// p99OK says whether an attack phase's p99 is acceptable next to the
// undisturbed one: within abuseP99Ratio times it, or within abuseP99Floor
// of it. The floor keeps the test meaningful on a shared 2-core machine
// where the undisturbed p99 is a fraction of a millisecond: 3x of 400µs
// is inside scheduler noise, while a real effect of an attack (meshd
// stalled, a queue behind the attacker) costs tens of milliseconds.
func p99OK(attack, quiet time.Duration) bool {
	return float64(attack) <= abuseP99Ratio*float64(quiet) || attack <= quiet+abuseP99Floor
}

// reference is the undisturbed p99 an attack phase is held to: the
// larger of the run's first quiet phase and the quiet phase just before
// the attack (the machine is shared: its background load drifts).
func reference(quiet, ref *phase) time.Duration { return max(quiet.typicalP99(), ref.typicalP99()) }

// steadySlow says why ph's p99 is out of bounds, or "".
func steadySlow(quiet, ref, ph *phase) string {
	r, got := reference(quiet, ref), ph.typicalP99()
	if p99OK(got, r) {
		return ""
	}
	return fmt.Sprintf("steady client p99 %s during %s (all calls: %s), undisturbed %s: ratio %.2f (allowed %.1fx or +%s)", got, ph.name, ph.p99(), r, ratio(got, r), abuseP99Ratio, abuseP99Floor)
}

// checkSteady holds the steady client's calls during ph to the rules:
// none failed, enough were made, p99 within bounds, and meshd's CPU
// bounded.
func checkSteady(t *testing.T, quiet, ref, ph *phase) {
	t.Helper()
	if f := ph.failures(); f > 0 {
		t.Errorf("steady client: %d of %d calls failed during %s, first: %v", f, ph.n(), ph.name, ph.firstErr())
	}
	if ph.n() < 100 {
		t.Errorf("steady client made only %d calls during %s", ph.n(), ph.name)
	}
	if slow := steadySlow(quiet, ref, ph); slow != "" {
		t.Error(slow)
	}
	if c := ph.cores(); c > abuseMaxCores {
		t.Errorf("meshd used %.2f cores during %s, bound %.1f", c, ph.name, abuseMaxCores)
	}
	r := reference(quiet, ref)
	t.Logf("steady client during %s: %d calls, p99 %s (all calls %s; undisturbed %s, ratio %.2f), meshd %.2f cores, peak RSS %.1f MiB",
		ph.name, ph.n(), ph.typicalP99(), ph.p99(), r, ratio(ph.typicalP99(), r), ph.cores(), float64(ph.rssPeak.Load())/1024)
}

// Attack and quiet slices alternate abuseSlices times, so that both see
// the same background load on a shared machine: a burst of someone
// else's work lands in either, not in the attack phase alone.
const (
	abuseSlices   = 4
	abuseSliceLen = abusePhase / abuseSlices
)

// measureAttack runs tc against addr while the steady client runs, and
// returns the quiet phase around it, the attack phase and what the
// attacking connections saw. Cases with a phase of their own (connections
// held for seconds) run once between two quiet slices.
func measureAttack(mon *monitor, tc abuseCase, addr string, opt attackOpts, suffix string) (ref, ph *phase, rs []rawResult) {
	ref, ph = newPhase("quiet around "+tc.name+suffix), newPhase(tc.name+suffix)
	quiet := func(d time.Duration) { mon.enter(ref); sleepPhase(d) }
	if tc.phase > 0 {
		mon.sliced(ref, abuseQuietAfterEach)
		done := make(chan []rawResult, 1)
		go func() { done <- runAttack(tc, addr, opt, tc.phase) }()
		for finished := false; !finished; {
			mon.enter(ph)
			select {
			case rs = <-done:
				finished = true
			case <-time.After(abuseSliceLen):
			}
		}
		mon.sliced(ref, abuseQuietAfterEach)
	} else {
		for range abuseSlices {
			quiet(abuseSliceLen)
			mon.enter(ph)
			rs = append(rs, runAttack(tc, addr, opt, abuseSliceLen)...)
		}
		quiet(abuseSliceLen)
	}
	mon.next("after " + tc.name + suffix)
	return ref, ph, rs
}

// runAttack runs one case for d and returns what each attacking
// connection saw.
func runAttack(tc abuseCase, addr string, opt attackOpts, d time.Duration) []rawResult {
	par := max(tc.parallel, 1)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var (
		mu    sync.Mutex
		rs    []rawResult
		conns atomic.Int32
		wg    sync.WaitGroup
	)
	// Repeated attacks spread their connections over the phase, so that
	// the steady client is measured under attack for all of it.
	gap := abusePhase * time.Duration(par) / abuseMaxAttackConns
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := time.Now()
			for ctx.Err() == nil && conns.Add(1) <= abuseMaxAttackConns {
				if !tc.once {
					pace := time.NewTimer(time.Until(next))
					select {
					case <-ctx.Done():
					case <-pace.C:
					}
					pace.Stop()
					next = next.Add(gap)
					if ctx.Err() != nil {
						return
					}
				}
				// An attack started late in the phase still gets to finish
				// its opening moves, so that its connection has an answer.
				actx, acancel := context.WithDeadline(context.Background(), later(ctx, minAttack))
				c, err := tc.attack(actx, addr, opt)
				acancel()
				if err != nil {
					// meshd may close a connection before the preface is
					// even written (max_connections): that is an answer.
					if tc.once {
						return
					}
					continue
				}
				settle := tc.settle
				if settle == 0 {
					settle = 1500 * time.Millisecond
				}
				r := c.WaitEnd(settle)
				c.Close()
				mu.Lock()
				rs = append(rs, r)
				mu.Unlock()
				if tc.once {
					return
				}
			}
		}()
	}
	wg.Wait()
	return rs
}

// minAttack is the least time an attacking connection gets.
const minAttack = 200 * time.Millisecond

// later is ctx's deadline or d from now, whichever is later.
func later(ctx context.Context, d time.Duration) time.Time {
	dl, _ := ctx.Deadline()
	return maxTime(dl, time.Now().Add(d))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// phase is one measurement interval: the steady client's calls that
// started in it, meshd's CPU time across it and its peak RSS.
//
// A phase may be measured in several slices (attack and quiet slices
// interleaved): its calls, CPU time and wall time add up over them.
type phase struct {
	name    string
	rssPeak atomic.Int64 // KiB

	mu        sync.Mutex
	lat       []time.Duration
	slices    [][]time.Duration // lat again, by slice
	fails     int
	err1      error         // the first failure
	sliceAt   time.Time     // start of the open slice, zero if none
	sliceCPU  time.Duration // meshd's CPU time then
	cpu, wall time.Duration // over the closed slices
}

func newPhase(name string) *phase { return &phase{name: name} }

func (p *phase) record(d time.Duration, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.fails++
		if p.err1 == nil {
			p.err1 = err
		}
		return
	}
	p.lat = append(p.lat, d)
	if n := len(p.slices); n > 0 {
		p.slices[n-1] = append(p.slices[n-1], d)
	}
}

func (p *phase) n() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lat) + p.fails
}

func (p *phase) failures() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fails
}

func (p *phase) firstErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err1
}

func (p *phase) p99() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return percentile(p.lat, 0.99)
}

// typicalP99 is the median of the p99s of the phase's slices (those with
// at least 50 calls), or the p99 of all its calls when it has fewer than
// three such slices. One slice hit by a stall of the whole machine moves
// it little; an effect that lasts the phase moves it fully.
func (p *phase) typicalP99() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ps []time.Duration
	for _, sl := range p.slices {
		if len(sl) >= 50 {
			ps = append(ps, percentile(sl, 0.99))
		}
	}
	if len(ps) < 3 {
		return percentile(p.lat, 0.99)
	}
	return percentile(ps, 0.5)
}

// cores is meshd's CPU use over the phase, in cores.
func (p *phase) cores() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wall == 0 {
		return math.NaN()
	}
	return float64(p.cpu) / float64(p.wall)
}

func percentile(lat []time.Duration, q float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// monitor runs the steady client and samples meshd's RSS, attributing
// both to the current phase.
type monitor struct {
	t      testing.TB
	pid    int
	client testpb.TestServiceClient
	cur    atomic.Pointer[phase]
	peak   atomic.Int64
	dead   atomic.Bool
	quit   chan struct{}
	wg     sync.WaitGroup
}

func startMonitor(t testing.TB, pid int, client testpb.TestServiceClient) *monitor {
	m := &monitor{t: t, pid: pid, client: client, quit: make(chan struct{})}
	m.cur.Store(newPhase("start"))
	m.wg.Add(2)
	go m.load()
	go m.sampleRSS()
	t.Cleanup(m.stop)
	return m
}

// sliced records ph for d, in slices of abuseSliceLen.
func (m *monitor) sliced(ph *phase, d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
		m.enter(ph)
		sleepPhase(min(abuseSliceLen, time.Until(end)))
	}
}

// next ends the current phase's slice and starts a new phase named name.
func (m *monitor) next(name string) *phase {
	ph := newPhase(name)
	m.enter(ph)
	return ph
}

// enter ends the current phase's slice and opens a slice of ph.
func (m *monitor) enter(ph *phase) {
	now, cpu := time.Now(), procCPU(m.pid)
	ph.mu.Lock()
	if !ph.sliceAt.IsZero() { // re-entered: close the open slice first
		ph.wall += now.Sub(ph.sliceAt)
		ph.cpu += cpu - ph.sliceCPU
	}
	ph.sliceAt, ph.sliceCPU = now, cpu
	ph.slices = append(ph.slices, nil)
	ph.mu.Unlock()
	old := m.cur.Swap(ph)
	if old == ph {
		return
	}
	old.mu.Lock()
	if !old.sliceAt.IsZero() {
		old.wall += now.Sub(old.sliceAt)
		old.cpu += cpu - old.sliceCPU
		old.sliceAt = time.Time{}
	}
	old.mu.Unlock()
}

func (m *monitor) alive() bool { return !m.dead.Load() }

func (m *monitor) peakRSSKiB() int64 { return m.peak.Load() }

// stop ends the load and waits for its calls; safe to call twice.
func (m *monitor) stop() {
	select {
	case <-m.quit:
	default:
		m.next("stopped")
		close(m.quit)
	}
	m.wg.Wait()
}

// load starts steadyRate calls a second, open loop (a slow call does not
// delay the next ones, so a stall shows in the latencies rather than as
// fewer samples), with at most steadyMaxInFlight in flight.
func (m *monitor) load() {
	defer m.wg.Done()
	var calls sync.WaitGroup
	defer calls.Wait()
	sem := make(chan struct{}, steadyMaxInFlight)
	tick := time.NewTicker(steadyTick)
	defer tick.Stop()
	perTick := int(steadyRate * steadyTick / time.Second)
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 100)}}
	for {
		select {
		case <-m.quit:
			return
		case <-tick.C:
		}
		for range perTick {
			select {
			case sem <- struct{}{}:
			default:
				m.cur.Load().record(0, fmt.Errorf("%d calls already in flight", steadyMaxInFlight))
				continue
			}
			calls.Add(1)
			go func() {
				defer calls.Done()
				defer func() { <-sem }()
				ph := m.cur.Load()
				ctx, cancel := context.WithTimeout(context.Background(), steadyCallTimeout)
				defer cancel()
				start := time.Now()
				_, err := m.client.UnaryCall(ctx, req, grpc.WaitForReady(false))
				ph.record(time.Since(start), err)
			}()
		}
	}
}

func (m *monitor) sampleRSS() {
	defer m.wg.Done()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-m.quit:
			return
		case <-tick.C:
		}
		kib, err := procStatusKiB(m.pid, "VmRSS")
		if err != nil {
			m.dead.Store(true)
			continue
		}
		ph := m.cur.Load()
		for {
			old := ph.rssPeak.Load()
			if kib <= old || ph.rssPeak.CompareAndSwap(old, kib) {
				break
			}
		}
		for {
			old := m.peak.Load()
			if kib <= old || m.peak.CompareAndSwap(old, kib) {
				break
			}
		}
	}
}

// procStatusKiB reads a "Key: N kB" line of /proc/pid/status.
func procStatusKiB(pid int, key string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", key, pid)
}

// procCPU is the user+system CPU time pid has used (0 if it is gone).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may
	// contain spaces: state is field 3, utime 14, stime 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// scrapeMetrics fetches /metrics and returns every sample by its series
// as the text format writes it: name{label="value",...}, labels sorted.
func scrapeMetrics(t testing.TB, admin string) map[string]float64 {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	out, err := parseMetrics(resp.Body)
	if err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	return out
}

// parseMetrics reads the Prometheus text format into every sample by its
// series as written: name{label="value",...}.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}
