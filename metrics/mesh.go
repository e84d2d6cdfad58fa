package metrics

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/callrecord"
)

// MeshState is the mesh identity's state at a scrape.
type MeshState struct {
	// Service is this workload's mesh service.
	Service string
	// Ready is true once a leaf certificate and CA roots (and, with
	// authorization from Consul, the intentions) have arrived.
	Ready bool
	// LeafNotAfter is the current leaf certificate's expiry (zero: none).
	LeafNotAfter time.Time
	// Roots is the number of trusted CA roots.
	Roots int
	// HandshakeFailures counts mesh listeners' failed TLS handshakes, by
	// listener.
	HandshakeFailures map[string]uint64
	// OpaqueDenied counts opaque (non-gRPC) connections that the
	// intentions refused on inbound mesh listeners, by listener.
	OpaqueDenied map[string]uint64
}

// MeshSource is implemented by a Source whose config has a mesh section.
type MeshSource interface {
	MeshState() (MeshState, bool)
}

var (
	descMeshReady = prometheus.NewDesc("meshd_mesh_identity_ready",
		"1 once the mesh identity (leaf certificate, CA roots and, from Consul, the intentions) has arrived.", []string{"service"}, nil)
	descLeafExpiry = prometheus.NewDesc("meshd_mesh_leaf_expiry_timestamp_seconds",
		"Expiry of the mesh leaf certificate in use, as a Unix time; alert on it minus time() getting small.", []string{"service"}, nil)
	descMeshRoots = prometheus.NewDesc("meshd_mesh_roots",
		"CA roots trusted for mesh identities.", []string{"service"}, nil)
	descOpaqueDenied = prometheus.NewDesc("meshd_authz_denied_connections_total",
		"Opaque (non-gRPC) connections to the app refused by the intentions on inbound mesh listeners, by listener.", []string{"listener"}, nil)
	descHandshakeFailures = prometheus.NewDesc("meshd_mesh_handshake_failures_total",
		"Failed TLS handshakes on mesh listeners (no or bad client certificate, another trust domain, plaintext on a strict listener), by listener.", []string{"listener"}, nil)
)

// collectMesh adds the mesh metrics of src, if it has a mesh.
func collectMesh(src Source, ch chan<- prometheus.Metric) {
	ms, ok := src.(MeshSource)
	if !ok {
		return
	}
	st, ok := ms.MeshState()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(descMeshReady, prometheus.GaugeValue, b2f(st.Ready), st.Service)
	if !st.LeafNotAfter.IsZero() {
		ch <- prometheus.MustNewConstMetric(descLeafExpiry, prometheus.GaugeValue, float64(st.LeafNotAfter.Unix()), st.Service)
	}
	ch <- prometheus.MustNewConstMetric(descMeshRoots, prometheus.GaugeValue, float64(st.Roots), st.Service)
	for l, n := range st.HandshakeFailures {
		ch <- prometheus.MustNewConstMetric(descHandshakeFailures, prometheus.CounterValue, float64(n), l)
	}
	for l, n := range st.OpaqueDenied {
		ch <- prometheus.MustNewConstMetric(descOpaqueDenied, prometheus.CounterValue, float64(n), l)
	}
}

// maxDeniedSources caps the source label of meshd_authz_denied_total. A
// source is a service name from a certificate the mesh's CA signed, so the
// set is bounded by the mesh's services; the cap keeps a misbehaving CA or
// a huge mesh from growing the series count without bound.
const maxDeniedSources = 200

// Unauthenticated is the source label of denied plaintext callers.
const Unauthenticated = "unauthenticated"

// denials counts the calls meshd's authorization refused, by source.
type denials struct {
	vec     *prometheus.CounterVec
	mu      sync.Mutex
	sources map[string]prometheus.Counter
}

func newDenials() *denials {
	return &denials{
		vec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_authz_denied_total",
			Help: "Calls refused with PERMISSION_DENIED by the mesh's intentions, by source service (\"unauthenticated\" for plaintext callers, \"other\" past 200 sources).",
		}, []string{"source"}),
		sources: map[string]prometheus.Counter{},
	}
}

// observe counts c if meshd's authorization refused it.
func (d *denials) observe(c *callrecord.Call) {
	if !c.Denied {
		return
	}
	src := sourceService(c.Peer)
	d.mu.Lock()
	ctr, ok := d.sources[src]
	if !ok {
		if len(d.sources) >= maxDeniedSources {
			src = Other
		}
		ctr = d.vec.WithLabelValues(src)
		if src != Other {
			d.sources[src] = ctr
		}
	}
	d.mu.Unlock()
	ctr.Inc()
}

// sourceService is the service of a SPIFFE ID
// (spiffe://td/ns/N/dc/D/svc/S), Unauthenticated for "".
func sourceService(id string) string {
	if id == "" {
		return Unauthenticated
	}
	if i := strings.LastIndex(id, "/svc/"); i >= 0 {
		return id[i+len("/svc/"):]
	}
	return id
}
