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
)

// targetNames are the targets -targets accepts.
var targetNames = []string{direct, meshd, meshd2Hop, meshdMTLS, nginx}

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

// deriveAddedP99 adds, per round, each target's p99 minus direct's.
func (r *results) deriveAddedP99(targets []string) {
	d := r.get(direct, "p99_ms")
	for _, t := range targets {
		for i, v := range r.get(t, "p99_ms") {
			if i < len(d) {
				r.set(t, "added_p99_ms", i, v-d[i])
			}
		}
	}
}

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
	return []metricDef{
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
}

// pairs are the comparisons the report prints besides ×direct and ×nginx:
// what the mTLS hop costs over a plaintext one, and what the second sidecar
// costs over one meshd. Each ratio is a per-round ratio of a over b, then
// the median.
var pairs = []struct{ a, b, what string }{
	{meshdMTLS, meshd2Hop, "mTLS hop against plaintext hop"},
	{meshd2Hop, meshd, "two sidecars (h2c hop) against one meshd"},
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

// checks judges every single-proxy meshd target against the issue's
// targets. Ratios and differences are taken per round, then the median;
// memory limits use the largest value of any round. The chains are not
// judged: those targets are for one proxy, and a chain is two (the report
// compares them with meshd and with each other instead, see pairs).
func checks(r *results, p plan, targets []string, haveNginx bool) []check {
	var out []check
	for _, t := range targets {
		if !strings.HasPrefix(t, meshd) || isChain(t) {
			continue
		}
		add := func(name string, ok func(float64) bool, limit, v float64, needNginx bool, detail string) {
			c := check{Name: name, Target: t, Value: jsonNum(v), Limit: limit, Detail: detail}
			switch {
			case needNginx && !haveNginx:
				c.Result, c.Detail = "n/a", "no nginx in this run"
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

		tn := summarize(perRound(r.get(t, "unary_calls_per_s"), r.get(nginx, "unary_calls_per_s"), ratio))
		add("unary throughput ≥ 1.1× nginx", ge(1.1), 1.1, tn.median, true, spread("×", tn, 2))
		td := summarize(perRound(r.get(t, "unary_calls_per_s"), r.get(direct, "unary_calls_per_s"), ratio))
		add("unary throughput ≥ 0.7× direct", ge(0.7), 0.7, td.median, false, spread("×", td, 2))
		cn := summarize(perRound(r.get(t, "cpu_s_per_10k"), r.get(nginx, "cpu_s_per_10k"), ratio))
		add("CPU-s per 10k calls ≤ nginx's", le(1), 1, cn.median, true, spread("×", cn, 2))
		pm, pn := summarize(r.get(t, "added_p99_ms")), summarize(r.get(nginx, "added_p99_ms"))
		pd := summarize(perRound(r.get(t, "added_p99_ms"), r.get(nginx, "added_p99_ms"), diff))
		add(fmt.Sprintf("added p99 at %d/s ≤ nginx's", p.Rate), le(0), 0, pd.median, true,
			fmt.Sprintf("%+.3f ms vs nginx %+.3f ms (medians); per-round difference %s ms", pm.median, pn.median, spread("", pd, 3)))
		sd := summarize(perRound(r.get(t, "stream_msgs_per_s"), r.get(direct, "stream_msgs_per_s"), ratio))
		add("streaming msgs/s ≥ 0.9× direct", ge(0.9), 0.9, sd.median, false, spread("×", sd, 2))
		rs := summarize(r.get(t, "peak_rss_mib"))
		add("peak RSS under throughput load ≤ 40 MiB", le(40), 40, rs.max, false, fmt.Sprintf("%.1f MiB (largest of any round)", rs.max))
		is := summarize(r.get(t, "idle_rss_mib"))
		name := fmt.Sprintf("RSS with %d idle streams ≤ 100 MiB", p.IdleStreams)
		if p.IdleStreams != 10000 {
			name += " (issue: 10,000)"
		}
		add(name, le(100), 100, is.max, false, fmt.Sprintf("%.1f MiB (largest of any idle round)", is.max))
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
	printPairs(w, r, p, targets)
	if len(cks) == 0 {
		return
	}
	fmt.Fprintf(w, "\nissue targets (ratios per round, then the median)\n")
	for _, c := range cks {
		fmt.Fprintf(w, "  %-12s %-52s %-6s %s\n", c.Target, c.Name, c.Result, c.Detail)
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
