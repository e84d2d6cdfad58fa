package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/engine"
)

// FrameSource is a Source that also reports the frame engine's counters,
// by listener name (meshd's server does when engine is frame). The
// meshd_frame_* metrics appear only for such a Source, and only for the
// listeners it reports.
type FrameSource interface {
	FrameStats() map[string]engine.Stats
}

var (
	descFrameStreams = prometheus.NewDesc("meshd_frame_streams_active",
		"Client streams open on the listener's frame engine.", []string{"listener"}, nil)
	descFrameUpstreamConns = prometheus.NewDesc("meshd_frame_upstream_connections",
		"Backend HTTP/2 connections the listener's frame engine holds open.", []string{"listener"}, nil)
	descFrameUpstreamStreams = prometheus.NewDesc("meshd_frame_upstream_streams",
		"Backend streams open or being opened by the listener's frame engine.", []string{"listener"}, nil)
	descFrameBuffered = prometheus.NewDesc("meshd_frame_buffered_bytes",
		"DATA payload queued in meshd waiting to be written, typically for a peer's flow-control window; bounded by the windows meshd advertises.",
		[]string{"listener"}, nil)
	descFrameProtocolErrors = prometheus.NewDesc("meshd_frame_connection_errors_total",
		"Client or backend connections the frame engine closed with a GOAWAY error code (a peer broke HTTP/2, or a flood).", []string{"listener"}, nil)
	descFrameStreamErrors = prometheus.NewDesc("meshd_frame_stream_errors_total",
		"Streams reset because the peer broke the protocol on them (flow control, malformed headers).", []string{"listener"}, nil)
	descFrameDeadlines = prometheus.NewDesc("meshd_frame_deadlines_exceeded_total",
		"Calls ended by meshd's deadline timer (the client's deadline or the route's timeout).", []string{"listener"}, nil)
	descFrameTooLarge = prometheus.NewDesc("meshd_frame_messages_too_large_total",
		"Calls ended because a message exceeded max_message_size.", []string{"listener"}, nil)
	descFrameDialErrors = prometheus.NewDesc("meshd_frame_dial_errors_total",
		"Failed dials of backend connections.", []string{"listener"}, nil)
	descFrameMidMessage = prometheus.NewDesc("meshd_frame_mid_message_resets_total",
		"Calls meshd had to end after part of a response message was already forwarded: the client stream is reset (RST_STREAM CANCEL) instead of getting meshd's status, which would cut the message short.",
		[]string{"listener"}, nil)
)

var frameDescs = []*prometheus.Desc{descFrameStreams, descFrameUpstreamConns, descFrameUpstreamStreams, descFrameBuffered,
	descFrameProtocolErrors, descFrameStreamErrors, descFrameDeadlines, descFrameTooLarge, descFrameDialErrors, descFrameMidMessage}

// frameCollector reads the frame engine counters of the state collector's
// Source at scrape time.
type frameCollector struct{ state *stateCollector }

var _ prometheus.Collector = frameCollector{}

func (frameCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range frameDescs {
		ch <- d
	}
}

func (c frameCollector) Collect(ch chan<- prometheus.Metric) {
	ref := c.state.src.Load()
	if ref == nil {
		return
	}
	src, ok := ref.Source.(FrameSource)
	if !ok {
		return
	}
	gauge := func(d *prometheus.Desc, v int64, name string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), name)
	}
	counter := func(d *prometheus.Desc, v int64, name string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), name)
	}
	for name, st := range src.FrameStats() {
		gauge(descFrameStreams, st.ActiveStreams, name)
		gauge(descFrameUpstreamConns, st.UpstreamConns, name)
		gauge(descFrameUpstreamStreams, st.UpstreamStreams, name)
		gauge(descFrameBuffered, st.BufferedBytes, name)
		counter(descFrameProtocolErrors, st.ProtocolErrors, name)
		counter(descFrameStreamErrors, st.StreamErrors, name)
		counter(descFrameDeadlines, st.DeadlinesExceeded, name)
		counter(descFrameTooLarge, st.MessagesTooLarge, name)
		counter(descFrameDialErrors, st.DialErrors, name)
		counter(descFrameMidMessage, st.MidMessageResets, name)
	}
}
