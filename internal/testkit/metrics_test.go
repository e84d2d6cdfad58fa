package testkit

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// TestSamplesAsWritten: Samples keys every sample by its series exactly as
// the text format writes it, so a test names a series by the line it sees
// on /metrics.
func TestSamplesAsWritten(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "calls_total", Help: "h"}, []string{"reason", "listener"})
	c.WithLabelValues("rapid_reset", "main").Add(3)
	c.WithLabelValues(`q"uo\te`+"\n", "main").Inc()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "up", Help: "h"})
	g.Set(1)
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "latency_seconds", Help: "h", Buckets: []float64{0.005, 0.5, 1, 2.5}}, []string{"method"})
	h.WithLabelValues("/a.B/C").Observe(0.7)
	s := prometheus.NewSummary(prometheus.SummaryOpts{Name: "size_bytes", Help: "h", Objectives: map[float64]float64{0.5: 0.05, 0.99: 0.001}})
	s.Observe(10)
	reg.MustRegister(c, g, h, s)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var page bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&page, mf); err != nil {
			t.Fatal(err)
		}
	}
	want := linesAsWritten(t, bytes.NewReader(page.Bytes()))
	m, err := ParseMetrics(bytes.NewReader(page.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	got := m.Samples()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: got %v (present %v), want %v", k, g, ok, v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("extra sample %s", k)
		}
	}
	if got[`calls_total{listener="main",reason="rapid_reset"}`] != 3 {
		t.Errorf("samples %v", got)
	}
	if v := m.Value(t, "calls_total", map[string]string{"reason": "rapid_reset"}); v != 3 {
		t.Errorf("Value = %v, want 3", v)
	}
	if lv := m.LabelValues("calls_total", "listener"); len(lv) != 1 || lv[0] != "main" {
		t.Errorf("LabelValues = %v", lv)
	}
}

// linesAsWritten keys each sample line of a text page by everything before
// its value.
func linesAsWritten(t *testing.T, r io.Reader) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}
