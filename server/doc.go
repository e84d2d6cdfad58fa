// Package server assembles a running meshd from a config: clusters with
// their discovery and health watching, the route table, the data-path
// listeners and the admin server. It owns every goroutine it starts.
//
// Upstream connections follow the data: each cluster (clusters.go) owns
// the engine Pool of its connections for calls, which every listener's
// engine uses through the cluster's Upstream; an endpoint the cluster
// removes is forgotten in that pool only, and the pool closes with the
// cluster. Passthrough clusters of original destinations (origdst.go) own
// theirs the same way.
//
// Reload builds and validates a whole new data-path State before swapping
// it in atomically (Caddy's unsyncedDecodeAndRun idea): a cluster whose
// definition did not change is carried over with its connections, health
// state and Consul watch (a change of its limits or retry budget alone
// keeps it too); new clusters are warmed up (first discovery result and
// health verdicts) before the swap, so no call is sent to a cluster that
// cannot take it yet; a removed or changed cluster stops taking new calls
// at once and is closed once no call of an older State can use it (or the
// drain timeout passes). A reload that fails changes nothing, and is
// counted and reported on /config_dump.
//
// Config has two sources, the file and a Consul KV key (consul.config_key,
// kv.go, watched with blocking queries). Each hands whole snapshots of its
// part to one apply loop (apply.go), which joins them and applies the
// result; the loop alone owns the state a reload reads and writes.
//
// # Recovery and upgrades
//
// How quickly endpoints come back, panic mode and the zero-downtime
// upgrade (README "Recovery and upgrades") span several packages:
//
//   - healthwatch/reconnect.go: ConnectParams, the reconnect backoff of an
//     endpoint's health connection, capped by health.reconnect_max;
//     clusters.go dials with it and the engine's dial timeout.
//   - healthwatch/healthwatch.go: after a failure the next health stream
//     waits for the connection (wait-for-ready), and unreachable verdicts
//     are marked (Report.Unreachable).
//   - balancer/panic.go: which endpoints a picker balances over, panic
//     mode (healthy_panic_threshold) and all_down.
//   - reuseport_linux.go: SO_REUSEPORT for listeners and the admin port
//     (listen, WithReusePort; cmd/meshd run -reuse-port); admin's
//     /ready?pid=N tells two processes sharing the admin port apart.
//   - test/recovery_test.go: the end-to-end runs (kill and restart,
//     outages, black hole, upgrade under load, panic threshold).
package server
