#!/usr/bin/env bash
# Installs a real Consul agent binary (MPL-2.0 release v1.14.11) into a cache
# outside the checkout, building it from the Go module proxy because Consul is
# not packaged by Debian and later releases are BSL-licensed and refused by the
# proxy. Idempotent: a second run only prints the binary's path.
#
# Usage: scripts/install-consul.sh        prints the path of the consul binary
set -euo pipefail

version="${MESHD_CONSUL_VERSION:-v1.14.11}"
cache="${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}"
bin="$cache/consul-$version/consul"

if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
# One installer at a time: the demo and the test command may race on a fresh machine.
exec 9>"$cache/consul.lock"
flock 9
if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

echo "install-consul: building consul $version (once; about 5 minutes on 2 cores)" >&2
work="$(mktemp -d "$cache/consul-build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# A throwaway module so 'go mod download' has somewhere to run.
(cd "$work" && go mod init meshd-consul-fetch >/dev/null 2>&1)
dir="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/consul@$version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
  echo "install-consul: could not download github.com/hashicorp/consul@$version from the module proxy" >&2
  exit 1
fi

src="$work/src"
cp -r "$dir" "$src"
chmod -R u+w "$src"
cd "$src"
# The module's replace directives point at sibling directories that the module
# zip does not contain; use the published nested modules instead.
go mod edit -dropreplace=github.com/hashicorp/consul/api \
            -dropreplace=github.com/hashicorp/consul/sdk \
            -dropreplace=github.com/hashicorp/consul/proto-public
GOFLAGS=-mod=mod GONOSUMDB='github.com/hashicorp/consul/*' GONOSUMCHECK=1 \
  GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -o "$work/consul" .

mkdir -p "$(dirname "$bin")"
mv "$work/consul" "$bin.tmp"
mv "$bin.tmp" "$bin"
"$bin" version >&2
echo "$bin"
