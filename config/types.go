package config

import (
	"time"

	"google.golang.org/grpc/codes"
)

// Config is a whole meshd configuration file.
type Config struct {
	// Admin is the HTTP admin server (/live, /ready, /metrics, /config_dump,
	// /routes, /clusters).
	Admin Admin `yaml:"admin"`
	// Listeners accept gRPC calls. At least one is required.
	Listeners []Listener `yaml:"listeners"`
	// Routes are matched in file order; the first match wins.
	Routes []Route `yaml:"routes"`
	// Clusters are the upstream groups routes send calls to.
	Clusters []Cluster `yaml:"clusters"`
	// Consul is the agent used by clusters with a consul section.
	Consul Consul `yaml:"consul"`
	// Kubernetes is the API server used by clusters with a kubernetes
	// section and, with grpcroutes set, the source of Gateway API
	// GRPCRoutes (kubernetes.go).
	Kubernetes *Kubernetes `yaml:"kubernetes"`
	// Mesh, when set, gives this workload a service-mesh identity (mTLS
	// on mesh_tls listeners and clusters) and authorizes the calls its
	// mesh listeners receive (mesh.go).
	Mesh *Mesh `yaml:"mesh"`
	// JWTProviders are the token issuers routes may require (a route's
	// jwt.provider names one); edge.go.
	JWTProviders []JWTProvider `yaml:"jwt_providers"`
	// Tracing configures OpenTelemetry trace export.
	Tracing Tracing `yaml:"tracing"`
	// Metrics configures the Prometheus metrics on the admin port's /metrics.
	Metrics Metrics `yaml:"metrics"`
	// AccessLog configures the per-call access log.
	AccessLog AccessLog `yaml:"access_log"`
	// DrainTimeout is how long in-flight calls get to finish after SIGTERM.
	// Default 10s.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// Engine names the data path. The frame engine (HTTP/2 frame-level
	// forwarding) is the only one: "frame" is accepted for configs written
	// when there were two, and "grpc" (the grpc-go engine, removed) is an
	// error that says so. Optional.
	Engine string `yaml:"engine"`
	// MaxMessageSize is the largest gRPC message meshd forwards in either
	// direction, in bytes. Default 16 MiB. Larger messages are answered with
	// RESOURCE_EXHAUSTED.
	MaxMessageSize int `yaml:"max_message_size"`
	// Workers is how many threads run meshd at once (Go's GOMAXPROCS):
	// auto (the default, also written 0) starts with one and adds one
	// while those it has are saturated and the machine has an idle CPU,
	// up to the CPUs meshd may use; a number fixes the count. Reloads
	// apply it. See package workers.
	Workers Workers `yaml:"workers"`
	// MaxRetryBufferBytes caps, across every call of the process, the
	// request bytes held so that uncommitted calls can be retried (each
	// route's retry.max_buffer_bytes caps one call). A call that would go
	// over either limit commits: it carries on, but is not retried.
	// Default 64 MiB.
	MaxRetryBufferBytes int64 `yaml:"max_retry_buffer_bytes"`

	// File is the path the config was read from ("" for in-memory configs);
	// it prefixes error messages.
	File string `yaml:"-"`
	// locs maps field paths (e.g. "routes[2].cluster") to their line numbers.
	locs map[string]int
	// at maps value nodes' positions to their field paths.
	at map[pos]string
}

// Admin is the admin HTTP server's section.
type Admin struct {
	// Address to listen on, e.g. 127.0.0.1:15000. Empty disables the admin
	// server. Keep it on loopback: it exposes the effective config.
	Address string `yaml:"address"`
	// Pprof serves Go's runtime profiles (net/http/pprof) under
	// /debug/pprof/ on the admin port, to profile a running meshd under its
	// real load. Default false: a CPU profile or trace costs CPU while it
	// runs, and profiles expose internals. Takes effect on restart.
	Pprof bool `yaml:"pprof"`
}

// Listener is one port meshd accepts gRPC on.
type Listener struct {
	// Name identifies the listener in logs and metrics. Required, unique.
	Name string `yaml:"name"`
	// Address to listen on, host:port. Required.
	Address string `yaml:"address"`
	// TLS, when set, terminates TLS (ALPN h2) on this listener.
	TLS *ListenerTLS `yaml:"tls"`
	// MaxConcurrentStreams caps streams per client connection. Default 1000.
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
	// Connection limits and keepalive (MaxConnections, IdleTimeout,
	// MaxConnectionAge, Keepalive) and transparent interception
	// (OriginalDst) are documented in deploy.go.
	ListenerLimits `yaml:",inline"`
	// OriginalDst, when set, marks a listener that receives connections
	// redirected by iptables (`meshd iptables`): calls are routed by the
	// connection's original destination as well as by method.
	OriginalDst *OriginalDst `yaml:"original_dst"`
	// MeshTLS makes this a mesh listener: TLS with the mesh identity,
	// client certificates from mesh identities, and every call authorized
	// by the intentions of mesh.service. "strict" takes only mTLS;
	// "permissive" also takes plaintext (migration), whose calls have no
	// identity and match only "*" intentions. Exclusive with tls.
	MeshTLS string `yaml:"mesh_tls"`
	// GRPCWeb, when set, also accepts gRPC-Web (browsers) on this
	// listener, over HTTP/1.1, with CORS (grpcweb.go).
	GRPCWeb *GRPCWeb `yaml:"grpc_web"`
	// Reflection makes meshd answer grpc.reflection.v1 and v1alpha on
	// this listener itself, merging what the backends of its routes
	// report (grpcweb.go).
	Reflection bool `yaml:"reflection"`
}

// ListenerTLS is TLS termination on a listener.
type ListenerTLS struct {
	// CertFile and KeyFile are the PEM server certificate chain and key.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile, when set, requires client certificates signed by it (mTLS).
	ClientCAFile string `yaml:"client_ca_file"`
}

// Route maps matching calls to a cluster (or a weighted split of clusters).
type Route struct {
	// Name identifies the route in logs, metrics and `route explain`.
	// Required, unique.
	Name string `yaml:"name"`
	// Listeners, when set, limits the route to calls that arrived on these
	// listeners (by name); a call on any other listener does not see the
	// route. Empty: every listener.
	Listeners []string `yaml:"listeners"`
	// Source says where the route came from: "file", "consul:KEY" or
	// "grpcroute:NAMESPACE/NAME". Set by meshd, not written in YAML.
	Source string `yaml:"-"`
	// Match selects the calls this route takes.
	Match Match `yaml:"match"`
	// RequestHeaders edits the request metadata sent upstream; nil: none.
	RequestHeaders *HeaderRules `yaml:"request_headers"`
	// ResponseHeaders edits the response headers (the first HEADERS, not
	// the trailers) forwarded to the client; nil: none.
	ResponseHeaders *HeaderRules `yaml:"response_headers"`
	// JWT, when set, requires a valid token from the named provider
	// (jwt_providers) on every call the route takes.
	JWT *RouteJWT `yaml:"jwt"`
	// Cluster is the single cluster calls go to. Exactly one of Cluster and
	// Clusters is required.
	Cluster string `yaml:"cluster"`
	// Clusters is a weighted split (canaries): each call picks one cluster
	// with probability weight/sum(weights).
	Clusters []WeightedCluster `yaml:"clusters"`
	// Timeout is the call's total budget at meshd, streams included (0:
	// none, the default, so long-lived streams are never cut by a default).
	// The effective deadline is the tighter of this and the client's; meshd
	// answers DEADLINE_EXCEEDED when it passes.
	Timeout Duration `yaml:"timeout"`
	// MaxGRPCTimeout caps a client-supplied deadline (grpc-timeout) at this
	// value (0: no cap). Calls without a deadline are not affected: use
	// Timeout to bound those.
	MaxGRPCTimeout Duration `yaml:"max_grpc_timeout"`
	// IdleTimeout ends a call in which no message has crossed meshd in
	// either direction for this long, with DEADLINE_EXCEEDED (0: none, the
	// default). It is the timeout for streaming routes: a stream that keeps
	// sending lives as long as it likes. It applies to unary calls too (a
	// backend slower than IdleTimeout to answer is cut).
	IdleTimeout Duration `yaml:"idle_timeout"`
	// RateLimit, when set, admits at most this many calls per second on the
	// route (a token bucket per meshd instance); calls over it are answered
	// RESOURCE_EXHAUSTED at once.
	RateLimit *RateLimit `yaml:"rate_limit"`
	// Retry, when set, retries failed attempts that were not yet committed.
	Retry *Retry `yaml:"retry"`
	// Fault, when set, delays or aborts a share of the route's calls, for
	// drills (traffic.go).
	Fault *Fault `yaml:"fault"`
	// Mirror, when set, copies a share of the route's calls to another
	// cluster, responses discarded (traffic.go).
	Mirror *Mirror `yaml:"mirror"`
	// Hedge, when set, starts another attempt of a call that has no
	// response headers after a delay (traffic.go). For idempotent methods
	// only.
	Hedge *Hedge `yaml:"hedge"`
}

// Match is a route's selector. Exactly one of Method, Service and Prefix is
// required; Headers are optional extra conditions, all of which must hold.
type Match struct {
	// Method is an exact full method name, "/pkg.Service/Method".
	Method string `yaml:"method"`
	// Service matches every method of one service, "pkg.Service".
	Service string `yaml:"service"`
	// Prefix matches paths that start with it; "/" matches everything.
	Prefix string `yaml:"prefix"`
	// Authority, when set, also requires the call's :authority (its host)
	// to match: an exact host ("api.example.com") or a leading wildcard
	// ("*.example.com": one or more labels before example.com, not
	// example.com itself). Case-insensitive; the port of the call is
	// ignored unless the rule gives one ("api.example.com:8443").
	Authority string `yaml:"authority"`
	// Headers are metadata conditions; all must hold.
	Headers []HeaderMatch `yaml:"headers"`
}

// HeaderMatch is one metadata condition. Exactly one of Exact, Regex, Prefix
// and Present is required. Multi-valued keys match when any value matches.
type HeaderMatch struct {
	// Name is the metadata key, lowercase (gRPC metadata keys are).
	Name string `yaml:"name"`
	// Exact value.
	Exact *string `yaml:"exact"`
	// Regex is an RE2 expression matched against the whole value.
	Regex *string `yaml:"regex"`
	// Prefix of the value.
	Prefix *string `yaml:"prefix"`
	// Present: true requires the key, false requires its absence.
	Present *bool `yaml:"present"`
	// Invert negates the condition.
	Invert bool `yaml:"invert"`
}

// WeightedCluster is one leg of a traffic split.
type WeightedCluster struct {
	Name   string `yaml:"name"`
	Weight uint32 `yaml:"weight"`
}

// Retry is a route's retry policy.
type Retry struct {
	// Attempts is the total number of attempts including the first (>= 1).
	Attempts int `yaml:"attempts"`
	// RetryOn lists the status codes that are retried, by name.
	// Default [UNAVAILABLE].
	RetryOn []Code `yaml:"retry_on"`
	// PerTryTimeout bounds each attempt until it commits (0: only the
	// call's deadline). An attempt cut by it is retried like a RetryOn code
	// while attempts, the budget and the deadline allow; otherwise the call
	// ends DEADLINE_EXCEEDED. Once the response has started it no longer
	// applies, so it never cuts a flowing stream. Response headers that
	// arrive without a message are held (so that a status right after them
	// can still be retried) for at most what is left of it, or 1s without
	// one; then they go out and the call commits.
	PerTryTimeout Duration `yaml:"per_try_timeout"`
	// Backoff is the wait before each retry: exponential with full jitter.
	Backoff RetryBackoff `yaml:"backoff"`
	// MaxBufferBytes is how many request bytes one call may hold for replay
	// (default 256 KiB). A call that sends more commits: it carries on but
	// is not retried.
	MaxBufferBytes int64 `yaml:"max_buffer_bytes"`
}

// Cluster is a group of interchangeable backends.
type Cluster struct {
	// Name identifies the cluster. Required, unique.
	Name string `yaml:"name"`
	// Endpoints is a static list: "host:port" strings, or
	// {address: host:port, weight: N, zone: Z} items.
	Endpoints []EndpointSpec `yaml:"endpoints"`
	// Consul discovers the endpoints from a Consul service instead.
	Consul *ConsulService `yaml:"consul"`
	// Authority, when set, is the :authority sent upstream on every call
	// to this cluster (virtual-hosted backends); empty: the client's.
	Authority string `yaml:"authority"`
	// Kubernetes discovers the endpoints from a Service's EndpointSlices
	// instead (kubernetes.go).
	Kubernetes *KubernetesService `yaml:"kubernetes"`
	// LB is the balancing policy: round_robin (default), least_request,
	// peak_ewma or ring_hash.
	LB string `yaml:"lb"`
	// HashHeader is the metadata key ring_hash hashes on (required for
	// ring_hash). Calls without it are spread at random.
	HashHeader string `yaml:"hash_header"`
	// Health configures active grpc.health.v1 watching (on by default).
	Health Health `yaml:"health"`
	// Outlier configures passive ejection of failing endpoints.
	Outlier Outlier `yaml:"outlier"`
	// AllDown is what happens when no endpoint can be picked, not even in
	// panic mode: "fail" (default, UNAVAILABLE) or "any" (use every known
	// endpoint, pending and unreachable ones included).
	AllDown string `yaml:"all_down"`
	// HealthyPanicThreshold is Envoy's panic threshold, in percent (0 to
	// 100): when fewer than this share of the endpoints with a health
	// verdict are serving, calls spread over every endpoint that answered
	// (NOT_SERVING and outlier-ejected ones too) instead of piling onto
	// the few serving ones. Endpoints awaiting their first verdict and
	// endpoints meshd cannot connect to are left out of both the share and
	// the spread. 0, the default, turns panic mode off: a NOT_SERVING
	// verdict comes from the backend itself, and the usual reason many
	// endpoints say it at once is that they are starting (meshd started
	// before them, or a fleet restart), when calls sent to them fail.
	HealthyPanicThreshold int `yaml:"healthy_panic_threshold"`
	// SlowStart is the window over which an endpoint that starts serving
	// (first SERVING after it joined, or back from a health or outlier
	// ejection) ramps linearly from 10% of its weight to all of it, as
	// Envoy's slow_start_config with aggression 1.0. It applies to
	// round_robin, least_request and peak_ewma; ring_hash ignores it (a
	// ramp would move keys back and forth). 0, the default, is off.
	SlowStart Duration `yaml:"slow_start"`
	// Locality, when set, keeps picks in this meshd's zone while enough of
	// it is serving (zone-aware balancing; see Locality).
	Locality *Locality `yaml:"locality"`
	// TLS to the upstream endpoints; plaintext (h2c) when absent.
	TLS *UpstreamTLS `yaml:"tls"`
	// MeshTLS dials the endpoints (other meshd sidecars' mesh listeners)
	// with this workload's mesh identity and requires theirs to be
	// MeshTLS.Service. Exclusive with tls.
	MeshTLS *ClusterMeshTLS `yaml:"mesh_tls"`
	// MaxRequests caps the calls in flight to the cluster from this meshd
	// (0: no cap, the default). Calls over it are answered
	// RESOURCE_EXHAUSTED at once rather than queued.
	MaxRequests int `yaml:"max_requests"`
	// MaxPending caps the calls waiting for an upstream stream: picked, but
	// their connection is still connecting or has no free stream slot (the
	// backend's MAX_CONCURRENT_STREAMS). meshd never queues calls itself,
	// so this is the only place calls can pile up (0: no cap, the default).
	// Calls over it are answered RESOURCE_EXHAUSTED at once.
	MaxPending int `yaml:"max_pending"`
	// RetryBudget caps the retries of every route sending to this cluster,
	// so that retries cannot multiply the load of a failing cluster.
	RetryBudget RetryBudget `yaml:"retry_budget"`
}

// EndpointSpec is one static endpoint.
type EndpointSpec struct {
	Address string `yaml:"address"`
	Weight  uint32 `yaml:"weight"`
	// Zone is the endpoint's zone for zone-aware balancing ("" : none).
	Zone string `yaml:"zone"`
}

// DefaultMinHealthyPercent is locality.min_healthy_percent when unset.
const DefaultMinHealthyPercent = 70

// Locality is a cluster's zone-aware balancing. While the local zone's
// serving endpoints are at least MinHealthyPercent of its endpoints with a
// health verdict (endpoints awaiting their first one count for neither),
// every call goes to the local zone. Below that, and in panic mode, calls
// spread over the serving endpoints of every zone by weight, as without
// locality. An endpoint without a zone is a zone of its own, never local:
// it takes calls only when they spread.
type Locality struct {
	// ZoneKey is the Consul metadata key holding an endpoint's zone: the
	// node's metadata first, else the service instance's. Default "zone".
	// Static endpoints give their zone inline.
	ZoneKey string `yaml:"zone_key"`
	// LocalZone is this meshd's zone; the MESHD_ZONE environment variable
	// when empty. With neither, picks ignore zones.
	LocalZone string `yaml:"local_zone"`
	// MinHealthyPercent (0..100) is the share of the local zone that must
	// be serving for calls to stay in it. Default 70; 0 keeps them local
	// while any local endpoint serves.
	MinHealthyPercent *int `yaml:"min_healthy_percent"`
}

// ConsulService selects a Consul service for a cluster.
type ConsulService struct {
	// Service name in Consul. Required.
	Service string `yaml:"service"`
	// Tag filters instances (optional).
	Tag string `yaml:"tag"`
	// Datacenter to query (optional; default the agent's).
	Datacenter string `yaml:"datacenter"`
	// PassingOnly keeps only instances whose Consul checks pass. Default true.
	PassingOnly *bool `yaml:"passing_only"`
	// Connect discovers the service's Connect-capable instances: the
	// sidecars registered as kind connect-proxy for it (their address and
	// port, which is the peer meshd's mesh listener), with their health.
	Connect bool `yaml:"connect"`
}

// Health is a cluster's active health checking.
type Health struct {
	// Service is the name sent in grpc.health.v1 HealthCheckRequest; ""
	// means the whole server.
	Service string `yaml:"service"`
	// Disabled turns health watching off: endpoints serve once discovered.
	Disabled bool `yaml:"disabled"`
	// Missing is how a backend with no health service at all is treated:
	// "serving" (default; plain backends keep working) or "ejected".
	Missing string `yaml:"missing"`
	// CheckInterval is the polling interval for backends that implement only
	// Health/Check. Default 1s.
	CheckInterval Duration `yaml:"check_interval"`
	// ReconnectMax caps the backoff between tries to reconnect to an
	// endpoint whose connection failed (refused, reset, timed out), and
	// between reopened health streams: tries start 100ms apart, grow 1.6
	// times, are jittered and are never more than 80% of ReconnectMax
	// apart, so an endpoint that starts listening again serves calls
	// within ReconnectMax, however long it was down. Each try is bounded
	// by a 5s connect timeout (the data path's), so an endpoint that
	// accepts connections but never answers costs one connection every
	// few seconds. Default 1s; at least 100ms.
	ReconnectMax Duration `yaml:"reconnect_max"`
}

// Reconnect bounds of health.reconnect_max.
const (
	DefaultReconnectMax = time.Second
	// MinReconnectMax keeps reconnects to a refused port from turning into
	// a busy loop.
	MinReconnectMax = 100 * time.Millisecond
)

// Outlier is passive outlier detection.
type Outlier struct {
	// ConsecutiveFailures ejects an endpoint after this many failed calls in
	// a row. Default 5; a negative value disables the rule.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// BaseEjectionTime is the first ejection's length; each repeated
	// ejection lasts longer. Default 5s.
	BaseEjectionTime Duration `yaml:"base_ejection_time"`
	// MaxEjectionTime caps an ejection. Default 300s.
	MaxEjectionTime Duration `yaml:"max_ejection_time"`
	// MaxEjectionPercent caps the share of a cluster ejected at once.
	// Default 50.
	MaxEjectionPercent *int `yaml:"max_ejection_percent"`
	// FailureCodes count as failures. Default [UNAVAILABLE].
	FailureCodes []Code `yaml:"failure_codes"`
	// FailurePercentage, when set, also ejects an endpoint whose calls
	// failed at least Threshold percent of the time in one Interval, as
	// Envoy's failure-percentage rule (with enforcing 100%). Off when
	// absent.
	FailurePercentage *FailurePercentage `yaml:"failure_percentage"`
}

// Defaults of outlier.failure_percentage, Envoy's.
const (
	DefaultFailurePercentThreshold = 85
	DefaultFailurePercentRequests  = 50
	DefaultFailurePercentInterval  = 10 * time.Second
	// MinFailurePercentInterval keeps the judging sweep from spinning.
	MinFailurePercentInterval = 10 * time.Millisecond
)

// FailurePercentage is the failure-percentage outlier rule. Each Interval
// meshd counts every endpoint's finished calls and failures (calls ending
// with one of failure_codes, or failing to connect); an endpoint with at
// least MinimumRequests calls of which at least Threshold percent failed
// is ejected, within max_ejection_percent, for base_ejection_time × its
// ejection count, like a consecutive-failures ejection. Interval also
// becomes the period after which a returned endpoint's ejection count
// drops by one (Envoy's interval does both; it is 1s otherwise).
type FailurePercentage struct {
	// Threshold is the failed share, in percent (1..100). Default 85.
	Threshold int `yaml:"threshold"`
	// MinimumRequests is how many calls an endpoint must finish in one
	// Interval to be judged. Default 50.
	MinimumRequests int `yaml:"minimum_requests"`
	// Interval is the counting window. Default 10s; at least 10ms.
	Interval Duration `yaml:"interval"`
}

// UpstreamTLS is TLS from meshd to a cluster's endpoints.
type UpstreamTLS struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// Consul is the Consul agent section.
type Consul struct {
	// Address of the agent's HTTP API; CONSUL_HTTP_ADDR when empty.
	Address string `yaml:"address"`
	// Token is the ACL token; CONSUL_HTTP_TOKEN when empty.
	Token string `yaml:"token"`
	// ConfigKey, when set, is a Consul KV key holding routes and clusters
	// shared by a fleet (a YAML document with only `routes:` and
	// `clusters:`). meshd watches it with blocking queries and applies each
	// change through the same validate-then-swap path as a file reload. Its
	// routes are matched before the file's and its clusters are added to
	// the file's (names must not clash). An invalid value is rejected and
	// the last good rules keep serving; a deleted key also keeps them.
	ConfigKey string `yaml:"config_key"`
}

// Tracing is OpenTelemetry export.
type Tracing struct {
	// OTLPEndpoint is an OTLP/gRPC collector, host:port. Empty: the
	// standard OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// SampleRatio is the parent-based trace-id ratio. Unset: the standard
	// OTEL_TRACES_SAMPLER/OTEL_TRACES_SAMPLER_ARG, else 1.0.
	SampleRatio *float64 `yaml:"sample_ratio"`
}

// DefaultMaxMethods is metrics.max_methods when unset.
const DefaultMaxMethods = 1000

// Metrics is the Prometheus metrics section. Metrics are always collected;
// they are served on the admin port's /metrics.
type Metrics struct {
	// MaxMethods caps the distinct values of the method labels: the first
	// MaxMethods methods that matched a route get their own series, later
	// ones are counted as "other". Calls that matched no route are always
	// counted as "unmatched", so a client cannot grow the series count by
	// inventing method names. Default 1000.
	MaxMethods int `yaml:"max_methods"`
}

// AccessLog is the access log section: one JSON line per finished call,
// never one per message.
type AccessLog struct {
	// Enabled turns the access log on. Default false; when off it costs
	// nothing (the logger is not installed at all).
	Enabled bool `yaml:"enabled"`
	// Path is the file the lines are appended to (created 0644 if absent,
	// opened O_APPEND so rotation by copy-truncate or rename-and-reopen on
	// restart both work). Empty: standard error.
	Path string `yaml:"path"`
	// SampleRatio is the share of calls logged, in [0, 1]. Default 1 (every
	// call).
	SampleRatio *float64 `yaml:"sample_ratio"`
}

// Duration is a time.Duration written in Go syntax ("500ms", "2s", "1m").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Code is a gRPC status code written by name ("UNAVAILABLE").
type Code codes.Code

// C returns the value as a codes.Code.
func (c Code) C() codes.Code { return codes.Code(c) }
