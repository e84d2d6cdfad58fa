package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// grpcProxyPkg is the grpc-proxy target's main package: mwitkow/grpc-proxy's
// proxy.TransparentHandler as its README wires it (internal/grpcproxy).
const grpcProxyPkg = "github.com/meshd/meshd/cmd/meshbench/grpcproxy"

// grpcProxyIdleSkip is why the idle-streams phase skips grpc-proxy: an
// idle stream counts as open once its response headers came back, and
// grpc-proxy's handler forwards response headers only with the first
// message, which an idle stream never sends (test/grpcproxy_test.go).
const grpcProxyIdleSkip = "grpc-proxy forwards response headers only with the first message, so an idle stream's headers never arrive"

// startGRPCProxy runs the grpc-proxy target in front of backendAddr: bin,
// or, if bin is "", a binary it builds into dir with `go build` (a
// toolchain that cannot build it makes the target unavailable).
func startGRPCProxy(ctx context.Context, bin, dir, backendAddr string) (c *child, addr, version string, err error) {
	if bin == "" {
		bin = filepath.Join(dir, "grpc-proxy")
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(bctx, "go", "build", "-trimpath", "-o", bin, grpcProxyPkg)
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, "", "", fmt.Errorf("%w: go build %s: %v: %s", errUnavailable, grpcProxyPkg, err, strings.TrimSpace(string(out)))
		}
	}
	out, err := exec.CommandContext(ctx, bin, "-version").Output()
	if err != nil {
		return nil, "", "", fmt.Errorf("%w: %s -version: %v", errUnavailable, bin, err)
	}
	version = strings.TrimSpace(string(out))
	listen, err := freeAddr()
	if err != nil {
		return nil, "", "", err
	}
	c, err = startChild("grpc-proxy", exec.Command(bin, "-listen", listen, "-backend", backendAddr))
	if err != nil {
		return nil, "", "", err
	}
	if err := waitTCP(ctx, listen, c, 15*time.Second); err != nil {
		c.stop(syscall.SIGTERM, 5*time.Second)
		return nil, "", "", fmt.Errorf("meshbench: grpc-proxy not listening: %w\n%s", err, c.log())
	}
	return c, listen, version, nil
}
