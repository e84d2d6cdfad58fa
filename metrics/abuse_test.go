package metrics_test

import (
	"testing"

	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/metrics"
)

// listenerSource is a Source that also reports listener counters.
type listenerSource struct {
	source
	stats map[string]engine.AbuseStats
}

func (s listenerSource) ListenerStats() map[string]engine.AbuseStats { return s.stats }

var _ metrics.ListenerSource = listenerSource{}

func TestListenerMetrics(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.SetSource(source{})
	if mfs := scrape(t, m); mfs["meshd_listener_connections_closed_total"] != nil {
		t.Error("listener metrics from a Source without listeners")
	}

	var st engine.AbuseStats
	st.ConnsAccepted, st.ConnsActive, st.ConnsRejected = 10, 3, 4
	st.Closed[engine.AbuseRapidReset] = 2
	st.FramesReceived[3] = 1000 // RST_STREAM
	st.FramesReceived[engine.NumFrameTypes-1] = 7
	st.EmptyFramesReceived = 11
	st.GoAwaysSent[0xb] = 2 // ENHANCE_YOUR_CALM
	st.ResetsSent[0x7] = 50 // REFUSED_STREAM
	m.SetSource(listenerSource{stats: map[string]engine.AbuseStats{"main": st}})
	mfs := scrape(t, m)
	main := map[string]string{"listener": "main"}
	with := func(k, v string) map[string]string { return map[string]string{"listener": "main", k: v} }
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"meshd_listener_connections_accepted_total", main, 10},
		{"meshd_listener_connections_active", main, 3},
		{"meshd_listener_connections_rejected_total", main, 4},
		{"meshd_listener_connections_closed_total", with("reason", "rapid_reset"), 2},
		{"meshd_listener_connections_closed_total", with("reason", "settings_flood"), 0},
		{"meshd_listener_frames_received_total", with("type", "RST_STREAM"), 1000},
		{"meshd_listener_frames_received_total", with("type", "UNKNOWN"), 7},
		{"meshd_listener_empty_frames_received_total", main, 11},
		{"meshd_listener_goaways_sent_total", with("code", "ENHANCE_YOUR_CALM"), 2},
		{"meshd_listener_stream_resets_sent_total", with("code", "REFUSED_STREAM"), 50},
		{"meshd_listener_stream_resets_sent_total", with("code", "NO_ERROR"), 0},
	} {
		if got := mfs.Value(t, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.name, c.labels, got, c.want)
		}
	}
	if n := len(mfs.Series("meshd_listener_connections_closed_total", main)); n != int(engine.NumAbuseReasons) {
		t.Errorf("%d closed_total series, want one per reason (%d)", n, engine.NumAbuseReasons)
	}
}
