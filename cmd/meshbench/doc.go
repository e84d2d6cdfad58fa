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
//	nginx         /usr/sbin/nginx with grpc_pass, 2 workers, its own prefix and config
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
