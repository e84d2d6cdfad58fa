// Package admin is meshd's HTTP admin server: liveness and readiness for
// orchestrators, Prometheus metrics, and read-only views of the effective
// config, the route table and every cluster's endpoints.
//
// It reads state through the small Source interface, so it holds no
// reference to meshd's internals and can be tested with a real Server
// behind it. Bind it to loopback: /config_dump shows the whole config
// (secrets redacted).
package admin
