#!/usr/bin/env bash
# Installs what the network-namespace tests need (test/netns_test.go,
# cmd/meshd/iptables_test.go): ip (iproute2), iptables-save/-restore
# (iptables) and setpriv (util-linux). Idempotent and quiet when they are
# there. Without root the tests skip (they cannot create namespaces), so
# there is nothing to install either.
set -euo pipefail

missing=()
for bin in ip iptables-save iptables-restore setpriv; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-netns-tools: not root: the netns tests will skip (missing: ${missing[*]})" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-netns-tools: no apt-get; install iproute2, iptables and util-linux (missing: ${missing[*]})" >&2
  exit 1
fi
echo "install-netns-tools: installing iproute2 iptables util-linux (missing: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends iproute2 iptables util-linux >/dev/null
