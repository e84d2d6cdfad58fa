# meshd: the README's two commands are `make demo` and `make test`.
# Both install what they need (Consul, built once into $HOME/.cache/meshd).

GO        ?= go
export GOTOOLCHAIN ?= local
BIN       := bin
MESHD     := $(BIN)/meshd
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
IMAGE     ?= meshd:$(VERSION)
DEMO_ARGS ?=
BENCH_LOAD_ARGS ?=

.PHONY: all build image demo test test-go netns-tools chromium grpcurl podman lint fuzz-smoke bench bench-smoke bench-load bench-smoke-load pgo consul kube clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(MESHD) ./cmd/meshd

consul:
	@scripts/install-consul.sh >/dev/null

# podman and runc (Debian's), and the containers.conf they need here, kept
# in $HOME/.cache/meshd (see the script).
podman:
	@scripts/install-podman.sh >/dev/null

# The OCI image FROM scratch: the static binary (built as `build` does, CGO
# off), its CA bundle and labels with the version; image/Containerfile.
# `make image IMAGE=meshd:dev` for the tag the deploy/k8s manifests use.
image: podman
	CONTAINERS_CONF="$$(scripts/install-podman.sh)" scripts/build-image.sh $(IMAGE) $(VERSION)

# kube-apiserver and etcd for the Kubernetes tests (envtest), built once
# from the Go module proxy into $HOME/.cache/meshd/kube-v1.37.2.
kube:
	@scripts/install-kube.sh >/dev/null

# ip, iptables and setpriv for the network-namespace tests (root only).
netns-tools:
	@scripts/install-netns-tools.sh

# The demo: real backends, a real Consul agent and meshd, traffic through it.
# It exits by itself after a short run; `make demo DEMO_ARGS=-keep` keeps it up.
demo: build consul
	$(GO) run ./cmd/meshdemo -meshd $(MESHD) -consul "$$(scripts/install-consul.sh)" $(DEMO_ARGS)

# Debian's chromium for the gRPC-Web browser test (test/browser_test.go).
chromium:
	@scripts/install-chromium.sh >/dev/null

# grpcurl, built once from the module proxy into the cache, for the merged
# reflection test (test/grpcurl_test.go).
grpcurl:
	@scripts/install-grpcurl.sh >/dev/null

# The whole test suite, as CI runs it.
test: consul kube netns-tools chromium grpcurl podman lint test-go fuzz-smoke bench-smoke-load

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Every benchmark also runs once here (-benchtime 1x), in the same -race
# test binaries, so none can rot and no second build of every package is
# needed; no timing is asserted. `make bench` runs them properly.
test-go:
	MESHD_CONSUL_BIN="$$(scripts/install-consul.sh)" CONTAINERS_CONF="$$(scripts/install-podman.sh)" MESHD_KUBE_ASSETS="$$(scripts/install-kube.sh)" $(GO) test -race -count=1 -timeout 30m -bench . -benchtime 1x ./...

# A few seconds per fuzz target so the targets cannot rot; real fuzzing runs
# longer by hand (see README).
fuzz-smoke:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 5s ./config/
	$(GO) test -run '^$$' -fuzz '^FuzzLookup$$' -fuzztime 5s ./router/
	$(GO) test -run '^$$' -fuzz '^FuzzHeaderMatcher$$' -fuzztime 5s ./router/
	$(GO) test -run '^$$' -fuzz '^FuzzServerConn$$' -fuzztime 5s ./engine/

# Every benchmark once, without -race (test-go already runs them under it).
bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./... | tee bench.out

# The load harness (cmd/meshbench, see README "Load harness"): a real backend,
# bin/meshd and nginx if installed, interleaved rounds (add the mesh chains
# with BENCH_LOAD_ARGS='-targets direct,meshd,meshd-2hop,meshd-mtls'); prints
# medians, ratios to direct and the issue's targets. Under 2 minutes;
# `make bench-load BENCH_LOAD_ARGS='-mode full -json load.json'` for the
# long run (under 10 minutes).
bench-load: build
	$(GO) run ./cmd/meshbench -meshd $(MESHD) -mode quick $(BENCH_LOAD_ARGS)

# CI: a few hundred calls per target (~30 s with every target) so the
# harness cannot rot. It fails only if a target does not answer; no timing
# is asserted. The targets that are not in the default -targets (grpc-proxy,
# the chains: two meshds over h2c and mTLS, two nginx over TLS) and the
# -rates phase run here too.
bench-smoke-load: build
	$(GO) run ./cmd/meshbench -meshd $(MESHD) -mode smoke -targets direct,meshd,nginx,grpc-proxy,meshd-2hop,meshd-mtls,nginx-mtls -rates 500,2000,max

# Writes cmd/meshd/default.pgo, a CPU profile for profile-guided
# optimization that `go build` then uses (README "Performance"): meshd
# under the load harness at 500 and 2,000 calls/s and full load, merged.
# About 3 minutes. Not committed (it did not pay); compare with -baseline.
pgo:
	scripts/pgo-profile.sh

clean:
	rm -rf $(BIN)
