package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/internal/testkit/proc"
)

// The chain targets run two real meshd processes, the two sidecars of
// issue 16's mesh: client → web (plaintext listener, as a workload's app
// dials its sidecar) → api → backend. They differ only in the hop between
// the sidecars: h2c for meshd-2hop, mesh mTLS for meshd-mtls (web's
// cluster has mesh_tls: {service: api}, api's listener mesh_tls: strict,
// both identity: files with leaves this harness issues, api's intentions
// allow web). So meshd-mtls against meshd-2hop is what mTLS costs, and
// meshd-2hop against meshd what the second sidecar costs.

// meshTrustDomain is the trust domain of the leaves the harness issues.
const meshTrustDomain = "meshbench.local"

func isChain(name string) bool {
	return name == meshd2Hop || name == meshdMTLS || name == meshdMTLSBase
}

// chainShape describes a chain target for the report.
func chainShape(name string) string {
	if name == meshdMTLS || name == meshdMTLSBase {
		return "web → mesh mTLS → api"
	}
	return "web → h2c → api"
}

// hop is the connection between a chain's two sidecars, as the churn phase
// dials it: api's listener, with web's identity for meshd-mtls.
type hop struct {
	addr        string
	creds       credentials.TransportCredentials
	server      *child // api's meshd (or nginx master): the server side, charged per connection
	withWorkers bool   // charge the server's children too (nginx's workers)
}

// pids are the hop's server-side processes.
func (h *hop) pids() []int {
	p := []int{h.server.pid()}
	if h.withWorkers {
		p = append(p, proc.Children(h.server.pid())...)
	}
	return p
}

// hopCreds are what the churn phase dials api's TLS listener with, as
// web's sidecar does: meshd's own client config, with web's identity,
// expecting api's SPIFFE ID. nginx's api side is served the same leaf.
func hopCreds(web meshFiles) (credentials.TransportCredentials, error) {
	src, err := identity.NewFiles(web.cert, web.key, web.ca, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, fmt.Errorf("meshbench: %w", err)
	}
	return credentials.NewTLS(src.ClientConfig("api")), nil
}

// meshFiles are one service's identity files, as mesh.identity: files
// reads them.
type meshFiles struct{ cert, key, ca string }

// writeMeshIdentity writes into dir a CA and, for each service, a SPIFFE
// leaf shaped like a Consul Connect leaf: ECDSA P-256, one URI SAN
// (spiffe://meshbench.local/ns/default/dc/dc1/svc/<service>), no DNS names,
// valid for server and client auth, for a day. (internal/testkit's CA does
// the same for tests but takes a testing.TB, which would link package
// testing into the harness.)
func writeMeshIdentity(dir string, services ...string) (map[string]meshFiles, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("meshbench: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("meshbench: CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshbench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:     []*url.URL{{Scheme: "spiffe", Host: meshTrustDomain}},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("meshbench: CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("meshbench: CA: %w", err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := writePEM(caFile, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	out := map[string]meshFiles{}
	for i, svc := range services {
		id := identity.ID{TrustDomain: meshTrustDomain, Namespace: "default", Datacenter: "dc1", Service: svc}
		u, err := url.Parse(id.String())
		if err != nil {
			return nil, fmt.Errorf("meshbench: %w", err)
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("meshbench: leaf key: %w", err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i) + 2), Subject: pkix.Name{CommonName: svc},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			URIs:        []*url.URL{u},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return nil, fmt.Errorf("meshbench: leaf %s: %w", svc, err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("meshbench: leaf key %s: %w", svc, err)
		}
		f := meshFiles{cert: filepath.Join(dir, svc+".pem"), key: filepath.Join(dir, svc+"-key.pem"), ca: caFile}
		if err := writePEM(f.cert, "CERTIFICATE", der); err != nil {
			return nil, err
		}
		if err := writePEM(f.key, "EC PRIVATE KEY", kder); err != nil {
			return nil, err
		}
		out[svc] = f
	}
	return out, nil
}

func writePEM(file, typ string, der []byte) error {
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	return nil
}

// meshSection is a mesh: section for identity files f; allow lists the
// sources the local intentions allow (default_action deny).
func meshSection(svc string, f meshFiles, allow ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mesh:\n  service: %s\n  identity: files\n  default_action: deny\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n", svc, f.cert, f.key, f.ca)
	if len(allow) > 0 {
		b.WriteString("  intentions:\n")
		for _, s := range allow {
			fmt.Fprintf(&b, "    - {source: %s, action: allow}\n", s)
		}
	}
	return b.String()
}

// chainConfigs are the two sidecars' configs. files nil: the hop is h2c;
// otherwise it is mesh mTLS with files["web"] and files["api"].
func chainConfigs(files map[string]meshFiles, backendAddr, apiAdmin, apiListen, webAdmin, webListen string) (api, web string) {
	apiTLS, webTLS, apiMesh, webMesh := "", "", "", ""
	if files != nil {
		apiTLS, webTLS = ", mesh_tls: strict", "\n    mesh_tls: {service: api}"
		apiMesh, webMesh = meshSection("api", files["api"], "web"), meshSection("web", files["web"])
	}
	api = fmt.Sprintf(`# written by meshbench: the chain's api sidecar
admin: {address: %s}
listeners: [{name: inbound, address: %s%s}]
drain_timeout: 2s
routes:
  - name: local
    match: {prefix: /}
    cluster: local
clusters:
  - name: local
    endpoints: [%s]
%s`, apiAdmin, apiListen, apiTLS, backendAddr, apiMesh)
	web = fmt.Sprintf(`# written by meshbench: the chain's web sidecar
admin: {address: %s}
listeners: [{name: outbound, address: %s}]
drain_timeout: 2s
routes:
  - name: to-api
    match: {prefix: /}
    cluster: api
clusters:
  - name: api
    endpoints: [%s]%s
%s`, webAdmin, webListen, apiListen, webTLS, webMesh)
	return api, web
}

// startChain starts t's two sidecars, api first, and records them in
// t.procs as they start (so that stopTargets stops them even if the second
// fails), web's listener as t.addr and the hop for the churn phase.
func startChain(ctx context.Context, t *target, bin, dir, backendAddr string) error {
	dir = filepath.Join(dir, t.name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	var files map[string]meshFiles
	creds := insecure.NewCredentials()
	if t.name == meshdMTLS || t.name == meshdMTLSBase {
		var err error
		if files, err = writeMeshIdentity(filepath.Join(dir, "certs"), "web", "api"); err != nil {
			return err
		}
		if creds, err = hopCreds(files["web"]); err != nil {
			return err
		}
	}
	var addrs [4]string
	for i := range addrs {
		a, err := freeAddr()
		if err != nil {
			return err
		}
		addrs[i] = a
	}
	apiAdmin, apiListen, webAdmin, webListen := addrs[0], addrs[1], addrs[2], addrs[3]
	apiConf, webConf := chainConfigs(files, backendAddr, apiAdmin, apiListen, webAdmin, webListen)
	api, err := runMeshd(ctx, bin, t.name+" api", filepath.Join(dir, "api.yaml"), apiAdmin, apiConf)
	if err != nil {
		return err
	}
	t.procs = append(t.procs, api)
	web, err := runMeshd(ctx, bin, t.name+" web", filepath.Join(dir, "web.yaml"), webAdmin, webConf)
	if err != nil {
		return err
	}
	t.procs = append(t.procs, web)
	t.addr, t.admin = webListen, webAdmin
	t.hop = &hop{addr: apiListen, creds: creds, server: api}
	return nil
}

// churnOp is one call on a connection of its own to addr: dial, handshake
// (TLS with creds, or none), the call, close. It ignores the stub
// closedLoop hands it.
func churnOp(addr string, creds credentials.TransportCredentials, req *testpb.SimpleRequest) op {
	return func(ctx context.Context, _ testpb.TestServiceClient) (int64, error) {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return 0, fmt.Errorf("meshbench: dial %s: %w", addr, err)
		}
		defer cc.Close()
		if _, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, req); err != nil {
			return 0, err
		}
		return 1, nil
	}
}

// measureChurn is the chains' connection-churn phase: new connections per
// second straight to the hop's server side (api's listener), each carrying
// one call, and api's CPU per connection. Through web the hop would show
// no churn at all (web pools its upstream connections), so the harness
// dials api itself, as web does: h2c for meshd-2hop, mTLS with web's
// identity for meshd-mtls, where the handshake dominates. Only api's CPU
// is charged: the client side of the handshake runs in the harness.
func (h *harness) measureChurn(ctx context.Context, t *target, r int) (string, error) {
	p := h.p
	pids := t.hop.pids()
	c0, err := proc.CPU(pids...)
	if err != nil {
		return "", fmt.Errorf("meshbench: %s: %w%s", t.name, err, procLog(t))
	}
	res := closedLoop(ctx, []testpb.TestServiceClient{nil}, p.ChurnConc, p.ChurnDur, p.ChurnMaxConns, churnOp(t.hop.addr, t.hop.creds, h.unary))
	c1, err := proc.CPU(pids...)
	if err != nil {
		return "", fmt.Errorf("meshbench: %s: %w%s", t.name, err, procLog(t))
	}
	h.failed(t.name, res.errs, res.firstErr)
	if res.ok() == 0 {
		return "no hop connection succeeded", nil
	}
	perSec := float64(res.ok()) / res.elapsed.Seconds()
	msPer := (c1 - c0).Seconds() * 1e3 / float64(res.ok())
	h.res.set(t.name, "hop_conns_per_s", r, perSec)
	h.res.set(t.name, "hop_cpu_ms_per_conn", r, msPer)
	return fmt.Sprintf("hop churn %.0f conns/s, api %.3f CPU-ms/conn", perSec, msPer), nil
}

// nginxChainIdleSkip is why the idle-streams phase skips nginx-mtls: on
// nginx 1.22.1 here, response headers the backend sends before its first
// message do not reach the client through the TLS chain within the phase's
// open timeout (with 10 streams, none arrived in 10 s; every stream had
// its upstream connections up to the backend, and nothing was in either
// error log), while they do through the plaintext nginx target. An idle
// stream counts as open only once its headers came back, so the phase
// would only time out. Where they are held (api's TLS listener buffering
// them, at a guess) is not found yet.
const nginxChainIdleSkip = "response headers sent before the first message do not come back through the nginx TLS chain (not yet understood), so idle streams never show as open"

// nginxChainShape describes the nginx-mtls target for the report.
const nginxChainShape = "web → grpc_pass grpcs:// with web's client certificate → api (ssl_verify_client on)"

// startNginxChain starts nginx-mtls: the same two-sidecar chain as
// meshd-mtls, with nginx as both sidecars (its processes with workers
// each), api first, recorded in t.procs as they start. It issues the same
// kind of CA and leaves as meshd-mtls (writeMeshIdentity): api's listener
// serves api's leaf and requires a client certificate the CA signed; web
// dials it with grpcs://, its own leaf as client certificate, verifying
// api's against the CA and the name "api" (the leaf's CN).
func startNginxChain(ctx context.Context, t *target, bin, root, backendAddr string, workers int) (string, error) {
	dir := filepath.Join(root, t.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("meshbench: %w", err)
	}
	files, err := writeMeshIdentity(filepath.Join(dir, "certs"), "web", "api")
	if err != nil {
		return "", err
	}
	creds, err := hopCreds(files["web"])
	if err != nil {
		return "", err
	}
	apiListen, err := freeAddr()
	if err != nil {
		return "", err
	}
	webListen, err := freeAddr()
	if err != nil {
		return "", err
	}
	apiFiles, webFiles := files["api"], files["web"]
	t.withWorkers = true
	api, version, err := runNginx(ctx, bin, t.name+" api", root, filepath.Join(dir, "api"),
		nginxSite{listen: apiListen, upstream: backendAddr, serverTLS: &apiFiles}, workers)
	if err != nil {
		return "", err
	}
	t.procs = append(t.procs, api)
	web, _, err := runNginx(ctx, bin, t.name+" web", root, filepath.Join(dir, "web"),
		nginxSite{listen: webListen, upstream: apiListen, upstreamTLS: &webFiles, upstreamName: "api"}, workers)
	if err != nil {
		return "", err
	}
	t.procs = append(t.procs, web)
	t.addr = webListen
	t.hop = &hop{addr: apiListen, creds: creds, server: api, withWorkers: true}
	return version, nil
}
