// Package image holds meshd's container image and its tests; it has no Go
// code of its own.
//
// The image is built two ways with one layout (/meshd, the CA bundle at
// /etc/ssl/certs/ca-certificates.crt, USER 1337:1337, ENTRYPOINT /meshd,
// CMD run -config /etc/meshd/meshd.yaml, OCI labels with the version):
//
//   - `make image` (scripts/build-image.sh) builds [Containerfile] FROM
//     scratch with podman or buildah from the local static binary, pulling
//     nothing; scripts/install-podman.sh installs podman and runc and the
//     containers.conf they need on a machine without systemd.
//   - the repository's Dockerfile builds the binary in a golang stage and
//     copies it into the same scratch layout, for builders that can pull.
//
// layout_test.go keeps the two files in step; image_test.go builds the
// image and runs it as the deploy/k8s manifests do (read-only root, UID
// 1337, no capabilities, no-new-privileges) with a config mounted
// read-only, sends a gRPC call through it to a backend in the test process
// and stops it with SIGTERM (drain, exit 0).
package image
