package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// Names of the load-balancing policies accepted in [Options.Policy].
const (
	// RoundRobin cycles through the serving endpoints; when their weights
	// differ it follows a smooth weighted schedule (no bursts to the
	// heaviest endpoint). The default.
	RoundRobin = "round_robin"
	// LeastRequest picks the better of two random endpoints by outstanding
	// calls divided by weight (power of two choices).
	LeastRequest = "least_request"
	// PeakEWMA picks the better of two random endpoints by a peak-sensitive,
	// time-decaying latency average times (outstanding+1), divided by
	// weight, as Linkerd and Finagle do.
	PeakEWMA = "peak_ewma"
	// RingHash maps the value of [Options.HashHeader] onto a consistent-hash
	// ring, so a key keeps its endpoint while the endpoint set changes.
	RingHash = "ring_hash"
)

// Values of [Options.AllDown].
const (
	// AllDownFail makes Pick fail with ErrNoEndpoint when no endpoint is
	// serving. The default: a call fails fast instead of hitting a backend
	// that said it cannot take it.
	AllDownFail = "fail"
	// AllDownAny makes Pick choose among every known endpoint (pending and
	// ejected included, draining excluded) when none is serving, for
	// clusters where a doubtful backend beats no backend.
	AllDownAny = "any"
)

// Defaults applied by NewCluster to zero fields.
const (
	DefaultVirtualNodes        = 160
	DefaultConsecutiveFailures = 5
	DefaultFailureMinRequests  = 20
	DefaultOutlierInterval     = time.Second
	DefaultBaseEjectionTime    = 5 * time.Second
	DefaultMaxEjectionTime     = 300 * time.Second
	DefaultMaxEjectionPercent  = 50
	DefaultDrainTimeout        = 30 * time.Second
	DefaultEWMADecay           = 10 * time.Second
	DefaultEWMAInitialRTT      = 30 * time.Millisecond
	// MaxVirtualNodes bounds VirtualNodes so that a typo cannot make every
	// rebuild allocate gigabytes.
	MaxVirtualNodes = 1 << 14
)

// Options configures a Cluster. The zero value of every field but Name is
// usable and means the documented default.
type Options struct {
	// Name identifies the cluster in errors, logs and status. Required.
	Name string
	// Policy is the load-balancing policy: RoundRobin (default, ""),
	// LeastRequest, PeakEWMA or RingHash.
	Policy string
	// HashHeader is the request-metadata key whose first value ring_hash
	// hashes (matched case-insensitively, as gRPC metadata keys are
	// lowercase). Required for ring_hash, ignored otherwise. A call without
	// the key goes to a random endpoint.
	HashHeader string
	// VirtualNodes is the number of ring_hash virtual nodes per unit of
	// endpoint weight (default 160, as in ketama; at most MaxVirtualNodes).
	// It is fixed, never derived from the cluster's size, so an endpoint's
	// nodes depend only on its own ID and weight: the same endpoints give
	// the same ring in every meshd whatever order they were admitted in,
	// and an endpoint leaving moves only its own keys. Raise it for a more
	// even spread over few endpoints.
	VirtualNodes int
	// Health configures active health watching of every endpoint.
	Health HealthOptions
	// Outlier configures passive ejection of endpoints whose calls fail.
	Outlier OutlierOptions
	// PeakEWMA tunes the peak_ewma policy; ignored by the others.
	PeakEWMA PeakEWMAOptions
	// AllDown is what Pick does when no endpoint is serving and panic mode
	// gives nothing to pick either: AllDownFail (default, "") or
	// AllDownAny.
	AllDown string
	// HealthyPanicThreshold is the panic threshold in percent (0..100):
	// when fewer than this share of the endpoints with a health verdict
	// are serving, the cluster balances over every endpoint that answered
	// (serving, NOT_SERVING, or ejected by outlier detection) instead of
	// over the serving ones only, as Envoy's healthy_panic_threshold does.
	// Endpoints still awaiting their first verdict and endpoints meshd
	// cannot reach are counted in neither the share nor the panic set;
	// see panic.go. 0, the default, turns panic mode off.
	HealthyPanicThreshold int
	// SlowStart is the window over which an endpoint that starts serving
	// (first SERVING, or back from a health or outlier ejection) ramps
	// from SlowStartMinPercent of its weight to all of it, linearly
	// (slowstart.go). Not applied by ring_hash. 0, the default, is off.
	SlowStart time.Duration
	// Locality configures zone-aware balancing (locality.go); off unless
	// LocalZone is set.
	Locality LocalityOptions
	// DrainTimeout bounds how long an endpoint removed by discovery keeps
	// its connection open for calls still in flight (long streams would
	// otherwise hold it forever). Default 30s.
	DrainTimeout time.Duration
	// OnClosed, when set, is called with an endpoint's address after its
	// connection closed (removed and drained, or the cluster closed), so
	// that other per-address state (the cluster's engine pool) can
	// be released too. It runs on the cluster's goroutine: it must be quick
	// and must not call back into the Cluster.
	OnClosed func(address string)
	// Logger receives state transitions of endpoints and dial errors. The
	// Cluster adds "component"="balancer" and "cluster"=Name. Default: discard.
	Logger *slog.Logger
	// Now is the clock for ejection times, drain deadlines, status times and
	// peak_ewma latencies; the start passed to Done must come from it.
	// Timers still wake the Cluster in real time. Default time.Now.
	Now func() time.Time
	// Rand returns uniformly random 64-bit values for the P2C policies and
	// for ring_hash calls without a key. It is called from many goroutines
	// at once, so it must be safe for concurrent use and should not lock or
	// allocate. Default math/rand/v2's Uint64, which uses the runtime's
	// per-thread generator and so has no shared state to contend on.
	Rand func() uint64
}

// HealthOptions configures active health watching (grpc.health.v1).
type HealthOptions struct {
	// Service is the name sent in HealthCheckRequest; "" means the whole
	// server.
	Service string
	// Disabled turns health watching off: a new endpoint serves at once and
	// only outlier detection can take it out.
	Disabled bool
	// MissingServing is the verdict for a backend with no health service
	// at all: true serves it (grpc-go's behaviour), false, the zero value,
	// ejects it with source "health:absent" (strict, as Envoy's gRPC health
	// check is). The config layer picks the product default.
	MissingServing bool
	// CheckInterval is the Health/Check poll interval for backends that do
	// not implement Watch. Zero keeps healthwatch's default.
	CheckInterval time.Duration
	// BackoffBase and BackoffMax bound the delay before a broken Watch
	// stream is reopened (meshd passes health.reconnect_max as BackoffMax,
	// the cap of the connection's own reconnect backoff too). Zero keeps
	// healthwatch's defaults.
	BackoffBase, BackoffMax time.Duration
}

// OutlierOptions configures passive outlier detection, modelled on
// Envoy's: endpoints whose calls fail are ejected for a growing time.
type OutlierOptions struct {
	// Disabled turns outlier detection off entirely.
	Disabled bool
	// ConsecutiveFailures ejects an endpoint after this many failed calls
	// in a row. Zero means the default 5; a negative value disables the
	// rule.
	ConsecutiveFailures int
	// FailurePercentage ejects an endpoint whose calls failed at least this
	// percentage of the time during one Interval (1..100). Zero, the
	// default, disables the rule.
	FailurePercentage int
	// FailureMinRequests is how many calls an endpoint must have finished
	// in one Interval for the failure-percentage rule to judge it.
	// Default 20.
	FailureMinRequests int
	// Interval is the failure-percentage window, and the period of healthy
	// time after which an endpoint's ejection multiplier drops by one.
	// Default 1s.
	Interval time.Duration
	// BaseEjectionTime is the length of the first ejection; the n-th
	// ejection in a row lasts n times as long. Default 5s.
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps one ejection. Default 300s; raised to
	// BaseEjectionTime if lower.
	MaxEjectionTime time.Duration
	// MaxEjectionPercent caps the share of the cluster's endpoints that
	// outlier detection may hold ejected at once, rounded down, so that
	// when everything fails the cluster keeps serving from the endpoints
	// not yet ejected rather than from nothing. Zero means the default 50;
	// a negative value means 0% (outlier detection never ejects). Endpoints
	// ejected by health checks do not count against the cap.
	MaxEjectionPercent int
	// FailureCodes are the final gRPC status codes that count as failures;
	// a transport-level failure always counts. nil means the default
	// [UNAVAILABLE]; an empty non-nil slice counts transport failures only.
	FailureCodes []codes.Code
}

// PeakEWMAOptions tunes the peak_ewma policy.
type PeakEWMAOptions struct {
	// Decay is the time constant (tau) with which a latency estimate forgets
	// old samples, and with which the estimate of an idle endpoint fades
	// toward zero so that it is tried again. Default 10s.
	Decay time.Duration
	// InitialRTT is the estimate of an endpoint before its first sample; it
	// keeps a new endpoint from being flooded. Default 30ms.
	InitialRTT time.Duration
}

// Validate reports every problem in o as one error, or nil. It does not
// modify o; zero fields are valid and stand for their defaults.
func (o *Options) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("balancer: cluster %q: "+format, append([]any{o.Name}, args...)...))
	}
	if o.Name == "" {
		add("name is required")
	}
	switch o.Policy {
	case "", RoundRobin, LeastRequest, PeakEWMA:
	case RingHash:
		if o.HashHeader == "" {
			add("policy %s requires a hash header", RingHash)
		}
	default:
		add("unknown policy %q (want %s, %s, %s or %s)", o.Policy, RoundRobin, LeastRequest, PeakEWMA, RingHash)
	}
	if o.VirtualNodes < 0 || o.VirtualNodes > MaxVirtualNodes {
		add("virtual nodes %d out of range [0, %d]", o.VirtualNodes, MaxVirtualNodes)
	}
	switch o.AllDown {
	case "", AllDownFail, AllDownAny:
	default:
		add("unknown all_down %q (want %s or %s)", o.AllDown, AllDownFail, AllDownAny)
	}
	if p := o.HealthyPanicThreshold; p < 0 || p > 100 {
		add("healthy panic threshold %d out of range [0, 100]", p)
	}
	nonNegative := func(name string, d time.Duration) {
		if d < 0 {
			add("%s must not be negative, got %v", name, d)
		}
	}
	nonNegative("drain timeout", o.DrainTimeout)
	nonNegative("slow start", o.SlowStart)
	if p := o.Locality.MinHealthyPercent; p < 0 || p > 100 {
		add("locality min healthy percent %d out of range [0, 100]", p)
	}
	nonNegative("health check interval", o.Health.CheckInterval)
	nonNegative("health backoff base", o.Health.BackoffBase)
	nonNegative("health backoff max", o.Health.BackoffMax)
	nonNegative("outlier interval", o.Outlier.Interval)
	nonNegative("outlier base ejection time", o.Outlier.BaseEjectionTime)
	nonNegative("outlier max ejection time", o.Outlier.MaxEjectionTime)
	nonNegative("peak_ewma decay", o.PeakEWMA.Decay)
	nonNegative("peak_ewma initial rtt", o.PeakEWMA.InitialRTT)
	if p := o.Outlier.FailurePercentage; p < 0 || p > 100 {
		add("outlier failure percentage %d out of range [0, 100]", p)
	}
	if p := o.Outlier.MaxEjectionPercent; p > 100 {
		add("outlier max ejection percent %d above 100", p)
	}
	if o.Outlier.FailureMinRequests < 0 {
		add("outlier failure min requests must not be negative, got %d", o.Outlier.FailureMinRequests)
	}
	for _, c := range o.Outlier.FailureCodes {
		if c > codes.Unauthenticated {
			add("outlier failure code %d is not a gRPC status code", uint32(c))
		}
	}
	return errors.Join(errs...)
}

// withDefaults returns a copy of o with every zero field set to its
// default. o must be valid.
func (o Options) withDefaults() Options {
	if o.Policy == "" {
		o.Policy = RoundRobin
	}
	o.HashHeader = strings.ToLower(o.HashHeader)
	if o.VirtualNodes == 0 {
		o.VirtualNodes = DefaultVirtualNodes
	}
	if o.AllDown == "" {
		o.AllDown = AllDownFail
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Uint64
	}
	out := &o.Outlier
	if out.ConsecutiveFailures == 0 {
		out.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if out.FailureMinRequests == 0 {
		out.FailureMinRequests = DefaultFailureMinRequests
	}
	if out.Interval == 0 {
		out.Interval = DefaultOutlierInterval
	}
	if out.BaseEjectionTime == 0 {
		out.BaseEjectionTime = DefaultBaseEjectionTime
	}
	if out.MaxEjectionTime == 0 {
		out.MaxEjectionTime = DefaultMaxEjectionTime
	}
	out.MaxEjectionTime = max(out.MaxEjectionTime, out.BaseEjectionTime)
	switch {
	case out.MaxEjectionPercent == 0:
		out.MaxEjectionPercent = DefaultMaxEjectionPercent
	case out.MaxEjectionPercent < 0:
		out.MaxEjectionPercent = 0
	}
	if out.FailureCodes == nil {
		out.FailureCodes = []codes.Code{codes.Unavailable}
	}
	if o.PeakEWMA.Decay == 0 {
		o.PeakEWMA.Decay = DefaultEWMADecay
	}
	if o.PeakEWMA.InitialRTT == 0 {
		o.PeakEWMA.InitialRTT = DefaultEWMAInitialRTT
	}
	return o
}
