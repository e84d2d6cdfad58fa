package metrics

import (
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// RecentWindow is how far back Recent looks: "the last minute".
const RecentWindow = time.Minute

// recentSpacing is the least time between two snapshots Recent keeps: many
// dashboards polling at once add no memory and no points.
const recentSpacing = time.Second

// RecentStats is the last minute of calls per route and per cluster, for
// the admin dashboard. It is computed on request from snapshots of the
// cumulative counters of grpc_server_handled_total and
// grpc_server_handling_seconds that earlier requests took: nothing runs
// while nobody asks, and the window covers only the time someone did (a
// first request returns names and no rates; the next one, rates over the
// time between the two).
type RecentStats struct {
	// Window is the time the rates cover, at most RecentWindow; 0 when
	// there is no earlier snapshot yet.
	Window Seconds `json:"window_seconds"`
	// Routes and Clusters are by name.
	Routes   map[string]*Recent `json:"routes"`
	Clusters map[string]*Recent `json:"clusters"`
}

// Seconds is a duration written as a number of seconds in JSON.
type Seconds float64

// Recent is one route's or cluster's last minute.
type Recent struct {
	// Calls is the number of calls that ended in the window; Rate the
	// same per second.
	Calls float64 `json:"calls"`
	Rate  float64 `json:"rate"`
	// ErrorRate is the fraction of those calls that did not end OK.
	ErrorRate float64 `json:"error_rate"`
	// P50 and P99 are latency quantiles in milliseconds, estimated from
	// the histogram buckets as Prometheus' histogram_quantile does; absent
	// without calls.
	P50 *float64 `json:"p50_ms,omitempty"`
	P99 *float64 `json:"p99_ms,omitempty"`
	// Points are the same figures between successive snapshots, oldest
	// first, for a chart.
	Points []Point `json:"points"`
}

// Point is one interval of a Recent's chart.
type Point struct {
	// T is the interval's end, in Unix milliseconds.
	T int64 `json:"t"`
	// Rate and Errors are calls and failed calls per second.
	Rate   float64 `json:"rate"`
	Errors float64 `json:"errors"`
	// P99 is the interval's p99 latency in milliseconds, absent without
	// calls.
	P99 *float64 `json:"p99_ms,omitempty"`
}

// recentKey is a route ("r") or a cluster ("c") by name.
type recentKey struct {
	kind byte
	name string
}

// tally is a route's or cluster's cumulative counts at one instant.
type tally struct {
	calls, errors float64
	buckets       []uint64 // cumulative, one per latencyBuckets bound
	count         uint64   // histogram count (the +Inf bucket)
}

type snapshot struct {
	at time.Time
	by map[recentKey]*tally
}

// recent holds the snapshots Recent took, oldest first.
type recent struct {
	mu    sync.Mutex
	snaps []snapshot
}

// Recent returns the last minute per route and cluster. It collects only
// the two metric families it needs (not a whole Gather), and is safe for
// concurrent use; callers serialize on a mutex.
func (m *Metrics) Recent() RecentStats {
	now := m.now()
	cur := snapshot{at: now, by: m.tallies()}
	r := &m.recent
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := r.snaps[:0]
	for _, s := range r.snaps {
		if now.Sub(s.at) <= RecentWindow {
			keep = append(keep, s)
		}
	}
	r.snaps = keep
	series := append(append([]snapshot(nil), r.snaps...), cur)
	if len(r.snaps) == 0 || now.Sub(r.snaps[len(r.snaps)-1].at) >= recentSpacing {
		r.snaps = append(r.snaps, cur)
	}
	return recentStats(series)
}

// recentStats computes the stats over series (oldest first, the current
// snapshot last).
func recentStats(series []snapshot) RecentStats {
	out := RecentStats{Routes: map[string]*Recent{}, Clusters: map[string]*Recent{}}
	first, last := series[0], series[len(series)-1]
	out.Window = Seconds(last.at.Sub(first.at).Seconds())
	for k, t := range last.by {
		rc := &Recent{Points: []Point{}}
		if k.kind == 'r' {
			out.Routes[k.name] = rc
		} else {
			out.Clusters[k.name] = rc
		}
		if len(series) < 2 {
			continue
		}
		calls, errs, buckets := delta(t, first.by[k])
		rc.Calls = calls
		rc.Rate = calls / float64(out.Window)
		if calls > 0 {
			rc.ErrorRate = errs / calls
			rc.P50, rc.P99 = quantile(0.5, buckets), quantile(0.99, buckets)
		}
		for i := 1; i < len(series); i++ {
			a, b := series[i-1], series[i]
			bt := b.by[k]
			if bt == nil {
				continue
			}
			dt := b.at.Sub(a.at).Seconds()
			if dt < recentSpacing.Seconds() {
				continue // a poll right after another: too short to chart
			}
			c, e, bk := delta(bt, a.by[k])
			p := Point{T: b.at.UnixMilli(), Rate: c / dt, Errors: e / dt}
			if c > 0 {
				p.P99 = quantile(0.99, bk)
			}
			rc.Points = append(rc.Points, p)
		}
	}
	return out
}

// delta is b minus a (a nil: a series that did not exist yet).
func delta(b, a *tally) (calls, errs float64, buckets []uint64) {
	buckets = make([]uint64, len(b.buckets)+1)
	copy(buckets, b.buckets)
	buckets[len(b.buckets)] = b.count
	if a == nil {
		return b.calls, b.errors, buckets
	}
	for i := range a.buckets {
		buckets[i] -= min(a.buckets[i], buckets[i])
	}
	buckets[len(b.buckets)] -= min(a.count, b.count)
	return b.calls - a.calls, b.errors - a.errors, buckets
}

// quantile estimates the q-quantile in milliseconds from cumulative bucket
// counts (the last one +Inf), interpolating linearly within the bucket, as
// histogram_quantile does; in the +Inf bucket it answers the highest bound.
func quantile(q float64, cum []uint64) *float64 {
	total := cum[len(cum)-1]
	if total == 0 {
		return nil
	}
	rank := q * float64(total)
	var v float64
	for i, c := range cum {
		if float64(c) < rank {
			continue
		}
		if i == len(latencyBuckets) {
			v = latencyBuckets[len(latencyBuckets)-1]
			break
		}
		lo, prev := 0.0, uint64(0)
		if i > 0 {
			lo, prev = latencyBuckets[i-1], cum[i-1]
		}
		hi := latencyBuckets[i]
		if c == prev {
			v = hi
		} else {
			v = lo + (hi-lo)*(rank-float64(prev))/float64(c-prev)
		}
		break
	}
	ms := math.Round(v*1e6) / 1e3 // milliseconds, to the microsecond
	return &ms
}

// tallies reads the cumulative counts of every route and cluster now.
func (m *Metrics) tallies() map[recentKey]*tally {
	by := map[recentKey]*tally{}
	get := func(k recentKey) *tally {
		t := by[k]
		if t == nil {
			t = &tally{buckets: make([]uint64, len(latencyBuckets))}
			by[k] = t
		}
		return t
	}
	keys := func(labels []*dto.LabelPair) []recentKey {
		var ks []recentKey
		for _, l := range labels {
			switch l.GetName() {
			case "route":
				if l.GetValue() != "" {
					ks = append(ks, recentKey{'r', l.GetValue()})
				}
			case "cluster":
				if l.GetValue() != "" {
					ks = append(ks, recentKey{'c', l.GetValue()})
				}
			}
		}
		return ks
	}
	collect(m.handled, func(pb *dto.Metric) {
		failed := false
		for _, l := range pb.GetLabel() {
			if l.GetName() == "grpc_code" && l.GetValue() != "OK" {
				failed = true
			}
		}
		for _, k := range keys(pb.GetLabel()) {
			t := get(k)
			t.calls += pb.GetCounter().GetValue()
			if failed {
				t.errors += pb.GetCounter().GetValue()
			}
		}
	})
	collect(m.handling, func(pb *dto.Metric) {
		h := pb.GetHistogram()
		for _, k := range keys(pb.GetLabel()) {
			t := get(k)
			t.count += h.GetSampleCount()
			for i, b := range h.GetBucket() {
				if i < len(t.buckets) {
					t.buckets[i] += b.GetCumulativeCount()
				}
			}
		}
	})
	return by
}

// collect hands each metric c collects, written out, to f.
func collect(c prometheus.Collector, f func(*dto.Metric)) {
	ch := make(chan prometheus.Metric, 64)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	for pm := range ch {
		var pb dto.Metric
		if pm.Write(&pb) == nil {
			f(&pb)
		}
	}
}
