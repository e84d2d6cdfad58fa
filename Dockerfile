# syntax=docker/dockerfile:1
#
# Two images from one build (see deploy/k8s/README.md):
#   docker build -t meshd:dev --build-arg VERSION=v1.2.3 .  the proxy (default target)
#   docker build -t meshd-init:dev --target meshd-init .    the sidecar's iptables step
# Without a registry to pull from, `make image` builds the proxy's image
# with podman from the local static binary (image/Containerfile).

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# CGO off: a static binary that needs nothing from the image but itself.
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" -o /out/meshd ./cmd/meshd

# meshd-init: `meshd iptables` needs the iptables tools, so it is not
# distroless. It runs once, before the pod's other containers.
FROM debian:bookworm-slim AS meshd-init
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/meshd /usr/local/bin/meshd
ENTRYPOINT ["/usr/local/bin/meshd"]
CMD ["iptables", "-dry-run"]

# meshd: FROM scratch, the layout `make image` builds without pulling
# (image/Containerfile; image/layout_test.go keeps the two in step): the
# static binary, the CA bundle (jwks_url, OTLP and Consul over TLS), no
# shell, no passwd file.
FROM scratch AS meshd
ARG VERSION=dev
ARG REVISION=unknown
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/meshd /meshd
LABEL org.opencontainers.image.title="meshd" \
      org.opencontainers.image.description="gRPC service-mesh proxy" \
      org.opencontainers.image.source="https://github.com/meshd/meshd" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# UID 1337 is the UID the sidecar's iptables rules exempt (-proxy-uid) and
# the manifests run as; no shell, no passwd file: a numeric user.
USER 1337:1337
EXPOSE 15000 15001 15006 8443
ENTRYPOINT ["/meshd"]
CMD ["run", "-config", "/etc/meshd/meshd.yaml"]
