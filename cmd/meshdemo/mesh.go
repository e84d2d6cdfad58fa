package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/test/backend"
)

// meshAct is the demo's second act: two meshd sidecars, web and api, on
// the same Consul agent. api's sidecar has a mesh_tls: strict listener in
// front of api's app; web's sidecar has a plaintext listener for web's app
// (here, the demo's client) and a cluster api whose endpoints are api's
// Connect sidecars, dialled with mTLS as web. Intentions written to Consul
// decide each call. run owns it and uses it from its own goroutine only.
type meshAct struct {
	consul   *consultest.Agent
	app      *backend.Backend // api's app
	api, web *meshdProc
	// Addresses: api's mesh listener and admin, web's plaintext listener
	// and admin.
	apiMesh, apiAdmin, webListen, webAdmin string
	accessLog                              string // api's, for the caller's identity
	client                                 *grpc.ClientConn
	denied                                 int // PERMISSION_DENIED answers the demo saw
}

// stop stops what the act started, the callers before the called: web's
// sidecar, api's sidecar, then api's app.
func (a *meshAct) stop() {
	if a.client != nil {
		a.client.Close()
	}
	for _, m := range []*meshdProc{a.web, a.api} {
		if m != nil {
			m.stop()
		}
	}
	if a.app != nil {
		a.app.Stop()
	}
}

// apiConfig is api's sidecar: mTLS only, every call to api's app.
func apiConfig(admin, mesh, consulAddr, accessLog, app string) string {
	return fmt.Sprintf(`# written by meshdemo: api's sidecar
admin: {address: %s}
consul: {address: %s}
mesh: {service: api}               # identity .../svc/api, leaf from Consul Connect's CA; default_action: deny
access_log: {enabled: true, path: %s}
listeners:
  - {name: mesh, address: %s, mesh_tls: strict}   # mTLS only; intentions toward api decide each call
routes:
  - {name: app, match: {prefix: /}, cluster: app}
clusters:
  - {name: app, endpoints: [%s]}  # api's app
drain_timeout: 2s
`, admin, consulAddr, accessLog, mesh, app)
}

// webConfig is web's sidecar: plaintext in from web's app, mTLS out to
// api's sidecars found through Consul Connect.
func webConfig(admin, listen, consulAddr string) string {
	return fmt.Sprintf(`# written by meshdemo: web's sidecar
admin: {address: %s}
consul: {address: %s}
mesh: {service: web}               # identity .../svc/web
listeners:
  - {name: app, address: %s}   # plaintext, for web's app (here, the demo's client)
routes:
  - {name: to-api, match: {service: grpc.testing.TestService}, cluster: api}
clusters:
  - name: api
    consul: {service: api, connect: true}   # api's Connect sidecars (kind connect-proxy)
    mesh_tls: {service: api}                 # dial as web; the peer must be .../svc/api
drain_timeout: 2s
`, admin, consulAddr, listen)
}

// run plays the act: start both sidecars, register api's in Consul, then
// allow, deny and allow web → api again, a call or a few each time. It
// returns nil early if ctx ends (Ctrl-C).
func (a *meshAct) run(ctx context.Context, bin, dir string) error {
	act(2, "mesh identity and authorization: sidecars web → api over mTLS with Consul Connect certificates")
	c := a.consul.Client
	app, err := backend.Start("api-app")
	if err != nil {
		return err
	}
	a.app = app
	app.SetServing(true)
	fmt.Printf("    api's app (a gRPC backend) at %s\n", app.Addr)

	a.apiMesh, a.apiAdmin = freeAddr(), freeAddr()
	a.accessLog = filepath.Join(dir, "api-access.log")
	if a.api, err = startMeshd("api's sidecar", bin, filepath.Join(dir, "api.yaml"),
		apiConfig(a.apiAdmin, a.apiMesh, a.consul.Addr, a.accessLog, app.Addr)); err != nil {
		return err
	}
	if err := waitReady(ctx, a.apiAdmin, a.api.done); err != nil {
		return fmt.Errorf("api's sidecar: %w\nmeshd output:\n%s", err, a.api.log.String())
	}
	if err := registerSidecar(c, "api", app.Addr, a.apiMesh); err != nil {
		return err
	}
	fmt.Printf("    registered in Consul: service api (the app, %s) and its sidecar api-sidecar-proxy\n", app.Addr)
	fmt.Printf("    (kind connect-proxy, Proxy.DestinationServiceName api) at the mesh listener %s\n", a.apiMesh)

	a.webListen, a.webAdmin = freeAddr(), freeAddr()
	if a.web, err = startMeshd("web's sidecar", bin, filepath.Join(dir, "web.yaml"),
		webConfig(a.webAdmin, a.webListen, a.consul.Addr)); err != nil {
		return err
	}
	if err := waitReady(ctx, a.webAdmin, a.web.done); err != nil {
		return fmt.Errorf("web's sidecar: %w\nmeshd output:\n%s", err, a.web.log.String())
	}
	fmt.Printf("    web's identity (GET http://%s/certs): %s\n", a.webAdmin, identityOf(a.webAdmin))
	fmt.Printf("    api's identity (GET http://%s/certs): %s\n", a.apiAdmin, identityOf(a.apiAdmin))
	if !a.waitEndpoint(ctx) {
		return nil
	}

	if a.client, err = grpc.NewClient(a.webListen, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return err
	}
	client := testpb.NewTestServiceClient(a.client)

	step("no intention yet: api's default_action is deny")
	a.show(ctx, client, 1)

	for _, s := range []struct {
		action api.IntentionAction
		want   codes.Code
		calls  int
	}{
		{api.IntentionActionAllow, codes.OK, 3},
		{api.IntentionActionDeny, codes.PermissionDenied, 1},
		{api.IntentionActionAllow, codes.OK, 1},
	} {
		if ctx.Err() != nil {
			return nil
		}
		step(fmt.Sprintf("intention web → api: %s (config entry service-intentions \"api\" in Consul)", s.action))
		if err := setIntention(c, "web", "api", s.action); err != nil {
			return err
		}
		a.until(ctx, client, s.want)
		a.show(ctx, client, s.calls)
	}
	if ctx.Err() == nil {
		a.summary()
	}
	return nil
}

// registerSidecar registers svc's app at app and its sidecar, a Connect
// proxy for svc, at mesh (the sidecar's mesh listener), as a Consul client
// agent would for a pod (`consul services register`).
func registerSidecar(c *api.Client, svc, app, mesh string) error {
	reg := func(r *api.AgentServiceRegistration, addr string) error {
		host, portS, _ := net.SplitHostPort(addr)
		r.Address = host
		r.Port, _ = strconv.Atoi(portS)
		if err := c.Agent().ServiceRegister(r); err != nil {
			return fmt.Errorf("register %s: %w", r.ID, err)
		}
		return nil
	}
	if err := reg(&api.AgentServiceRegistration{ID: svc, Name: svc}, app); err != nil {
		return err
	}
	return reg(&api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: svc + "-sidecar-proxy", Name: svc + "-sidecar-proxy",
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: svc, DestinationServiceID: svc},
	}, mesh)
}

// setIntention replaces the intentions toward dest with one L4 rule for src.
func setIntention(c *api.Client, src, dest string, action api.IntentionAction) error {
	_, _, err := c.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{
		Kind: api.ServiceIntentions, Name: dest,
		Sources: []*api.SourceIntention{{Name: src, Action: action}},
	}, nil)
	if err != nil {
		return fmt.Errorf("write intentions toward %s: %w", dest, err)
	}
	return nil
}

// waitEndpoint waits until web's sidecar has found api's sidecar through
// Consul Connect and its health check (over mTLS) says SERVING, and prints
// the endpoint. It reports false if ctx ended or the wait timed out (then
// calls fail with UNAVAILABLE, which the act shows as it is).
func (a *meshAct) waitEndpoint(ctx context.Context) bool {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if e, ok := endpointOf(a.webAdmin, "api"); ok && e.State == "serving" {
			fmt.Printf("    web's cluster api: endpoint %s at %s, %s (found by Consul Connect discovery; health checked over mTLS)\n", e.ID, e.Address, e.State)
			return true
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	if ctx.Err() != nil {
		return false
	}
	e, _ := endpointOf(a.webAdmin, "api")
	fmt.Printf("    web's cluster api: endpoint %q at %q is %q after 15s\n", e.ID, e.Address, e.State)
	return true
}

// until calls until the answer is want, for at most 10s, and says when
// api's sidecar had the change. The calls before it got the old answer
// and are not printed one by one.
func (a *meshAct) until(ctx context.Context, client testpb.TestServiceClient, want codes.Code) {
	start := time.Now()
	for n := 1; time.Since(start) < 10*time.Second && ctx.Err() == nil; n++ {
		_, _, err := call(ctx, client)
		a.count(err)
		if status.Code(err) != want {
			time.Sleep(50 * time.Millisecond) // poll interval
			continue
		}
		if n == 1 {
			fmt.Printf("    api's sidecar had the change by the next call (%.2fs after the write)\n", time.Since(start).Seconds())
		} else {
			calls := "calls"
			if n-1 == 1 {
				calls = "call"
			}
			fmt.Printf("    api's sidecar had the change %.2fs after the write (%d %s before got the old answer)\n", time.Since(start).Seconds(), n-1, calls)
		}
		return
	}
	fmt.Printf("    still no %s after %.0fs\n", config.CodeName(want), time.Since(start).Seconds())
}

// count tallies the denied calls, to set beside api's metric.
func (a *meshAct) count(err error) {
	if status.Code(err) == codes.PermissionDenied {
		a.denied++
	}
}

// show makes n calls through web's sidecar and prints each: who answered
// and, from api's access log, the identity api's sidecar authenticated; or
// the status meshd returned.
func (a *meshAct) show(ctx context.Context, client testpb.TestServiceClient, n int) {
	for i := 0; i < n && ctx.Err() == nil; i++ {
		who, took, err := call(ctx, client)
		a.count(err)
		if err != nil {
			st := status.Convert(err)
			fmt.Printf("    call web → api: %s %q\n", config.CodeName(st.Code()), st.Message())
			continue
		}
		fmt.Printf("    call web → api: OK from %s in %.2fms; api's sidecar saw the caller as\n      %s\n",
			who, float64(took.Microseconds())/1000, a.lastCaller())
	}
}

// unaryMethod is the method call makes.
const unaryMethod = "/grpc.testing.TestService/UnaryCall"

// lastCaller is the peer identity in api's access log of the last call,
// if it reached the app (the log is written as calls end, so poll
// briefly).
func (a *meshAct) lastCaller() string {
	deadline := time.Now().Add(time.Second)
	for {
		b, _ := os.ReadFile(a.accessLog)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		var rec struct {
			Method       string `json:"method"`
			Code         string `json:"code"`
			PeerIdentity string `json:"peer_identity"`
		}
		if json.Unmarshal([]byte(lines[len(lines)-1]), &rec) == nil && rec.Code == "OK" && rec.Method == unaryMethod {
			return rec.PeerIdentity
		}
		if time.Now().After(deadline) {
			return "(not in api's access log)"
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// summary prints api's denials by caller, web's view of api's endpoint
// (denials never make it unhealthy) and api's identity from /certs.
func (a *meshAct) summary() {
	step("act 2 summary")
	if body, err := get("http://" + a.apiAdmin + "/metrics"); err == nil {
		fmt.Println("    api's metrics (GET /metrics, meshd_authz_denied_total):")
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "meshd_authz_denied_total") {
				fmt.Println("      " + line)
			}
		}
		fmt.Printf("      (the demo's client got PERMISSION_DENIED %d times, the calls above and those made while waiting)\n", a.denied)
	}
	if e, ok := endpointOf(a.webAdmin, "api"); ok {
		fmt.Printf("    web's view of api's sidecar after the denials: %s (health checks are exempt from intentions)\n", e.State)
	}
	body, err := get("http://" + a.apiAdmin + "/certs")
	if err != nil {
		return
	}
	var certs certsView
	if json.Unmarshal([]byte(body), &certs) != nil {
		return
	}
	id := certs.Identity
	fmt.Println("    api's mesh identity (GET /certs, abridged):")
	fmt.Printf("      service %s, %s\n", id.Service, id.SPIFFEID)
	fmt.Printf("      leaf serial %s, not after %s\n", id.Serial, id.NotAfter.UTC().Format(time.RFC3339))
	for _, r := range id.Roots {
		active := ""
		if r.Active {
			active = ", active"
		}
		fmt.Printf("      root %q (%s), not after %s%s\n", r.Name, r.ID, r.NotAfter.UTC().Format(time.RFC3339), active)
	}
	fmt.Printf("      intentions from %s\n", certs.IntentionsSource)
}

// certsView is the part of meshd's GET /certs the demo prints.
type certsView struct {
	Identity struct {
		Service, SPIFFEID, Serial string
		NotAfter                  time.Time
		Roots                     []struct {
			ID, Name string
			Active   bool
			NotAfter time.Time
		}
	} `json:"identity"`
	IntentionsSource string `json:"intentions_source"`
}

// identityOf is the SPIFFE ID meshd at admin holds, from GET /certs.
func identityOf(admin string) string {
	body, err := get("http://" + admin + "/certs")
	var v certsView
	if err != nil || json.Unmarshal([]byte(body), &v) != nil {
		return "(unavailable)"
	}
	return v.Identity.SPIFFEID
}

// endpointView is one endpoint of meshd's GET /clusters.
type endpointView struct {
	ID, Address, State string
}

// endpointOf is the first endpoint of cluster in meshd's /clusters at admin.
func endpointOf(admin, cluster string) (endpointView, bool) {
	body, err := get("http://" + admin + "/clusters")
	if err != nil {
		return endpointView{}, false
	}
	var clusters map[string]struct {
		Status struct{ Endpoints []endpointView } `json:"status"`
	}
	if json.Unmarshal([]byte(body), &clusters) != nil {
		return endpointView{}, false
	}
	eps := clusters[cluster].Status.Endpoints
	if len(eps) == 0 {
		return endpointView{}, false
	}
	return eps[0], true
}
