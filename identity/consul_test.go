package identity_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testkit"
)

// consulSource runs a Consul source for svc for the life of the test,
// retrying fast so that outage tests are quick.
func consulSource(t *testing.T, agent *consultest.Agent, svc string) *identity.Source {
	t.Helper()
	s := identity.NewConsul(agent.Client, svc, testLogger(t).With("test", t.Name()),
		discovery.WithBackoff(50*time.Millisecond, 500*time.Millisecond), discovery.WithWaitTime(30*time.Second))
	run(t, s)
	return s
}

func mustHandshake(t *testing.T, server, client *identity.Source, expect string) outcome {
	t.Helper()
	o := handshake(t, server.ServerConfig(), client.ClientConfig(expect))
	if o.serverErr != nil || o.clientErr != nil {
		t.Fatalf("handshake: server %v, client %v", o.serverErr, o.clientErr)
	}
	return o
}

// TestConsulMTLS: two services' Consul identities on one agent; the mesh
// rule admits the right peers and refuses the rest, on both sides.
func TestConsulMTLS(t *testing.T) {
	t.Parallel()
	agent := sharedAgent(t)
	web := consulSource(t, agent, "web")
	apiSrc := consulSource(t, agent, "api")
	wm := waitReady(t, web, 30*time.Second)
	am := waitReady(t, apiSrc, 30*time.Second)

	td := am.TrustDomain
	if wm.TrustDomain != td || am.ID.TrustDomain != td || am.ID.Service != "api" || am.ID.Datacenter != consultest.Datacenter {
		t.Fatalf("materials: web %v in %s, api %v in %s", wm.ID, wm.TrustDomain, am.ID, td)
	}
	testkit.WaitFor(t, 10*time.Second, "healthy status", func() bool { return apiSrc.Status().Healthy })
	st := apiSrc.Status()
	if st.Kind != identity.KindConsul || st.Service != "api" || st.SPIFFEID != am.ID.String() || !st.Ready ||
		st.Serial == "" || st.NotAfter.IsZero() || len(st.Roots) == 0 || !st.Roots[0].Active || st.LastError != "" {
		t.Fatalf("status = %+v", st)
	}
	if !apiSrc.Expiry().Equal(st.NotAfter) {
		t.Fatalf("Expiry = %v, status NotAfter %v", apiSrc.Expiry(), st.NotAfter)
	}

	other := testkit.NewCA(t, "other")
	otherTD, otherKey, _ := other.IssueSPIFFE(t, svcURI("other.consul", "web"))
	otherSameTD, otherSameTDKey, _ := other.IssueSPIFFE(t, svcURI(td, "web"))
	pair := func(c, k []byte) []tls.Certificate {
		p, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{p}
	}
	rogue := func(certs []tls.Certificate) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, Certificates: certs, NextProtos: []string{"h2"}}
	}
	tests := []struct {
		name       string
		server     *tls.Config
		client     *tls.Config
		serverErr  string // "" means success expected
		clientErr  string
		wantCaller string
	}{
		{name: "web dials api", server: apiSrc.ServerConfig(), client: web.ClientConfig("api"), wantCaller: "web"},
		{name: "api dials web", server: web.ServerConfig(), client: apiSrc.ClientConfig("web"), wantCaller: "api"},
		{name: "web expects billing", server: apiSrc.ServerConfig(), client: web.ClientConfig("billing"),
			serverErr: "remote error", clientErr: "svc/api, want service billing"},
		{name: "self-signed client", server: apiSrc.ServerConfig(), client: rogue([]tls.Certificate{selfSigned(t, svcURI(td, "web"))}),
			serverErr: "does not verify"},
		{name: "client of another CA and trust domain", server: apiSrc.ServerConfig(), client: rogue(pair(otherTD, otherKey)),
			serverErr: "does not verify"},
		{name: "client of another CA claiming this trust domain", server: apiSrc.ServerConfig(), client: rogue(pair(otherSameTD, otherSameTDKey)),
			serverErr: "does not verify"},
		{name: "no client certificate", server: apiSrc.ServerConfig(), client: rogue(nil),
			serverErr: "certificate"},
		{name: "server of another CA", server: &tls.Config{Certificates: pair(otherSameTD, otherSameTDKey)}, client: web.ClientConfig("web"),
			clientErr: "does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := handshake(t, tt.server, tt.client)
			check := func(side string, err error, want string) {
				t.Helper()
				switch {
				case want == "" && err != nil && tt.serverErr == "" && tt.clientErr == "":
					t.Errorf("%s: %v", side, err)
				case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
					t.Errorf("%s error = %v, want one with %q", side, err, want)
				}
			}
			t.Logf("server: %v; client: %v", o.serverErr, o.clientErr)
			check("server", o.serverErr, tt.serverErr)
			check("client", o.clientErr, tt.clientErr)
			if tt.wantCaller != "" {
				id, ok := o.peer()
				if !ok || id.Service != tt.wantCaller || id.TrustDomain != td {
					t.Errorf("PeerID = %v, %v; want %s in %s", id, ok, tt.wantCaller, td)
				}
				if o.server.NegotiatedProtocol != "h2" {
					t.Errorf("ALPN = %q, want h2", o.server.NegotiatedProtocol)
				}
			}
		})
	}

	t.Run("not ready", func(t *testing.T) {
		t.Parallel()
		idle := identity.NewConsul(agent.Client, "idle", nil) // never run
		if idle.Current() != nil || idle.Status().Ready || !idle.Expiry().IsZero() {
			t.Fatalf("a source that never ran: %+v", idle.Status())
		}
		if o := handshake(t, idle.ServerConfig(), web.ClientConfig("idle")); o.serverErr == nil || !strings.Contains(o.serverErr.Error(), "not ready") {
			t.Fatalf("server handshake error = %v, want not ready", o.serverErr)
		}
		if o := handshake(t, apiSrc.ServerConfig(), idle.ClientConfig("api")); o.clientErr == nil || !strings.Contains(o.clientErr.Error(), "not ready") {
			t.Fatalf("client handshake error = %v, want not ready", o.clientErr)
		}
	})
	t.Run("sniff plaintext", func(t *testing.T) {
		t.Parallel()
		sc, cc := sniffPair(t, apiSrc.ServerConfig())
		const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
		go cc.Write([]byte(preface))
		buf := make([]byte, len(preface))
		if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != preface {
			t.Fatalf("read %q, %v", buf, err)
		}
		if _, ok := sc.(*identity.SniffConn).ConnectionState(); ok {
			t.Fatal("plaintext connection has a TLS state")
		}
	})
	t.Run("sniff plaintext, server writes first", func(t *testing.T) {
		t.Parallel()
		sc, cc := sniffPair(t, apiSrc.ServerConfig())
		errc := make(chan error, 1)
		go func() { _, err := sc.Write([]byte("SETTINGS\n")); errc <- err }()
		if _, err := cc.Write([]byte("P")); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(cc).ReadString('\n')
		if err != nil || line != "SETTINGS\n" {
			t.Fatalf("client read %q, %v", line, err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(sc, b); err != nil || b[0] != 'P' {
			t.Fatalf("server read %q, %v: the sniffed byte was not put back", b, err)
		}
	})
	t.Run("sniff TLS", func(t *testing.T) {
		t.Parallel()
		sc, cc := sniffPair(t, apiSrc.ServerConfig())
		tc := tls.Client(cc, web.ClientConfig("api"))
		go tc.Write([]byte("hello"))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "hello" {
			t.Fatalf("read %q, %v", buf, err)
		}
		cs, ok := sc.(*identity.SniffConn).ConnectionState()
		if !ok {
			t.Fatal("TLS connection has no TLS state")
		}
		if id, ok := identity.PeerID(&cs); !ok || id.Service != "web" {
			t.Fatalf("PeerID = %v, %v; want web", id, ok)
		}
		if sc.(*identity.SniffConn).NetConn() == nil {
			t.Fatal("NetConn is nil")
		}
	})
}

// sniffPair is a loopback connection whose server end is wrapped by Sniff.
// Both ends close when the test ends.
func sniffPair(t *testing.T, cfg *tls.Config) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	nc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	server = identity.Sniff(nc, cfg)
	deadline := time.Now().Add(10 * time.Second)
	server.SetDeadline(deadline)
	client.SetDeadline(deadline)
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// TestConsulCARotation: a new root (CASetConfig) reaches both Sources,
// which then present leaves of the new root, while handshakes between
// them keep succeeding throughout.
func TestConsulCARotation(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	web := consulSource(t, agent, "web")
	apiSrc := consulSource(t, agent, "api")
	old := waitReady(t, apiSrc, 30*time.Second)
	waitReady(t, web, 30*time.Second)
	mustHandshake(t, apiSrc, web, "api")

	agent.RotateCA(t)
	var newRoot *x509.Certificate
	var newRootID string
	testkit.WaitFor(t, 10*time.Second, "a new active root", func() bool {
		l, _, err := agent.Client.Agent().ConnectCARoots(nil)
		if err != nil || l.ActiveRootID == "" || l.ActiveRootID == old.RootIDs[0] {
			return false
		}
		for _, r := range l.Roots {
			if r.ID == l.ActiveRootID {
				b, _ := pem.Decode([]byte(r.RootCertPEM))
				if newRoot, err = x509.ParseCertificate(b.Bytes); err != nil {
					t.Fatal(err)
				}
				newRootID = r.ID
			}
		}
		return newRoot != nil
	})

	rotated := func(s *identity.Source) bool {
		m := s.Current()
		return m.Leaf.CheckSignatureFrom(newRoot) == nil
	}
	handshakes := 0
	ok := testkit.Poll(45*time.Second, 100*time.Millisecond, func() bool {
		mustHandshake(t, apiSrc, web, "api")
		mustHandshake(t, web, apiSrc, "web")
		handshakes += 2
		return rotated(apiSrc) && rotated(web)
	})
	if !ok {
		t.Fatalf("leaves not issued by the new root within 45s: api %+v, web %+v", apiSrc.Status(), web.Status())
	}
	o := mustHandshake(t, apiSrc, web, "api")
	if id, _ := o.peer(); id.Service != "web" {
		t.Fatalf("peer after rotation = %v", id)
	}
	m := apiSrc.Current()
	found := false
	for _, id := range m.RootIDs {
		found = found || id == newRootID
	}
	if !found || m.TrustDomain != old.TrustDomain {
		t.Fatalf("after rotation: roots %v (want %s among them), trust domain %s (was %s)", m.RootIDs, newRootID, m.TrustDomain, old.TrustDomain)
	}
	t.Logf("rotated after %d successful handshakes; roots now %v, leaf chain length %d", handshakes, m.RootIDs, len(m.Cert.Certificate))
}

// TestConsulRestart: while the agent is down the last Material keeps
// serving; a restarted dev agent has a new CA and trust domain, which the
// Sources pick up.
func TestConsulRestart(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	web := consulSource(t, agent, "web")
	apiSrc := consulSource(t, agent, "api")
	old := waitReady(t, apiSrc, 30*time.Second)
	waitReady(t, web, 30*time.Second)
	mustHandshake(t, apiSrc, web, "api")

	agent.Stop(t)
	for _, s := range []*identity.Source{apiSrc, web} {
		testkit.WaitFor(t, 10*time.Second, "status unhealthy", func() bool { return !s.Status().Healthy })
		st := s.Status()
		if !st.Ready || st.LastError == "" || s.Current() == nil {
			t.Fatalf("while Consul is down: status %+v", st)
		}
	}
	o := mustHandshake(t, apiSrc, web, "api")
	if id, _ := o.peer(); id.TrustDomain != old.TrustDomain {
		t.Fatalf("while down: peer %v", id)
	}

	agent.Restart(t)
	for _, s := range []*identity.Source{apiSrc, web} {
		testkit.WaitFor(t, 30*time.Second, "healthy with the new trust domain", func() bool {
			st := s.Status()
			return st.Healthy && st.Ready && st.TrustDomain != old.TrustDomain && strings.Contains(st.SPIFFEID, st.TrustDomain)
		})
	}
	o = mustHandshake(t, apiSrc, web, "api")
	id, ok := o.peer()
	if !ok || id.Service != "web" || id.TrustDomain == old.TrustDomain {
		t.Fatalf("after restart: peer %v, %v (old trust domain %s)", id, ok, old.TrustDomain)
	}
}
