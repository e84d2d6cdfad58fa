package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/meshd/meshd/accesslog"
	"github.com/meshd/meshd/admin"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/metrics"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/tracing"
)

// telemetryCloseTimeout bounds the final span flush and access log write at
// exit: a collector that is down must not hold up a stopping meshd.
const telemetryCloseTimeout = 5 * time.Second

// telemetry is one run's observability: tracing, metrics and the access
// log, built from the config at start. A reload does not change them;
// their config sections take effect on restart.
type telemetry struct {
	tracing *tracing.Provider
	metrics *metrics.Metrics
	access  *accesslog.Logger // nil when the access log is off
	pprof   bool              // admin.pprof: serve /debug/pprof/ on the admin port
}

// newTelemetry builds the tracing provider (disabled without an endpoint in
// the config or the OTEL_* environment), the metrics and, if enabled, the
// access log. Close it when the server has stopped.
func newTelemetry(ctx context.Context, cfg *config.Config, log *slog.Logger) (*telemetry, error) {
	topts := []tracing.Option{tracing.WithLogger(log)}
	if cfg.Tracing.OTLPEndpoint != "" {
		topts = append(topts, tracing.WithEndpoint(cfg.Tracing.OTLPEndpoint))
	}
	if r := cfg.Tracing.SampleRatio; r != nil {
		topts = append(topts, tracing.WithSampleRatio(*r))
	}
	tp, err := tracing.New(ctx, topts...)
	if err != nil {
		return nil, err
	}
	t := &telemetry{tracing: tp, pprof: cfg.Admin.Pprof}
	if cfg.AccessLog.Enabled {
		var aopts []accesslog.Option
		if r := cfg.AccessLog.SampleRatio; r != nil {
			aopts = append(aopts, accesslog.WithSampleRatio(*r))
		}
		t.access, err = accesslog.Open(cfg.AccessLog.Path, aopts...)
		if err != nil {
			_ = tp.Shutdown(ctx) // nothing was traced yet
			return nil, err
		}
	}
	mopts := []metrics.Option{metrics.WithMaxMethods(cfg.Metrics.MaxMethods), metrics.WithDroppedSpans(tp.Dropped)}
	if t.access != nil {
		mopts = append(mopts, metrics.WithDroppedLogLines(t.access.Dropped))
	}
	t.metrics = metrics.New(mopts...)
	if tp.Enabled() {
		log.Info("tracing on", "otlp_endpoint", cfg.Tracing.OTLPEndpoint)
	}
	return t, nil
}

// serverOptions returns the server options that install the telemetry,
// after base.
func (t *telemetry) serverOptions(base ...server.Option) []server.Option {
	obs := []callrecord.Observer{t.metrics}
	if t.access != nil {
		obs = append(obs, t.access)
	}
	opts := append(base,
		server.WithObservers(obs...),
		server.WithAdminOptions(admin.WithMetrics(t.metrics.Handler()), admin.WithRecentStats(func() any { return t.metrics.Recent() })),
	)
	if t.pprof {
		opts = append(opts, server.WithAdminOptions(admin.WithPprof()))
	}
	// A disabled provider is not installed at all, so tracing off costs
	// nothing on the data path.
	if t.tracing.Enabled() {
		opts = append(opts, server.WithTracing(t.tracing))
	}
	return opts
}

// attach points the state metrics at the running server.
func (t *telemetry) attach(srv *server.Server) { t.metrics.SetSource(srv) }

// close flushes spans and access log lines, within telemetryCloseTimeout.
func (t *telemetry) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), telemetryCloseTimeout)
	defer cancel()
	var errs []error
	if err := t.tracing.Shutdown(ctx); err != nil {
		errs = append(errs, err)
	}
	if t.access != nil {
		if err := t.access.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	return nil
}

// newServer builds a Server for cfg, with opts and its telemetry
// installed. The caller runs the server and then closes the telemetry.
func newServer(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...server.Option) (*server.Server, *telemetry, error) {
	tel, err := newTelemetry(ctx, cfg, log)
	if err != nil {
		return nil, nil, err
	}
	srv, err := server.New(cfg, tel.serverOptions(append([]server.Option{server.WithLogger(log)}, opts...)...)...)
	if err != nil {
		_ = tel.close() // the server error is the one worth reporting
		return nil, nil, err
	}
	tel.attach(srv)
	return srv, tel, nil
}
