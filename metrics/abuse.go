package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/engine"
)

// ListenerSource is a Source that also reports its listeners' connection
// and HTTP/2 abuse counters, by listener name (meshd's server does). The
// listener metrics appear only for such a Source.
type ListenerSource interface {
	ListenerStats() map[string]engine.AbuseStats
}

var (
	descConnsAccepted = prometheus.NewDesc("meshd_listener_connections_accepted_total",
		"Client connections accepted by the listener (over max_connections ones excluded).", []string{"listener"}, nil)
	descConnsActive = prometheus.NewDesc("meshd_listener_connections_active",
		"Client connections open on the listener.", []string{"listener"}, nil)
	descConnsRejected = prometheus.NewDesc("meshd_listener_connections_rejected_total",
		"Client connections closed as soon as accepted because the listener was at max_connections.", []string{"listener"}, nil)
	descConnsClosed = prometheus.NewDesc("meshd_listener_connections_closed_total",
		"Client connections closed for misbehaving, by reason: HTTP/2 floods (rapid_reset, empty_frames, settings_flood, ping_flood, window_update_flood, extra_frames), "+
			"protocol errors (protocol_error, frame_too_large, headers_too_large), not_http2 (a bad preface: garbage, HTTP/1.x) and handshake_timeout.",
		[]string{"listener", "reason"}, nil)
	descFramesReceived = prometheus.NewDesc("meshd_listener_frames_received_total",
		"HTTP/2 frames received from clients, by frame type (UNKNOWN: extension types).", []string{"listener", "type"}, nil)
	descEmptyFrames = prometheus.NewDesc("meshd_listener_empty_frames_received_total",
		"DATA, HEADERS and CONTINUATION frames received from clients with no payload and no END_STREAM.", []string{"listener"}, nil)
	descGoAwaysSent = prometheus.NewDesc("meshd_listener_goaways_sent_total",
		"GOAWAY frames sent to clients, by HTTP/2 error code (ENHANCE_YOUR_CALM: a flood or too many pings; NO_ERROR: idle, age or drain).", []string{"listener", "code"}, nil)
	descResetsSent = prometheus.NewDesc("meshd_listener_stream_resets_sent_total",
		"RST_STREAM frames sent to clients, by HTTP/2 error code (REFUSED_STREAM: over max_concurrent_streams; PROTOCOL_ERROR, STREAM_CLOSED, FLOW_CONTROL_ERROR: a stream that broke HTTP/2).", []string{"listener", "code"}, nil)
)

// listenerCollector reads the listener counters of the state collector's
// Source at scrape time.
type listenerCollector struct{ state *stateCollector }

var _ prometheus.Collector = listenerCollector{}

func (listenerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnsAccepted, descConnsActive, descConnsRejected, descConnsClosed,
		descFramesReceived, descEmptyFrames, descGoAwaysSent, descResetsSent} {
		ch <- d
	}
}

// Collect reports every label value, zeros included, so that rate() and
// alerts work from the first scrape.
func (c listenerCollector) Collect(ch chan<- prometheus.Metric) {
	ref := c.state.src.Load()
	if ref == nil {
		return
	}
	src, ok := ref.Source.(ListenerSource)
	if !ok {
		return
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for name, st := range src.ListenerStats() {
		counter(descConnsAccepted, st.ConnsAccepted, name)
		ch <- prometheus.MustNewConstMetric(descConnsActive, prometheus.GaugeValue, float64(st.ConnsActive), name)
		counter(descConnsRejected, st.ConnsRejected, name)
		for r, v := range st.Closed {
			counter(descConnsClosed, v, name, engine.AbuseReason(r).String())
		}
		for i, v := range st.FramesReceived {
			counter(descFramesReceived, v, name, engine.FrameTypeName(i))
		}
		counter(descEmptyFrames, st.EmptyFramesReceived, name)
		for i := range st.GoAwaysSent {
			counter(descGoAwaysSent, st.GoAwaysSent[i], name, engine.ErrCodeName(i))
			counter(descResetsSent, st.ResetsSent[i], name, engine.ErrCodeName(i))
		}
	}
}
