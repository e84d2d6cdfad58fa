package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Target names. The report compares every target with direct and nginx,
// and the chains with each other and with meshd (see pairs).
const (
	direct    = "direct"
	meshd     = "meshd"
	meshd2Hop = "meshd-2hop" // client → web → h2c → api → backend
	meshdMTLS = "meshd-mtls" // client → web → mesh mTLS → api → backend
	nginx     = "nginx"
	grpcProxy = "grpc-proxy" // mwitkow/grpc-proxy's TransparentHandler (internal/grpcproxy)
	nginxMTLS = "nginx-mtls" // client → nginx → grpcs:// with client certificates → nginx → backend
	meshdTap  = "meshd-tap"  // meshd with a live tap (admin GET /tap) attached for the whole run
	// meshdGRPCWeb is meshd with grpc_web on its listener, called with
	// gRPC-Web over HTTP/1.1 (grpcweb.go), unary throughput phase only.
	meshdGRPCWeb = "meshd-grpcweb"
	// meshdBase is another meshd binary (-baseline), run like meshd: an
	// engine change measured against the build before it, interleaved in
	// one run on the same machine.
	meshdBase = "meshd-base"
	// meshdMTLSBase is meshd-mtls with the -baseline binary.
	meshdMTLSBase = "meshd-mtls-base"
)

// targetNames are the targets -targets accepts.
var targetNames = []string{direct, meshd, meshd2Hop, meshdMTLS, nginx, grpcProxy, nginxMTLS, meshdTap, meshdGRPCWeb, meshdBase, meshdMTLSBase}

// results holds every measured value: target → metric → one value per
// round (NaN where a round measured nothing).
type results struct {
	vals map[string]map[string][]float64
}

func newResults() *results { return &results{vals: map[string]map[string][]float64{}} }

func (r *results) set(target, metric string, round int, v float64) {
	m := r.vals[target]
	if m == nil {
		m = map[string][]float64{}
		r.vals[target] = m
	}
	s := m[metric]
	for len(s) <= round {
		s = append(s, math.NaN())
	}
	s[round] = v
	m[metric] = s
}

func (r *results) get(target, metric string) []float64 { return r.vals[target][metric] }

// deriveAddedP99 adds, per round, each target's p99 minus direct's: at the
// latency phase's rate (added_p99_ms) and at each of rates
// (rateKey("added_p99_ms", rate)).
func (r *results) deriveAddedP99(targets []string, rates []int) {
	keys := [][2]string{{"p99_ms", "added_p99_ms"}}
	for _, rate := range rates {
		keys = append(keys, [2]string{rateKey("p99_ms", rate), rateKey("added_p99_ms", rate)})
	}
	for _, k := range keys {
		d := r.get(direct, k[0])
		for _, t := range targets {
			for i, v := range r.get(t, k[0]) {
				if i < len(d) {
					r.set(t, k[1], i, v-d[i])
				}
			}
		}
	}
}

// rateKey is the name of metric measured in the -rates phase at rate
// calls/s, e.g. cpu_s_per_10k_at_500.
func rateKey(metric string, rate int) string { return fmt.Sprintf("%s_at_%d", metric, rate) }

// summary is the median and spread of the finite values of a series.
type summary struct {
	n                int
	median, min, max float64
}

func summarize(vals []float64) summary {
	var ok []float64
	for _, v := range vals {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			ok = append(ok, v)
		}
	}
	if len(ok) == 0 {
		return summary{median: math.NaN(), min: math.NaN(), max: math.NaN()}
	}
	slices.Sort(ok)
	m := ok[len(ok)/2]
	if len(ok)%2 == 0 {
		m = (ok[len(ok)/2-1] + ok[len(ok)/2]) / 2
	}
	return summary{n: len(ok), median: m, min: ok[0], max: ok[len(ok)-1]}
}

// perRound combines two series round by round (ratios, differences), so a
// comparison uses values measured close together in time.
func perRound(a, b []float64, f func(x, y float64) float64) []float64 {
	out := make([]float64, 0, len(a))
	for i := range min(len(a), len(b)) {
		out = append(out, f(a[i], b[i]))
	}
	return out
}

func ratio(x, y float64) float64 {
	if y == 0 {
		return math.NaN()
	}
	return x / y
}

func diff(x, y float64) float64 { return x - y }

// metricDef is one row group of the table.
type metricDef struct {
	key, title string
	prec       int
	vsDirect   bool // print the ratio to direct
	vsNginx    bool // print the ratio to nginx
}

func metricDefs(p plan) []metricDef {
	defs := []metricDef{
		{"unary_calls_per_s", fmt.Sprintf("unary throughput, calls/s (closed loop, %d in flight over %d conns, %d B echo)", p.Concurrency, p.Conns, p.Payload), 0, true, true},
		{"p50_ms", fmt.Sprintf("p50 latency at %d calls/s, ms (open loop)", p.Rate), 3, true, true},
		{"p99_ms", fmt.Sprintf("p99 latency at %d calls/s, ms", p.Rate), 3, true, true},
		{"p999_ms", fmt.Sprintf("p99.9 latency at %d calls/s, ms", p.Rate), 3, true, true},
		{"added_p99_ms", "added p99 over direct (same round), ms", 3, false, false},
		{"stream_msgs_per_s", fmt.Sprintf("server-streaming, messages/s (%d × %d B per call, %d streams in flight)", p.StreamMsgs, p.Payload, p.Concurrency), 0, true, true},
		{"cpu_s_per_10k", "proxy CPU-seconds per 10k unary calls (utime+stime, all its processes: nginx's master and workers, both meshds of a chain)", 3, false, true},
		{"peak_rss_mib", "proxy peak memory under the throughput load, MiB (meshd: VmHWM; chains: both meshds' VmHWM summed; nginx: PSS summed over its processes)", 1, false, true},
		{"idle_rss_mib", fmt.Sprintf("proxy memory with %d idle open streams, MiB (meshd: RSS; chains: both meshds' RSS summed; nginx: PSS summed over its processes)", p.IdleStreams), 1, false, true},
		{"idle_kib_per_stream", "proxy memory per idle stream, KiB", 2, false, true},
		{"hop_conns_per_s", fmt.Sprintf("chains: new connections/s to the hop's server side, api (each: connect, handshake, one call, close; %d in flight)", p.ChurnConc), 0, false, false},
		{"hop_cpu_ms_per_conn", "chains: api sidecar CPU-ms per new hop connection (its side of the handshake and one call)", 3, false, false},
	}
	for _, rate := range p.Rates {
		defs = append(defs,
			metricDef{rateKey("cpu_s_per_10k", rate), fmt.Sprintf("-rates: proxy CPU-seconds per 10k calls at a fixed %d calls/s (open loop, %s window; clock ticks of all its processes)", rate, p.RateDur), 3, false, true},
			metricDef{rateKey("p99_ms", rate), fmt.Sprintf("-rates: p99 latency at %d calls/s, ms", rate), 3, true, true},
			metricDef{rateKey("added_p99_ms", rate), fmt.Sprintf("-rates: added p99 over direct at %d calls/s (same round), ms", rate), 3, false, false},
		)
	}
	return defs
}

// pairs are the comparisons the report prints besides ×direct and ×nginx:
// what the mTLS hop costs over a plaintext one, and what the second sidecar
// costs over one meshd. Each ratio is a per-round ratio of a over b, then
// the median.
var pairs = []struct{ a, b, what string }{
	{meshdMTLS, meshd2Hop, "mTLS hop against plaintext hop"},
	{meshd2Hop, meshd, "two sidecars (h2c hop) against one meshd"},
	{meshdMTLS, nginxMTLS, "meshd's mTLS chain against nginx's TLS chain (grpc_pass grpcs:// with client certificates)"},
	{meshd, grpcProxy, "meshd against mwitkow/grpc-proxy's handler, which it replaces"},
	{meshdTap, meshd, "a live tap attached (GET /tap at its highest rate) against none"},
	{meshdGRPCWeb, meshd, "a gRPC-Web call (HTTP/1.1) against a native one"},
	{meshd, meshdBase, "this meshd against the -baseline build"},
	{meshdMTLS, meshdMTLSBase, "this meshd's mTLS chain against the -baseline build's"},
}

// check is one of the targets, judged on one meshd target.
type check struct {
	Name   string  `json:"name"`
	Target string  `json:"target"`
	Value  jsonNum `json:"value"`
	Limit  float64 `json:"limit"`
	Result string  `json:"result"` // PASS, MISS, n/a, or - (smoke mode: not judged)
	Detail string  `json:"detail"`
}

// rateCPULimits are issue 19's limits on CPU per call at a fixed rate, as a
// ratio to nginx's at the same rate.
var rateCPULimits = map[int]float64{2000: 1.0, 500: 1.2}

// checks judges every single-proxy meshd target against issue 19's
// targets, and meshd-mtls against nginx-mtls. Ratios and differences are
// taken per round, then the median; memory limits use the largest value of
// any round. The other chain figures are not judged: those targets are for
// one proxy, and a chain is two (the report compares them with meshd and
// with each other instead, see pairs).
func checks(r *results, p plan, targets []string, haveNginx bool) []check {
	var out []check
	add := func(t, name string, ok func(float64) bool, limit, v float64, missing, detail string) {
		c := check{Name: name, Target: t, Value: jsonNum(v), Limit: limit, Detail: detail}
		switch {
		case missing != "":
			c.Result, c.Detail = "n/a", missing
		case math.IsNaN(v):
			c.Result = "n/a"
		case p.Mode == "smoke":
			c.Result = "-"
			c.Detail += " (smoke mode: not judged)"
		case ok(v):
			c.Result = "PASS"
		default:
			c.Result = "MISS"
		}
		out = append(out, c)
	}
	le := func(lim float64) func(float64) bool { return func(v float64) bool { return v <= lim } }
	ge := func(lim float64) func(float64) bool { return func(v float64) bool { return v >= lim } }
	noNginx := ""
	if !haveNginx {
		noNginx = "no nginx in this run"
	}
	addedP99 := func(t, name, key string) {
		pm, pn := summarize(r.get(t, key)), summarize(r.get(nginx, key))
		pd := summarize(perRound(r.get(t, key), r.get(nginx, key), diff))
		add(t, name, le(0), 0, pd.median, noNginx,
			fmt.Sprintf("%+.3f ms vs nginx %+.3f ms (medians); per-round difference %s ms", pm.median, pn.median, spread("", pd, 3)))
	}
	for _, t := range targets {
		if !strings.HasPrefix(t, meshd) || isChain(t) || t == meshdTap || t == meshdGRPCWeb {
			continue
		}
		tn := summarize(perRound(r.get(t, "unary_calls_per_s"), r.get(nginx, "unary_calls_per_s"), ratio))
		add(t, "unary throughput ≥ 1.5× nginx", ge(1.5), 1.5, tn.median, noNginx, spread("×", tn, 2))
		td := summarize(perRound(r.get(t, "unary_calls_per_s"), r.get(direct, "unary_calls_per_s"), ratio))
		add(t, "unary throughput ≥ 0.8× direct", ge(0.8), 0.8, td.median, "", spread("×", td, 2))
		cn := summarize(perRound(r.get(t, "cpu_s_per_10k"), r.get(nginx, "cpu_s_per_10k"), ratio))
		add(t, "CPU per call at full load ≤ 0.6× nginx's", le(0.6), 0.6, cn.median, noNginx, spread("×", cn, 2))
		for _, rate := range p.Rates {
			lim, ok := rateCPULimits[rate]
			if !ok {
				continue
			}
			k := rateKey("cpu_s_per_10k", rate)
			cr := summarize(perRound(r.get(t, k), r.get(nginx, k), ratio))
			add(t, fmt.Sprintf("CPU per call at %d/s ≤ %.1f× nginx's", rate, lim), le(lim), lim, cr.median, noNginx, spread("×", cr, 2))
		}
		addedP99(t, fmt.Sprintf("added p99 at %d/s ≤ nginx's", p.Rate), "added_p99_ms")
		if slices.Contains(p.Rates, 2000) {
			addedP99(t, "added p99 at 2000/s ≤ nginx's (-rates)", rateKey("added_p99_ms", 2000))
		}
		sd := summarize(perRound(r.get(t, "stream_msgs_per_s"), r.get(direct, "stream_msgs_per_s"), ratio))
		add(t, "streaming msgs/s ≥ 0.95× direct", ge(0.95), 0.95, sd.median, "", spread("×", sd, 2))
		rs := summarize(r.get(t, "peak_rss_mib"))
		add(t, "peak RSS under throughput load ≤ 40 MiB", le(40), 40, rs.max, "", fmt.Sprintf("%.1f MiB (largest of any round)", rs.max))
		is := summarize(r.get(t, "idle_rss_mib"))
		name := fmt.Sprintf("RSS with %d idle streams ≤ 60 MiB", p.IdleStreams)
		if p.IdleStreams != 10000 {
			name += " (issue: 10,000)"
		}
		add(t, name, le(60), 60, is.max, "", fmt.Sprintf("%.1f MiB (largest of any idle round)", is.max))
	}
	if slices.Contains(targets, meshdMTLS) {
		noChain := ""
		if !slices.Contains(targets, nginxMTLS) {
			noChain = "no nginx-mtls in this run"
		}
		tn := summarize(perRound(r.get(meshdMTLS, "unary_calls_per_s"), r.get(nginxMTLS, "unary_calls_per_s"), ratio))
		add(meshdMTLS, "mTLS chain throughput ≥ 1.3× nginx-mtls", ge(1.3), 1.3, tn.median, noChain, spread("×", tn, 2))
		cn := summarize(perRound(r.get(meshdMTLS, "cpu_s_per_10k"), r.get(nginxMTLS, "cpu_s_per_10k"), ratio))
		add(meshdMTLS, "mTLS chain CPU per call ≤ nginx-mtls's", le(1), 1, cn.median, noChain, spread("×", cn, 2))
	}
	return out
}

// spread formats "median (min–max)".
func spread(unit string, s summary, prec int) string {
	if s.n == 0 {
		return "-"
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	return fmt.Sprintf("%s%s (%s–%s)", f(s.median), unit, f(s.min), f(s.max))
}

// printTable writes the human-readable report.
func printTable(w io.Writer, r *results, p plan, targets []string, cks []check) {
	haveNginx := slices.Contains(targets, nginx)
	for _, m := range metricDefs(p) {
		fmt.Fprintf(w, "\n%s\n", m.title)
		fmt.Fprintf(w, "  %-12s %12s %22s", "target", "median", "spread (min–max)")
		if m.vsDirect {
			fmt.Fprintf(w, "  %-22s", "×direct (min–max)")
		}
		if m.vsNginx && haveNginx {
			fmt.Fprintf(w, "  %-22s", "×nginx (min–max)")
		}
		fmt.Fprintln(w)
		for _, t := range targets {
			vals := r.get(t, m.key)
			s := summarize(vals)
			if s.n == 0 {
				continue
			}
			f := func(v float64) string { return strconv.FormatFloat(v, 'f', m.prec, 64) }
			fmt.Fprintf(w, "  %-12s %12s %22s", t, f(s.median), f(s.min)+"–"+f(s.max))
			if m.vsDirect {
				fmt.Fprintf(w, "  %-22s", spread("×", summarize(perRound(vals, r.get(direct, m.key), ratio)), 2))
			}
			if m.vsNginx && haveNginx {
				fmt.Fprintf(w, "  %-22s", spread("×", summarize(perRound(vals, r.get(nginx, m.key), ratio)), 2))
			}
			fmt.Fprintln(w)
		}
	}
	printRates(w, r, p, targets)
	printSyscalls(w, r, p, targets)
	printPairs(w, r, p, targets)
	if len(cks) == 0 {
		return
	}
	fmt.Fprintf(w, "\nissue targets (ratios per round, then the median)\n")
	for _, c := range cks {
		fmt.Fprintf(w, "  %-12s %-52s %-6s %s\n", c.Target, c.Name, c.Result, c.Detail)
	}
}

// printRates writes the -rates summary: per target, CPU per call at each
// fixed rate and at full load ("max", the throughput phase), each with its
// ratio to nginx, and the added p99 at each fixed rate.
func printRates(w io.Writer, r *results, p plan, targets []string) {
	if len(p.Rates) == 0 && !p.RatesMax {
		return
	}
	type col struct{ head, key string }
	var cols []col
	for _, rate := range p.Rates {
		cols = append(cols, col{fmt.Sprintf("@%d/s", rate), rateKey("cpu_s_per_10k", rate)})
	}
	if p.RatesMax {
		cols = append(cols, col{"@max", "cpu_s_per_10k"})
	}
	fmt.Fprintf(w, "\n-rates: proxy CPU-seconds per 10k calls (×nginx, per-round ratio, median), and added p99 over direct, ms\n  %-12s", "target")
	for _, c := range cols {
		fmt.Fprintf(w, " %20s", "CPU "+c.head)
	}
	for _, rate := range p.Rates {
		fmt.Fprintf(w, " %14s", fmt.Sprintf("+p99 @%d/s", rate))
	}
	fmt.Fprintln(w)
	for _, t := range targets {
		fmt.Fprintf(w, "  %-12s", t)
		for _, c := range cols {
			s := summarize(r.get(t, c.key))
			cell := "-"
			if s.n > 0 {
				cell = strconv.FormatFloat(s.median, 'f', 3, 64)
				if n := summarize(perRound(r.get(t, c.key), r.get(nginx, c.key), ratio)); n.n > 0 && t != nginx {
					cell += fmt.Sprintf(" (%.2f×)", n.median)
				}
			}
			fmt.Fprintf(w, " %20s", cell)
		}
		for _, rate := range p.Rates {
			cell := "-"
			if s := summarize(r.get(t, rateKey("added_p99_ms", rate))); s.n > 0 {
				cell = fmt.Sprintf("%+.3f", s.median)
			}
			fmt.Fprintf(w, " %14s", cell)
		}
		fmt.Fprintln(w)
	}
}

// printPairs writes, for each of pairs whose two targets ran, the
// per-round ratio a/b of every metric both measured.
func printPairs(w io.Writer, r *results, p plan, targets []string) {
	for _, pr := range pairs {
		if !slices.Contains(targets, pr.a) || !slices.Contains(targets, pr.b) {
			continue
		}
		fmt.Fprintf(w, "\n%s / %s: %s (ratio per round, then the median (min–max); >1 means %s has more)\n", pr.a, pr.b, pr.what, pr.a)
		for _, m := range metricDefs(p) {
			if s := summarize(perRound(r.get(pr.a, m.key), r.get(pr.b, m.key), ratio)); s.n > 0 {
				fmt.Fprintf(w, "  %-22s %s\n", m.key, spread("×", s, 2))
			}
		}
	}
}

// pairJSON is pairs' ratios for the -json output: "a/b" → metric → series.
func pairJSON(r *results, targets []string) map[string]map[string]jsonSeries {
	out := map[string]map[string]jsonSeries{}
	for _, pr := range pairs {
		if !slices.Contains(targets, pr.a) || !slices.Contains(targets, pr.b) {
			continue
		}
		m := map[string]jsonSeries{}
		for k, vals := range r.vals[pr.a] {
			if b := r.get(pr.b, k); len(b) > 0 {
				m[k] = toSeries(perRound(vals, b, ratio))
			}
		}
		out[pr.a+"/"+pr.b] = m
	}
	return out
}

// jsonNum is a float64 that encodes NaN and ±Inf as null.
type jsonNum float64

// MarshalJSON encodes non-finite values as null, which encoding/json rejects.
func (n jsonNum) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
}

// jsonSeries is one metric of one target in the -json output.
type jsonSeries struct {
	Values []jsonNum `json:"values"`
	Median jsonNum   `json:"median"`
	Min    jsonNum   `json:"min"`
	Max    jsonNum   `json:"max"`
}

func toSeries(vals []float64) jsonSeries {
	s := summarize(vals)
	out := jsonSeries{Median: jsonNum(s.median), Min: jsonNum(s.min), Max: jsonNum(s.max)}
	for _, v := range vals {
		out.Values = append(out.Values, jsonNum(v))
	}
	return out
}

// jsonTarget describes one target of the run.
type jsonTarget struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	Version   string `json:"version,omitempty"`
	Errors    int64  `json:"errors"`
	FirstErr  string `json:"first_error,omitempty"`
}

// jsonReport is the whole -json output.
type jsonReport struct {
	Mode         string                           `json:"mode"`
	Plan         plan                             `json:"plan"`
	Started      string                           `json:"started"`
	Seconds      float64                          `json:"seconds"`
	CPUs         int                              `json:"cpus"`
	GoVersion    string                           `json:"go_version"`
	LoadAvgStart string                           `json:"loadavg_start"`
	LoadAvgEnd   string                           `json:"loadavg_end"`
	Targets      []jsonTarget                     `json:"targets"`
	Metrics      map[string]map[string]jsonSeries `json:"metrics"`   // target → metric
	VsDirect     map[string]map[string]jsonSeries `json:"vs_direct"` // target → metric → per-round ratio
	VsNginx      map[string]map[string]jsonSeries `json:"vs_nginx"`  // target → metric → per-round ratio
	Pairs        map[string]map[string]jsonSeries `json:"pairs"`     // "a/b" (see pairs) → metric → per-round ratio
	Checks       []check                          `json:"checks"`
}

func buildJSON(r *results, p plan, targets []string) (m, vd, vn map[string]map[string]jsonSeries) {
	m, vd, vn = map[string]map[string]jsonSeries{}, map[string]map[string]jsonSeries{}, map[string]map[string]jsonSeries{}
	for _, t := range targets {
		m[t], vd[t], vn[t] = map[string]jsonSeries{}, map[string]jsonSeries{}, map[string]jsonSeries{}
		for k, vals := range r.vals[t] {
			m[t][k] = toSeries(vals)
			if d := r.get(direct, k); len(d) > 0 && t != direct {
				vd[t][k] = toSeries(perRound(vals, d, ratio))
			}
			if n := r.get(nginx, k); len(n) > 0 && t != nginx {
				vn[t][k] = toSeries(perRound(vals, n, ratio))
			}
		}
	}
	return m, vd, vn
}

func writeJSON(w io.Writer, rep jsonReport) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return fmt.Errorf("meshbench: json: %w", err)
	}
	return nil
}

// printSyscalls writes the -syscalls summary: per target and fixed rate,
// the medians of each counter per call.
func printSyscalls(w io.Writer, r *results, p plan, targets []string) {
	if !p.Syscalls {
		return
	}
	fmt.Fprintf(w, "\n-syscalls: per call at each fixed rate (perf stat on the proxy's processes; medians of the rounds)\n  %-12s %-8s", "target", "rate")
	for _, c := range sysCounters {
		fmt.Fprintf(w, " %12s", c.head)
	}
	fmt.Fprintln(w)
	for _, t := range targets {
		for _, rate := range p.Rates {
			if s := summarize(r.get(t, rateKey(sysCounters[0].key, rate))); s.n == 0 {
				continue
			}
			fmt.Fprintf(w, "  %-12s %-8s", t, fmt.Sprintf("@%d/s", rate))
			for _, c := range sysCounters {
				fmt.Fprintf(w, " %12.2f", summarize(r.get(t, rateKey(c.key, rate))).median)
			}
			fmt.Fprintln(w)
		}
	}
}
