package tracing_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/tracing"
)

// otelEnv lists every variable New reads, directly or through the SDK.
var otelEnv = []string{
	"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
	"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_BSP_MAX_QUEUE_SIZE",
}

// setEnv clears the OTEL_* environment, then sets kv (name, value pairs),
// all undone when t ends. Tests using it cannot be parallel.
func setEnv(t *testing.T, kv ...string) {
	t.Helper()
	for _, k := range otelEnv {
		t.Setenv(k, "")
	}
	for i := 0; i+1 < len(kv); i += 2 {
		t.Setenv(kv[i], kv[i+1])
	}
}

// oneSpan makes one SERVER span through the frame API and returns its span
// context.
func oneSpan(p *tracing.Provider, parent string) trace.SpanContext {
	hdr := propagation.MapCarrier{}
	if parent != "" {
		hdr["traceparent"] = parent
	}
	_, span := p.StartServer(context.Background(), "/pkg.Svc/Do", hdr, "127.0.0.1:1")
	tracing.EndSpan(span, codes.OK, "")
	return span.SpanContext()
}

func TestResourceFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name  string
		env   []string
		opts  []tracing.Option
		want  string // service.name
		extra map[string]string
	}{
		{name: "default", want: "meshd"},
		{name: "OTEL_SERVICE_NAME", env: []string{"OTEL_SERVICE_NAME", "edge-a"}, want: "edge-a"},
		{
			name:  "OTEL_RESOURCE_ATTRIBUTES",
			env:   []string{"OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,team=mesh,deployment.environment.name=test"},
			want:  "from-attrs",
			extra: map[string]string{"team": "mesh", "deployment.environment.name": "test"},
		},
		{
			name:  "OTEL_SERVICE_NAME beats OTEL_RESOURCE_ATTRIBUTES",
			env:   []string{"OTEL_SERVICE_NAME", "edge-b", "OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,team=mesh"},
			want:  "edge-b",
			extra: map[string]string{"team": "mesh"},
		},
		{
			name:  "WithServiceName beats both",
			env:   []string{"OTEL_SERVICE_NAME", "edge-b", "OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,team=mesh"},
			opts:  []tracing.Option{tracing.WithServiceName("explicit")},
			want:  "explicit",
			extra: map[string]string{"team": "mesh"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setEnv(t, tc.env...)
			recv := otlptest.Start(t)
			p := newProvider(t, recv.Addr, tc.opts...)
			oneSpan(p, "")
			shutdown(t, p)
			rss := recv.ResourceSpans()
			if len(rss) == 0 {
				t.Fatal("nothing exported")
			}
			attrs := rss[0].GetResource().GetAttributes()
			if got := attrOf(attrs, "service.name").GetStringValue(); got != tc.want {
				t.Errorf("service.name = %q, want %q", got, tc.want)
			}
			for k, v := range tc.extra {
				if got := attrOf(attrs, k).GetStringValue(); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if got := attrOf(attrs, "telemetry.sdk.language").GetStringValue(); got != "go" {
				t.Errorf("telemetry.sdk.language = %q, want go", got)
			}
			if got := rss[0].GetScopeSpans()[0].GetScope().GetName(); got != "github.com/meshd/meshd/tracing" {
				t.Errorf("instrumentation scope %q", got)
			}
		})
	}
}

func TestEnvEndpoint(t *testing.T) {
	for _, key := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		t.Run(key, func(t *testing.T) {
			recv := otlptest.Start(t)
			setEnv(t, key, "http://"+recv.Addr, "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
			p, err := tracing.New(context.Background(), tracing.WithBatchTimeout(10*time.Millisecond))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if !p.Enabled() {
				t.Fatalf("%s set but provider disabled", key)
			}
			oneSpan(p, "")
			shutdown(t, p)
			if n := len(recv.Spans()); n != 1 {
				t.Errorf("exported %d spans via %s, want 1", n, key)
			}
		})
	}
	t.Run("traces endpoint wins", func(t *testing.T) {
		recv := otlptest.Start(t)
		setEnv(t,
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://"+recv.Addr,
			"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
		p, err := tracing.New(context.Background(), tracing.WithBatchTimeout(10*time.Millisecond))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		oneSpan(p, "")
		shutdown(t, p)
		if n := len(recv.Spans()); n != 1 {
			t.Errorf("exported %d spans, want 1", n)
		}
	})
}

func TestSamplerEnv(t *testing.T) {
	recv := otlptest.Start(t) // nothing is flushed: only sampling decisions matter
	for _, tc := range []struct {
		name        string
		env         []string
		opts        []tracing.Option
		rootSampled bool // a call without traceparent
		parentKept  bool // a call whose caller sampled
	}{
		{name: "default", rootSampled: true, parentKept: true},
		{name: "always_on", env: []string{"OTEL_TRACES_SAMPLER", "always_on"}, rootSampled: true, parentKept: true},
		{name: "always_off", env: []string{"OTEL_TRACES_SAMPLER", "always_off"}, rootSampled: false, parentKept: false},
		{name: "parentbased_always_off", env: []string{"OTEL_TRACES_SAMPLER", "parentbased_always_off"}, rootSampled: false, parentKept: true},
		{name: "traceidratio 0", env: []string{"OTEL_TRACES_SAMPLER", "traceidratio", "OTEL_TRACES_SAMPLER_ARG", "0"}, rootSampled: false, parentKept: false},
		{name: "parentbased_traceidratio 0", env: []string{"OTEL_TRACES_SAMPLER", "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG", "0"}, rootSampled: false, parentKept: true},
		{name: "parentbased_traceidratio without arg", env: []string{"OTEL_TRACES_SAMPLER", "parentbased_traceidratio"}, rootSampled: true, parentKept: true},
		{
			name: "WithSampleRatio beats env",
			env:  []string{"OTEL_TRACES_SAMPLER", "always_off"},
			opts: []tracing.Option{tracing.WithSampleRatio(1)}, rootSampled: true, parentKept: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setEnv(t, tc.env...)
			p := newProvider(t, recv.Addr, tc.opts...)
			root := oneSpan(p, "")
			child := oneSpan(p, sampledParent)
			if !root.IsValid() || !child.IsValid() {
				t.Fatal("unsampled spans must still have valid span contexts, for propagation")
			}
			if root.IsSampled() != tc.rootSampled {
				t.Errorf("root sampled = %v, want %v", root.IsSampled(), tc.rootSampled)
			}
			if child.IsSampled() != tc.parentKept {
				t.Errorf("child of a sampled parent sampled = %v, want %v", child.IsSampled(), tc.parentKept)
			}
		})
	}
}

func TestDisabled(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		opts []tracing.Option
	}{
		{name: "no endpoint"},
		{name: "empty endpoint", opts: []tracing.Option{tracing.WithEndpoint("")}},
		{name: "OTEL_SDK_DISABLED", env: []string{"OTEL_SDK_DISABLED", "true", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"}},
		{name: "OTEL_SDK_DISABLED beats WithEndpoint", env: []string{"OTEL_SDK_DISABLED", "true"}, opts: []tracing.Option{tracing.WithEndpoint("127.0.0.1:4317")}},
		{name: "OTEL_TRACES_EXPORTER=none", env: []string{"OTEL_TRACES_EXPORTER", "none", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setEnv(t, tc.env...)
			p, err := tracing.New(context.Background(), tc.opts...)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			checkDisabled(t, p)
		})
	}
	t.Run("nil provider", func(t *testing.T) { checkDisabled(t, nil) })
}

func checkDisabled(t *testing.T, p *tracing.Provider) {
	t.Helper()
	if p.Enabled() {
		t.Fatal("Enabled() = true")
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if d := p.Dropped(); d != 0 {
		t.Errorf("Dropped = %d", d)
	}
	ctx := context.Background()
	hdr := propagation.MapCarrier{"traceparent": sampledParent}
	out := propagation.MapCarrier{}
	allocs := testing.AllocsPerRun(100, func() {
		sctx, s := p.StartServer(ctx, "/pkg.Svc/Do", hdr, "127.0.0.1:1")
		tracing.SetRoute(sctx, "r", "c")
		_, c := p.StartClient(sctx, "/pkg.Svc/Do", "127.0.0.1:2", 1, out)
		if s.IsRecording() || c.IsRecording() || sctx != ctx {
			t.Fatal("disabled provider made a recording span or a new context")
		}
		tracing.EndSpan(c, codes.Unavailable, "x")
		tracing.EndSpan(s, codes.OK, "")
	})
	if allocs != 0 {
		t.Errorf("disabled path allocates %v times per call, want 0", allocs)
	}
	if len(out) != 0 {
		t.Errorf("disabled StartClient wrote headers %v", out)
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		opts []tracing.Option
		want string // in the error
	}{
		{name: "negative ratio", opts: []tracing.Option{tracing.WithSampleRatio(-0.1)}, want: "sample ratio"},
		{name: "ratio above 1", opts: []tracing.Option{tracing.WithSampleRatio(1.5)}, want: "sample ratio"},
		{name: "NaN ratio", opts: []tracing.Option{tracing.WithSampleRatio(math.NaN())}, want: "sample ratio"},
		{name: "negative queue", opts: []tracing.Option{tracing.WithQueueSize(-1)}, want: "queue size"},
		{name: "zero batch timeout", opts: []tracing.Option{tracing.WithBatchTimeout(0)}, want: "batch timeout"},
		{name: "negative export timeout", opts: []tracing.Option{tracing.WithExportTimeout(-time.Second)}, want: "export timeout"},
		{name: "endpoint URL without host", opts: []tracing.Option{tracing.WithEndpoint("http://")}, want: "endpoint"},
		{name: "unknown sampler", env: []string{"OTEL_TRACES_SAMPLER", "jaeger_remote"}, want: "OTEL_TRACES_SAMPLER"},
		{name: "bad sampler arg", env: []string{"OTEL_TRACES_SAMPLER", "traceidratio", "OTEL_TRACES_SAMPLER_ARG", "half"}, want: "OTEL_TRACES_SAMPLER_ARG"},
		{name: "sampler arg above 1", env: []string{"OTEL_TRACES_SAMPLER", "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG", "2"}, want: "OTEL_TRACES_SAMPLER_ARG"},
		{name: "bad queue env", env: []string{"OTEL_BSP_MAX_QUEUE_SIZE", "lots"}, want: "OTEL_BSP_MAX_QUEUE_SIZE"},
		{name: "malformed resource attributes", env: []string{"OTEL_RESOURCE_ATTRIBUTES", "team"}, want: "OTEL_RESOURCE_ATTRIBUTES"},
		{name: "env endpoint not a URL", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317"}, want: "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{name: "http protocol", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"}, want: "only grpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setEnv(t, tc.env...)
			opts := append([]tracing.Option{tracing.WithEndpoint("127.0.0.1:4317")}, tc.opts...)
			if len(tc.env) > 0 && strings.HasPrefix(tc.env[0], "OTEL_EXPORTER_OTLP") {
				opts = tc.opts // the environment is what is under test
			}
			p, err := tracing.New(context.Background(), opts...)
			if err == nil {
				_ = p.Shutdown(context.Background())
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "tracing: ") {
				t.Errorf("error %q, want a tracing: error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestQueueFull: spans that find the queue full are dropped at once and
// counted; the ones admitted are still exported.
func TestQueueFull(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	// The batch timer never fires during the test: the queue stays full
	// until Shutdown flushes it.
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1), tracing.WithQueueSize(3), tracing.WithBatchTimeout(time.Minute))
	for range 10 {
		oneSpan(p, "")
	}
	if got := p.Dropped(); got != 7 {
		t.Errorf("Dropped before shutdown = %d, want 7", got)
	}
	shutdown(t, p)
	if got := len(recv.Spans()); got != 3 {
		t.Errorf("exported %d spans, want the 3 queued", got)
	}
	if got := p.Dropped(); got != 7 {
		t.Errorf("Dropped after shutdown = %d, want 7", got)
	}
	// Spans after Shutdown go nowhere, harmlessly.
	oneSpan(p, "")
	if got := p.Dropped(); got != 7 {
		t.Errorf("Dropped after a span past shutdown = %d, want 7", got)
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestSetRouteAllocs(t *testing.T) { // not parallel: AllocsPerRun forbids it
	recv := otlptest.Start(t)
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(0))
	ctx, span := p.StartServer(context.Background(), "/pkg.Svc/Do", propagation.MapCarrier{}, "")
	defer tracing.EndSpan(span, codes.OK, "")
	if span.IsRecording() {
		t.Fatal("ratio 0 root span is recording")
	}
	for name, c := range map[string]context.Context{"no span": context.Background(), "unsampled span": ctx} {
		if a := testing.AllocsPerRun(100, func() { tracing.SetRoute(c, "r", "c") }); a != 0 {
			t.Errorf("SetRoute with %s: %v allocs, want 0", name, a)
		}
	}
}
