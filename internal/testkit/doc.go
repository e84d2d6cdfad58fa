// Package testkit is meshd's test scaffolding, written once: every test
// package uses it rather than keeping a copy of its own.
//
//   - [WaitFor] and [Poll] wait for a condition with a deadline, so that no
//     test sleeps to wait for state.
//   - [Serve], [ServeLoopback] and [BlackHole] run plain TCP servers whose
//     connections are closed and goroutines joined when the test ends;
//     [FreeAddr] is an address nobody answers on.
//   - [OpenStream] opens a gRPC stream through a proxy and proves it open.
//   - [NewCA] makes a certificate authority that issues server and client
//     certificates for TLS tests, SPIFFE leaves shaped like Consul
//     Connect's ([CA.IssueSPIFFE]) and intermediate CAs.
//   - [Scrape] and [ParseMetrics] read a Prometheus /metrics page with
//     Prometheus' own text parser; [Metrics] finds series in it, or
//     flattens it into one value per series as the page writes it.
//   - Package h2raw (testkit/h2raw) speaks HTTP/2 frame by frame, as a client
//     that may misbehave and as a backend that does.
//   - Package proc (testkit/proc) reads /proc: CPU time, RSS, open files.
//
// testkit imports no meshd package, so any package's tests may use it.
package testkit
