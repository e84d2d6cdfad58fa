//go:build linux

package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// The mesh netns test's network: three namespaces on one bridge (in a
// fourth, "lan"), like pods on a node. Nothing is routed to the host.
//
//	web   198.18.20.2 ──┐            app client → iptables → meshd (outbound, mesh_tls client)
//	api   198.18.20.3 ──┼── lan br0  iptables → meshd (inbound, mesh_tls strict) → backend :9000
//	rogue 198.18.20.4 ──┘            a plaintext client with no sidecar
const (
	meshTrustDomain = "11111111-2222-3333-4444-555555555555.consul"
	meshWebIP       = "198.18.20.2"
	meshAPIIP       = "198.18.20.3"
	meshRogueIP     = "198.18.20.4"
)

// TestNetnsMesh is issue 16's mesh mTLS between two pods: each pod is a
// namespace with its app, its own meshd sidecar (as UID 1337) and its own
// `meshd iptables` rules; identities are files from one CA. web's app
// makes plaintext gRPC calls to api's pod address; the test checks they
// reach api's app through both sidecars, that what crosses the wire
// between the pods is TLS only (packets captured on api's interface), that
// api's sidecar authorizes them by web's identity (a reloaded intention
// denies them, naming web and api), and that a plaintext client without a
// sidecar cannot reach api's app at all.
func TestNetnsMesh(t *testing.T) {
	env := newNetnsBase(t)
	env.meshLAN(t, map[string]string{"web": meshWebIP, "api": meshAPIIP, "rogue": meshRogueIP})

	// One CA, a SPIFFE leaf per pod, readable by meshd's UID only.
	ca := testkit.NewCA(t, "mesh netns CA")
	files := func(svc string) string {
		cert, key, _ := ca.IssueSPIFFE(t, fmt.Sprintf("spiffe://%s/ns/default/dc/dc1/svc/%s", meshTrustDomain, svc))
		dir := filepath.Join(env.dir, svc+"-certs")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string][]byte{"cert.pem": cert, "key.pem": key, "ca.pem": ca.PEM()} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(filepath.Join(dir, name), netnsProxyUID, netnsProxyUID); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chown(dir, netnsProxyUID, netnsProxyUID); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("identity: files, cert_file: %[1]s/cert.pem, key_file: %[1]s/key.pem, ca_file: %[1]s/ca.pem", dir)
	}
	webFiles, apiFiles := files("web"), files("api")
	leaf := func(svc string) tls.Certificate {
		cert, key, _ := ca.IssueSPIFFE(t, fmt.Sprintf("spiffe://%s/ns/default/dc/dc1/svc/%s", meshTrustDomain, svc))
		c, err := tls.X509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	webID := fmt.Sprintf("spiffe://%s/ns/default/dc/dc1/svc/web", meshTrustDomain)

	// Capture api's side of the wire from the start, so that every
	// connection web's sidecar opens is seen from its first packet.
	capture := env.capture(t, "api", "eth0")

	// api's app: a plain gRPC server on the pod's port 9000.
	var app *backend.Backend
	env.in(t, "api", func() (err error) {
		app, err = backend.Start("api-app", backend.WithAddr(fmt.Sprintf("0.0.0.0:%d", backendPort)))
		return err
	})
	app.SetServing(true)
	t.Cleanup(app.Stop)
	// And an opaque TCP port (echo), also behind the sidecar.
	env.in(t, "api", func() error {
		l, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", echoPort))
		if err != nil {
			return err
		}
		testkit.Serve(t, l, func(c net.Conn) { io.Copy(c, c) })
		return nil
	})

	// The pods' init steps and sidecars. api redirects its app's port to
	// the strict inbound listener; web redirects its app's outbound TCP.
	for _, ns := range []string{"web", "api"} {
		args := []string{"iptables", "-inbound-port", "15006", "-outbound-port", "15001",
			"-proxy-uid", strconv.Itoa(netnsProxyUID), "-exclude-inbound-ports", "15000"}
		if ns == "api" {
			args = append(args, "-inbound-ports", fmt.Sprintf("%d,%d", backendPort, echoPort))
		}
		env.meshdCmd(t, ns, true, args...)
	}
	apiConfig := func(webAction string) string {
		return fmt.Sprintf(`
admin: {address: 0.0.0.0:15000}
access_log: {enabled: true}
drain_timeout: 2s
mesh: {service: api, %s, intentions: [{source: web, action: %s}]}
listeners:
  - {name: inbound, address: 0.0.0.0:15006, original_dst: {direction: inbound}, mesh_tls: strict}
`, apiFiles, webAction)
	}
	api := env.startMeshdIn(t, "api", apiConfig("allow"))
	env.waitMeshdReady(t, "api")
	env.startMeshdIn(t, "web", fmt.Sprintf(`
admin: {address: 0.0.0.0:15000}
drain_timeout: 2s
mesh: {service: web, %s}
listeners:
  - {name: outbound, address: 127.0.0.1:15001, original_dst: {direction: outbound, detect_timeout: 200ms}}
clusters:
  - name: api
    endpoints: [%s:%d]
    mesh_tls: {service: api}
`, webFiles, meshAPIIP, backendPort))
	env.waitMeshdReady(t, "web")

	// web's app: a plaintext client of api's pod address.
	apiAddr := net.JoinHostPort(meshAPIIP, strconv.Itoa(backendPort))
	cc, err := grpc.NewClient(apiAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(env.dialer("web")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	webApp := testpb.NewTestServiceClient(cc)
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := webApp.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("a plaintext body the wire must not show")}})
		return err
	}
	testkit.WaitFor(t, 15*time.Second, "web's app to reach api's app through the mesh", func() bool { return call() == nil })

	t.Run("calls cross both sidecars as mTLS", func(t *testing.T) {
		n := app.Calls()
		webOK, apiOK := env.handled(t, "web", "OK"), env.handled(t, "api", "OK")
		const calls = 10
		for i := range calls {
			if err := call(); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		if got := app.Calls() - n; got != calls {
			t.Errorf("api's app got %d calls, want %d", got, calls)
		}
		if got := env.handled(t, "web", "OK") - webOK; got != calls {
			t.Errorf("web's meshd handled %v UnaryCalls OK, want %d", got, calls)
		}
		if got := env.handled(t, "api", "OK") - apiOK; got != calls {
			t.Errorf("api's meshd handled %v UnaryCalls OK, want %d", got, calls)
		}
		// api's sidecar knew the caller by its certificate.
		if !strings.Contains(api.logs.String(), `"peer_identity":"`+webID+`"`) {
			t.Errorf("api's access log has no call from %s", webID)
		}

		flows := capture.stop(t)
		if len(flows) == 0 {
			t.Fatal("no TCP payload between web and api's port 9000 was captured")
		}
		var records, bytesIn int
		for _, f := range flows {
			for _, raw := range [][]byte{f.toServer, f.toClient} {
				// HPACK may Huffman-code the method name; the preface and
				// the request body are sent as they are.
				for _, bad := range []string{"grpc.testing.TestService", "PRI * HTTP/2.0", "a plaintext body"} {
					if bytes.Contains(raw, []byte(bad)) {
						t.Errorf("flow %s: %q in clear on the wire", f.name, bad)
					}
				}
			}
			bytesIn += len(f.toServer)
			for dir, raw := range map[string][]byte{"to api": f.toServer, "to web": f.toClient} {
				if len(raw) == 0 {
					continue
				}
				types, err := tlsRecords(raw)
				if err != nil {
					t.Errorf("flow %s %s: not TLS records: %v (first bytes % x)", f.name, dir, err, raw[:min(len(raw), 16)])
					continue
				}
				if types[0] != 0x16 {
					t.Errorf("flow %s %s: first record type %#x, want a handshake (0x16)", f.name, dir, types[0])
				}
				records += len(types)
				if dir == "to api" && slices.Contains(types, 0x16) && !slices.Contains(types, 0x17) && len(raw) > 1024 {
					t.Errorf("flow %s %s: %d bytes and no application data record", f.name, dir, len(raw))
				}
			}
		}
		var appData bool
		for _, f := range flows {
			if types, err := tlsRecords(f.toServer); err == nil && slices.Contains(types, 0x17) {
				appData = true
			}
		}
		if !appData {
			t.Error("no TLS application data record (0x17) toward api was captured")
		}
		t.Logf("captured %d connections web → api:%d, %d bytes toward api, %d TLS records", len(flows), backendPort, bytesIn, records)
	})

	t.Run("a plaintext client without a sidecar is refused", func(t *testing.T) {
		before := env.meshMetric(t, "api", "meshd_mesh_handshake_failures_total", map[string]string{"listener": "inbound"})
		n := app.Calls()
		rc, err := grpc.NewClient(apiAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(env.dialer("rogue")))
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = testpb.NewTestServiceClient(rc).UnaryCall(ctx, &testpb.SimpleRequest{})
		cancel()
		if err == nil {
			t.Fatal("a plaintext call to api's pod address succeeded")
		}
		if app.Calls() != n {
			t.Errorf("api's app got %d calls from the plaintext client", app.Calls()-n)
		}
		testkit.WaitFor(t, 5*time.Second, "meshd_mesh_handshake_failures_total{listener=inbound} to count the plaintext connection", func() bool {
			return env.meshMetric(t, "api", "meshd_mesh_handshake_failures_total", map[string]string{"listener": "inbound"}) > before
		})
		t.Logf("plaintext call: %v", err)
	})

	t.Run("opaque TCP over mTLS is authorized too", func(t *testing.T) {
		// A mesh peer that speaks something else than gRPC inside TLS is
		// relayed to the app's port only if its intentions allow it.
		echo := func(svc string) (string, error) {
			c, err := env.dialer("rogue")(context.Background(), net.JoinHostPort(meshAPIIP, strconv.Itoa(echoPort)))
			if err != nil {
				return "", err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			// The server's chain is not what this checks: its client
			// certificate is.
			tc := tls.Client(c, &tls.Config{Certificates: []tls.Certificate{leaf(svc)}, InsecureSkipVerify: true})
			if _, err := io.WriteString(tc, "hello mesh\n"); err != nil {
				return "", err
			}
			got, err := bufio.NewReader(tc).ReadString('\n')
			return got, err
		}
		if got, err := echo("web"); got != "hello mesh\n" {
			t.Errorf("web (allowed) over mTLS to api's opaque port: %q, %v; want the echo", got, err)
		}
		if got, err := echo("intruder"); err == nil || got != "" {
			t.Errorf("intruder (no intention, default deny) over mTLS to api's opaque port: %q, %v; want the connection closed", got, err)
		}
		testkit.WaitFor(t, 5*time.Second, "api's meshd to log the denied opaque connection", func() bool {
			return strings.Contains(api.logs.String(), `"msg":"opaque connection denied"`) &&
				strings.Contains(api.logs.String(), "svc/intruder")
		})
		if got := env.meshMetric(t, "api", "meshd_authz_denied_connections_total", map[string]string{"listener": "inbound"}); got < 1 {
			t.Errorf("meshd_authz_denied_connections_total{listener=inbound} = %v on api, want ≥ 1", got)
		}
	})

	t.Run("api's sidecar authorizes web by its identity", func(t *testing.T) {
		if err := os.WriteFile(api.cfg, []byte(apiConfig("deny")), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := api.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		var last error
		testkit.WaitFor(t, 10*time.Second, "web's calls to be denied after api's intentions reload", func() bool {
			last = call()
			return status.Code(last) == codes.PermissionDenied
		})
		n := app.Calls()
		last = call()
		if status.Code(last) != codes.PermissionDenied {
			t.Fatalf("after the reload: %v, want PERMISSION_DENIED", last)
		}
		msg := status.Convert(last).Message()
		if !strings.Contains(msg, webID) || !strings.Contains(msg, "call api") {
			t.Errorf("denial %q does not name the source %s and the destination api", msg, webID)
		}
		if app.Calls() != n {
			t.Error("a denied call reached api's app")
		}
		if got := env.meshMetric(t, "api", "meshd_authz_denied_total", map[string]string{"source": "web"}); got < 1 {
			t.Errorf("meshd_authz_denied_total{source=web} = %v on api, want ≥ 1", got)
		}
		t.Logf("denied: %v", last)
	})
}

// meshLAN makes a bridge in namespace "lan" and one namespace per entry of
// ips, each with eth0 on the bridge at its address (/24).
func (e *netnsEnv) meshLAN(t *testing.T, ips map[string]string) {
	t.Helper()
	e.addNetns(t, "lan")
	lan := e.name("lan")
	run(t, "ip", "-n", lan, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", lan, "link", "set", "br0", "up")
	for short, ip := range ips {
		e.addNetns(t, short)
		ns := e.name(short)
		run(t, "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", short, "netns", lan)
		run(t, "ip", "-n", lan, "link", "set", short, "master", "br0", "up")
		run(t, "ip", "-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		e.hosts = append(e.hosts, netnsHost{ns: ns, ip: ip})
	}
}

// podIP is the address of the mesh LAN namespace short.
func (e *netnsEnv) podIP(short string) string {
	for _, h := range e.hosts {
		if h.ns == e.name(short) {
			return h.ip
		}
	}
	panic("no pod " + short)
}

// scrapeIn fetches the /metrics of the meshd in namespace ns (admin on
// its pod address, port 15000, excluded from interception).
func (e *netnsEnv) scrapeIn(t *testing.T, ns string) testkit.Metrics {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return e.dialer(ns)(ctx, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 5 * time.Second, Transport: tr}
	return testkit.Scrape(t, c, "http://"+net.JoinHostPort(e.podIP(ns), "15000")+"/metrics")
}

// meshMetric sums the series of name with labels want in ns's meshd.
func (e *netnsEnv) meshMetric(t *testing.T, ns, name string, want map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, s := range e.scrapeIn(t, ns).Series(name, want) {
		if c := s.GetCounter(); c != nil {
			sum += c.GetValue()
		} else if g := s.GetGauge(); g != nil {
			sum += g.GetValue()
		}
	}
	return sum
}

// handled is how many UnaryCalls ns's meshd completed with code.
func (e *netnsEnv) handled(t *testing.T, ns, code string) float64 {
	t.Helper()
	return e.meshMetric(t, ns, "grpc_server_handled_total", map[string]string{"grpc_method": "UnaryCall", "grpc_code": code})
}

// waitMeshdReady waits for ns's meshd /ready (mesh identity loaded).
func (e *netnsEnv) waitMeshdReady(t *testing.T, ns string) {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return e.dialer(ns)(ctx, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: time.Second, Transport: tr}
	testkit.WaitFor(t, 15*time.Second, "meshd in "+ns+" ready", func() bool {
		resp, err := c.Get("http://" + net.JoinHostPort(e.podIP(ns), "15000") + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// packetCapture reads the IPv4 TCP packets of one interface from an
// AF_PACKET socket opened in the interface's namespace. Its goroutine is
// the capture's own; stop ends it and waits.
type packetCapture struct {
	fd   int
	done chan struct{}
	quit chan struct{}
	once sync.Once

	mu   sync.Mutex
	segs []tcpSegment
	err  error
}

// tcpSegment is one captured TCP segment with a payload.
type tcpSegment struct {
	src, dst netip.AddrPort
	seq      uint32
	payload  []byte
}

// capture starts capturing ifname in namespace ns (both directions).
func (e *netnsEnv) capture(t *testing.T, ns, ifname string) *packetCapture {
	t.Helper()
	c := &packetCapture{fd: -1, done: make(chan struct{}), quit: make(chan struct{})}
	e.in(t, ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		// SOCK_DGRAM: packets without their link-layer header. ETH_P_ALL:
		// outgoing packets too (an ETH_P_IP socket sees incoming only).
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind to %s: %w", ifname, err)
		}
		// A short receive timeout lets the reader notice stop.
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
		c.fd = fd
		return nil
	})
	go c.read()
	t.Cleanup(func() { c.halt() })
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *packetCapture) read() {
	defer close(c.done)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-c.quit:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Protocol != htons(unix.ETH_P_IP) {
			continue
		}
		if s, ok := parseTCP(buf[:n]); ok {
			c.mu.Lock()
			c.segs = append(c.segs, s)
			c.mu.Unlock()
		}
	}
}

// parseTCP returns the TCP segment of an IPv4 packet, if it has a payload.
func parseTCP(p []byte) (tcpSegment, bool) {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
		return tcpSegment{}, false
	}
	ihl, total := int(p[0]&0x0f)*4, int(binary.BigEndian.Uint16(p[2:4]))
	if total > len(p) || ihl < 20 || total < ihl+20 {
		return tcpSegment{}, false
	}
	src, _ := netip.AddrFromSlice(p[12:16])
	dst, _ := netip.AddrFromSlice(p[16:20])
	tcp := p[ihl:total]
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) || off == len(tcp) {
		return tcpSegment{}, false
	}
	return tcpSegment{
		src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2])),
		dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4])),
		seq:     binary.BigEndian.Uint32(tcp[4:8]),
		payload: bytes.Clone(tcp[off:]),
	}, true
}

func (c *packetCapture) halt() {
	c.once.Do(func() {
		close(c.quit)
		<-c.done
		unix.Close(c.fd)
	})
}

// capturedFlow is one TCP connection between web and api's port 9000: each
// direction's byte stream, reassembled by sequence number.
type capturedFlow struct {
	name               string
	toServer, toClient []byte
}

// stop ends the capture and returns the connections between web and api's
// port 9000 it saw.
func (c *packetCapture) stop(t *testing.T) []capturedFlow {
	t.Helper()
	c.halt()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		t.Fatalf("packet capture: %v", c.err)
	}
	web, api := netip.MustParseAddr(meshWebIP), netip.MustParseAddr(meshAPIIP)
	type key struct{ client netip.AddrPort }
	dirs := map[key][2][]tcpSegment{}
	var order []key
	for _, s := range c.segs {
		var k key
		var d int
		switch {
		case s.src.Addr() == web && s.dst.Addr() == api && s.dst.Port() == backendPort:
			k, d = key{s.src}, 0
		case s.src.Addr() == api && s.src.Port() == backendPort && s.dst.Addr() == web:
			k, d = key{s.dst}, 1
		default:
			continue
		}
		v, seen := dirs[k]
		if !seen {
			order = append(order, k)
		}
		v[d] = append(v[d], s)
		dirs[k] = v
	}
	var flows []capturedFlow
	for _, k := range order {
		v := dirs[k]
		flows = append(flows, capturedFlow{name: k.client.String(), toServer: reassemble(v[0]), toClient: reassemble(v[1])})
	}
	return flows
}

// reassemble orders segs by sequence number (relative to the first one
// captured) and drops retransmitted bytes.
func reassemble(segs []tcpSegment) []byte {
	if len(segs) == 0 {
		return nil
	}
	base := segs[0].seq
	rel := func(s tcpSegment) int64 { return int64(int32(s.seq - base)) }
	slices.SortStableFunc(segs, func(a, b tcpSegment) int { return int(rel(a) - rel(b)) })
	var out []byte
	start := rel(segs[0])
	for _, s := range segs {
		at := rel(s) - start
		end := at + int64(len(s.payload))
		if end <= int64(len(out)) {
			continue
		}
		if at > int64(len(out)) {
			break // a gap: the capture missed a segment; keep what is whole
		}
		out = append(out, s.payload[int64(len(out))-at:]...)
	}
	return out
}

// tlsRecords parses b as a sequence of TLS records and returns their
// content types; the last record may be cut short (the capture stopped
// mid-record). Any byte that is not part of a record is an error.
func tlsRecords(b []byte) ([]byte, error) {
	var types []byte
	for len(b) > 0 {
		if len(b) < 5 {
			return types, nil
		}
		typ, major, n := b[0], b[1], int(binary.BigEndian.Uint16(b[3:5]))
		if typ < 0x14 || typ > 0x17 || major != 0x03 || n > 1<<14+2048 {
			return types, fmt.Errorf("record %d: header % x", len(types), b[:5])
		}
		types = append(types, typ)
		b = b[min(len(b), 5+n):]
	}
	if len(types) == 0 {
		return nil, errors.New("no record")
	}
	return types, nil
}
