package metrics

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/callrecord"
)

// Label values that stand in for methods meshd does not name one by one.
const (
	// Other replaces methods beyond the MaxMethods cap.
	Other = "other"
	// Unmatched replaces methods of calls that matched no route.
	Unmatched = "unmatched"
)

// DefaultMaxMethods is the method label cap without WithMaxMethods.
const DefaultMaxMethods = 1000

// latencyBuckets spans a fast unary call through a local proxy (sub-
// millisecond) up to long streams; a proxy's calls are often much faster
// than the client library's default buckets assume.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Option configures New.
type Option func(*options)

type options struct {
	maxMethods  int
	droppedSpan func() uint64
	droppedLog  func() uint64
	now         func() time.Time
}

// WithMaxMethods caps the distinct methods given their own label values
// (default DefaultMaxMethods); n <= 0 keeps the default.
func WithMaxMethods(n int) Option { return func(o *options) { o.maxMethods = n } }

// WithDroppedSpans exports f's value as meshd_tracing_dropped_spans_total
// (tracing.Provider.Dropped). Without it the counter reads 0.
func WithDroppedSpans(f func() uint64) Option { return func(o *options) { o.droppedSpan = f } }

// WithClock sets the clock Recent reads (default time.Now), for tests.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithDroppedLogLines exports f's value as meshd_access_log_dropped_total
// (accesslog.Logger.Dropped). Without it the counter reads 0.
func WithDroppedLogLines(f func() uint64) Option { return func(o *options) { o.droppedLog = f } }

// Metrics is meshd's Prometheus instrumentation. It is a callrecord.Observer
// (and a callrecord.StartObserver, for the in-flight gauge); ObserveCall and
// CallStarted are safe for concurrent use and do not block on other calls
// once a call's label set has been seen. Create it with New.
type Metrics struct {
	reg *prometheus.Registry

	handled   *prometheus.CounterVec
	web       *prometheus.CounterVec // meshd_grpc_web_requests_total
	handling  *prometheus.HistogramVec
	attempts  *prometheus.CounterVec
	retries   *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	active    prometheus.Gauge
	denied    *denials               // mesh.go
	jwtDenied *prometheus.CounterVec // meshd_jwt_denied_total{provider, reason}
	faults    *prometheus.CounterVec
	mirrors   *prometheus.CounterVec

	state *stateCollector

	now    func() time.Time
	recent recent // recent.go: the dashboard's snapshots

	maxMethods int
	// series maps a call's (method, route, cluster) to its resolved
	// metric children. It is copied on write: reads on the data path take
	// no lock, and writes happen once per new label set.
	series atomic.Pointer[map[seriesKey]*series]
	// full is set once maxMethods distinct methods have been seen, after
	// which unknown methods go to Other without taking mu.
	full    atomic.Bool
	mu      sync.Mutex      // serializes writers of series and methods
	methods map[string]bool // methods with their own labels
}

var (
	_ callrecord.Observer       = (*Metrics)(nil)
	_ callrecord.StartObserver  = (*Metrics)(nil)
	_ callrecord.MirrorObserver = (*Metrics)(nil)
)

// ObserveMirror counts a mirrored copy's result.
func (m *Metrics) ObserveMirror(route, result string) {
	m.mirrors.WithLabelValues(route, result).Inc()
}

// New builds the registry with every meshd metric and the Go runtime and
// process collectors. State metrics appear once SetSource is called.
func New(opts ...Option) *Metrics {
	o := options{maxMethods: DefaultMaxMethods, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.maxMethods <= 0 {
		o.maxMethods = DefaultMaxMethods
	}
	m := &Metrics{
		reg:        prometheus.NewRegistry(),
		now:        o.now,
		maxMethods: o.maxMethods,
		methods:    map[string]bool{},
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "Calls completed by meshd, by method, gRPC status code, route and cluster.",
		}, []string{"grpc_service", "grpc_method", "grpc_code", "route", "cluster"}),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Duration of calls through meshd, from the call's arrival to its status, by method, route and cluster.",
			Buckets: latencyBuckets,
		}, []string{"grpc_service", "grpc_method", "route", "cluster"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_upstream_attempts_total",
			Help: "Upstream attempts (first tries and retries, transparent ones included), by route and cluster.",
		}, []string{"route", "cluster"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_upstream_retries_total",
			Help: "Upstream attempts after a call's first, by route and cluster.",
		}, []string{"route", "cluster"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_message_bytes_total",
			Help: "gRPC message bytes forwarded, direction in (client to backend) or out (backend to client), by route and cluster.",
		}, []string{"route", "cluster", "direction"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_active_streams",
			Help: "Calls (streams) in flight through meshd's listeners.",
		}),
		web: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_grpc_web_requests_total",
			Help: "Calls that arrived as gRPC-Web and were translated into native calls (they are counted in grpc_server_handled_total too), by route and gRPC status code.",
		}, []string{"route", "grpc_code"}),
		state:  &stateCollector{},
		denied: newDenials(),
		jwtDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_jwt_denied_total",
			Help: "Calls refused with UNAUTHENTICATED because the route's JWT provider refused their token, by provider and reason (missing, malformed, expired, wrong_audience, unknown_kid, jwks_not_loaded, ...).",
		}, []string{"provider", "reason"}),
		faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_fault_injected_total",
			Help: "Calls into which a route's fault injection put a fault, by route and kind (delay, abort).",
		}, []string{"route", "kind"}),
		mirrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_mirror_requests_total",
			Help: "Mirrored copies of calls (route mirror), by route and result: answered (the mirror answered; its response discarded), dropped (the mirror was too slow or its buffer full), failed (the mirror could not be reached or reset the stream), no_endpoint (the mirror cluster had none).",
		}, []string{"route", "result"}),
	}
	m.series.Store(&map[seriesKey]*series{})
	m.reg.MustRegister(m.handled, m.web, m.handling, m.attempts, m.retries, m.bytes, m.active, m.state, m.denied.vec, m.jwtDenied, m.faults, m.mirrors,
		listenerCollector{state: m.state}, // abuse.go
		frameCollector{state: m.state},    // frame.go
		counterFunc("meshd_tracing_dropped_spans_total", "Sampled spans not exported: export queue full, collector failing, or lost at shutdown.", o.droppedSpan),
		counterFunc("meshd_access_log_dropped_total", "Access log lines dropped because the log writer fell behind.", o.droppedLog),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func counterFunc(name, help string, f func() uint64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
		if f == nil {
			return 0
		}
		return float64(f())
	})
}

// Registry returns the private registry, for callers that add collectors of
// their own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format (or
// OpenMetrics/protobuf if the scraper asks). A collector that fails is
// reported in the response and the rest are still served.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg, // counts promhttp's own errors
	})
}

// SetSource makes the state metrics read src at every scrape. It may be
// called once the thing being described exists, after New (meshd's server
// is built with the Metrics as one of its observers, so it cannot be passed
// to New). Passing nil stops the state metrics.
func (m *Metrics) SetSource(src Source) { m.state.set(src) }

// CallStarted counts a call in flight until its ObserveCall.
func (m *Metrics) CallStarted() { m.active.Inc() }

// ObserveCall records a finished call.
func (m *Metrics) ObserveCall(c *callrecord.Call) {
	m.active.Dec()
	s := m.seriesFor(c)
	s.code(c.Code).Inc()
	s.handling.Observe(c.Duration.Seconds())
	if c.Denied {
		m.denied.observe(c)
	}
	if c.JWTDenied != "" {
		// Both labels are bounded: providers by the config, reasons by
		// jwtauth's fixed set.
		m.jwtDenied.WithLabelValues(c.JWTProvider, c.JWTDenied).Inc()
	}
	if c.Protocol != "" {
		m.web.WithLabelValues(c.Route, c.Code.String()).Inc()
	}
	if c.Fault != "" {
		m.faults.WithLabelValues(c.Route, c.Fault).Inc()
	}
	if s.attempts == nil {
		return // matched no route: nothing went upstream
	}
	if c.Attempts > 0 {
		s.attempts.Add(float64(c.Attempts))
		if c.Attempts > 1 {
			s.retries.Add(float64(c.Attempts - 1))
		}
	}
	if c.BytesIn > 0 {
		s.bytesIn.Add(float64(c.BytesIn))
	}
	if c.BytesOut > 0 {
		s.bytesOut.Add(float64(c.BytesOut))
	}
}

// seriesKey identifies a label set. method is the full method name, or
// Other or Unmatched.
type seriesKey struct{ method, route, cluster string }

// series holds the metric children of one label set, resolved once so the
// data path does not hash label values on every call.
type series struct {
	m        *Metrics
	labels   [4]string // grpc_service, grpc_method, route, cluster
	handling prometheus.Observer
	// Route-level counters; nil for unmatched calls.
	attempts, retries, bytesIn, bytesOut prometheus.Counter
	// codes holds the handled counter per status code, created on first
	// use so a label set only has series for codes it has seen.
	codes [codes.Unauthenticated + 1]atomic.Pointer[prometheus.Counter]
}

func (s *series) code(c codes.Code) prometheus.Counter {
	if int(c) >= len(s.codes) {
		return s.m.handled.WithLabelValues(s.labels[0], s.labels[1], c.String(), s.labels[2], s.labels[3])
	}
	if p := s.codes[c].Load(); p != nil {
		return *p
	}
	ctr := s.m.handled.WithLabelValues(s.labels[0], s.labels[1], c.String(), s.labels[2], s.labels[3])
	s.codes[c].Store(&ctr) // a racing store holds the same child
	return ctr
}

// seriesFor returns the call's series, creating it on first sight and
// applying the method cap.
func (m *Metrics) seriesFor(c *callrecord.Call) *series {
	key := seriesKey{c.Method, c.Route, c.Cluster}
	if c.Route == "" {
		key = seriesKey{method: Unmatched}
	}
	cache := *m.series.Load()
	if s := cache[key]; s != nil {
		return s
	}
	if key.method != Unmatched && m.full.Load() && !m.methods[key.method] {
		// Past the cap: the Other series, without the lock. Reading
		// methods is safe here: it is written only before full is set.
		if s := cache[seriesKey{Other, key.route, key.cluster}]; s != nil {
			return s
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if key.method != Unmatched && !m.methods[key.method] {
		if len(m.methods) >= m.maxMethods {
			key.method = Other
		} else {
			m.methods[key.method] = true
			if len(m.methods) >= m.maxMethods {
				m.full.Store(true)
			}
		}
	}
	cache = *m.series.Load()
	if s := cache[key]; s != nil {
		return s
	}
	s := m.newSeries(key)
	next := make(map[seriesKey]*series, len(cache)+1)
	for k, v := range cache {
		next[k] = v
	}
	next[key] = s
	m.series.Store(&next)
	return s
}

func (m *Metrics) newSeries(key seriesKey) *series {
	svc, method := splitMethod(key.method)
	s := &series{m: m, labels: [4]string{svc, method, key.route, key.cluster}}
	s.handling = m.handling.WithLabelValues(s.labels[:]...)
	if key.route != "" {
		s.attempts = m.attempts.WithLabelValues(key.route, key.cluster)
		s.retries = m.retries.WithLabelValues(key.route, key.cluster)
		s.bytesIn = m.bytes.WithLabelValues(key.route, key.cluster, "in")
		s.bytesOut = m.bytes.WithLabelValues(key.route, key.cluster, "out")
	}
	return s
}

// splitMethod turns "/pkg.Svc/Method" into ("pkg.Svc", "Method"), the
// grpc_service and grpc_method labels. Other and Unmatched fill both. A
// name of another shape keeps the whole name as the method. Label values
// must be valid UTF-8 (the client library panics otherwise), and a method
// name arrives from the network, so it is sanitized.
func splitMethod(full string) (svc, method string) {
	if full == Other || full == Unmatched {
		return full, full
	}
	if !utf8.ValidString(full) {
		full = strings.ToValidUTF8(full, "\uFFFD")
	}
	name := strings.TrimPrefix(full, "/")
	i := strings.LastIndexByte(name, '/')
	if i <= 0 || i == len(name)-1 {
		return "", full
	}
	return name[:i], name[i+1:]
}
