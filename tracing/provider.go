package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names meshd's tracer (the span's instrumentation scope).
const instrumentationName = "github.com/meshd/meshd/tracing"

// Defaults. The queue size matches the OpenTelemetry SDK's; the batch timeout
// is shorter than the SDK's 5s so a proxy's spans show up while someone is
// still looking at the request that made them.
const (
	defaultServiceName   = "meshd"
	defaultQueueSize     = sdktrace.DefaultMaxQueueSize
	defaultBatchTimeout  = time.Second
	defaultExportTimeout = 10 * time.Second
)

// Option configures New.
type Option func(*options)

type options struct {
	endpoint      string
	ratio         float64
	ratioSet      bool
	serviceName   string
	log           *slog.Logger
	batchTimeout  time.Duration
	exportTimeout time.Duration
	queueSize     int
}

// WithEndpoint sets the OTLP/gRPC collector address. A bare "host:port" is
// dialled without TLS (a local agent or sidecar collector is the usual
// target); a URL ("http://host:4317" or "https://host:4317") lets the scheme
// decide. With "" or without this option the standard
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and OTEL_EXPORTER_OTLP_ENDPOINT
// variables apply (URLs, as the OpenTelemetry spec requires); if neither is
// set tracing is disabled.
func WithEndpoint(hostport string) Option {
	return func(o *options) { o.endpoint = hostport }
}

// WithSampleRatio samples that fraction of new traces, in [0, 1], and follows
// the caller's decision whenever an inbound call carries a trace context
// (parent-based TraceIDRatio). It takes precedence over OTEL_TRACES_SAMPLER;
// without it that variable applies, and without both every trace is sampled.
//
// A ratio of 0 still creates and propagates span contexts (flagged not
// sampled), so a caller's trace stays connected across meshd.
func WithSampleRatio(r float64) Option {
	return func(o *options) { o.ratio, o.ratioSet = r, true }
}

// WithServiceName sets the service.name resource attribute. It takes
// precedence over OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, which in
// turn take precedence over the default, "meshd".
func WithServiceName(s string) Option {
	return func(o *options) { o.serviceName = s }
}

// WithLogger sets the logger for exporter failures and recoveries. The
// default discards.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.log = l }
}

// WithBatchTimeout sets how long ended spans may wait before they are sent
// (default 1s). Tests use a few milliseconds.
func WithBatchTimeout(d time.Duration) Option {
	return func(o *options) { o.batchTimeout = d }
}

// WithExportTimeout bounds one export to the collector, retries included
// (default 10s). A short timeout makes spans to a dead collector count as
// dropped sooner.
func WithExportTimeout(d time.Duration) Option {
	return func(o *options) { o.exportTimeout = d }
}

// WithQueueSize sets how many ended, sampled spans may wait for export. Zero,
// the default, means OTEL_BSP_MAX_QUEUE_SIZE, else 2048. Spans that find the
// queue full are dropped and counted, never waited for: the data path must
// not slow down because the collector did.
func WithQueueSize(n int) Option {
	return func(o *options) { o.queueSize = n }
}

// Provider creates meshd's spans and sends them to an OTLP collector.
//
// A disabled Provider (no endpoint configured, the zero Provider, or a nil
// *Provider) costs nothing: Enabled reports false, StartServer and
// StartClient return non-recording spans without allocating, and Shutdown
// and Dropped return zero values.
//
// A Provider owns its propagator and tracer provider; it never touches
// OpenTelemetry's global state. Its methods are safe for concurrent use.
type Provider struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	gate   *gate
	exp    *countingExporter

	shutdownOnce sync.Once
	shutdownErr  error
}

// New builds a Provider from opts and the standard OTEL_* environment
// variables (explicit options win). It does no network I/O: the collector
// connection is made lazily, so a collector that is down at start only costs
// dropped spans. New fails on invalid options or environment values rather
// than tracing with a configuration nobody asked for.
//
// With no endpoint at all, New returns a disabled Provider and a nil error.
// So it does with OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none, even
// if WithEndpoint is given: those are the operator's kill switches.
func New(ctx context.Context, opts ...Option) (*Provider, error) {
	o := options{
		log:          slog.New(slog.DiscardHandler),
		batchTimeout: defaultBatchTimeout,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	log := o.log.With("component", "tracing")

	expOpts, enabled, err := exporterOptions(o)
	if err != nil {
		return nil, err
	}
	if !enabled {
		return &Provider{}, nil
	}
	sampler, err := newSampler(o)
	if err != nil {
		return nil, err
	}
	queueSize, err := queueSize(o)
	if err != nil {
		return nil, err
	}
	if o.batchTimeout <= 0 {
		return nil, fmt.Errorf("tracing: batch timeout %v: must be positive", o.batchTimeout)
	}
	if o.exportTimeout < 0 {
		return nil, fmt.Errorf("tracing: export timeout %v: must not be negative", o.exportTimeout)
	}
	res, err := newResource(ctx, o.serviceName)
	if err != nil {
		return nil, err
	}

	otlp, err := otlptracegrpc.New(ctx, expOpts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: otlp exporter: %w", err)
	}
	g := &gate{limit: int64(queueSize)}
	exp := newCountingExporter(otlp, g, log)
	bspOpts := []sdktrace.BatchSpanProcessorOption{
		// The gate keeps at most queueSize spans inside the batch
		// processor; the slack leaves room for ForceFlush's marker so the
		// processor's own queue never overflows and drops uncounted.
		sdktrace.WithMaxQueueSize(queueSize + 8),
		sdktrace.WithBatchTimeout(o.batchTimeout),
	}
	if o.exportTimeout > 0 {
		bspOpts = append(bspOpts, sdktrace.WithExportTimeout(o.exportTimeout))
	}
	g.next = sdktrace.NewBatchSpanProcessor(exp, bspOpts...)
	g.exp = exp

	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sampler),
		sdktrace.WithResource(res),
		sdktrace.WithSpanProcessor(g),
	)
	return &Provider{
		tp:     tp,
		tracer: tp.Tracer(instrumentationName),
		prop:   propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		gate:   g,
		exp:    exp,
	}, nil
}

// Enabled reports whether p records and exports spans. The server uses it
// to leave tracing out of the data path altogether when it is off.
func (p *Provider) Enabled() bool { return p != nil && p.tp != nil }

// Shutdown stops accepting spans, exports those still queued and closes the
// collector connection. If ctx ends first, the remaining exports are
// abandoned (and counted in Dropped) and Shutdown returns promptly with the
// context's error; either way no goroutine outlives it. The error also
// reports spans the final flush could not export. Later calls return the
// first call's result.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	p.shutdownOnce.Do(func() {
		p.gate.closed.Store(true)
		// The SDK marks the provider shut down, so new spans are
		// non-recording, and calls gate.Shutdown unless ctx is already
		// done; the direct call covers that case and otherwise returns the
		// first call's result. The gate's error is the one that matters:
		// it is the provider's only processor.
		_ = p.tp.Shutdown(ctx)
		if err := p.gate.Shutdown(ctx); err != nil {
			p.shutdownErr = fmt.Errorf("tracing: shutdown: %w", err)
		}
	})
	return p.shutdownErr
}

// Dropped returns how many sampled spans were lost: refused because the
// export queue was full or Shutdown had begun, or part of a failed export.
// Spans still queued when Shutdown returns without exporting them count too.
// Spans that end after Shutdown has returned are neither exported nor
// counted. Zero for a disabled Provider.
func (p *Provider) Dropped() uint64 {
	if !p.Enabled() {
		return 0
	}
	return p.gate.dropped()
}

// exporterOptions turns the endpoint option and environment into exporter
// options, or reports that tracing is disabled.
func exporterOptions(o options) ([]otlptracegrpc.Option, bool, error) {
	var opts []otlptracegrpc.Option
	if o.exportTimeout > 0 {
		opts = append(opts, otlptracegrpc.WithTimeout(o.exportTimeout))
	}
	// The operator's kill switches win even over an explicit endpoint.
	if v, _ := strconv.ParseBool(os.Getenv("OTEL_SDK_DISABLED")); v {
		return nil, false, nil
	}
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")), "none") {
		return nil, false, nil
	}
	if ep := strings.TrimSpace(o.endpoint); ep != "" {
		if strings.Contains(ep, "://") {
			if err := checkURL(ep); err != nil {
				return nil, false, fmt.Errorf("tracing: endpoint %q: %w", ep, err)
			}
			return append(opts, otlptracegrpc.WithEndpointURL(ep)), true, nil
		}
		return append(opts, otlptracegrpc.WithEndpoint(ep), otlptracegrpc.WithInsecure()), true, nil
	}
	// The exporter reads these variables itself (with their TLS, header and
	// compression companions); they are checked here because it silently
	// falls back to localhost:4317 over TLS when a value is not a URL.
	found := false
	for _, key := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		v := strings.TrimSpace(os.Getenv(key))
		if v == "" {
			continue
		}
		if err := checkURL(v); err != nil {
			return nil, false, fmt.Errorf("tracing: %s=%q: %w", key, v, err)
		}
		found = true
		break
	}
	if !found {
		return nil, false, nil
	}
	for _, key := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v := strings.TrimSpace(os.Getenv(key)); v != "" {
			if v != "grpc" {
				return nil, false, fmt.Errorf("tracing: %s=%q: only grpc is supported", key, v)
			}
			break
		}
	}
	return opts, true, nil
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("want a URL such as http://127.0.0.1:4317")
	}
	return nil
}

// newSampler builds the sampler from WithSampleRatio, else from
// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, else samples everything
// that has no unsampled parent.
func newSampler(o options) (sdktrace.Sampler, error) {
	if o.ratioSet {
		if math.IsNaN(o.ratio) || o.ratio < 0 || o.ratio > 1 {
			return nil, fmt.Errorf("tracing: sample ratio %v: must be in [0, 1]", o.ratio)
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.ratio)), nil
	}
	name := strings.ToLower(strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER")))
	ratio := func() (float64, error) {
		arg := strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER_ARG"))
		if arg == "" {
			return 1, nil // the spec's default for the ratio samplers
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || math.IsNaN(r) || r < 0 || r > 1 {
			return 0, fmt.Errorf("tracing: OTEL_TRACES_SAMPLER_ARG=%q: want a ratio in [0, 1]", arg)
		}
		return r, nil
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio", "parentbased_traceidratio":
		r, err := ratio()
		if err != nil {
			return nil, err
		}
		if name == "traceidratio" {
			return sdktrace.TraceIDRatioBased(r), nil
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), nil
	default:
		return nil, fmt.Errorf("tracing: OTEL_TRACES_SAMPLER=%q: unsupported (want always_on, always_off, traceidratio or their parentbased_ forms)", name)
	}
}

func queueSize(o options) (int, error) {
	if o.queueSize != 0 {
		if o.queueSize < 0 {
			return 0, fmt.Errorf("tracing: queue size %d: must be positive", o.queueSize)
		}
		return o.queueSize, nil
	}
	// Read here rather than left to the SDK because the gate must know the
	// limit to count drops.
	if v := strings.TrimSpace(os.Getenv("OTEL_BSP_MAX_QUEUE_SIZE")); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("tracing: OTEL_BSP_MAX_QUEUE_SIZE=%q: want a positive integer", v)
		}
		return n, nil
	}
	return defaultQueueSize, nil
}

// newResource describes this process: service.name, in increasing
// precedence "meshd", OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME,
// WithServiceName; the rest of OTEL_RESOURCE_ATTRIBUTES; the SDK's version.
func newResource(ctx context.Context, serviceName string) (*resource.Resource, error) {
	detectors := []resource.Option{
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(defaultServiceName)),
		resource.WithFromEnv(),
	}
	if serviceName != "" {
		detectors = append(detectors, resource.WithAttributes(semconv.ServiceName(serviceName)))
	}
	res, err := resource.New(ctx, detectors...)
	if err != nil {
		return nil, fmt.Errorf("tracing: resource (check OTEL_RESOURCE_ATTRIBUTES): %w", err)
	}
	return res, nil
}
