package router_test

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/router"
)

// benchRoutes is a 50-route table shaped like a busy edge: 10 tenant
// routes conditioned on metadata first, then 20 exact methods, 10 services
// and 10 namespace prefixes. It has no catch-all, so calls can miss.
func benchRoutes() []config.Route {
	var rs []config.Route
	for i := range 9 {
		rs = append(rs, route(fmt.Sprintf("tenant-%d", i), exactM("/bench.v1.Tenants/Call", hExact("x-tenant", fmt.Sprintf("tenant-%d", i)))))
	}
	rs = append(rs, route("tenant-re", exactM("/bench.v1.Tenants/Call", hRegex("x-tenant", "tenant-(9|[1-9][0-9])"), hPresent("x-debug", false))))
	for i := range 20 {
		rs = append(rs, route(fmt.Sprintf("exact-%d", i), exactM(fmt.Sprintf("/bench.v1.Exact/M%02d", i))))
	}
	for i := range 10 {
		rs = append(rs, route(fmt.Sprintf("svc-%d", i), serviceM(fmt.Sprintf("bench.v1.Svc%02d", i))))
	}
	for i := range 10 {
		rs = append(rs, route(fmt.Sprintf("ns-%d", i), prefixM(fmt.Sprintf("/bench.p%02d.", i))))
	}
	return rs
}

// benchCalls are the calls the benchmarks time, with the route each takes.
var benchCalls = []struct {
	name   string
	method string
	md     metadata.MD
	want   string
}{
	{"exact", "/bench.v1.Exact/M17", metadata.Pairs("x-tenant", "tenant-3", "user-agent", "grpc-go"), "exact-17"},
	{"service", "/bench.v1.Svc07/Anything", metadata.Pairs("x-tenant", "tenant-3"), "svc-7"},
	{"prefix", "/bench.p08.Foo/Bar", metadata.Pairs("x-tenant", "tenant-3"), "ns-8"},
	{"headers", "/bench.v1.Tenants/Call", metadata.Pairs("x-tenant", "tenant-42", "user-agent", "grpc-go"), "tenant-re"},
	{"miss", "/nothing.v1.Here/Nope", metadata.Pairs("x-tenant", "tenant-3"), "<nil>"},
}

// TestBenchTable holds the benchmarks to their premise: each call takes the
// intended route and allocates nothing.
func TestBenchTable(t *testing.T) {
	rs := benchRoutes()
	if len(rs) != 50 {
		t.Fatalf("bench table has %d routes", len(rs))
	}
	tb := mustNew(t, rs...)
	for _, c := range benchCalls {
		t.Run(c.name, func(t *testing.T) {
			var got *router.Route
			allocs := testing.AllocsPerRun(1000, func() { got = tb.Lookup(c.method, c.md) })
			if name(got) != c.want {
				t.Errorf("Lookup(%s) = %s, want %s", c.method, name(got), c.want)
			}
			if allocs != 0 {
				t.Errorf("Lookup(%s) allocates %v times", c.method, allocs)
			}
		})
	}
}

func BenchmarkLookup(b *testing.B) {
	tb := mustNew(b, benchRoutes()...)
	for _, c := range benchCalls {
		b.Run(c.name, func(b *testing.B) {
			if got := tb.Lookup(c.method, c.md); name(got) != c.want {
				b.Fatalf("Lookup(%s) = %s, want %s", c.method, name(got), c.want)
			}
			b.ReportAllocs()
			var sink *router.Route
			for b.Loop() {
				sink = tb.Lookup(c.method, c.md)
			}
			_ = sink
		})
	}
}
