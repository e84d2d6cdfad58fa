// Package test holds meshd's end-to-end, fault and load tests: a real client
// calls through a real meshd (server.Server, in process) to real backends
// (package backend), with a real Consul agent where discovery is involved.
//
// The soak tests (soak_test.go: what abuse and faults cost a steady client,
// measured over minutes) run only with MESHD_SOAK=1.
package test
