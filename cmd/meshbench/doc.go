// Command meshbench is meshd's load harness (`make bench-load`). It measures
// what operators choose a proxy on: added latency, CPU per call and memory.
// Every figure is taken against a direct connection to the same backend in
// the same run, because absolute numbers on a shared machine mean little.
//
// It starts a real gRPC backend (grpc-go's interop TestService, from
// test/backend) in a separate process: the harness re-executes itself with
// the hidden -serve-backend flag, so the backend does not share a Go runtime
// with the load generator. In front of that backend it starts one target
// per data path:
//
//	direct        the backend itself
//	meshd         bin/meshd (the frame engine, meshd's one data path)
//	meshd-2hop    two bin/meshd sidecars, client → web → h2c → api → backend
//	meshd-mtls    the same with issue 16's mesh mTLS between web and api
//	nginx         /usr/sbin/nginx with grpc_pass, 2 workers, its own prefix and config
//	grpc-proxy    mwitkow/grpc-proxy's proxy.TransparentHandler with a director, as its
//	              README wires it (internal/grpcproxy): what meshd replaces; the
//	              harness builds cmd/meshbench/grpcproxy into its temp dir
//	nginx-mtls    two nginx, client → web → grpc_pass grpcs:// with web's client
//	              certificate → api (ssl_verify_client on) → backend: meshd-mtls's
//	              chain with nginx, on the same kind of CA and leaves
//
//	meshd-grpcweb meshd with grpc_web: {allow_origins: ["*"]} on its listener,
//	              called with gRPC-Web (application/grpc-web+proto) over HTTP/1.1
//	              keep-alive from net/http (grpcweb.go): the native unary phase's
//	              echo as one data frame, the response's data frame and trailer
//	              frame (flag 0x80, grpc-status 0) checked; as many connections
//	              and callers as the native phase (HTTP/1.1 carries one call at a
//	              time per connection, so callers queue). Only the unary
//	              throughput phase measures it (calls/s, CPU per call, peak RSS);
//	              the other phases skip it and say why. The report prints
//	              meshd-grpcweb/meshd, what a gRPC-Web call costs against a
//	              native one (issue 17); not in the default -targets
//
// The two chains (chain.go, not in the default -targets; ask for them)
// measure what mesh mTLS costs: they differ only in the hop between the
// sidecars. For meshd-mtls the harness issues, at start and into its temp
// dir, a CA and SPIFFE leaves spiffe://meshbench.local/ns/default/dc/dc1/
// svc/{web,api} (ECDSA P-256, like Consul Connect's); both sidecars use
// identity: files, web's cluster has mesh_tls: {service: api}, api's
// listener mesh_tls: strict, and api's local intentions allow web. A
// chain's CPU and memory are both meshds' summed. The report prints
// meshd-mtls/meshd-2hop (what mTLS costs per call) and meshd-2hop/meshd
// (what the second sidecar costs). Since web pools its connections to api,
// the chains have one more phase, connection churn: the harness dials api
// directly, as web does (h2c, or mTLS with web's identity through meshd's
// own client config), one call per new connection, and charges api's CPU
// per connection; over mTLS that is dominated by the handshake
// (identity's BenchmarkHandshake gives one handshake's CPU, both sides).
//
// nginx-mtls is judged against meshd-mtls (issue 19: throughput ≥ 1.3×,
// CPU per call ≤ nginx's). The idle-streams phase skips grpc-proxy (it
// forwards response headers only with the first message, so an idle
// stream never shows as open) and nginx-mtls (response headers sent before
// the first message did not come back through it here either; not yet
// understood).
//
// Then it runs several rounds. Each round measures every target in a
// rotating order (A B C, B C A, …), so slow drift on the machine spreads
// over all targets instead of biasing one:
//
//   - max unary throughput: 1 KiB echo, closed loop at fixed concurrency;
//     the proxy's CPU-seconds per 10k calls (utime+stime from
//     /proc/PID/stat, summed over nginx's master and workers) and its peak
//     RSS (VmHWM after clear_refs for meshd, sampled VmRSS for nginx);
//   - p50/p99/p999 at a fixed rate (open loop);
//   - with -rates 500,2000,max: at each fixed rate an open loop of a fixed
//     window (smoke 0.5 s, quick 3 s, full 6 s; -rate-window) with the
//     proxy's CPU ticks over it, so CPU per call where sidecars spend their
//     lives, and the p99 (added p99 against direct's at that rate); "max"
//     puts the throughput phase's CPU per call beside them. None by
//     default: each rate adds rounds × targets × window to the run;
//   - server-streaming messages/s (100 × 1 KiB per call, closed loop);
//
// and, after those rounds (so its memory does not inflate the peak RSS
// figures), the proxy's RSS while N idle server streams (10,000 by default)
// are held open through it.
//
// It prints medians, the min–max spread and each target's ratio to direct
// (computed per round, then the median), and judges the targets from the
// issue that introduced it (PASS/MISS). -json writes every value.
//
// Modes bound the run: smoke (a few hundred calls per target, ~10 s; CI runs
// it so the harness cannot rot, and it asserts only that every target
// answered, never a timing), quick (under 2 minutes) and full (under 10).
// Every load loop is bounded by both time and count.
//
// Every process it starts is stopped by PID on exit, including on Ctrl-C;
// children also get SIGKILL from the kernel if the harness dies (Pdeathsig),
// and the backend exits when its stdin (a pipe from the harness) closes.
package main
