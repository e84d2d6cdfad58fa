// Package k8s holds meshd's Kubernetes manifests (sidecar/, mesh/ and
// edge/) and the test that decodes every one of them strictly into the
// k8s.io/api types and checks the security and wiring invariants
// deploy/k8s/README.md promises. It has no code of its own.
package k8s
