package metrics_test

import (
	"testing"

	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/metrics"
)

// poolSource is a Source that also reports clusters' upstream pools.
type poolSource struct {
	source
	pools map[string]engine.PoolStats
}

func (s poolSource) PoolStats() map[string]engine.PoolStats { return s.pools }

var _ metrics.PoolSource = poolSource{}

// TestPoolMetrics: each cluster's pool is reported under its cluster
// name, zeros included, and only for a Source that has pools.
func TestPoolMetrics(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.SetSource(source{})
	if mfs := scrape(t, m); mfs["meshd_cluster_upstream_connections"] != nil {
		t.Error("pool metrics from a Source without pools")
	}
	m.SetSource(poolSource{pools: map[string]engine.PoolStats{
		"users":  {Conns: 2, Streams: 3, DialErrors: 4, ProtocolErrors: 5, StreamErrors: 6, BufferedBytes: 7},
		"orders": {},
	}})
	mfs := scrape(t, m)
	for _, c := range []struct {
		name string
		want float64
	}{
		{"meshd_cluster_upstream_connections", 2},
		{"meshd_cluster_upstream_streams", 3},
		{"meshd_cluster_upstream_dial_errors_total", 4},
		{"meshd_cluster_upstream_connection_errors_total", 5},
		{"meshd_cluster_upstream_stream_errors_total", 6},
		{"meshd_cluster_upstream_buffered_bytes", 7},
	} {
		if got := mfs.Value(t, c.name, map[string]string{"cluster": "users"}); got != c.want {
			t.Errorf("%s{cluster=users} = %g, want %g", c.name, got, c.want)
		}
		if got := mfs.Value(t, c.name, map[string]string{"cluster": "orders"}); got != 0 {
			t.Errorf("%s{cluster=orders} = %g, want 0", c.name, got)
		}
	}
}
