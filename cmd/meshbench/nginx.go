package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshd/meshd/internal/testkit/proc"
)

// nginxVersion parses `nginx -v` output ("nginx version: nginx/1.22.1").
func nginxVersion(out string) (major, minor, patch int, ok bool) {
	m := regexp.MustCompile(`nginx/(\d+)\.(\d+)\.(\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, 0, 0, false
	}
	a, _ := strconv.Atoi(m[1])
	b, _ := strconv.Atoi(m[2])
	c, _ := strconv.Atoi(m[3])
	return a, b, c, true
}

// atLeast compares a version with x.y.z.
func atLeast(major, minor, patch, x, y, z int) bool {
	if major != x {
		return major > x
	}
	if minor != y {
		return minor > y
	}
	return patch >= z
}

// nginxConf is a grpc_pass reverse proxy in front of one backend, tuned the
// way an operator would run it for gRPC, so the comparison is fair:
// upstream keepalive (nginx opens one upstream connection per concurrent
// call and would otherwise dial per call), request limits per connection
// raised (the default 1000 would make clients reconnect mid-run), and 1000
// streams per client connection like meshd's listener default.
func nginxConf(listen, backendAddr string, workers int, newHTTP2Syntax bool) string {
	listenLine := "listen " + listen + " http2;"
	http2 := ""
	if newHTTP2Syntax { // 1.25.1 moved http2 from the listen line to a directive
		listenLine = "listen " + listen + ";"
		http2 = "\n        http2 on;"
	}
	return fmt.Sprintf(`# written by meshbench; run with -p <this dir> -c <this file>
worker_processes %d;
worker_rlimit_nofile 20000;
pid nginx.pid;
error_log stderr warn;
events {
    worker_connections 16384;
}
http {
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    http2_max_concurrent_streams 1000;
    upstream backend {
        server %s;
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 600s;
    }
    server {
        %s%s
        location / {
            grpc_pass grpc://backend;
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;
        }
    }
}
`, workers, backendAddr, listenLine, http2)
}

// startNginx runs nginx with its own prefix and config under dir, never the
// system's. A missing binary makes the target unavailable.
func startNginx(ctx context.Context, bin, dir, backendAddr string, workers int) (*child, string, string, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, "", "", fmt.Errorf("%w: %s not found (apt-get install nginx-light, or -install-nginx)", errUnavailable, bin)
	}
	vout, err := exec.CommandContext(ctx, bin, "-v").CombinedOutput()
	if err != nil {
		return nil, "", "", fmt.Errorf("%w: %s -v: %v", errUnavailable, bin, err)
	}
	maj, min, pat, ok := nginxVersion(string(vout))
	if !ok {
		return nil, "", "", fmt.Errorf("%w: cannot parse %q", errUnavailable, strings.TrimSpace(string(vout)))
	}
	version := fmt.Sprintf("nginx %d.%d.%d", maj, min, pat)
	prefix := filepath.Join(dir, "nginx")
	if err := os.MkdirAll(filepath.Join(prefix, "tmp"), 0o755); err != nil {
		return nil, "", "", fmt.Errorf("meshbench: %w", err)
	}
	// Workers run as "nobody" when the master is root: they must be able
	// to reach the prefix.
	for _, d := range []string{dir, prefix, filepath.Join(prefix, "tmp")} {
		_ = os.Chmod(d, 0o755)
	}
	listen, err := freeAddr()
	if err != nil {
		return nil, "", "", err
	}
	conf := filepath.Join(prefix, "nginx.conf")
	newSyntax := atLeast(maj, min, pat, 1, 25, 1)
	if err := os.WriteFile(conf, []byte(nginxConf(listen, backendAddr, workers, newSyntax)), 0o644); err != nil {
		return nil, "", "", fmt.Errorf("meshbench: %w", err)
	}
	args := []string{"-p", prefix + "/", "-c", conf, "-g", "daemon off;"}
	if atLeast(maj, min, pat, 1, 19, 5) { // -e: the error log before the config is read
		args = append([]string{"-e", "stderr"}, args...)
	}
	if out, err := exec.CommandContext(ctx, bin, append([]string{"-t", "-q"}, args...)...).CombinedOutput(); err != nil {
		return nil, "", "", fmt.Errorf("%w: %s rejects the generated config: %s", errUnavailable, version, strings.TrimSpace(string(out)))
	}
	c, err := startChild("nginx", exec.Command(bin, args...))
	if err != nil {
		return nil, "", "", err
	}
	if err := waitTCP(ctx, listen, c, 15*time.Second); err != nil {
		stopNginx(c)
		return nil, "", "", fmt.Errorf("meshbench: nginx not listening: %w\n%s", err, c.log())
	}
	return c, listen, version, nil
}

// stopNginx stops the master (SIGTERM: fast shutdown, which stops the
// workers) and then SIGKILLs, by PID, any worker it left behind.
func stopNginx(c *child) {
	workers := proc.Children(c.pid())
	c.stop(syscall.SIGTERM, 5*time.Second)
	for _, w := range workers {
		if s, err := proc.ReadStat(w); err == nil && s.PPID != c.pid() && isNginx(w) {
			_ = syscall.Kill(w, syscall.SIGKILL)
		}
	}
}

// isNginx guards stopNginx against a recycled PID.
func isNginx(pid int) bool {
	cmd, err := proc.Cmdline(pid)
	return err == nil && strings.HasPrefix(cmd, "nginx")
}

// installNginx runs `apt-get install -y nginx-light` (only with -install-nginx).
func installNginx(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "nginx-light")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("meshbench: apt-get install nginx-light: %w\n%s", err, out)
	}
	return nil
}
