#!/usr/bin/env bash
# Installs Debian's chromium for the browser test of the gRPC-Web example
# (test/browser_test.go drives it headless with --dump-dom). Idempotent and
# quiet when it is there; prints the binary's path. Without root or apt-get
# it says so and exits 0: the browser test then skips.
set -euo pipefail

for bin in chromium chromium-browser; do
  if p=$(command -v "$bin" 2>/dev/null); then echo "$p"; exit 0; fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: not root or no apt-get: the browser test will skip" >&2
  exit 0
fi
echo "install-chromium: installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium
