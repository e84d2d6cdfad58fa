package kubetest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// Defaults of scripts/install-kube.sh, which AssetsDir must follow.
const (
	defaultVersion = "v1.37.2"
	cacheSubdir    = "meshd"
)

// AssetsDir is the folder holding kube-apiserver and etcd:
// $MESHD_KUBE_ASSETS if set, else where scripts/install-kube.sh puts them
// ($MESHD_CACHE/kube-$MESHD_KUBE_VERSION, the cache defaulting to
// ${XDG_CACHE_HOME:-$HOME/.cache}/meshd).
func AssetsDir() string {
	if d := os.Getenv("MESHD_KUBE_ASSETS"); d != "" {
		return d
	}
	version := os.Getenv("MESHD_KUBE_VERSION")
	if version == "" {
		version = defaultVersion
	}
	cache := os.Getenv("MESHD_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, cacheSubdir)
	}
	return filepath.Join(cache, "kube-"+version)
}

// Assets returns AssetsDir after checking both binaries are there. When
// they are not, the test is skipped with the command that installs them,
// or fails if CI=true: CI must never pass by skipping.
func Assets(tb testing.TB) string {
	tb.Helper()
	dir := AssetsDir()
	for _, b := range []string{"kube-apiserver", "etcd"} {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			continue
		}
		msg := fmt.Sprintf("kubetest: no %s in %s: run `make kube` (scripts/install-kube.sh) once to build it there, or set MESHD_KUBE_ASSETS", b, dir)
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	return dir
}

// Env is a running API server with the GRPCRoute CRD.
type Env struct {
	env *envtest.Environment
	// Config reaches the API server as its administrator.
	Config *rest.Config
	// Kube and Gateway are typed clients on Config (for the tests' own
	// writes), Dynamic the dynamic client meshd's code takes.
	Kube    kubernetes.Interface
	Gateway gwclient.Interface
	Dynamic dynamic.Interface
	// Kubeconfig is a kubeconfig file for Config (what meshd's
	// kubernetes.kubeconfig names).
	Kubeconfig string
}

// Start runs an API server and etcd for the life of tb (or until Stop).
func Start(tb testing.TB) *Env {
	tb.Helper()
	e, err := Launch(Assets(tb))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(e.Stop)
	return e
}

// Launch runs an API server and etcd from the binaries in assets until
// Stop; for TestMain, to share one between tests (they use distinct
// namespaces).
func Launch(assets string) (*Env, error) {
	_, file, _, _ := runtime.Caller(0)
	crd := filepath.Join(filepath.Dir(file), "testdata")
	certs, err := os.MkdirTemp("", "kubetest-certs-")
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{crd},
		ErrorIfCRDPathMissing: true,
		// Shared CI machines are slow to start an API server.
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// A fixed certificate folder lets RestartAPIServer keep the serving
	// certificate, so clients built before a restart still trust it.
	env.ControlPlane.GetAPIServer().CertDir = certs
	cfg, err := env.Start()
	if err != nil {
		os.RemoveAll(certs)
		return nil, fmt.Errorf("kubetest: start API server: %w", err)
	}
	e := &Env{env: env, Config: cfg}
	if e.Kube, err = kubernetes.NewForConfig(cfg); err == nil {
		e.Gateway, err = gwclient.NewForConfig(cfg)
	}
	if err == nil {
		e.Dynamic, err = dynamic.NewForConfig(cfg)
	}
	if err == nil {
		e.Kubeconfig, err = writeKubeconfig(cfg, certs)
	}
	if err != nil {
		e.Stop()
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	return e, nil
}

// Stop stops the API server and etcd and removes their files.
func (e *Env) Stop() {
	if e.env == nil {
		return
	}
	_ = e.env.Stop()
	certs := e.env.ControlPlane.GetAPIServer().CertDir
	e.env = nil
	if strings.Contains(certs, "kubetest-certs-") {
		os.RemoveAll(certs)
	}
}

// StopAPIServer stops the API server process (etcd, and so the data,
// stay): SIGTERM, then SIGKILL if it has not exited within a few seconds
// (with clients watching, its graceful shutdown takes longer than a test
// should wait; a killed API server is as gone as a stopped one). It
// returns once the server's port refuses connections.
func (e *Env) StopAPIServer() error {
	as := e.env.ControlPlane.GetAPIServer()
	as.StopTimeout = 3 * time.Second
	err := as.Stop()
	if err != nil && !strings.Contains(err.Error(), "timeout waiting for process") {
		return err
	}
	addr := net.JoinHostPort(as.SecureServing.Address, as.SecureServing.Port)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		// Poll: the killed process's port closes when the kernel reaps it.
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("kubetest: API server still listening on %s after stop", addr)
}

// StartAPIServer starts it again on the same address with the same
// certificates.
func (e *Env) StartAPIServer() error {
	return e.env.ControlPlane.GetAPIServer().Start()
}

// writeKubeconfig writes cfg as a kubeconfig file into dir.
func writeKubeconfig(cfg *rest.Config, dir string) (string, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", err
	}
	return path, nil
}
