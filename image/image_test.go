package image

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// testImage is the tag this test builds (unless MESHD_IMAGE names an image
// already built, e.g. by `make image`). It is kept between runs so the
// next build of an unchanged binary is a layer-cache hit.
const (
	testImage   = "localhost/meshd:image-test"
	testVersion = "image-test"
	// proxyUID is the manifests' runAsUser and the image's USER.
	proxyUID = "1337:1337"
)

// TestImageServes builds the image and runs it as deploy/k8s runs meshd:
// read-only root file system, UID 1337, every capability dropped,
// no-new-privileges, the config mounted read-only at the path of the
// image's CMD. Networking is the host's, and meshd binds only 127.0.0.1
// addresses, so it reaches the test's backend and the test reaches it on
// loopback. A gRPC call goes through it; then podman stop sends SIGTERM
// and meshd must drain and exit 0.
func TestImageServes(t *testing.T) {
	t.Parallel()
	env := podmanEnv(t)
	image := os.Getenv("MESHD_IMAGE")
	if image == "" {
		image = buildImage(t, env)
	}
	size := podman(t, env, "image", "inspect", "--format", "{{.Size}}", image)
	if n, err := strconv.ParseInt(size, 10, 64); err == nil {
		t.Logf("image %s: %.1f MB (%d bytes)", image, float64(n)/1e6, n)
	}
	if os.Getenv("MESHD_IMAGE") == "" {
		want := map[string]string{
			"{{.Config.User}}":       proxyUID,
			"{{.Config.Entrypoint}}": "[/meshd]",
			`{{index .Config.Labels "org.opencontainers.image.version"}}`: testVersion,
			`{{index .Config.Labels "org.opencontainers.image.title"}}`:   "meshd",
		}
		for format, v := range want {
			if got := podman(t, env, "image", "inspect", "--format", format, image); got != v {
				t.Errorf("image %s: %s = %q, want %q", image, format, got, v)
			}
		}
	}

	be, err := backend.Start("be")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Stop)
	be.SetServing(true)

	// The config directory is mounted read-only; UID 1337 must be able to
	// read it.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	admin, listen := testkit.FreeAddr(t), testkit.FreeAddr(t)
	conf := fmt.Sprintf(`admin: {address: %s}
listeners: [{name: main, address: %s}]
routes: [{name: all, match: {prefix: /}, cluster: be}]
clusters: [{name: be, endpoints: [%s]}]
drain_timeout: 5s
`, admin, listen, be.Addr)
	if err := os.WriteFile(filepath.Join(dir, "meshd.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	name := fmt.Sprintf("meshd-image-test-%d", os.Getpid())
	// A container left by a killed earlier run of this process ID.
	_, _ = podmanErr(env, "rm", "--force", "--time", "0", name)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := containerLogs(env, name)
			t.Logf("podman logs %s:\n%s", name, out)
		}
		if out, err := podmanErr(env, "rm", "--force", "--time", "0", name); err != nil {
			t.Errorf("podman rm %s: %v\n%s", name, err, out)
		}
	})
	// No command: the image's CMD (run -config /etc/meshd/meshd.yaml).
	podman(t, env, "run", "--detach", "--name", name,
		"--read-only", "--user", proxyUID, "--cap-drop", "ALL",
		"--security-opt", "no-new-privileges",
		"--network", "host",
		"--volume", dir+":/etc/meshd:ro",
		image)

	hc := &http.Client{Timeout: 2 * time.Second}
	testkit.WaitFor(t, 60*time.Second, "meshd in the container to be ready", func() bool {
		resp, err := hc.Get("http://" + admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	cc, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testkit.WaitFor(t, 30*time.Second, "a call through the container", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		_, err := client.UnaryCall(cctx, &testpb.SimpleRequest{})
		return err == nil
	})
	if be.Calls() == 0 {
		t.Errorf("the backend saw no call")
	}

	// podman stop sends SIGTERM and waits; SIGKILL only after 30s, which
	// would show as exit code 137.
	podman(t, env, "stop", "--time", "30", name)
	if code := podman(t, env, "inspect", "--format", "{{.State.ExitCode}}", name); code != "0" {
		t.Errorf("meshd exited %s after SIGTERM, want 0", code)
	}
	logs, err := containerLogs(env, name)
	if err != nil {
		t.Fatalf("podman logs %s: %v\n%s", name, err, logs)
	}
	for _, want := range []string{`"msg":"draining"`, `"msg":"meshd stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("no %s line in the container's log:\n%s", want, logs)
		}
	}
}

// podmanEnv returns the environment podman runs with: CONTAINERS_CONF as
// `make test` sets it, or as scripts/install-podman.sh prints it. Without
// podman the test skips, except in CI, where the install script must have
// installed it.
func podmanEnv(t *testing.T) []string {
	t.Helper()
	if _, err := exec.LookPath("podman"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("podman not installed (CI=true): `make test` installs it with scripts/install-podman.sh: %v", err)
		}
		t.Skipf("podman not installed (scripts/install-podman.sh installs it): %v", err)
	}
	conf := os.Getenv("CONTAINERS_CONF")
	if conf == "" {
		out, err := exec.Command("../scripts/install-podman.sh").Output()
		if err != nil {
			t.Fatalf("scripts/install-podman.sh: %v", err)
		}
		conf = strings.TrimSpace(string(out))
	}
	return append(os.Environ(), "CONTAINERS_CONF="+conf)
}

// buildImage builds testImage with scripts/build-image.sh, as `make image`
// does, in a build context of its own, and removes the image the tag named
// before, if this build replaced it.
func buildImage(t *testing.T, env []string) string {
	t.Helper()
	old, _ := podmanErr(env, "image", "inspect", "--format", "{{.Id}}", testImage)
	cmd := exec.Command("../scripts/build-image.sh", testImage, testVersion)
	cmd.Env = append(env, "MESHD_IMAGE_CONTEXT="+t.TempDir())
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/build-image.sh: %v\n%s", err, out)
	}
	t.Logf("built %s in %v", testImage, time.Since(start).Round(time.Millisecond))
	if cur, _ := podmanErr(env, "image", "inspect", "--format", "{{.Id}}", testImage); old != "" && cur != old {
		_, _ = podmanErr(env, "rmi", old)
	}
	return testImage
}

// podman runs podman with args and returns its trimmed standard output,
// failing the test on an error.
func podman(t *testing.T, env []string, args ...string) string {
	t.Helper()
	out, err := podmanErr(env, args...)
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// containerLogs returns what the container wrote to stdout and stderr
// (podman logs writes each to its own).
func containerLogs(env []string, name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", "logs", name)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// podmanErr runs podman with args, bounded by a minute.
func podmanErr(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return strings.TrimSpace(stdout.String() + stderr.String()), err
	}
	return strings.TrimSpace(stdout.String()), nil
}
