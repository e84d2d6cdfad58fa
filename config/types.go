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
	// Tracing configures OpenTelemetry trace export.
	Tracing Tracing `yaml:"tracing"`
	// DrainTimeout is how long in-flight calls get to finish after SIGTERM.
	// Default 10s.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// Engine selects the data path: "grpc" (grpc-go based pass-through, the
	// default) or "frame" (HTTP/2 frame-level forwarding).
	Engine string `yaml:"engine"`
	// MaxMessageSize is the largest gRPC message meshd forwards in either
	// direction, in bytes. Default 16 MiB. Larger messages are answered with
	// RESOURCE_EXHAUSTED.
	MaxMessageSize int `yaml:"max_message_size"`

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
	// Match selects the calls this route takes.
	Match Match `yaml:"match"`
	// Cluster is the single cluster calls go to. Exactly one of Cluster and
	// Clusters is required.
	Cluster string `yaml:"cluster"`
	// Clusters is a weighted split (canaries): each call picks one cluster
	// with probability weight/sum(weights).
	Clusters []WeightedCluster `yaml:"clusters"`
	// Timeout is the call's total budget at meshd (0: none). The effective
	// deadline is the tighter of this and the client's.
	Timeout Duration `yaml:"timeout"`
	// MaxGRPCTimeout caps a client-supplied deadline (0: no cap).
	MaxGRPCTimeout Duration `yaml:"max_grpc_timeout"`
	// Retry, when set, retries failed attempts that were not yet committed.
	Retry *Retry `yaml:"retry"`
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
	// PerTryTimeout bounds each attempt (0: only the call's deadline).
	PerTryTimeout Duration `yaml:"per_try_timeout"`
}

// Cluster is a group of interchangeable backends.
type Cluster struct {
	// Name identifies the cluster. Required, unique.
	Name string `yaml:"name"`
	// Endpoints is a static list: "host:port" strings, or
	// {address: host:port, weight: N} items.
	Endpoints []EndpointSpec `yaml:"endpoints"`
	// Consul discovers the endpoints from a Consul service instead.
	Consul *ConsulService `yaml:"consul"`
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
	// AllDown is what happens when no endpoint is healthy: "fail" (default,
	// UNAVAILABLE) or "any" (use every known endpoint).
	AllDown string `yaml:"all_down"`
	// TLS to the upstream endpoints; plaintext (h2c) when absent.
	TLS *UpstreamTLS `yaml:"tls"`
}

// EndpointSpec is one static endpoint.
type EndpointSpec struct {
	Address string `yaml:"address"`
	Weight  uint32 `yaml:"weight"`
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
}

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

// Duration is a time.Duration written in Go syntax ("500ms", "2s", "1m").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Code is a gRPC status code written by name ("UNAVAILABLE").
type Code codes.Code

// C returns the value as a codes.Code.
func (c Code) C() codes.Code { return codes.Code(c) }
