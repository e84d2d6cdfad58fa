package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/engine"
)

// FrameSource is a Source that also reports each listener's engine
// counters, by listener name (meshd's server does). The meshd_frame_*
// metrics appear only for such a Source, and only for the listeners it
// reports. Only the client side is reported per listener: backend
// connections belong to clusters (PoolSource).
type FrameSource interface {
	FrameStats() map[string]engine.Stats
}

// PoolSource is a Source that also reports each cluster's upstream
// connection pool, by cluster name (meshd's server does). The
// meshd_cluster_upstream_* metrics appear only for such a Source.
type PoolSource interface {
	PoolStats() map[string]engine.PoolStats
}

var (
	descFrameStreams = prometheus.NewDesc("meshd_frame_streams_active",
		"Client streams open on the listener's frame engine.", []string{"listener"}, nil)
	descFrameBuffered = prometheus.NewDesc("meshd_frame_buffered_bytes",
		"Response DATA queued on the listener's client connections waiting to be written, typically for a client's flow-control window; bounded by the windows meshd advertises.",
		[]string{"listener"}, nil)
	descFrameProtocolErrors = prometheus.NewDesc("meshd_frame_connection_errors_total",
		"Client connections the listener's frame engine closed with a GOAWAY error code (a client broke HTTP/2, or a flood).", []string{"listener"}, nil)
	descFrameStreamErrors = prometheus.NewDesc("meshd_frame_stream_errors_total",
		"Client streams reset because the client broke the protocol on them (flow control, malformed headers).", []string{"listener"}, nil)
	descFrameDeadlines = prometheus.NewDesc("meshd_frame_deadlines_exceeded_total",
		"Calls ended by meshd's deadline timer (the client's deadline or the route's timeout).", []string{"listener"}, nil)
	descFrameTooLarge = prometheus.NewDesc("meshd_frame_messages_too_large_total",
		"Calls ended because a message exceeded max_message_size.", []string{"listener"}, nil)
	descFrameMidMessage = prometheus.NewDesc("meshd_frame_mid_message_resets_total",
		"Calls meshd had to end after part of a response message was already forwarded: the client stream is reset (RST_STREAM CANCEL) instead of getting meshd's status, which would cut the message short.",
		[]string{"listener"}, nil)
	descFrameHeadersHeld = prometheus.NewDesc("meshd_frame_headers_held_total",
		"Attempts of calls on routes with retry whose response HEADERS meshd held until the attempt's next frame, so that a status following them with no message could still be retried.",
		[]string{"listener"}, nil)
	descFrameHedged = prometheus.NewDesc("meshd_frame_hedged_attempts_total",
		"Attempts that calls on routes with hedge started beside their first (each also takes a retry from the cluster's budget).",
		[]string{"listener"}, nil)
)

var (
	descPoolConns = prometheus.NewDesc("meshd_cluster_upstream_connections",
		"Backend HTTP/2 connections the cluster's pool holds open, shared by every listener.", []string{"cluster"}, nil)
	descPoolStreams = prometheus.NewDesc("meshd_cluster_upstream_streams",
		"Backend streams open or being opened on the cluster's connections.", []string{"cluster"}, nil)
	descPoolBuffered = prometheus.NewDesc("meshd_cluster_upstream_buffered_bytes",
		"Request DATA queued on the cluster's connections waiting to be written, typically for a backend's flow-control window.", []string{"cluster"}, nil)
	descPoolDialErrors = prometheus.NewDesc("meshd_cluster_upstream_dial_errors_total",
		"Failed dials of the cluster's backend connections (TCP, TLS, HTTP/2 handshake).", []string{"cluster"}, nil)
	descPoolProtocolErrors = prometheus.NewDesc("meshd_cluster_upstream_connection_errors_total",
		"The cluster's backend connections closed with a GOAWAY error code (a backend broke HTTP/2).", []string{"cluster"}, nil)
	descPoolStreamErrors = prometheus.NewDesc("meshd_cluster_upstream_stream_errors_total",
		"Backend streams ended because the backend broke the protocol on them (flow control, malformed response headers).", []string{"cluster"}, nil)
)

var frameDescs = []*prometheus.Desc{descFrameStreams, descFrameBuffered,
	descFrameProtocolErrors, descFrameStreamErrors, descFrameDeadlines, descFrameTooLarge, descFrameMidMessage, descFrameHeadersHeld, descFrameHedged,
	descPoolConns, descPoolStreams, descPoolBuffered, descPoolDialErrors, descPoolProtocolErrors, descPoolStreamErrors}

// frameCollector reads the engine counters of the state collector's
// Source at scrape time: listeners' (FrameSource) and clusters' pools'
// (PoolSource).
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
	gauge := func(d *prometheus.Desc, v int64, name string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), name)
	}
	counter := func(d *prometheus.Desc, v int64, name string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), name)
	}
	if src, ok := ref.Source.(FrameSource); ok {
		for name, st := range src.FrameStats() {
			gauge(descFrameStreams, st.ActiveStreams, name)
			gauge(descFrameBuffered, st.BufferedBytes, name)
			counter(descFrameProtocolErrors, st.ProtocolErrors, name)
			counter(descFrameStreamErrors, st.StreamErrors, name)
			counter(descFrameDeadlines, st.DeadlinesExceeded, name)
			counter(descFrameTooLarge, st.MessagesTooLarge, name)
			counter(descFrameMidMessage, st.MidMessageResets, name)
			counter(descFrameHeadersHeld, st.HeadersHeld, name)
			counter(descFrameHedged, st.HedgedAttempts, name)
		}
	}
	if src, ok := ref.Source.(PoolSource); ok {
		for name, st := range src.PoolStats() {
			gauge(descPoolConns, st.Conns, name)
			gauge(descPoolStreams, st.Streams, name)
			gauge(descPoolBuffered, st.BufferedBytes, name)
			counter(descPoolDialErrors, st.DialErrors, name)
			counter(descPoolProtocolErrors, st.ProtocolErrors, name)
			counter(descPoolStreamErrors, st.StreamErrors, name)
		}
	}
}
