// Command meshdemo is meshd's demo (`make demo`), in two acts on one real
// Consul agent (`consul agent -dev`).
//
// Act 1 (main.go): three real gRPC backends registered in Consul and the
// meshd binary routing to them through Consul discovery. It sends traffic
// through meshd, printing which backend answered each call; flips one
// backend's health to show ejection and re-admission; registers a fourth
// backend to show discovery; then prints a summary.
//
// Act 2 (mesh.go): two meshd sidecars, web and api, talking mTLS with
// Consul Connect certificates. api's sidecar is registered as a
// connect-proxy for api, and web's sidecar finds it by Connect discovery.
// The act writes the intention web → api as allow, deny and allow again,
// printing each call's result and the caller identity api's sidecar saw,
// then api's denial metric and /certs.
//
// Then it exits; with -keep everything stays up until Ctrl-C.
package main
