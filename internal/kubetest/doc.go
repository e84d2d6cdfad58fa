// Package kubetest runs a real kube-apiserver and etcd for tests, through
// controller-runtime's envtest, with the Gateway API GRPCRoute CRD
// (v1.6.3, standard channel, copied into testdata/) installed.
//
// The two binaries are not packaged anywhere this project can reach, so
// scripts/install-kube.sh (`make kube`) builds them once from the Go module
// proxy into $HOME/.cache/meshd/kube-v1.37.2/; [Assets] finds them there
// (or in $MESHD_KUBE_ASSETS). Tests never build them: without them a test
// is skipped with the command that installs them, except in CI (CI=true),
// where a missing binary fails the test.
//
// The cluster has no controllers (no kube-controller-manager): tests create
// the EndpointSlices a Service would get, and nothing else changes them.
package kubetest
