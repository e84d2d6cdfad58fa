package config

import (
	"fmt"
	"math"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// Validation limits.
const (
	// MaxRetryAttempts bounds retry.attempts: more is a retry storm, not
	// resilience.
	MaxRetryAttempts = 10
	// DefaultMaxMessageSize is max_message_size when unset (16 MiB).
	DefaultMaxMessageSize = 16 << 20
)

// validator collects every error with its location.
type validator struct {
	c    *Config
	errs Errors
}

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &Error{File: v.c.File, Line: v.c.line(path), Field: path, Msg: fmt.Sprintf(format, args...)})
}

// Validate checks the whole config and returns an Errors listing every
// problem, or nil. It does not change the config.
func (c *Config) Validate() error {
	v := &validator{c: c}
	if c.Admin.Address != "" {
		v.hostPort("admin.address", c.Admin.Address)
	}
	v.listeners()
	clusters := v.clusters()
	v.reserveOriginalDst(clusters)
	v.routes(clusters)
	v.edge()
	v.resilience()
	v.mesh()
	v.kubernetes()
	switch c.Engine {
	case "", "frame":
	case "grpc":
		v.add("engine", "the grpc engine was removed: the frame engine is meshd's only data path; delete this key (or write engine: frame)")
	default:
		v.add("engine", "unknown engine %q (the frame engine is meshd's only data path; delete this key)", c.Engine)
	}
	if c.MaxMessageSize < 0 {
		v.add("max_message_size", "must not be negative")
	}
	if c.Workers < 0 || c.Workers > maxWorkers {
		v.add("workers", "must be auto or a number of threads from 1 to %d, got %d", maxWorkers, c.Workers)
	}
	if c.Tracing.OTLPEndpoint != "" {
		v.hostPort("tracing.otlp_endpoint", c.Tracing.OTLPEndpoint)
	}
	if r := c.Tracing.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		v.add("tracing.sample_ratio", "must be between 0 and 1, got %v", *r)
	}
	if c.Metrics.MaxMethods < 0 {
		v.add("metrics.max_methods", "must not be negative, got %d", c.Metrics.MaxMethods)
	}
	if r := c.AccessLog.SampleRatio; r != nil && !(*r >= 0 && *r <= 1) {
		v.add("access_log.sample_ratio", "must be between 0 and 1, got %v", *r)
	}
	if c.Consul.Address != "" {
		addr := strings.TrimPrefix(strings.TrimPrefix(c.Consul.Address, "http://"), "https://")
		v.hostPort("consul.address", addr)
	}
	if len(v.errs) == 0 {
		return nil
	}
	return v.errs
}

// uniqueName checks that the item at path has a name not used before by
// another item of the same kind, and records it in seen.
func (v *validator) uniqueName(path, kind, name string, seen map[string]bool) {
	if name == "" {
		v.add(path+".name", "required")
	} else if seen[name] {
		v.add(path+".name", "duplicate %s name %q", kind, name)
	}
	seen[name] = true
}

func (v *validator) hostPort(path, s string) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		v.add(path, "invalid address %q: want host:port", s)
		return
	}
	_ = host
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		v.add(path, "invalid port in %q", s)
	}
}

func (v *validator) listeners() {
	if len(v.c.Listeners) == 0 {
		v.add("listeners", "at least one listener is required")
	}
	names := map[string]bool{}
	addrs := map[string]bool{}
	for i, l := range v.c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		v.uniqueName(p, "listener", l.Name, names)
		if l.Address == "" {
			v.add(p+".address", "required")
		} else {
			v.hostPort(p+".address", l.Address)
			if addrs[l.Address] {
				v.add(p+".address", "address %q used by two listeners", l.Address)
			}
			addrs[l.Address] = true
		}
		if t := l.TLS; t != nil {
			if t.CertFile == "" || t.KeyFile == "" {
				v.add(p+".tls", "cert_file and key_file are both required")
			}
		}
		v.listenerLimits(p, &v.c.Listeners[i])
		v.listenerEdge(p, &v.c.Listeners[i])
	}
}

// CheckFiles reports every referenced file (certificates, keys, CAs) that
// cannot be read. It is separate from Validate so that a config can be
// checked on a machine other than the one it will run on; `meshd validate`
// and meshd itself run both.
func (c *Config) CheckFiles() error {
	v := &validator{c: c}
	for i, l := range c.Listeners {
		if t := l.TLS; t != nil {
			p := fmt.Sprintf("listeners[%d].tls", i)
			v.file(p+".cert_file", t.CertFile)
			v.file(p+".key_file", t.KeyFile)
			v.file(p+".client_ca_file", t.ClientCAFile)
		}
	}
	if m := c.Mesh; m != nil {
		v.file("mesh.cert_file", m.CertFile)
		v.file("mesh.key_file", m.KeyFile)
		v.file("mesh.ca_file", m.CAFile)
	}
	for i, jp := range c.JWTProviders {
		v.file(fmt.Sprintf("jwt_providers[%d].jwks_file", i), jp.JWKSFile)
	}
	for i, cl := range c.Clusters {
		if t := cl.TLS; t != nil {
			p := fmt.Sprintf("clusters[%d].tls", i)
			v.file(p+".ca_file", t.CAFile)
			v.file(p+".cert_file", t.CertFile)
			v.file(p+".key_file", t.KeyFile)
		}
	}
	if len(v.errs) == 0 {
		return nil
	}
	return v.errs
}

func (v *validator) file(path, name string) {
	if name == "" {
		return
	}
	if _, err := os.Stat(name); err != nil {
		v.add(path, "cannot read %q: %v", name, err)
	}
}

var lbPolicies = []string{"round_robin", "least_request", "peak_ewma", "ring_hash"}

func (v *validator) clusters() map[string]bool {
	names := map[string]bool{}
	for i, cl := range v.c.Clusters {
		p := fmt.Sprintf("clusters[%d]", i)
		v.uniqueName(p, "cluster", cl.Name, names)
		sources := 0
		for _, set := range []bool{len(cl.Endpoints) > 0, cl.Consul != nil, cl.Kubernetes != nil} {
			if set {
				sources++
			}
		}
		switch {
		case sources > 1:
			v.add(p, "set one of endpoints, consul or kubernetes, not several")
		case sources == 0:
			v.add(p, "endpoints, consul or kubernetes is required")
		}
		v.kubernetesCluster(p+".kubernetes", cl.Kubernetes)
		seen := map[string]bool{}
		for j, e := range cl.Endpoints {
			ep := fmt.Sprintf("%s.endpoints[%d]", p, j)
			v.hostPort(ep, e.Address)
			if seen[e.Address] {
				v.add(ep, "duplicate endpoint %q", e.Address)
			}
			seen[e.Address] = true
		}
		if cl.Consul != nil && cl.Consul.Service == "" {
			v.add(p+".consul.service", "required")
		}
		if cl.LB != "" && !contains(lbPolicies, cl.LB) {
			v.add(p+".lb", "unknown policy %q (want one of %s)", cl.LB, strings.Join(lbPolicies, ", "))
		}
		if cl.LB == "ring_hash" && cl.HashHeader == "" {
			v.add(p+".hash_header", "required for lb ring_hash")
		}
		if cl.HashHeader != "" && cl.HashHeader != strings.ToLower(cl.HashHeader) {
			v.add(p+".hash_header", "metadata keys are lowercase: %q", cl.HashHeader)
		}
		switch cl.Health.Missing {
		case "", "serving", "ejected":
		default:
			v.add(p+".health.missing", "want serving or ejected, got %q", cl.Health.Missing)
		}
		switch cl.AllDown {
		case "", "fail", "any":
		default:
			v.add(p+".all_down", "want fail or any, got %q", cl.AllDown)
		}
		if t := cl.HealthyPanicThreshold; t < 0 || t > 100 {
			v.add(p+".healthy_panic_threshold", "must be a percentage between 0 and 100, got %d", t)
		}
		if r := cl.Health.ReconnectMax.D(); r != 0 && r < MinReconnectMax {
			v.add(p+".health.reconnect_max", "must be at least %v, got %v", MinReconnectMax, r)
		}
		if m := cl.Outlier.MaxEjectionPercent; m != nil && (*m < 0 || *m > 100) {
			v.add(p+".outlier.max_ejection_percent", "must be between 0 and 100, got %d", *m)
		}
		v.trafficPolicies(p, &cl)
		if t := cl.TLS; t != nil {
			if (t.CertFile == "") != (t.KeyFile == "") {
				v.add(p+".tls", "cert_file and key_file go together")
			}
		}
	}
	return names
}

func (v *validator) routes(clusters map[string]bool) {
	names := map[string]bool{}
	for i, r := range v.c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		v.uniqueName(p, "route", r.Name, names)
		v.match(p+".match", &r.Match)
		switch {
		case r.Cluster != "" && len(r.Clusters) > 0:
			v.add(p, "set either cluster or clusters, not both")
		case r.Cluster == "" && len(r.Clusters) == 0:
			v.add(p+".cluster", "required (or clusters for a weighted split)")
		case r.Cluster != "":
			if !clusters[r.Cluster] {
				v.add(p+".cluster", "unknown cluster %q", r.Cluster)
			}
		}
		var sum uint64
		for j, wc := range r.Clusters {
			cp := fmt.Sprintf("%s.clusters[%d]", p, j)
			if !clusters[wc.Name] {
				v.add(cp+".name", "unknown cluster %q", wc.Name)
			}
			if wc.Weight == 0 {
				v.add(cp+".weight", "must be positive")
			}
			sum += uint64(wc.Weight)
		}
		// The router picks with uint32 arithmetic; a larger sum would wrap
		// (to 0 for two weights of 2^31) and break every call on the route.
		if sum > math.MaxUint32 {
			v.add(p+".clusters", "weights add up to %d, more than %d", sum, uint64(math.MaxUint32))
		}
		if rt := r.Retry; rt != nil {
			if rt.Attempts < 1 || rt.Attempts > MaxRetryAttempts {
				v.add(p+".retry.attempts", "must be between 1 and %d, got %d", MaxRetryAttempts, rt.Attempts)
			}
			for j, c := range rt.RetryOn {
				if c.C() == codes.OK {
					v.add(fmt.Sprintf("%s.retry.retry_on[%d]", p, j), "OK is not a failure")
				}
			}
		}
	}
}

// ValidMethod reports whether s is a full gRPC method name "/pkg.Svc/Method".
func ValidMethod(s string) bool {
	if len(s) < 4 || s[0] != '/' {
		return false
	}
	svc, m, ok := strings.Cut(s[1:], "/")
	return ok && ValidService(svc) && m != "" && !strings.ContainsAny(m, "/ \t")
}

// ValidService reports whether s is a service name such as "pkg.v1.Svc".
func ValidService(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/ \t")
}

func (v *validator) match(p string, m *Match) {
	n := 0
	if m.Method != "" {
		n++
		if !ValidMethod(m.Method) {
			v.add(p+".method", "invalid full method %q: want /package.Service/Method", m.Method)
		}
	}
	if m.Service != "" {
		n++
		if !ValidService(m.Service) {
			v.add(p+".service", "invalid service %q: want package.Service (no slashes)", m.Service)
		}
	}
	if m.Prefix != "" {
		n++
		if m.Prefix[0] != '/' {
			v.add(p+".prefix", "prefix %q must start with /", m.Prefix)
		}
	}
	if n != 1 {
		v.add(p, "exactly one of method, service or prefix is required")
	}
	for j, h := range m.Headers {
		hp := fmt.Sprintf("%s.headers[%d]", p, j)
		if err := h.Check(); err != nil {
			v.add(hp, "%v", err)
		}
	}
}

// Check reports what is wrong with one header condition, or nil.
func (h *HeaderMatch) Check() error {
	if h.Name == "" {
		return fmt.Errorf("name is required")
	}
	if h.Name != strings.ToLower(h.Name) {
		return fmt.Errorf("metadata keys are lowercase: %q", h.Name)
	}
	n := 0
	for _, set := range []bool{h.Exact != nil, h.Regex != nil, h.Prefix != nil, h.Present != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("exactly one of exact, regex, prefix or present is required")
	}
	if h.Regex != nil {
		// Compile the expression alone first: anchoring it by text would
		// let an unbalanced one such as `x)|(.*` through as a different,
		// valid expression.
		if _, err := regexp.Compile(*h.Regex); err != nil {
			return fmt.Errorf("invalid regex %q: %v", *h.Regex, err)
		}
		if _, err := regexp.Compile("^(?:" + *h.Regex + ")$"); err != nil {
			return fmt.Errorf("invalid regex %q: %v", *h.Regex, err)
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// applyDefaults fills in every documented default. It runs after Validate.
func (c *Config) applyDefaults() {
	c.applyResilienceDefaults()
	c.applyMeshDefaults()
	c.applyEdgeDefaults()
	if c.DrainTimeout == 0 {
		c.DrainTimeout = Duration(10 * time.Second)
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.Metrics.MaxMethods == 0 {
		c.Metrics.MaxMethods = DefaultMaxMethods
	}
	if c.AccessLog.SampleRatio == nil {
		one := 1.0
		c.AccessLog.SampleRatio = &one
	}
	for i := range c.Listeners {
		if c.Listeners[i].MaxConcurrentStreams == 0 {
			c.Listeners[i].MaxConcurrentStreams = 1000
		}
		c.Listeners[i].applyLimitDefaults()
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		if r.Retry != nil && len(r.Retry.RetryOn) == 0 {
			r.Retry.RetryOn = []Code{Code(codes.Unavailable)}
		}
	}
	for i := range c.Clusters {
		cl := &c.Clusters[i]
		if cl.LB == "" {
			cl.LB = "round_robin"
		}
		for j := range cl.Endpoints {
			if cl.Endpoints[j].Weight == 0 {
				cl.Endpoints[j].Weight = 1
			}
		}
		if cl.Consul != nil && cl.Consul.PassingOnly == nil {
			t := true
			cl.Consul.PassingOnly = &t
		}
		if cl.Health.Missing == "" {
			cl.Health.Missing = "serving"
		}
		if cl.Health.CheckInterval == 0 {
			cl.Health.CheckInterval = Duration(time.Second)
		}
		if cl.Health.ReconnectMax == 0 {
			cl.Health.ReconnectMax = Duration(DefaultReconnectMax)
		}
		o := &cl.Outlier
		if o.ConsecutiveFailures == 0 {
			o.ConsecutiveFailures = 5
		}
		if o.BaseEjectionTime == 0 {
			o.BaseEjectionTime = Duration(5 * time.Second)
		}
		if o.MaxEjectionTime == 0 {
			o.MaxEjectionTime = Duration(300 * time.Second)
		}
		if o.MaxEjectionPercent == nil {
			p := 50
			o.MaxEjectionPercent = &p
		}
		if len(o.FailureCodes) == 0 {
			o.FailureCodes = []Code{Code(codes.Unavailable)}
		}
		if cl.AllDown == "" {
			cl.AllDown = "fail"
		}
		cl.applyTrafficPolicyDefaults()
	}
}

// Cluster returns the cluster named name, or nil.
func (c *Config) Cluster(name string) *Cluster {
	for i := range c.Clusters {
		if c.Clusters[i].Name == name {
			return &c.Clusters[i]
		}
	}
	return nil
}

// Summary is the one-line description `meshd validate` prints.
func (c *Config) Summary() string {
	consul, kube := 0, 0
	for _, cl := range c.Clusters {
		if cl.Consul != nil {
			consul++
		}
		if cl.Kubernetes != nil {
			kube++
		}
	}
	if kube > 0 {
		return fmt.Sprintf("%d listener(s), %d route(s), %d cluster(s) (%d from consul, %d from kubernetes)",
			len(c.Listeners), len(c.Routes), len(c.Clusters), consul, kube)
	}
	return fmt.Sprintf("%d listener(s), %d route(s), %d cluster(s) (%d from consul)",
		len(c.Listeners), len(c.Routes), len(c.Clusters), consul)
}
