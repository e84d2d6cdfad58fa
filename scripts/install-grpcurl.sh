#!/usr/bin/env bash
# Builds grpcurl (the tool people use to explore an API through meshd's
# merged reflection) from the Go module proxy into a cache outside the
# checkout, once per version; test/reflection_test.go runs it. Idempotent
# and quiet when it is there; prints the binary's path.
set -euo pipefail

version=v1.9.4
dir="${MESHD_CACHE:-$HOME/.cache/meshd}/grpcurl-$version"
bin="$dir/grpcurl"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$dir"
echo "install-grpcurl: building grpcurl $version (once)" >&2
# A private GOBIN and a temporary file, renamed when complete: a build
# cut short never leaves a half-written binary where the test looks.
tmp=$(mktemp -d "$dir/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" GOFLAGS=-mod=mod go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$version" >&2
mv "$tmp/grpcurl" "$bin"
echo "$bin"
