#!/usr/bin/env bash
# h2spec.sh runs the h2spec HTTP/2 conformance suite (generic, hpack and
# http2 groups; cleartext, prior knowledge) against a plain grpc-go server
# and against meshd in front of that same server, and prints the failures
# side by side. Not part of CI (issue 14); run it by hand after changing the
# frame engine:
#
#   go install github.com/summerwind/h2spec/cmd/h2spec@latest
#   scripts/h2spec.sh            # H2SPEC=/path/to/h2spec to pick a binary
#
# It builds meshd and cmd/meshbench (whose -serve-backend mode is the
# grpc-go test backend), runs both on loopback, and exits 1 when a case
# fails on meshd that passes on grpc-go.
set -euo pipefail

cd "$(dirname "$0")/.."
H2SPEC=${H2SPEC:-$(command -v h2spec || echo "$(go env GOPATH)/bin/h2spec")}
H2SPEC_PATH=${H2SPEC_PATH:-/grpc.testing.TestService/UnaryCall}
H2SPEC_TIMEOUT=${H2SPEC_TIMEOUT:-2}
if [ ! -x "$H2SPEC" ]; then
	echo "h2spec not found: go install github.com/summerwind/h2spec/cmd/h2spec@latest" >&2
	exit 2
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
	exec 3>&- 2>/dev/null || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/meshd" ./cmd/meshd
go build -o "$tmp/meshbench" ./cmd/meshbench

# The backend serves until its stdin closes (fd 3, closed at exit).
mkfifo "$tmp/backend.in"
"$tmp/meshbench" -serve-backend <"$tmp/backend.in" >"$tmp/backend.out" 2>"$tmp/backend.err" &
pids+=($!)
exec 3>"$tmp/backend.in"
for _ in $(seq 100); do
	[ -s "$tmp/backend.out" ] && break
	sleep 0.1
done
backend=$(head -n1 "$tmp/backend.out")
[ -n "$backend" ] || { echo "backend did not start: $(cat "$tmp/backend.err")" >&2; exit 1; }

# A free loopback port for meshd's listener.
port=""
for _ in $(seq 50); do
	p=$((20000 + RANDOM % 20000))
	if ! ss -ltnH "sport = :$p" | grep -q .; then port=$p; break; fi
done
[ -n "$port" ] || { echo "no free port" >&2; exit 1; }

cat >"$tmp/meshd.yaml" <<YAML
listeners: [{name: main, address: 127.0.0.1:$port}]
routes:
  - name: all
    match: {prefix: /}
    cluster: backend
clusters:
  - name: backend
    endpoints: [$backend]
YAML
"$tmp/meshd" run -config "$tmp/meshd.yaml" -log-level warn 2>"$tmp/meshd.err" &
pids+=($!)
for _ in $(seq 100); do
	(exec 4<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	sleep 0.1
done

# run TARGET PORT: the suite's report, one "STATUS<TAB>CASE" line per case.
run() {
	local name=$1 p=$2
	"$H2SPEC" generic hpack http2 -h 127.0.0.1 -p "$p" -P "$H2SPEC_PATH" -o "$H2SPEC_TIMEOUT" \
		-j "$tmp/$name.xml" >"$tmp/$name.log" 2>&1 || true
	# The JUnit report: each <testcase> is passed unless a <failure>,
	# <error> or <skipped> follows it before the next one.
	awk '
		function flush() { if (id != "") print st "\t" id; id = "" }
		/<testsuite / { match($0, /package="[^"]*"/); pkg = substr($0, RSTART+9, RLENGTH-10) }
		/<testcase / {
			flush()
			match($0, /classname="[^"]*"/); cls = substr($0, RSTART+11, RLENGTH-12)
			id = pkg " " cls; st = "pass"
		}
		/<failure|<error/ { st = "FAIL" }
		/<skipped/ { st = "skip" }
		END { flush() }' "$tmp/$name.xml" | sed 's/&#34;/"/g; s/&#39;/'"'"'/g; s/&amp;/\&/g; s/&lt;/</g; s/&gt;/>/g' >"$tmp/$name.tsv"
}
run grpc-go "${backend##*:}"
run meshd "$port"

# Every case that did not pass on both, side by side.
paste "$tmp/grpc-go.tsv" "$tmp/meshd.tsv" | awk -F'\t' '
	$2 != $4 { print "case mismatch: " $2 " / " $4 > "/dev/stderr"; exit 2 }
	$1 != "pass" || $3 != "pass" { printf "%-8s %-8s %s\n", $1, $3, $2 }' >"$tmp/side.txt"
if [ -n "${H2SPEC_KEEP:-}" ]; then
	mkdir -p "$H2SPEC_KEEP" && cp "$tmp"/*.log "$tmp"/*.xml "$tmp"/*.tsv "$tmp/side.txt" "$H2SPEC_KEEP"/
fi
printf "%-8s %-8s %s\n" grpc-go meshd case
cat "$tmp/side.txt"
count() { awk -F'\t' -v s="$1" '$1 == s' "$2" | wc -l; }
echo "cases: $(wc -l <"$tmp/meshd.tsv")" \
	"  grpc-go: $(count FAIL "$tmp/grpc-go.tsv") failed, $(count skip "$tmp/grpc-go.tsv") skipped" \
	"  meshd: $(count FAIL "$tmp/meshd.tsv") failed, $(count skip "$tmp/meshd.tsv") skipped"
worse=$(awk '$1 == "pass" && $2 == "FAIL"' "$tmp/side.txt" | wc -l)
if [ "$worse" -gt 0 ]; then
	echo "$worse case(s) fail on meshd and pass on grpc-go" >&2
	exit 1
fi
