#!/usr/bin/env bash
# Installs a real kube-apiserver and etcd into a cache outside the checkout, for
# the Kubernetes tests (envtest runs them through KUBEBUILDER_ASSETS). Neither
# is packaged by Debian and `go install` refuses both (their go.mod files carry
# replace directives), so a scratch module requires k8s.io/kubernetes, maps
# each of its staging modules (k8s.io/api, client-go, …) to the published
# v0.X.Y release with a replace directive, and builds the two commands.
# Idempotent: a second run only prints the folder. The first build takes about
# 6 minutes and ~6 GB of Go build cache on 2 idle cores; seconds when warm.
#
# Usage: scripts/install-kube.sh        prints the folder holding kube-apiserver and etcd
set -euo pipefail

version="${MESHD_KUBE_VERSION:-v1.37.2}"
etcd_version="${MESHD_ETCD_VERSION:-v3.7.0}"
cache="${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}"
dir="$cache/kube-$version"

ok() {
  [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ] &&
    "$dir/kube-apiserver" --version >/dev/null 2>&1 && "$dir/etcd" --version >/dev/null 2>&1
}

if ok; then
  echo "$dir"
  exit 0
fi

mkdir -p "$cache"
# One installer at a time: make test and a developer's shell may race on a fresh machine.
exec 9>"$cache/kube.lock"
flock 9
if ok; then
  echo "$dir"
  exit 0
fi

echo "install-kube: building kube-apiserver $version and etcd $etcd_version (once; about 6 minutes on 2 idle cores)" >&2
work="$(mktemp -d "$cache/kube-build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

staging_minor="v0.${version#v1.}" # v1.37.2 -> v0.37.2
cd "$work"
go mod init meshd-kube-build >/dev/null 2>&1
gomod="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$version" |
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
if [ -z "$gomod" ] || [ ! -f "$gomod" ]; then
  echo "install-kube: could not download k8s.io/kubernetes@$version from the module proxy" >&2
  exit 1
fi
# The staging modules are the ones kubernetes requires at v0.0.0 (and replaces
# with ./staging/src/...); the published ones carry the v0.MINOR.PATCH tag.
mapfile -t staging < <(sed -n 's/^[[:space:]]*\(k8s\.io\/[a-z0-9-]*\) v0\.0\.0$/\1/p' "$gomod" | sort -u)
if [ "${#staging[@]}" -eq 0 ]; then
  echo "install-kube: found no staging modules in $gomod" >&2
  exit 1
fi
args=(-require="k8s.io/kubernetes@$version" -require="go.etcd.io/etcd/server/v3@$etcd_version")
for m in "${staging[@]}"; do
  args+=(-require="$m@$staging_minor" -replace="$m=$m@$staging_minor")
done
go mod edit "${args[@]}"
cat >tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
EOF
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
go mod tidy -e >/dev/null 2>&1 || true

minor="${version#v1.}"
minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
go build -trimpath -ldflags "$ldflags" -o "$work/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
# The etcd command is the module's root package (named "server" by go build -o DIR), so name the file.
go build -trimpath -ldflags "-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3

mkdir -p "$dir"
for b in kube-apiserver etcd; do
  mv "$work/$b" "$dir/$b.tmp"
  mv "$dir/$b.tmp" "$dir/$b"
done
"$dir/kube-apiserver" --version >&2
"$dir/etcd" --version | head -1 >&2
echo "$dir"
