// Package balancer chooses, per call, which endpoint of an upstream cluster
// a call goes to.
//
// A [Cluster] owns one cluster's endpoints: their connections (made by the
// caller's [Dialer]), their health (one healthwatch.Watch per endpoint),
// their outlier state and their load. Discovery hands it whole snapshots
// through [Cluster.Update]; the data path calls [Cluster.Pick] before a
// call and [Cluster.Done] after it.
//
// # Two paths
//
// The data path is lock-free. Pick loads an immutable picker through an
// atomic pointer and lets it choose; the pickers precompute what they need
// (a weighted schedule, a hash ring) so that a pick is a few atomic loads,
// with no locks, no I/O and no allocation, as grpc-go's balancer.Picker
// contract asks. Done only updates the endpoint's atomic counters.
//
// The control path is serialized on one goroutine per Cluster, the pattern
// of grpc-go's CallbackSerializer: snapshots, health reports, outlier
// ejections and their expiry, and drains are applied there in batches,
// and each batch that changed the set of pickable endpoints builds a new
// picker and swaps it in. Health watchers and Update enqueue into an
// unbounded queue, so a watcher is never held up by a rebuild and Close
// cannot deadlock with a report in flight; Done flags the endpoint and
// wakes the loop through a one-slot channel, which never blocks and does
// not allocate.
//
// # Endpoint lifecycle
//
// A new endpoint is "pending" until its first SERVING health report (or
// serving at once with health checking disabled). A NOT_SERVING report, or
// a broken health stream, ejects it at once and SERVING readmits it.
// Outlier detection ejects an endpoint after ConsecutiveFailures failed
// calls in a row (and optionally by failure percentage per Interval) for
// BaseEjectionTime × n on its n-th ejection in a row, capped, and never
// holds more than MaxEjectionPercent of the cluster ejected at once: when
// everything fails, some endpoints keep serving rather than none. An
// endpoint that discovery drops stops getting picks at once and is
// "draining" until its outstanding calls finish (or DrainTimeout passes);
// then its connection closes. An endpoint re-announced with the same ID
// and address keeps its connection and all its state.
//
// # Policies
//
//   - round_robin: an atomic counter over the endpoints; with unequal
//     weights, over a smooth weighted schedule built at rebuild time.
//   - least_request: power of two choices on outstanding calls / weight.
//   - peak_ewma: power of two choices on a peak-sensitive, decaying latency
//     estimate × (outstanding+1) / weight (Linkerd, Finagle).
//   - ring_hash: a ketama-style ring keyed by a request header; when an
//     endpoint leaves, only its share of keys moves.
//
// # Slow start and zones
//
// With Options.SlowStart an endpoint that starts serving (first SERVING,
// or back from an ejection) ramps from 10% of its weight to all of it
// over the window (slowstart.go); with Options.Locality.LocalZone picks
// stay in the local zone while enough of it serves (locality.go). Both
// are decided when the picker is built, never per pick.
//
// # Panic mode and all_down
//
// With a HealthyPanicThreshold, a cluster whose share of serving endpoints
// (among those with a health verdict) drops below it balances over every
// endpoint that answered, NOT_SERVING and outlier-ejected ones included,
// as Envoy's panic mode does; endpoints still pending and endpoints meshd
// cannot reach stay out (panic.go says why). When that still leaves
// nothing to pick, Pick fails with [ErrNoEndpoint] (AllDown "fail", the
// default) or chooses among all live endpoints (AllDown "any").
package balancer
