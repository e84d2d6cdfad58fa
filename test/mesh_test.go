package test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// meshPair is two meshd sidecars on one Consul agent: web's outbound
// listener (plaintext, for web's app) dials api's mesh listeners with
// web's mesh identity; api's meshd forwards to api's app (a backend).
type meshPair struct {
	agent *consultest.Agent
	web   *mesh
	api   *mesh
	// apiStrict and apiPermissive are api's mesh listeners.
	apiStrict, apiPermissive string
	backend                  *backend.Backend
	webClient                testpb.TestServiceClient
	accessLog                string // api's
}

// startMeshPair starts api's app and both sidecars. The intentions are
// the caller's to write (default deny: nothing passes until then).
func startMeshPair(t *testing.T, agent *consultest.Agent) *meshPair {
	t.Helper()
	p := &meshPair{agent: agent}
	p.backend = startBackends(t, "api-app", 1)[0]
	p.accessLog = filepath.Join(t.TempDir(), "api-access.log")
	p.api = startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
access_log: {enabled: true, path: %s}
consul: {address: %s}
mesh: {service: api}
drain_timeout: 2s
listeners:
  - {name: strict, address: 127.0.0.1:0, mesh_tls: strict}
  - {name: permissive, address: 127.0.0.2:0, mesh_tls: permissive}
routes:
  - {name: local, match: {prefix: /}, cluster: local}
clusters:
  - {name: local, endpoints: [%s]}
`, p.accessLog, agent.Addr, p.backend.Addr)).mesh
	addrs := p.api.srv.ListenerAddrs()
	p.apiStrict, p.apiPermissive = addrs["strict"], addrs["permissive"]
	p.web = startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
consul: {address: %s}
mesh: {service: web}
drain_timeout: 2s
listeners:
  - {name: outbound, address: 127.0.0.1:0}
routes:
  - {name: to-api, match: {prefix: /}, cluster: api}
clusters:
  - name: api
    endpoints: [%s]
    mesh_tls: {service: api}
    outlier: {consecutive_failures: 2}
`, agent.Addr, p.apiStrict)).mesh
	p.webClient = testpb.NewTestServiceClient(dial(t, p.web.Addr))
	for _, m := range []*mesh{p.api, p.web} {
		testkit.WaitFor(t, 20*time.Second, "meshd ready (identity and intentions)", func() bool {
			code, _ := adminGet(t, m.Admin, "/ready")
			return code == 200
		})
	}
	return p
}

// setIntentions replaces the intentions toward dest (L7 ones need the
// protocol set first, which setProtocol does).
func setIntentions(t testing.TB, a *consultest.Agent, dest string, sources ...*api.SourceIntention) {
	t.Helper()
	_, _, err := a.Client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: dest, Sources: sources}, nil)
	if err != nil {
		t.Fatalf("write intentions: %v", err)
	}
}

func setProtocol(t testing.TB, a *consultest.Agent, svc, proto string) {
	t.Helper()
	if _, _, err := a.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: svc, Protocol: proto}, nil); err != nil {
		t.Fatalf("service-defaults: %v", err)
	}
}

func l4(src string, a api.IntentionAction) *api.SourceIntention {
	return &api.SourceIntention{Name: src, Action: a}
}

func codeOf(err error) codes.Code { return status.Code(err) }

func unary(c testpb.TestServiceClient, md ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
	return err
}

func emptyCallMD(c testpb.TestServiceClient, md ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	_, err := c.EmptyCall(ctx, &testpb.Empty{})
	return err
}

// waitCode waits until call returns want and returns how long that took.
func waitCode(t testing.TB, what string, want codes.Code, call func() error) time.Duration {
	t.Helper()
	var last error
	d := testkit.WaitFor(t, 10*time.Second, what, func() bool {
		last = call()
		return codeOf(last) == want
	})
	if codeOf(last) != want {
		t.Fatalf("%s: %v", what, last)
	}
	return d
}

// leafClient dials addr with a mesh leaf issued by the agent's CA for svc
// (as a sidecar of svc would present), trusting the agent's roots.
func leafClient(t testing.TB, a *consultest.Agent, addr, svc string) testpb.TestServiceClient {
	t.Helper()
	leaf, _, err := a.Client.Agent().ConnectCALeaf(svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	return testpb.NewTestServiceClient(meshTLSDial(t, addr, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: rootPool(t, a)}))
}

func rootPool(t testing.TB, a *consultest.Agent) *x509.CertPool {
	t.Helper()
	roots, _, err := a.Client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots.Roots {
		pool.AppendCertsFromPEM([]byte(r.RootCertPEM))
	}
	return pool
}

// meshTLSDial dials with cfg; a mesh leaf has no DNS names, so the server's
// name is not checked (its chain still is, by VerifyConnection).
func meshTLSDial(t testing.TB, addr string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	roots := cfg.RootCAs
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if roots == nil {
			return nil
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
		return err
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestMeshMTLS: two sidecars talk mTLS with Consul Connect identities, and
// intentions (L4 and L7, written to a real agent) decide each call.
func TestMeshMTLS(t *testing.T) {
	agent := consultest.Start(t)
	p := startMeshPair(t, agent)
	setIntentions(t, agent, "api", l4("web", api.IntentionActionAllow), l4("*", api.IntentionActionDeny))
	waitCode(t, "web → api allowed", codes.OK, func() error { return unary(p.webClient) })
	if n := p.backend.Calls(); n == 0 {
		t.Fatal("the backend saw no call")
	}

	t.Run("handshake refused on the strict listener", func(t *testing.T) {
		ca := testkit.NewCA(t, "rogue")
		other := func(uri string) tls.Certificate {
			c, k, _ := ca.IssueSPIFFE(t, uri)
			pair, err := tls.X509KeyPair(c, k)
			if err != nil {
				t.Fatal(err)
			}
			return pair
		}
		self := testkit.NewCA(t, "self").KeyPair(t, "web")
		for _, tc := range []struct {
			name string
			cc   *grpc.ClientConn
		}{
			{"plaintext", dial(t, p.apiStrict)},
			{"no client certificate", meshTLSDial(t, p.apiStrict, &tls.Config{})},
			{"self-signed", meshTLSDial(t, p.apiStrict, &tls.Config{Certificates: []tls.Certificate{self}})},
			{"another trust domain", meshTLSDial(t, p.apiStrict, &tls.Config{Certificates: []tls.Certificate{other("spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web")}})},
		} {
			err := unary(testpb.NewTestServiceClient(tc.cc))
			if codeOf(err) != codes.Unavailable {
				t.Errorf("%s: %v, want a failed connection (UNAVAILABLE)", tc.name, err)
			}
		}
		m := scrapeMetrics(t, p.api.Admin)
		if v := m.Value(t, "meshd_mesh_handshake_failures_total", map[string]string{"listener": "strict"}); v < 3 {
			t.Errorf("handshake failures = %v, want at least 3 (the TLS attempts)", v)
		}
		// The listener still serves its mesh peers.
		if err := unary(p.webClient); err != nil {
			t.Fatalf("after the refused handshakes: %v", err)
		}
	})

	t.Run("permissive takes plaintext as unauthenticated", func(t *testing.T) {
		plain := testpb.NewTestServiceClient(dial(t, p.apiPermissive))
		err := unary(plain)
		if codeOf(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "unauthenticated") {
			t.Fatalf("plaintext with * denied: %v, want PERMISSION_DENIED naming an unauthenticated caller", err)
		}
		// A mesh identity still works on the permissive listener.
		if err := unary(leafClient(t, agent, p.apiPermissive, "web")); err != nil {
			t.Fatalf("web's leaf on the permissive listener: %v", err)
		}
		setIntentions(t, agent, "api", l4("web", api.IntentionActionAllow), l4("*", api.IntentionActionAllow))
		waitCode(t, "plaintext with * allowed", codes.OK, func() error { return unary(plain) })
		setIntentions(t, agent, "api", l4("web", api.IntentionActionAllow), l4("*", api.IntentionActionDeny))
		waitCode(t, "plaintext denied again", codes.PermissionDenied, func() error { return unary(plain) })
	})

	t.Run("billing is denied", func(t *testing.T) {
		err := unary(leafClient(t, agent, p.apiStrict, "billing"))
		st := status.Convert(err)
		if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "/svc/billing") || !strings.Contains(st.Message(), "api") {
			t.Fatalf("billing: %v, want PERMISSION_DENIED naming billing and api", err)
		}
		m := scrapeMetrics(t, p.api.Admin)
		if v := m.Value(t, "meshd_authz_denied_total", map[string]string{"source": "billing"}); v < 1 {
			t.Errorf("billing denials = %v", v)
		}
		testkit.WaitFor(t, 5*time.Second, "the denial in api's access log with the caller's identity", func() bool {
			b, _ := os.ReadFile(p.accessLog)
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, `"code":"PERMISSION_DENIED"`) && strings.Contains(line, `"peer_identity":"spiffe://`) && strings.Contains(line, "/svc/billing") {
					return true
				}
			}
			return false
		})
	})

	t.Run("deny applies on the open connection", func(t *testing.T) {
		accepted := func() float64 {
			return scrapeMetrics(t, p.api.Admin).Value(t, "meshd_listener_connections_accepted_total", map[string]string{"listener": "strict"})
		}
		if err := unary(p.webClient); err != nil {
			t.Fatal(err)
		}
		before := accepted()
		setIntentions(t, agent, "api", l4("web", api.IntentionActionDeny), l4("*", api.IntentionActionDeny))
		took := waitCode(t, "web denied", codes.PermissionDenied, func() error { return unary(p.webClient) })
		t.Logf("the deny reached the next call in %v", took)
		if after := accepted(); after != before {
			t.Errorf("api's strict listener accepted %v connections during the change, want none (the open one is reused)", after-before)
		}
		// Denials are not failures of the endpoint: health checks pass
		// (exempt from authorization) and nothing is ejected.
		for range 5 {
			if err := unary(p.webClient); codeOf(err) != codes.PermissionDenied {
				t.Fatalf("denied call: %v", err)
			}
		}
		if st := endpointStateOf(t, p.web.Admin, "api", p.apiStrict); st != "serving" {
			t.Errorf("api's endpoint at web is %q after denials, want serving", st)
		}
		setIntentions(t, agent, "api", l4("web", api.IntentionActionAllow), l4("*", api.IntentionActionDeny))
		waitCode(t, "web allowed again", codes.OK, func() error { return unary(p.webClient) })
	})

	t.Run("L7 per method and header", func(t *testing.T) {
		setProtocol(t, agent, "api", "grpc")
		setIntentions(t, agent, "api", &api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/grpc.testing.TestService/Unary"}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: "/grpc.testing.TestService/EmptyCall",
				Header: []api.IntentionHTTPHeaderPermission{{Name: "x-team", Exact: "blue"}}}},
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}},
		}}, l4("*", api.IntentionActionDeny))
		waitCode(t, "EmptyCall without the header denied", codes.PermissionDenied, func() error { return emptyCallMD(p.webClient) })
		for _, tc := range []struct {
			name string
			call func() error
			want codes.Code
		}{
			{"UnaryCall by prefix", func() error { return unary(p.webClient) }, codes.OK},
			{"EmptyCall with x-team blue", func() error { return emptyCallMD(p.webClient, "x-team", "blue") }, codes.OK},
			{"EmptyCall with x-team red", func() error { return emptyCallMD(p.webClient, "x-team", "red") }, codes.PermissionDenied},
			{"EmptyCall without x-team", func() error { return emptyCallMD(p.webClient) }, codes.PermissionDenied},
			{"UnaryCall from billing", func() error { return unary(leafClient(t, agent, p.apiStrict, "billing")) }, codes.PermissionDenied},
		} {
			if err := tc.call(); codeOf(err) != tc.want {
				t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			}
		}
	})

	t.Run("operators see identity and intentions", func(t *testing.T) {
		code, body := adminGet(t, p.api.Admin, "/certs")
		if code != 200 || !strings.Contains(body, "/svc/api") || strings.Contains(body, "PRIVATE KEY") {
			t.Fatalf("/certs %d:\n%s", code, body)
		}
		var certs map[string]any
		if err := json.Unmarshal([]byte(body), &certs); err != nil {
			t.Fatalf("/certs is not JSON: %v", err)
		}
		_, dump := adminGet(t, p.api.Admin, "/config_dump")
		if !strings.Contains(dump, "mesh_intentions") || !strings.Contains(dump, "/grpc.testing.TestService/Unary") {
			t.Errorf("/config_dump lacks the compiled intentions:\n%s", dump)
		}
		m := scrapeMetrics(t, p.api.Admin)
		if exp := m.Value(t, "meshd_mesh_leaf_expiry_timestamp_seconds", map[string]string{"service": "api"}); exp < float64(time.Now().Unix()) {
			t.Errorf("leaf expiry %v is in the past", exp)
		}
		if code, _ := adminGet(t, p.web.Admin, "/certs"); code != 200 {
			t.Errorf("web /certs: %d", code)
		}
	})
}

// endpointStateOf is the state of the endpoint at addr in cluster, from
// meshd's /clusters.
func endpointStateOf(t testing.TB, admin, cluster, addr string) string {
	t.Helper()
	e, ok := endpointAt(t, admin, cluster, addr)
	if !ok {
		return "absent"
	}
	return e.State
}

// TestMeshCARotation: Consul's CA is rotated under a continuous call loop;
// new handshakes present leaves from the new root, with no failed call and
// no restart.
func TestMeshCARotation(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	p := startMeshPair(t, agent)
	setIntentions(t, agent, "api", l4("web", api.IntentionActionAllow))
	waitCode(t, "web → api", codes.OK, func() error { return unary(p.webClient) })

	var calls, failed atomic.Int64
	var firstErr atomic.Pointer[error]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// A steady client, paced and bounded: the rotation takes up to
		// about 30 s on a shared machine.
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for calls.Load() < 50000 {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			calls.Add(1)
			if err := unary(p.webClient); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, &err)
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	old, _, err := agent.Client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	agent.RotateCA(t)
	var newRoot *x509.CertPool
	testkit.WaitFor(t, 10*time.Second, "a new active root", func() bool {
		roots, _, err := agent.Client.Agent().ConnectCARoots(nil)
		if err != nil || roots.ActiveRootID == old.ActiveRootID {
			return false
		}
		for _, r := range roots.Roots {
			if r.ID == roots.ActiveRootID {
				newRoot = x509.NewCertPool()
				newRoot.AppendCertsFromPEM([]byte(r.RootCertPEM))
			}
		}
		return newRoot != nil
	})
	// api's new handshakes present a leaf the new root alone verifies:
	// Consul re-issues leaves up to ~30 s after a rotation.
	took := testkit.WaitFor(t, 60*time.Second, "api to present a leaf of the new root", func() bool {
		leaf := presentedLeaf(t, agent, p.apiStrict)
		_, err := leaf.Verify(x509.VerifyOptions{Roots: newRoot, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err == nil
	})
	t.Logf("api presented a leaf of the new root %v after the rotation", took)
	// And web's new connections to api still work (both sides rotated
	// or trust both roots meanwhile).
	if err := unary(leafClient(t, agent, p.apiStrict, "web")); err != nil {
		t.Fatalf("a new connection after the rotation: %v", err)
	}
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed during the rotation; first: %v", n, calls.Load(), *firstErr.Load())
	}
	t.Logf("%d calls, none failed", calls.Load())
}

// presentedLeaf handshakes with addr as web and returns the certificate
// the server presented.
func presentedLeaf(t testing.TB, a *consultest.Agent, addr string) *x509.Certificate {
	t.Helper()
	leaf, _, err := a.Client.Agent().ConnectCALeaf("web", nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Logf("handshake: %v", err)
		return &x509.Certificate{}
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// TestMeshConsulDown: with Consul gone, the sidecars keep serving with the
// identity and intentions they have; when it is back, their watches resume
// (a restarted dev agent has a new CA and no intentions, and the
// sidecars follow it).
func TestMeshConsulDown(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	p := startMeshPair(t, agent)
	setIntentions(t, agent, "api", l4("web", api.IntentionActionAllow))
	waitCode(t, "web → api", codes.OK, func() error { return unary(p.webClient) })
	agent.Stop(t)
	// New connections too: web's pool is told to reconnect by a fresh
	// client through a new web listener connection, and api's listener
	// handshakes with the identity it holds.
	for i := range 20 {
		if err := unary(p.webClient); err != nil {
			t.Fatalf("call %d with Consul down: %v", i, err)
		}
	}
	if err := unary(testpb.NewTestServiceClient(dial(t, p.web.Addr))); err != nil {
		t.Fatalf("a new client with Consul down: %v", err)
	}
	var st struct {
		Identity struct{ LastError string }
	}
	testkit.WaitFor(t, 10*time.Second, "api's identity watch to see Consul down", func() bool {
		_, body := adminGet(t, p.api.Admin, "/certs")
		return json.Unmarshal([]byte(body), &st) == nil && st.Identity.LastError != ""
	})
	agent.Restart(t)
	// A fresh agent refuses intention writes for a moment ("Intentions
	// are read only while being upgraded to config entries").
	testkit.WaitFor(t, 30*time.Second, "consul to take intentions again", func() bool {
		_, _, err := agent.Client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api",
			Sources: []*api.SourceIntention{l4("web", api.IntentionActionAllow)}}, nil)
		return err == nil
	})
	testkit.WaitFor(t, 60*time.Second, "api's identity watch healthy again", func() bool {
		_, body := adminGet(t, p.api.Admin, "/certs")
		return json.Unmarshal([]byte(body), &st) == nil && st.Identity.LastError == ""
	})
	// The restarted agent has a new CA (and trust domain): both sidecars
	// take it, and calls flow again.
	waitCode(t, "web → api after Consul's restart", codes.OK, func() error { return unary(p.webClient) })
	leaf := presentedLeaf(t, agent, p.apiStrict)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool(t, agent), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("api's leaf after Consul's restart is not from the new CA: %v", err)
	}
}

// TestMeshConnectHealth: web discovers api's sidecar through Consul
// Connect (the connect-proxy instance registered for api), and the health
// of api's app reaches web through the mesh: web's health checks cross the
// mTLS hop to api's sidecar, which answers them for its app whatever the
// intentions say. A deny intention makes calls PERMISSION_DENIED and never
// makes the endpoint look unhealthy; the app's own NOT_SERVING does.
func TestMeshConnectHealth(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	app := startBackends(t, "api-app", 1)[0]
	apiMesh := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
consul: {address: %s}
mesh: {service: api}
listeners: [{name: mesh, address: 127.0.0.1:0, mesh_tls: strict}]
routes: [{name: local, match: {prefix: /}, cluster: local}]
clusters: [{name: local, endpoints: [%s]}]
`, agent.Addr, app.Addr)).mesh
	meshAddr := apiMesh.srv.ListenerAddrs()["mesh"]
	host, port := splitHostPort(t, meshAddr)
	register(t, agent, &api.AgentServiceRegistration{ID: "api-sidecar-proxy", Name: "api-sidecar-proxy", Kind: api.ServiceKindConnectProxy,
		Address: host, Port: port, Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "api", LocalServicePort: 9000}})
	web := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
consul: {address: %s}
mesh: {service: web}
listeners: [{name: out, address: 127.0.0.1:0}]
routes: [{name: to-api, match: {prefix: /}, cluster: api}]
clusters:
  - name: api
    consul: {service: api, connect: true}
    mesh_tls: {service: api}
    health: {reconnect_max: 200ms}
`, agent.Addr)).mesh
	client := testpb.NewTestServiceClient(dial(t, web.Addr))
	setIntentions(t, agent, "api", l4("web", api.IntentionActionAllow))
	waitCode(t, "web → api through Connect discovery", codes.OK, func() error { return unary(client) })
	if st := endpointStateOf(t, web.Admin, "api", meshAddr); st != "serving" {
		t.Fatalf("api's sidecar at web: %q, want serving", st)
	}

	setIntentions(t, agent, "api", l4("web", api.IntentionActionDeny))
	waitCode(t, "web denied", codes.PermissionDenied, func() error { return unary(client) })
	// Health is watched (a stream): a denial that reached it would have
	// ended it by now. The endpoint stays serving across denied calls.
	for range 10 {
		if err := unary(client); codeOf(err) != codes.PermissionDenied {
			t.Fatalf("denied call: %v", err)
		}
	}
	if st := endpointStateOf(t, web.Admin, "api", meshAddr); st != "serving" {
		t.Fatalf("api's sidecar at web after denials: %q, want serving", st)
	}

	// The app's own health crosses the mesh.
	app.SetServing(false)
	waitState(t, web.Admin, "api", meshAddr, "ejected")
	app.SetServing(true)
	waitState(t, web.Admin, "api", meshAddr, "serving")
	setIntentions(t, agent, "api", l4("web", api.IntentionActionAllow))
	waitCode(t, "web allowed again", codes.OK, func() error { return unary(client) })
}

func splitHostPort(t testing.TB, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return h, n
}

// TestMeshFilesReload: identity files (certificates delivered by other
// means than Consul) with the config's own intentions, which reload with
// the file; a reload that changes the identity is refused and the old
// config keeps serving.
func TestMeshFilesReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := testkit.NewCA(t, "mesh files")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", ca.PEM())
	leaf := func(svc string) (string, string) {
		c, k, _ := ca.IssueSPIFFE(t, "spiffe://files.test/ns/default/dc/dc1/svc/"+svc)
		return write(svc+".pem", c), write(svc+"-key.pem", k)
	}
	apiCert, apiKey := leaf("api")
	webCert, webKey := leaf("web")
	app := startBackends(t, "api-app", 1)[0]
	apiConfig := func(service, intention string) string {
		return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
mesh:
  service: %s
  identity: files
  cert_file: %s
  key_file: %s
  ca_file: %s
  intentions: [%s]
listeners: [{name: mesh, address: 127.0.0.1:0, mesh_tls: strict}]
routes: [{name: local, match: {prefix: /}, cluster: local}]
clusters: [{name: local, endpoints: [%s]}]
`, service, apiCert, apiKey, caFile, intention, app.Addr)
	}
	apiFile := write("api.yaml", []byte(apiConfig("api", "{source: web, action: allow}")))
	cfg, err := config.Load(apiFile)
	if err != nil {
		t.Fatal(err)
	}
	apiMesh := runMesh(t, cfg)
	web := startMesh(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
mesh: {service: web, identity: files, cert_file: %s, key_file: %s, ca_file: %s}
listeners: [{name: out, address: 127.0.0.1:0}]
routes: [{name: to-api, match: {prefix: /}, cluster: api}]
clusters: [{name: api, endpoints: [%s], mesh_tls: {service: api}}]
`, webCert, webKey, caFile, apiMesh.srv.ListenerAddrs()["mesh"]))
	client := testpb.NewTestServiceClient(dial(t, web.Addr))
	waitCode(t, "web → api", codes.OK, func() error { return unary(client) })

	write("api.yaml", []byte(apiConfig("api", "{source: web, action: deny}")))
	if err := apiMesh.srv.ReloadFile(apiFile); err != nil {
		t.Fatalf("reload with a deny: %v", err)
	}
	if err := unary(client); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("after the reload: %v, want PERMISSION_DENIED", err)
	}

	write("api.yaml", []byte(apiConfig("billing", "{source: web, action: allow}")))
	err = apiMesh.srv.ReloadFile(apiFile)
	if err == nil || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("reload changing mesh.service: %v, want an error asking for a restart", err)
	}
	if err := unary(client); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("after the refused reload: %v, want the old config (deny) in force", err)
	}

	// A client whose leaf is for the wrong service is refused by web's
	// dial: web must reach service api, and a sidecar presenting billing
	// is not it.
	billCert, billKey := leaf("billing")
	impostor := startMesh(t, fmt.Sprintf(`
mesh: {service: billing, identity: files, cert_file: %s, key_file: %s, ca_file: %s, default_action: allow}
listeners: [{name: mesh, address: 127.0.0.1:0, mesh_tls: strict}]
routes: [{name: local, match: {prefix: /}, cluster: local}]
clusters: [{name: local, endpoints: [%s]}]
`, billCert, billKey, caFile, app.Addr))
	web2 := startMesh(t, fmt.Sprintf(`
mesh: {service: web, identity: files, cert_file: %s, key_file: %s, ca_file: %s}
listeners: [{name: out, address: 127.0.0.1:0}]
routes: [{name: to-api, match: {prefix: /}, cluster: api}]
clusters: [{name: api, endpoints: [%s], mesh_tls: {service: api}, health: {disabled: true}}]
`, webCert, webKey, caFile, impostor.Addr))
	err = unary(testpb.NewTestServiceClient(dial(t, web2.Addr)))
	if codeOf(err) != codes.Unavailable || !strings.Contains(err.Error(), "billing") {
		t.Fatalf("web dialing an impostor: %v, want UNAVAILABLE naming the peer's identity", err)
	}
}
