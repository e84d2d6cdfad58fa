# syntax=docker/dockerfile:1
#
# Two images from one build (see deploy/k8s/README.md):
#   docker build -t meshd:dev .                          the proxy (default target)
#   docker build -t meshd-init:dev --target meshd-init . the sidecar's iptables step

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

# meshd: distroless static, no shell, non-root. UID 1337 is the UID the
# sidecar's iptables rules exempt (-proxy-uid) and the manifests run as.
FROM gcr.io/distroless/static-debian12:nonroot AS meshd
COPY --from=build /out/meshd /meshd
USER 1337:1337
EXPOSE 15000 15001 15006 8443
ENTRYPOINT ["/meshd"]
CMD ["run", "-config", "/etc/meshd/meshd.yaml"]
