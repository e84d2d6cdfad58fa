package identity

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Kinds of Source, as Status reports them.
const (
	KindConsul = "consul_connect"
	KindFiles  = "files"
)

// Source owns the workload's current Material and keeps it current: a
// Consul source follows the agent's CA roots and the service's leaf, a
// files source re-reads its PEM files. Handshakes read Current once each,
// so a swap never affects a handshake in progress and needs no restart.
// While its origin fails (Consul unreachable, a file half written), the
// last good Material keeps serving.
//
// Create it with NewConsul or NewFiles; Run drives it and must be called
// once, by the Source's owner. All other methods are safe for concurrent
// use from any goroutine.
type Source struct {
	kind    string
	service string // Consul: the service asked for; files: "" (the leaf's)
	log     *slog.Logger

	cur       atomic.Pointer[Material]
	ready     chan struct{}
	readyOnce sync.Once

	consul *consulLoops // nil unless kind is KindConsul
	files  *fileLoop    // nil unless kind is KindFiles

	mu      sync.Mutex
	updated time.Time // when cur last changed
	lastErr string    // the last failure to build a Material, "" after a success
}

func newSource(kind, service string, log *slog.Logger) *Source {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{
		kind:    kind,
		service: service,
		log:     log.With("component", "identity", "kind", kind),
		ready:   make(chan struct{}),
	}
}

// Run keeps the Material current until ctx is done and returns ctx.Err().
// For Consul it runs two blocking-query loops, roots and leaf; for files
// it checks the files every second. It must be called once.
func (s *Source) Run(ctx context.Context) error {
	if s.consul != nil {
		return s.consul.run(ctx)
	}
	return s.files.run(ctx)
}

// Current returns the Material in force, nil until the first one (a leaf
// and its roots) is built. The Material must not be modified.
func (s *Source) Current() *Material { return s.cur.Load() }

// Ready is closed once Current is non-nil; a mesh listener waits for it
// before it accepts, so that no peer sees a handshake fail at startup.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// Expiry is when the current leaf expires (zero before the first), for a
// gauge: an alert on it catches a Source that stopped renewing.
func (s *Source) Expiry() time.Time { return s.Current().expiry() }

// RootStatus describes one trusted root.
type RootStatus struct {
	// ID is Consul's root ID, or the certificate's SHA-256 fingerprint.
	ID string
	// Name is Consul's root name, or the certificate's subject.
	Name string
	// Active is true for the root that signs new leaves (every root of a
	// files source is active).
	Active bool
	// NotAfter is when the root expires.
	NotAfter time.Time
}

// Status is a Source's state for the admin /certs endpoint and metrics. It
// holds no private key material.
type Status struct {
	// Kind is KindConsul or KindFiles.
	Kind string
	// Service is the service the identity belongs to.
	Service string
	// SPIFFEID is the current leaf's identity ("" before the first).
	SPIFFEID string
	// TrustDomain is the trust domain peers must belong to.
	TrustDomain string
	// Serial is the current leaf's serial number, as Consul writes it
	// (hex bytes separated by colons).
	Serial string
	// NotBefore and NotAfter bound the current leaf's validity.
	NotBefore, NotAfter time.Time
	// Roots are the trusted roots.
	Roots []RootStatus
	// Updated is when the current Material was installed.
	Updated time.Time
	// LastError is why the last query, read or build failed ("" if the
	// last attempts succeeded); the last good Material keeps serving.
	LastError string
	// Ready is true once a Material is in force.
	Ready bool
	// Healthy is true when the Source's origin answered its last query
	// or read and the answer was usable: false while Consul is
	// unreachable or a file is broken, even though Ready stays true.
	Healthy bool
}

// Status returns a snapshot of the Source's state.
func (s *Source) Status() Status {
	m := s.Current()
	s.mu.Lock()
	st := Status{Kind: s.kind, Service: s.service, Updated: s.updated, LastError: s.lastErr}
	s.mu.Unlock()
	st.Healthy = st.LastError == ""
	if s.consul != nil {
		if msg, ok := s.consul.health(); !ok {
			st.Healthy = false
			if st.LastError == "" {
				st.LastError = msg
			}
		}
	}
	if m != nil {
		st.Ready = true
		st.SPIFFEID = m.ID.String()
		if st.Service == "" {
			st.Service = m.ID.Service
		}
		st.TrustDomain = m.TrustDomain
		st.Serial = serialHex(m.Leaf)
		st.NotBefore, st.NotAfter = m.Leaf.NotBefore, m.Leaf.NotAfter
		st.Roots = append([]RootStatus(nil), m.roots...)
	}
	return st
}

// install makes m current, logging the change (a transition, so at most
// once per new leaf or root set).
func (s *Source) install(m *Material) {
	prev := s.cur.Swap(m)
	s.mu.Lock()
	s.updated = time.Now()
	s.lastErr = ""
	s.mu.Unlock()
	s.readyOnce.Do(func() { close(s.ready) })
	attrs := []any{"spiffe_id", m.ID.String(), "serial", serialHex(m.Leaf),
		"not_after", m.Leaf.NotAfter, "trust_domain", m.TrustDomain, "roots", len(m.RootIDs)}
	if prev == nil {
		s.log.Info("mesh identity ready", attrs...)
	} else {
		s.log.Info("mesh identity updated", attrs...)
	}
}

// fail records why an answer could not be used; the caller logs it once.
func (s *Source) fail(err error) {
	s.mu.Lock()
	s.lastErr = err.Error()
	s.mu.Unlock()
}
