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

// nginxSite is what differs between the nginx processes the harness runs:
// the nginx target is one plaintext site; the nginx-mtls chain is two, web
// (plaintext listener, grpc_pass grpcs:// with web's client certificate)
// and api (TLS listener requiring a client certificate from the mesh CA,
// grpc_pass grpc:// to the backend).
type nginxSite struct {
	listen, upstream string
	serverTLS        *meshFiles // api: TLS on the listener, client certificates required
	upstreamTLS      *meshFiles // web: grpcs:// to the upstream with this client certificate
	upstreamName     string     // web: the name the upstream's certificate must carry (its CN)
}

// nginxConf is a grpc_pass reverse proxy in front of one backend, tuned the
// way an operator would run it for gRPC, so the comparison is fair:
// upstream keepalive (nginx opens one upstream connection per concurrent
// call and would otherwise dial per call), request limits per connection
// raised (the default 1000 would make clients reconnect mid-run), and 1000
// streams per client connection like meshd's listener default.
func nginxConf(listen, backendAddr string, workers int, newHTTP2Syntax bool) string {
	return nginxSiteConf(nginxSite{listen: listen, upstream: backendAddr}, workers, newHTTP2Syntax)
}

// nginxSiteConf is nginxConf for any site: with serverTLS the listener
// speaks TLS and requires a client certificate the CA signed
// (ssl_verify_client on); with upstreamTLS grpc_pass is grpcs:// with that
// client certificate, verifying the upstream's certificate against the CA
// and the name upstreamName. The leaves carry no DNS names (they are
// SPIFFE leaves), so OpenSSL's host check falls back to their CN.
func nginxSiteConf(s nginxSite, workers int, newHTTP2Syntax bool) string {
	ssl := ""
	if s.serverTLS != nil {
		ssl = " ssl"
	}
	listenLine := "listen " + s.listen + ssl + " http2;"
	http2 := ""
	if newHTTP2Syntax { // 1.25.1 moved http2 from the listen line to a directive
		listenLine = "listen " + s.listen + ssl + ";"
		http2 = "\n        http2 on;"
	}
	if f := s.serverTLS; f != nil {
		http2 += fmt.Sprintf(`
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_client_certificate %s;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:meshbench:1m;`, f.cert, f.key, f.ca)
	}
	pass := "grpc_pass grpc://backend;"
	if f := s.upstreamTLS; f != nil {
		pass = fmt.Sprintf(`grpc_pass grpcs://backend;
            grpc_ssl_certificate %s;
            grpc_ssl_certificate_key %s;
            grpc_ssl_trusted_certificate %s;
            grpc_ssl_verify on;
            grpc_ssl_name %s;
            grpc_ssl_protocols TLSv1.3;
            grpc_ssl_session_reuse on;`, f.cert, f.key, f.ca, s.upstreamName)
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
            %s
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;
        }
    }
}
`, workers, s.upstream, listenLine, http2, pass)
}

// nginxBinVersion checks that bin exists and parses its version; a missing
// or unreadable binary makes the target unavailable.
func nginxBinVersion(ctx context.Context, bin string) (version string, newSyntax, errorLogFlag bool, err error) {
	if _, err := os.Stat(bin); err != nil {
		return "", false, false, fmt.Errorf("%w: %s not found (apt-get install nginx-light, or -install-nginx)", errUnavailable, bin)
	}
	vout, err := exec.CommandContext(ctx, bin, "-v").CombinedOutput()
	if err != nil {
		return "", false, false, fmt.Errorf("%w: %s -v: %v", errUnavailable, bin, err)
	}
	maj, min, pat, ok := nginxVersion(string(vout))
	if !ok {
		return "", false, false, fmt.Errorf("%w: cannot parse %q", errUnavailable, strings.TrimSpace(string(vout)))
	}
	return fmt.Sprintf("nginx %d.%d.%d", maj, min, pat), atLeast(maj, min, pat, 1, 25, 1), atLeast(maj, min, pat, 1, 19, 5), nil
}

// startNginx runs nginx with its own prefix and config under dir, never the
// system's. A missing binary makes the target unavailable.
func startNginx(ctx context.Context, bin, dir, backendAddr string, workers int) (*child, string, string, error) {
	listen, err := freeAddr()
	if err != nil {
		return nil, "", "", err
	}
	c, version, err := runNginx(ctx, bin, "nginx", dir, filepath.Join(dir, "nginx"), nginxSite{listen: listen, upstream: backendAddr}, workers)
	return c, listen, version, err
}

// runNginx writes site's config under prefix (a directory under root, the
// harness's temp dir) and runs nginx on it as the
// child name until its listener accepts connections. A config the binary
// rejects is errUnavailable (an nginx built without a module it needs).
func runNginx(ctx context.Context, bin, name, root, prefix string, site nginxSite, workers int) (*child, string, error) {
	version, newSyntax, errorLogFlag, err := nginxBinVersion(ctx, bin)
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(filepath.Join(prefix, "tmp"), 0o755); err != nil {
		return nil, "", fmt.Errorf("meshbench: %w", err)
	}
	// Workers run as "nobody" when the master is root: they must be able
	// to reach the prefix, from the harness's temp dir root down. (The
	// certificates stay 0600: the master reads them.)
	_ = os.Chmod(root, 0o755)
	if rel, err := filepath.Rel(root, prefix); err == nil {
		d := root
		for part := range strings.SplitSeq(rel, string(filepath.Separator)) {
			d = filepath.Join(d, part)
			_ = os.Chmod(d, 0o755)
		}
	}
	_ = os.Chmod(filepath.Join(prefix, "tmp"), 0o755)
	conf := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxSiteConf(site, workers, newSyntax)), 0o644); err != nil {
		return nil, "", fmt.Errorf("meshbench: %w", err)
	}
	args := []string{"-p", prefix + "/", "-c", conf, "-g", "daemon off;"}
	if errorLogFlag { // -e: the error log before the config is read
		args = append([]string{"-e", "stderr"}, args...)
	}
	if out, err := exec.CommandContext(ctx, bin, append([]string{"-t", "-q"}, args...)...).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("%w: %s rejects the generated config for %s: %s", errUnavailable, version, name, strings.TrimSpace(string(out)))
	}
	c, err := startChild(name, exec.Command(bin, args...))
	if err != nil {
		return nil, "", err
	}
	if err := waitTCP(ctx, site.listen, c, 15*time.Second); err != nil {
		stopNginx(c)
		return nil, "", fmt.Errorf("meshbench: %s not listening: %w\n%s", name, err, c.log())
	}
	return c, version, nil
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
