package identity_test

import (
	"crypto/tls"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/internal/testkit"
)

const filesTD = "files.test"

func svcURI(td, svc string) string {
	return "spiffe://" + td + "/ns/default/dc/dc1/svc/" + svc
}

// idFiles is one workload's cert, key and CA files in a test directory.
type idFiles struct {
	cert, key, ca string
}

func newIDFiles(t testing.TB, name string) idFiles {
	dir := t.TempDir()
	return idFiles{filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, "ca.crt")}
}

// write replaces the files' contents (each with a rename, as a careful
// deployer would; the tests of bad rewrites write in place on purpose).
func (f idFiles) write(t testing.TB, cert, key, ca []byte) {
	t.Helper()
	for _, w := range []struct {
		path string
		b    []byte
	}{{f.cert, cert}, {f.key, key}, {f.ca, ca}} {
		if w.b == nil {
			continue
		}
		tmp := w.path + ".tmp"
		if err := os.WriteFile(tmp, w.b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, w.path); err != nil {
			t.Fatal(err)
		}
	}
}

// filesSource writes a leaf for svc issued by ca and opens a files Source
// on it (not running).
func filesSource(t testing.TB, ca *testkit.CA, svc string) (*identity.Source, idFiles) {
	t.Helper()
	f := newIDFiles(t, svc)
	cert, key, _ := ca.IssueSPIFFE(t, svcURI(filesTD, svc))
	f.write(t, cert, key, ca.PEM())
	s, err := identity.NewFiles(f.cert, f.key, f.ca, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return s, f
}

// TestFilesRotate: a files source serves mTLS, picks up a rewritten leaf
// on the next handshake, and keeps the last good leaf through rewrites
// that are garbage, truncated or mismatched.
func TestFilesRotate(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "files root")
	api, apiFiles := filesSource(t, ca, "api")
	web, _ := filesSource(t, ca, "web")
	run(t, api)
	run(t, web)
	waitReady(t, api, time.Second)

	o := handshake(t, api.ServerConfig(), web.ClientConfig("api"))
	if o.serverErr != nil || o.clientErr != nil {
		t.Fatalf("handshake: server %v, client %v", o.serverErr, o.clientErr)
	}
	if id, ok := o.peer(); !ok || id.Service != "web" || id.TrustDomain != filesTD {
		t.Fatalf("server's peer = %v, %v; want web in %s", id, ok, filesTD)
	}
	st := api.Status()
	if st.Kind != identity.KindFiles || !st.Ready || !st.Healthy || st.Service != "api" || st.TrustDomain != filesTD || len(st.Roots) != 1 || st.LastError != "" {
		t.Fatalf("status = %+v", st)
	}

	// A new leaf: the next handshakes present it.
	cert2, key2, serial2 := ca.IssueSPIFFE(t, svcURI(filesTD, "api"))
	apiFiles.write(t, cert2, key2, nil)
	servesSerial := func(want int64) bool {
		o := handshake(t, api.ServerConfig(), web.ClientConfig("api"))
		if o.clientErr != nil || o.serverErr != nil {
			t.Fatalf("handshake: server %v, client %v", o.serverErr, o.clientErr)
		}
		return o.serverSerial().Cmp(big.NewInt(want)) == 0
	}
	testkit.WaitFor(t, 10*time.Second, "the rewritten leaf in handshakes", func() bool { return servesSerial(serial2) })
	if !api.Expiry().Equal(api.Current().Leaf.NotAfter) || api.Expiry().IsZero() {
		t.Fatalf("Expiry = %v", api.Expiry())
	}

	cert3, _, _ := ca.IssueSPIFFE(t, svcURI(filesTD, "api"))
	bad := []struct {
		name      string
		cert, key []byte
	}{
		{"garbage", []byte("not a certificate"), nil},
		{"half written", cert2[:len(cert2)/2], nil},
		{"cert without its key", cert3, nil},
		{"empty key", nil, []byte{}},
	}
	for _, b := range bad {
		// In place, as a crashed or naive writer leaves it.
		if b.cert != nil {
			os.WriteFile(apiFiles.cert, b.cert, 0o600)
		}
		if b.key != nil {
			os.WriteFile(apiFiles.key, b.key, 0o600)
		}
		testkit.WaitFor(t, 10*time.Second, b.name+" noticed", func() bool { return api.Status().LastError != "" })
		if st := api.Status(); st.Healthy || !st.Ready {
			t.Fatalf("%s: status = %+v", b.name, st)
		}
		if !servesSerial(serial2) {
			t.Fatalf("%s: the last good leaf is no longer served", b.name)
		}
		apiFiles.write(t, cert2, key2, nil) // whole again
		testkit.WaitFor(t, 10*time.Second, b.name+" repaired", func() bool { return api.Status().LastError == "" })
	}
}

// TestFilesChain: a leaf issued by an intermediate verifies when its file
// carries the intermediate; both sides send and use it.
func TestFilesChain(t *testing.T) {
	t.Parallel()
	root := testkit.NewCA(t, "chain root")
	mid := root.Intermediate(t, "chain intermediate")
	mk := func(svc string) *identity.Source {
		f := newIDFiles(t, svc)
		cert, key, _ := mid.IssueSPIFFE(t, svcURI(filesTD, svc))
		f.write(t, append(cert, mid.PEM()...), key, root.PEM())
		s, err := identity.NewFiles(f.cert, f.key, f.ca, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	api, web := mk("api"), mk("web")
	o := handshake(t, api.ServerConfig(), web.ClientConfig("api"))
	if o.serverErr != nil || o.clientErr != nil {
		t.Fatalf("handshake: server %v, client %v", o.serverErr, o.clientErr)
	}
	if len(o.client.PeerCertificates) != 2 || len(o.server.PeerCertificates) != 2 {
		t.Fatalf("chains sent: %d to the client, %d to the server; want 2 each", len(o.client.PeerCertificates), len(o.server.PeerCertificates))
	}
}

// TestNewFilesErrors: NewFiles refuses what could never handshake.
func TestNewFilesErrors(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "root")
	other := testkit.NewCA(t, "other root")
	mid := ca.Intermediate(t, "mid")
	good, goodKey, _ := ca.IssueSPIFFE(t, svcURI(filesTD, "api"))
	otherCert, otherKey, _ := other.IssueSPIFFE(t, svcURI(filesTD, "api"))
	dnsCert, dnsKey, _ := ca.Issue(t, "api")
	midLeaf, midKey, _ := mid.IssueSPIFFE(t, svcURI(filesTD, "api"))
	_, strayKey, _ := ca.IssueSPIFFE(t, svcURI(filesTD, "api"))
	tests := []struct {
		name          string
		cert, key, ca []byte // nil: file missing
		want          string
	}{
		{"missing key file", good, nil, ca.PEM(), "no such file"},
		{"garbage cert", []byte("x"), goodKey, ca.PEM(), "key pair"},
		{"key of another leaf", good, strayKey, ca.PEM(), "key pair"},
		{"leaf of another CA", otherCert, otherKey, ca.PEM(), "does not verify"},
		{"no SPIFFE ID", dnsCert, dnsKey, ca.PEM(), "no URI SAN"},
		{"intermediate not sent", midLeaf, midKey, ca.PEM(), "does not verify"},
		{"empty CA file", good, goodKey, []byte{}, "no CA certificate"},
		{"truncated CA file", good, goodKey, ca.PEM()[:40], "trailing data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newIDFiles(t, "api")
			f.write(t, tt.cert, tt.key, tt.ca)
			s, err := identity.NewFiles(f.cert, f.key, f.ca, testLogger(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewFiles = %v, %v; want an error with %q", s, err, tt.want)
			}
		})
	}
}

// BenchmarkHandshake is one full mTLS handshake (TLS 1.3, ECDSA P-256
// leaves, both chains verified by the mesh rule) over net.Pipe, both
// sides' CPU on this machine.
func BenchmarkHandshake(b *testing.B) {
	ca := testkit.NewCA(b, "bench root")
	api, _ := filesSource(b, ca, "api")
	web, _ := filesSource(b, ca, "web")
	srvCfg, cliCfg := api.ServerConfig(), web.ClientConfig("api")
	b.ReportAllocs()
	for b.Loop() {
		sc, cc := netPipe()
		errc := make(chan error, 1)
		go func() {
			s := tls.Server(sc, srvCfg)
			errc <- s.Handshake()
			sc.Close()
		}()
		c := tls.Client(cc, cliCfg)
		if err := c.Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		cc.Close()
	}
}
