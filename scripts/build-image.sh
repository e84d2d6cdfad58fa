#!/usr/bin/env bash
# Builds meshd's OCI image FROM scratch (image/Containerfile) with podman,
# or buildah if there is no podman: a static meshd built here like `make
# build` (CGO_ENABLED=0, -trimpath, -X main.version) plus the machine's CA
# bundle (for jwks_url, OTLP and Consul over TLS) are the whole build
# context, so nothing is pulled and an unchanged binary hits the layer
# cache. Run it with CONTAINERS_CONF from scripts/install-podman.sh.
#
# Usage: scripts/build-image.sh IMAGE [VERSION]
#   MESHD_IMAGE_CONTEXT  directory for the build context (default bin/image)
set -euo pipefail

image="${1:?usage: scripts/build-image.sh IMAGE [VERSION]}"
cd "$(dirname "$0")/.."
version="${2:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
ctx="${MESHD_IMAGE_CONTEXT:-bin/image}"
certs="${MESHD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if [ ! -r "$certs" ]; then
  echo "build-image: no CA bundle at $certs (apt-get install ca-certificates, or set MESHD_CA_BUNDLE)" >&2
  exit 1
fi
if command -v podman >/dev/null 2>&1; then
  build=(podman build)
elif command -v buildah >/dev/null 2>&1; then
  build=(buildah build)
else
  echo "build-image: neither podman nor buildah is installed (scripts/install-podman.sh installs podman)" >&2
  exit 1
fi

mkdir -p "$ctx"
CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$ctx/meshd" ./cmd/meshd
cp image/Containerfile "$ctx/Containerfile"
cp "$certs" "$ctx/ca-certificates.crt"
"${build[@]}" --quiet --file "$ctx/Containerfile" --tag "$image" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" "$ctx" >/dev/null
echo "$image"
