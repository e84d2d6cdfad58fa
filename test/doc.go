// Package test holds meshd's end-to-end, fault and load tests: a real client
// calls through a real meshd (server.Server, in process) to real backends
// (package backend), with a real Consul agent where discovery is involved.
package test
