// Package metrics is meshd's Prometheus instrumentation, served as text on
// the admin port's /metrics.
//
// A Metrics owns a private prometheus.Registry (never the process-global
// default one, so two meshd instances in one test binary do not collide)
// holding three kinds of metrics:
//
//   - Per-call metrics, fed by the data path through callrecord.Observer: the
//     familiar grpc_server_handled_total and grpc_server_handling_seconds
//     shape (with meshd's route and cluster labels), upstream attempts and
//     retries, message bytes, and the number of calls in flight.
//   - State read at scrape time through the small Source interface:
//     endpoint health, outstanding requests, weights and ejections, Consul
//     watch health, config reloads. Reading at scrape time keeps the data
//     path free of bookkeeping, and endpoints that are gone simply stop
//     being reported instead of leaving stale series behind.
//   - Counters owned by other packages (dropped spans, dropped access log
//     lines), read through functions, plus the Go runtime and process
//     collectors.
//
// Label values are bounded. Route and cluster names come from the config.
// A call's method gets its own grpc_service/grpc_method labels only if it
// matched a route and is among the first MaxMethods distinct methods seen;
// later methods are counted as "other", and calls that matched no route as
// "unmatched", so clients cannot grow the number of series by inventing
// method names.
package metrics
