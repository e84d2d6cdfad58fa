package metrics

import (
	"runtime"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/discovery"
)

// Source is the live state the scrape-time metrics describe. meshd's
// server implements it. Its methods are called on the scraping goroutine,
// must be safe for concurrent use and should not block for long.
type Source interface {
	// ClusterStatuses returns every loaded cluster's status.
	ClusterStatuses() []balancer.ClusterStatus
	// DiscoveryStatuses returns the watch status of every cluster whose
	// endpoints come from a watched source (Consul), by cluster name.
	DiscoveryStatuses() map[string]discovery.WatchStatus
	// ReloadCounts returns how many config reloads succeeded and failed
	// since start (the initial load is not a reload).
	ReloadCounts() (ok, failed uint64)
}

// endpointStates are the values of meshd_endpoint_state's state label. Each
// endpoint reports all of them, 1 for its current state and 0 for the
// others, so `meshd_endpoint_state{state="serving"} == 0` finds every
// endpoint not taking traffic without knowing the other states' names.
var endpointStates = [...]string{balancer.StateServing, balancer.StateEjected, balancer.StatePending, balancer.StateDraining}

var (
	descEndpointState = prometheus.NewDesc("meshd_endpoint_state",
		"Endpoint health state: 1 for the endpoint's current state (serving, ejected, pending, draining), 0 for the others.",
		[]string{"cluster", "endpoint", "state"}, nil)
	descOutstanding = prometheus.NewDesc("meshd_endpoint_outstanding_requests",
		"Calls in flight on the endpoint.", []string{"cluster", "endpoint"}, nil)
	descEjections = prometheus.NewDesc("meshd_endpoint_ejections_total",
		"Outlier ejections of the endpoint since it was discovered.", []string{"cluster", "endpoint"}, nil)
	descWeight = prometheus.NewDesc("meshd_endpoint_weight",
		"The endpoint's balancing weight, as discovery announced it.", []string{"cluster", "endpoint"}, nil)
	descClusterEndpoints = prometheus.NewDesc("meshd_cluster_endpoints",
		"Endpoints in the cluster (draining ones excluded).", []string{"cluster"}, nil)
	descClusterHealthy = prometheus.NewDesc("meshd_cluster_healthy_endpoints",
		"Endpoints in the cluster that are serving.", []string{"cluster"}, nil)
	descClusterReady = prometheus.NewDesc("meshd_cluster_ready",
		"1 once the cluster received its first discovery snapshot.", []string{"cluster"}, nil)
	descClusterPanic = prometheus.NewDesc("meshd_cluster_panic",
		"1 while the cluster is in panic mode (fewer than healthy_panic_threshold percent of its endpoints serving).", []string{"cluster"}, nil)
	descClusterPanics = prometheus.NewDesc("meshd_cluster_panics_total",
		"Times the cluster entered panic mode.", []string{"cluster"}, nil)
	descClusterPanicPicks = prometheus.NewDesc("meshd_cluster_panic_picks_total",
		"Calls balanced in panic mode, over every endpoint that answered rather than the serving ones only.", []string{"cluster"}, nil)
	descConsulHealthy = prometheus.NewDesc("meshd_consul_watch_healthy",
		"1 when the cluster's last Consul query succeeded, 0 while it fails.", []string{"cluster"}, nil)
	descConsulFailures = prometheus.NewDesc("meshd_consul_watch_consecutive_failures",
		"Consecutive failed Consul queries for the cluster (0 after a success).", []string{"cluster"}, nil)
	descConsulLastSuccess = prometheus.NewDesc("meshd_consul_watch_last_success_timestamp_seconds",
		"When the cluster's Consul query last succeeded, Unix seconds (0: never).", []string{"cluster"}, nil)
	descWorkers = prometheus.NewDesc("meshd_workers",
		"Threads running meshd at once (GOMAXPROCS): the config's workers count, or what workers: auto chose for the load.", nil, nil)
	descReloads = prometheus.NewDesc("meshd_config_reloads_total",
		"Config reloads (file change or SIGHUP) by result: ok, or failed (the old config kept serving).", []string{"result"}, nil)
)

// stateCollector reads a Source at scrape time.
type stateCollector struct {
	src atomic.Pointer[sourceRef]
}

// sourceRef lets an interface value live behind an atomic.Pointer.
type sourceRef struct{ Source }

var _ prometheus.Collector = (*stateCollector)(nil)

func (c *stateCollector) set(src Source) {
	if src == nil {
		c.src.Store(nil)
		return
	}
	c.src.Store(&sourceRef{src})
}

// Describe sends every descriptor, so the registry checks them for
// conflicts once, at registration.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEndpointState, descOutstanding, descEjections, descWeight,
		descClusterEndpoints, descClusterHealthy, descClusterReady,
		descClusterPanic, descClusterPanics, descClusterPanicPicks,
		descConsulHealthy, descConsulFailures, descConsulLastSuccess, descReloads, descWorkers,
		descMeshReady, descLeafExpiry, descMeshRoots, descHandshakeFailures, descOpaqueDenied} {
		ch <- d
	}
}

// Collect reads the source once and reports what it says.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ref := c.src.Load()
	if ref == nil {
		return
	}
	src := ref.Source
	ok, failed := src.ReloadCounts()
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(ok), "ok")
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(failed), "failed")
	collectMesh(src, ch)
	ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(runtime.GOMAXPROCS(0)))

	for _, cs := range src.ClusterStatuses() {
		ch <- prometheus.MustNewConstMetric(descClusterEndpoints, prometheus.GaugeValue, float64(cs.Total), cs.Name)
		ch <- prometheus.MustNewConstMetric(descClusterHealthy, prometheus.GaugeValue, float64(cs.Healthy), cs.Name)
		ch <- prometheus.MustNewConstMetric(descClusterReady, prometheus.GaugeValue, b2f(cs.Ready), cs.Name)
		ch <- prometheus.MustNewConstMetric(descClusterPanic, prometheus.GaugeValue, b2f(cs.Panic), cs.Name)
		ch <- prometheus.MustNewConstMetric(descClusterPanics, prometheus.CounterValue, float64(cs.PanicEntered), cs.Name)
		ch <- prometheus.MustNewConstMetric(descClusterPanicPicks, prometheus.CounterValue, float64(cs.PanicPicks), cs.Name)
		// A registry refuses a scrape with two identical label sets; an
		// address can appear twice while an old endpoint drains next to
		// its replacement, and the live one (listed first) wins.
		seen := make(map[string]bool, len(cs.Endpoints))
		for _, e := range cs.Endpoints {
			if seen[e.Address] {
				continue
			}
			seen[e.Address] = true
			for _, st := range endpointStates {
				ch <- prometheus.MustNewConstMetric(descEndpointState, prometheus.GaugeValue, b2f(e.State == st), cs.Name, e.Address, st)
			}
			ch <- prometheus.MustNewConstMetric(descOutstanding, prometheus.GaugeValue, float64(e.Outstanding), cs.Name, e.Address)
			ch <- prometheus.MustNewConstMetric(descEjections, prometheus.CounterValue, float64(e.Ejections), cs.Name, e.Address)
			ch <- prometheus.MustNewConstMetric(descWeight, prometheus.GaugeValue, float64(e.Weight), cs.Name, e.Address)
		}
	}
	for name, ws := range src.DiscoveryStatuses() {
		ch <- prometheus.MustNewConstMetric(descConsulHealthy, prometheus.GaugeValue, b2f(ws.Healthy), name)
		ch <- prometheus.MustNewConstMetric(descConsulFailures, prometheus.GaugeValue, float64(ws.Failures), name)
		var last float64
		if !ws.LastSuccess.IsZero() {
			last = float64(ws.LastSuccess.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(descConsulLastSuccess, prometheus.GaugeValue, last, name)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
