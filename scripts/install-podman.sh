#!/usr/bin/env bash
# Installs podman and runc from Debian's packages (for `make image` and the
# image test, image/image_test.go) and writes the containers.conf they need
# on this kind of machine into a cache outside the checkout, without
# touching /etc/containers: nothing but a podman run with CONTAINERS_CONF
# pointing at it reads it. Idempotent and quiet: a second run only prints
# the file's path. Without root or apt-get, and with podman missing, it
# says so and prints nothing (the image test then skips, except in CI).
#
# Usage: CONTAINERS_CONF="$(scripts/install-podman.sh)" podman ...
set -euo pipefail

cache="${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}"
conf="$cache/containers.conf"

if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-podman: podman or runc missing and cannot apt-get install them here; the image test will skip" >&2
    exit 0
  fi
  mkdir -p "$cache"
  # One installer at a time: make image and make test may race.
  exec 9>"$cache/podman.lock"
  flock 9
  if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    echo "install-podman: installing podman runc" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends podman runc >/dev/null
  fi
fi

# What worked on the project's machines (no systemd, limits a container
# may not raise):
#   default_ulimits = []    podman otherwise sets RLIMIT_NPROC etc. in the
#                           container, which runc may not do here
#                           ("error setting rlimit type 7")
#   cgroup_manager          cgroupfs: there is no systemd to ask
#   runtime                 runc, the one installed above
want='# Written by meshd scripts/install-podman.sh; read only by podman runs
# with CONTAINERS_CONF set to this file.
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"

[engine.runtimes]
runc = ["/usr/sbin/runc", "/usr/bin/runc"]
'
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$(printf '%s' "$want")" ]; then
  mkdir -p "$cache"
  tmp="$(mktemp "$cache/containers.conf.XXXXXX")"
  printf '%s' "$want" >"$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$conf"
fi
echo "$conf"
