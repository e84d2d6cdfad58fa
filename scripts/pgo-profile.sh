#!/bin/sh
# Writes OUT (default cmd/meshd/default.pgo): a CPU profile of meshd for
# Go's profile-guided optimization; -pgo=auto, the default, makes `go build`
# use default.pgo in the main package's directory. `make pgo` runs it.
# No default.pgo is committed: measured with meshbench -baseline it did not
# pay (README "Performance"). To try again, e.g. after changes to the
# engine: run this, build with and without it (-pgo=off) and compare the
# two with meshbench -baseline before committing the profile.
#
# meshd, built without PGO, runs under the load harness (cmd/meshbench);
# CPU profiles are taken at 500 and 2,000 calls/s (where a sidecar spends
# its life) and at full load, then merged. pprof sums samples, so the
# full-load profile, with far more CPU per second, would dominate (and the
# kernel's CPU timers under-sample a process that runs in short bursts, so
# the 500/s profile has few samples): the 2,000/s profile is merged W2000
# times (default 2) and the 500/s one W500 times (default 8), which gives
# the moderate rates most of the weight.
#
# Usage: scripts/pgo-profile.sh [OUT]
# Environment: GO (go), SECS (each profile's length, 30), W500, W2000.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
SECS=${SECS:-30}
W500=${W500:-8}
W2000=${W2000:-2}
out=${1:-cmd/meshd/default.pgo}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

GOTOOLCHAIN=${GOTOOLCHAIN:-local} $GO build -pgo=off -trimpath -o "$tmp/meshd" ./cmd/meshd
# One short measured round (the harness needs one), no idle phase; the
# profiles come from the extra phases -meshd-pprof adds.
$GO run ./cmd/meshbench -meshd "$tmp/meshd" -mode quick -rounds 1 -idle 0 \
	-targets direct,meshd -rates 500,2000 -meshd-pprof "$tmp/p" \
	-pprof-seconds "${SECS}s" >"$tmp/report.txt"

set -- "$tmp/p-meshd-cpu.pprof"
for rw in "500 $W500" "2000 $W2000"; do
	rate=${rw% *}
	i=0
	while [ "$i" -lt "${rw#* }" ]; do
		set -- "$@" "$tmp/p-meshd-cpu-$rate.pprof"
		i=$((i + 1))
	done
done
for f in "$@"; do
	[ -s "$f" ] || { echo "pgo-profile: missing profile $f" >&2; exit 1; }
done
$GO tool pprof -proto "$@" >"$tmp/merged.pgo" 2>/dev/null
mv "$tmp/merged.pgo" "$out"
echo "wrote $out ($(wc -c <"$out") bytes), merged from (W500=$W500, W2000=$W2000):"
for f in "$tmp"/p-meshd-cpu*.pprof; do
	printf '  %s: ' "$(basename "$f")"
	$GO tool pprof -top "$f" 2>/dev/null | sed -n 's/^Duration: //p'
done
