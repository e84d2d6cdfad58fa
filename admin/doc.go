// Package admin is meshd's HTTP admin server: liveness and readiness for
// orchestrators, Prometheus metrics, and read-only views of the effective
// config, the route table and every cluster's endpoints.
//
// The same port also serves grpc.health.v1 for Kubernetes gRPC probes and
// other gRPC health checkers: the server speaks HTTP/1.1 and cleartext
// HTTP/2 (h2c), and sends requests with content-type application/grpc to a
// grpc.Server. Service "" is SERVING exactly when /ready answers 200 (so it
// fails the moment a drain starts); service "liveness" is SERVING whenever
// the process answers.
//
// It reads state through the small Source interface, so it holds no
// reference to meshd's internals and can be tested with a real Server
// behind it. Bind it to loopback: /config_dump shows the whole config
// (secrets redacted).
//
// During a zero-downtime upgrade two meshd processes share the admin port
// (SO_REUSEPORT, WithListenConfig), and either may answer a request. Every
// /ready answer names its process in the Meshd-Pid header, and
// /ready?pid=N answers 200 only from process N, so an upgrade script can
// wait for the new process specifically.
package admin
