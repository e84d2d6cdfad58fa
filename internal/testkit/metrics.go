package testkit

import (
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a parsed /metrics page: every metric family by name.
type Metrics map[string]*dto.MetricFamily

// Scrape GETs url (a /metrics page) with client, asking for the text
// format, and parses it; it fails the test unless the answer is a 200 in
// the text format that parses. A nil client is one with a 5s timeout.
func Scrape(tb testing.TB, client *http.Client, url string) Metrics {
	tb.Helper()
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("scrape %s: status %d", url, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		tb.Fatalf("scrape %s: content type %q, want text/plain", url, ct)
	}
	m, err := ParseMetrics(resp.Body)
	if err != nil {
		tb.Fatalf("scrape %s: %v", url, err)
	}
	return m
}

// ParseMetrics reads the Prometheus text format with Prometheus' own
// parser, so a page it would refuse fails the test.
func ParseMetrics(r io.Reader) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// Series returns the metrics of family name whose labels include want.
func (m Metrics) Series(name string, want map[string]string) []*dto.Metric {
	var out []*dto.Metric
	for _, s := range m[name].GetMetric() {
		if hasLabels(s, want) {
			out = append(out, s)
		}
	}
	return out
}

func hasLabels(s *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, l := range s.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// Value returns the value of the one counter, gauge or untyped series of
// family name whose labels include want; anything else fails the test.
func (m Metrics) Value(tb testing.TB, name string, want map[string]string) float64 {
	tb.Helper()
	ms := m.Series(name, want)
	if len(ms) != 1 {
		tb.Fatalf("%s%v: %d series, want 1", name, want, len(ms))
	}
	s := ms[0]
	switch {
	case s.Counter != nil:
		return s.GetCounter().GetValue()
	case s.Gauge != nil:
		return s.GetGauge().GetValue()
	case s.Untyped != nil:
		return s.GetUntyped().GetValue()
	}
	tb.Fatalf("%s%v: not a counter or gauge", name, want)
	return 0
}

// LabelValues lists, sorted, the values label takes in family name.
func (m Metrics) LabelValues(name, label string) []string {
	seen := map[string]bool{}
	for _, s := range m[name].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == label {
				seen[l.GetValue()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// Samples flattens the page into one value per sample, keyed by the series
// as the text format writes it: name{label="value",...}, labels in the
// page's order (client_golang sorts them), a histogram's le and a summary's
// quantile last, as in name_bucket{code="OK",le="0.5"}. A test can then name
// the one series it checks in a single string.
func (m Metrics) Samples() map[string]float64 {
	out := map[string]float64{}
	for name, fam := range m {
		for _, s := range fam.GetMetric() {
			labels := s.GetLabel()
			switch {
			case s.Counter != nil:
				out[series(name, labels)] = s.GetCounter().GetValue()
			case s.Gauge != nil:
				out[series(name, labels)] = s.GetGauge().GetValue()
			case s.Untyped != nil:
				out[series(name, labels)] = s.GetUntyped().GetValue()
			case s.Histogram != nil:
				h := s.GetHistogram()
				inf := false
				for _, b := range h.GetBucket() {
					inf = inf || math.IsInf(b.GetUpperBound(), +1)
					out[series(name+"_bucket", labels, "le", formatFloat(b.GetUpperBound()))] = float64(b.GetCumulativeCount())
				}
				if !inf {
					out[series(name+"_bucket", labels, "le", "+Inf")] = float64(h.GetSampleCount())
				}
				out[series(name+"_sum", labels)] = h.GetSampleSum()
				out[series(name+"_count", labels)] = float64(h.GetSampleCount())
			case s.Summary != nil:
				sm := s.GetSummary()
				for _, q := range sm.GetQuantile() {
					out[series(name, labels, "quantile", formatFloat(q.GetQuantile()))] = q.GetValue()
				}
				out[series(name+"_sum", labels)] = sm.GetSampleSum()
				out[series(name+"_count", labels)] = float64(sm.GetSampleCount())
			}
		}
	}
	return out
}

// series writes name{labels...,extra...} as the text format does.
func series(name string, labels []*dto.LabelPair, extra ...string) string {
	if len(labels) == 0 && len(extra) == 0 {
		return name
	}
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	sep := ""
	pair := func(k, v string) {
		b.WriteString(sep)
		b.WriteString(k)
		b.WriteString(`="`)
		b.WriteString(labelEscaper.Replace(v))
		b.WriteByte('"')
		sep = ","
	}
	for _, l := range labels {
		pair(l.GetName(), l.GetValue())
	}
	for i := 0; i+1 < len(extra); i += 2 {
		pair(extra[i], extra[i+1])
	}
	b.WriteByte('}')
	return b.String()
}

// labelEscaper escapes a label value as the text format does.
var labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)

// formatFloat writes le and quantile values as the text format does.
func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
