package metrics_test

import (
	"testing"

	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/metrics"
)

// frameSource is a Source that also reports frame engine counters.
type frameSource struct {
	source
	stats map[string]engine.Stats
}

func (s frameSource) FrameStats() map[string]engine.Stats { return s.stats }

var _ metrics.FrameSource = frameSource{}

func TestFrameMetrics(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.SetSource(source{})
	if mfs := scrape(t, m); mfs["meshd_frame_mid_message_resets_total"] != nil {
		t.Error("frame metrics from a Source without a frame engine")
	}
	m.SetSource(frameSource{stats: map[string]engine.Stats{
		"main": {ActiveStreams: 5, UpstreamConns: 2, UpstreamStreams: 4, BufferedBytes: 4096, ProtocolErrors: 1,
			StreamErrors: 3, DeadlinesExceeded: 7, MessagesTooLarge: 8, DialErrors: 9, MidMessageResets: 6, HeadersHeld: 11, HedgedAttempts: 12},
		"edge": {},
	}})
	mfs := scrape(t, m)
	main := map[string]string{"listener": "main"}
	for _, c := range []struct {
		name string
		want float64
	}{
		{"meshd_frame_streams_active", 5},
		{"meshd_frame_buffered_bytes", 4096},
		{"meshd_frame_connection_errors_total", 1},
		{"meshd_frame_stream_errors_total", 3},
		{"meshd_frame_deadlines_exceeded_total", 7},
		{"meshd_frame_messages_too_large_total", 8},
		{"meshd_frame_mid_message_resets_total", 6},
		{"meshd_frame_headers_held_total", 11},
		{"meshd_frame_hedged_attempts_total", 12},
	} {
		if got := mfs.Value(t, c.name, main); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.name, main, got, c.want)
		}
		// Zeros are reported too, so rate() works from the first scrape.
		if got := mfs.Value(t, c.name, map[string]string{"listener": "edge"}); got != 0 {
			t.Errorf("%s{listener=edge} = %g, want 0", c.name, got)
		}
	}
	// Backend connections are the clusters' (meshd_cluster_upstream_*).
	for _, name := range []string{"meshd_frame_upstream_connections", "meshd_frame_upstream_streams", "meshd_frame_dial_errors_total"} {
		if mfs[name] != nil {
			t.Errorf("%s is reported per listener", name)
		}
	}
}
