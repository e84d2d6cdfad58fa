package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshd/meshd/internal/testkit"
)

// chromium finds Debian's chromium (scripts/install-chromium.sh, which
// `make test` runs, installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not installed (scripts/install-chromium.sh installs it)")
	return ""
}

// runChromium runs headless chromium with args, the page's URL last.
// --virtual-time-budget lets the page's fetches and stream finish before
// the DOM is dumped or the screenshot taken (virtual time waits for
// network activity).
func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=15000"}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// TestBrowserGRPCWeb: examples/grpc-web, served by the test from another
// origin than meshd's (so CORS preflights really happen), loaded in
// headless Chromium: the page's unary, server-streaming and error calls
// go through meshd to a backend, and the rendered results are checked.
// Twice: over cleartext HTTP/1.1, and over TLS, where Chromium picks h2
// (gRPC-Web over HTTP/2, through the engine and its translator), which
// Chromium's own net log confirms.
func TestBrowserGRPCWeb(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	page := httptest.NewServer(http.FileServer(http.Dir("../examples/grpc-web")))
	defer page.Close()
	ca := testkit.NewCA(t, "browser")
	certPEM, keyPEM, _ := ca.Issue(t, "meshd", "localhost", "127.0.0.1")
	tests := []struct {
		name  string
		tls   bool
		proto string // what Chromium's net log must show for meshd's connection
	}{
		{"HTTP/1.1", false, ""},
		{"TLS h2", true, "h2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Not parallel: two Chromiums at once on a busy 2-core machine
			// only make each slower.
			dir := t.TempDir()
			bs := startBackends(t, "browser", 1)
			extra, scheme := "", "http"
			var args []string
			if tt.tls {
				certFile, keyFile := writeFile(t, dir, "tls.crt", certPEM), writeFile(t, dir, "tls.key", keyPEM)
				extra, scheme = fmt.Sprintf("    tls: {cert_file: %s, key_file: %s}\n", certFile, keyFile), "https"
				// The test's CA is not in the test browser's trust store;
				// this browser (a throwaway profile, loopback only) is told
				// to accept meshd's certificate anyway. Test only: never
				// a way to run a browser.
				args = append(args, "--ignore-certificate-errors", "--log-net-log="+filepath.Join(dir, "netlog.json"))
			}
			m := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - name: main
    address: 127.0.0.1:0
    grpc_web: {allow_origins: [%q]}
%sdrain_timeout: 5s
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters: [{name: backends, endpoints: %s}]
`, page.URL, extra, addrs(bs)))
			var dialOpts []grpc.DialOption
			if tt.tls {
				dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})))
			}
			waitServing(t, dial(t, m.Addr, dialOpts...))

			url := page.URL + "/index.html?meshd=" + scheme + "://" + m.Addr
			start := time.Now()
			dom := string(runChromium(t, bin, append(args, "--dump-dom", url)...))
			elapsed := time.Since(start)
			text := func(id string) string {
				re := regexp.MustCompile(`id="` + id + `"[^>]*>([^<]*)<`)
				if mm := re.FindStringSubmatch(dom); mm != nil {
					return mm[1]
				}
				return ""
			}
			if !strings.Contains(dom, `id="done">done<`) {
				t.Fatalf("page did not finish:\n%s", dom)
			}
			if got := text("unary"); got != `status 0: echoed "hello from the browser" by browser-0` {
				t.Errorf("unary: %q", got)
			}
			if got := text("stream-status"); got != "status 0: 4 messages" {
				t.Errorf("server streaming: %q", got)
			}
			for i := 1; i <= 4; i++ {
				if !strings.Contains(dom, fmt.Sprintf("<li>message of %d bytes</li>", i)) {
					t.Errorf("stream message %d not rendered", i)
				}
			}
			if got := text("error"); got != "status 5: not here" {
				t.Errorf("error status: %q", got)
			}
			mt := scrapeMetrics(t, m.Admin)
			if v := mt.Value(t, "meshd_grpc_web_requests_total", map[string]string{"route": "all", "grpc_code": "OK"}); v != 2 {
				t.Errorf("meshd_grpc_web_requests_total{OK} = %v, want 2", v)
			}
			if tt.proto != "" {
				netlog, err := os.ReadFile(filepath.Join(dir, "netlog.json"))
				if err != nil {
					t.Fatalf("chromium net log: %v", err)
				}
				if !bytes.Contains(netlog, []byte(m.Addr)) {
					t.Errorf("net log never mentions meshd at %s", m.Addr)
				}
				if !negotiated(netlog, tt.proto) {
					t.Errorf("chromium did not negotiate %s with meshd", tt.proto)
				}
			}
			t.Logf("browser page over %s: 3 calls rendered in %v (chromium start included)", tt.name, elapsed)

			if tt.tls {
				return // one screenshot is enough
			}
			shot := filepath.Join(t.TempDir(), "grpc-web.png")
			runChromium(t, bin, "--screenshot="+shot, "--window-size=900,700", url)
			if fi, err := os.Stat(shot); err != nil || fi.Size() == 0 {
				t.Errorf("screenshot: %v", err)
			} else {
				t.Logf("screenshot: %s (%d bytes)", shot, fi.Size())
			}
		})
	}
}

// negotiated reports whether Chromium's net log shows an ALPN protocol
// proto negotiated on some connection.
func negotiated(netlog []byte, proto string) bool {
	return bytes.Contains(netlog, []byte(`"next_proto":"`+proto+`"`)) ||
		bytes.Contains(netlog, []byte(`"negotiated_protocol":"`+proto+`"`))
}
