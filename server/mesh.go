package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/credentials"

	"github.com/meshd/meshd/authz"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/director"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/internal/rawsock"
	"github.com/meshd/meshd/metrics"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
)

// meshRun is the workload's mesh identity and the authorization of its
// mesh listeners' calls. The Server builds it from the first config and
// owns its goroutines (the identity's and the intentions' Consul loops),
// which closeAll stops. Everything in it is safe for concurrent use: the
// data path reads the identity and the intention table through atomic
// pointers the loops swap.
type meshRun struct {
	cfg config.Mesh // as started: identity and service need a restart to change
	id  *identity.Source
	// watch follows Consul's intentions (identity consul_connect); nil
	// with identity files, whose intentions are the config's own, in
	// local (compiled on every apply).
	watch *authz.Watcher
	local atomic.Pointer[authz.Table]
	log   *slog.Logger

	mu     sync.Mutex
	fails  map[string]*atomic.Uint64 // handshake failures by listener
	opaque map[string]*atomic.Uint64 // opaque connections denied, by listener

	cancel context.CancelFunc
	done   chan struct{}
}

// newMesh starts the identity (and, from Consul, the intentions) of cfg's
// mesh section. consul is the client for identity consul_connect.
func newMesh(cfg *config.Config, consul *api.Client, log *slog.Logger) (*meshRun, error) {
	mc := *cfg.Mesh
	// The identity source and the intentions watcher get the server's
	// logger as it is: each adds its own component and service (slog
	// cannot replace a key a parent logger already carries). The mesh's
	// own lines say mesh.
	base := log
	log = log.With("component", "mesh", "service", mc.Service)
	m := &meshRun{cfg: mc, log: log, fails: map[string]*atomic.Uint64{}, opaque: map[string]*atomic.Uint64{}, done: make(chan struct{})}
	var run []func(context.Context) error
	switch mc.Identity {
	case config.IdentityFiles:
		src, err := identity.NewFiles(mc.CertFile, mc.KeyFile, mc.CAFile, base)
		if err != nil {
			return nil, fmt.Errorf("mesh identity: %w", err)
		}
		m.id = src
		if err := m.setLocal(&mc); err != nil {
			return nil, err
		}
		run = append(run, src.Run)
	default:
		if consul == nil {
			return nil, errors.New("mesh identity consul_connect: no consul client")
		}
		m.id = identity.NewConsul(consul, mc.Service, base)
		m.watch = authz.NewWatcher(consul, mc.Service, authz.ActionOf(mc.DefaultAction), base)
		run = append(run, m.id.Run, m.watch.Run)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	var wg sync.WaitGroup
	for _, r := range run {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Run returns ctx.Err() when stopped; anything else is
			// logged here, by the loops' owner.
			if err := r(ctx); err != nil && ctx.Err() == nil {
				log.Error("mesh watch stopped", "err", err)
			}
		}()
	}
	go func() {
		wg.Wait()
		close(m.done)
	}()
	return m, nil
}

// stop ends the loops and waits for them.
func (m *meshRun) stop() {
	m.cancel()
	<-m.done
}

// setLocal compiles the config's own intentions (identity files).
func (m *meshRun) setLocal(mc *config.Mesh) error {
	t, err := authz.Compile(mc.Service, authz.FromConfig(mc.Intentions), authz.ActionOf(mc.DefaultAction))
	if err != nil {
		return fmt.Errorf("mesh.intentions: %w", err)
	}
	m.local.Store(t)
	return nil
}

// apply takes a reloaded config's mesh section: local intentions and the
// default action reload with the file; the identity and the service need
// a restart, so a reload that changes them fails and changes nothing.
func (m *meshRun) apply(mc *config.Mesh) error {
	if mc == nil {
		return errors.New("mesh section removed: restart meshd to turn the mesh off")
	}
	same := *mc
	same.Intentions, same.DefaultAction = m.cfg.Intentions, m.cfg.DefaultAction
	if m.watch != nil {
		// From Consul, the default action is the watcher's.
		same.DefaultAction = mc.DefaultAction
	}
	if !reflect.DeepEqual(same, m.cfg) {
		return errors.New("mesh section changed (service, identity or its files): restart meshd to apply")
	}
	if m.watch != nil {
		return nil
	}
	return m.setLocal(mc)
}

// table is the intention table in force, nil before the first one.
func (m *meshRun) table() *authz.Table {
	if m.watch != nil {
		return m.watch.Table()
	}
	return m.local.Load()
}

// Authorize implements director.Authorizer. Before the first table (meshd
// is not ready then) every call is denied.
func (m *meshRun) Authorize(source, method string, h router.Headers) bool {
	t := m.table()
	return t != nil && t.Decide(source, method, h).Allow
}

// ready returns why the mesh cannot serve yet, or nil.
func (m *meshRun) ready() error {
	if m.id.Current() == nil {
		if e := m.id.Status().LastError; e != "" {
			return fmt.Errorf("mesh identity not loaded yet: %s", e)
		}
		return errors.New("mesh identity not loaded yet (leaf certificate and CA roots)")
	}
	if m.table() == nil {
		if e := m.watch.Status().LastError; e != "" {
			return fmt.Errorf("mesh intentions not loaded yet: %s", e)
		}
		return errors.New("mesh intentions not loaded yet")
	}
	return nil
}

// clientTLS is how a mesh_tls cluster dials its endpoints: as this
// workload, to a peer that must be service.
func (m *meshRun) clientTLS(service string) *tls.Config { return m.id.ClientConfig(service) }

// upstream is a mesh_tls cluster's way to its endpoints, for calls (the
// engine's Upstream) and health checks (grpc-go credentials); both
// handshake with the identity in force at dial time.
func (m *meshRun) upstream(cluster, service string) (credentials.TransportCredentials, *engine.Upstream) {
	creds := credentials.NewTLS(m.clientTLS(service))
	up := &engine.Upstream{Name: cluster, Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		return dialTLS(ctx, addr, m.clientTLS(service))
	}}
	return creds, up
}

// failures returns the handshake failure counter of listener.
func (m *meshRun) failures(listener string) *atomic.Uint64 { return m.counter(m.fails, listener) }

// counter returns listener's counter in by, made on first use.
func (m *meshRun) counter(by map[string]*atomic.Uint64, listener string) *atomic.Uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := by[listener]
	if c == nil {
		c = new(atomic.Uint64)
		by[listener] = c
	}
	return c
}

// listen wraps a mesh listener: each accepted connection is TLS with the
// mesh identity (strict), or TLS or plaintext by its first byte
// (permissive). The handshake runs on the connection's own goroutine,
// lazily, under the engine's handshake timeout.
func (m *meshRun) listen(lis net.Listener, lc config.Listener) net.Listener {
	// The config reads the identity in force at each handshake.
	return &meshListener{Listener: lis, cfg: m.id.ServerConfig(), log: m.log,
		permissive: lc.MeshTLS == config.MeshTLSPermissive, fails: m.failures(lc.Name)}
}

type meshListener struct {
	net.Listener
	cfg        *tls.Config
	log        *slog.Logger
	permissive bool
	fails      *atomic.Uint64
}

// Accept wraps the next connection; its handshake happens on first use.
func (l *meshListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	nc = rawsock.Wrap(nc) // crypto/tls reads and writes it: no entersyscall
	var c net.Conn
	if l.permissive {
		c = identity.Sniff(nc, l.cfg)
	} else {
		c = tls.Server(nc, l.cfg)
	}
	return &meshConn{Conn: c, fails: l.fails, log: l.log}, nil
}

// meshConn is an accepted mesh connection: TLS (or, permissive, maybe
// plaintext) over the accepted socket. It counts a failed handshake once,
// and unwraps (NetConn) to the socket, so that an original_dst listener
// still finds the connection's original destination.
type meshConn struct {
	net.Conn // *tls.Conn or identity.Sniff's connection
	fails    *atomic.Uint64
	log      *slog.Logger
	counted  atomic.Bool
}

func (c *meshConn) NetConn() net.Conn { return c.Conn }

func (c *meshConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.check(err)
	}
	return n, err
}

func (c *meshConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.check(err)
	}
	return n, err
}

// check counts err if the TLS handshake failed with it: the peer sent
// plaintext to a strict listener, no client certificate, or one the mesh
// does not trust (it got a TLS alert saying so), or it gave up or timed
// out mid-handshake. Errors after the handshake, and on plaintext
// connections of a permissive listener, are not handshake failures.
func (c *meshConn) check(err error) {
	cs, isTLS := c.tlsState()
	if !isTLS || cs.HandshakeComplete || !c.counted.CompareAndSwap(false, true) {
		return
	}
	c.fails.Add(1)
	c.log.Debug("mesh handshake failed", "remote", c.RemoteAddr(), "err", err)
}

// tlsState is the connection's TLS state; isTLS is false for plaintext
// (or before a permissive listener's first byte).
func (c *meshConn) tlsState() (cs tls.ConnectionState, isTLS bool) {
	switch x := c.Conn.(type) {
	case *tls.Conn:
		return x.ConnectionState(), true
	case *identity.SniffConn:
		return x.ConnectionState()
	}
	return tls.ConnectionState{}, false
}

// state is the connection's completed TLS handshake; false for
// plaintext or before the handshake is done.
func (c *meshConn) state() (tls.ConnectionState, bool) {
	cs, isTLS := c.tlsState()
	return cs, isTLS && cs.HandshakeComplete
}

// peer is the caller of a mesh connection whose handshake is done:
// authenticated by its certificate, or (permissive plaintext) anonymous.
func (c *meshConn) peer() director.Peer {
	cs, ok := c.state()
	if !ok {
		return director.Peer{}
	}
	id, ok := identity.PeerID(&cs)
	if !ok {
		// The handshake verified the certificate; an ID it could not
		// parse would be a bug there. No identity: only "*" rules apply.
		return director.Peer{}
	}
	return director.Peer{Service: id.Service, ID: id.String()}
}

type meshConnKey struct{}

// withMeshConn records the mesh connection under a connection the engine
// serves (origdst's replaying one), for connContext.
func withMeshConn(ctx context.Context, c *meshConn) context.Context {
	return context.WithValue(ctx, meshConnKey{}, c)
}

// connContext is the engine's ConnContext on mesh listeners: every call
// of the connection carries its caller. It runs after the engine's
// handshake, which completed TLS. A mesh listener's connection always
// gets a Peer (at worst an anonymous one), so none skips authorization.
func connContext(ctx context.Context, nc net.Conn) context.Context {
	c, ok := nc.(*meshConn)
	if !ok {
		c, _ = ctx.Value(meshConnKey{}).(*meshConn)
	}
	if c == nil {
		return director.WithPeer(ctx, director.Peer{})
	}
	return director.WithPeer(ctx, c.peer())
}

// admitOpaque is origdst's AdmitOpaque on lc: on a mesh listener an
// opaque TCP connection (anything but gRPC inside the TLS, or plaintext
// on a permissive listener) is authorized at L4 before it is relayed to
// the app; otherwise any certificate of the trust domain, or any
// plaintext client of a permissive listener, would reach the app's ports
// whatever the intentions say. Nil on other listeners.
func (s *Server) admitOpaque(lc config.Listener) func(net.Conn, netip.AddrPort) error {
	if lc.MeshTLS == "" || s.mesh == nil {
		return nil
	}
	m := s.mesh
	denied := m.counter(m.opaque, lc.Name)
	return func(nc net.Conn, dst netip.AddrPort) error {
		var p director.Peer
		if c, ok := nc.(*meshConn); ok {
			p = c.peer()
		}
		d := m.table().DecideTCP(p.Service)
		if d.Allow {
			return nil
		}
		err := policy.ErrDenied(p.ID, m.cfg.Service)
		denied.Add(1)
		m.log.Debug("opaque connection denied", "listener", lc.Name, "remote", nc.RemoteAddr(), "dst", dst,
			"peer", p.ID, "rule", d.Rule, "reason", d.Reason)
		return err
	}
}

// meshState implements metrics.MeshSource's value.
func (m *meshRun) state() metrics.MeshState {
	st := metrics.MeshState{Service: m.cfg.Service, Ready: m.ready() == nil, HandshakeFailures: map[string]uint64{}, OpaqueDenied: map[string]uint64{}}
	if cur := m.id.Current(); cur != nil {
		st.LeafNotAfter = cur.Leaf.NotAfter
		st.Roots = len(cur.RootIDs)
	}
	m.mu.Lock()
	for l, n := range m.fails {
		st.HandshakeFailures[l] = n.Load()
	}
	for l, n := range m.opaque {
		st.OpaqueDenied[l] = n.Load()
	}
	m.mu.Unlock()
	return st
}

// certs is GET /certs.
func (m *meshRun) certs() any {
	out := map[string]any{"identity": m.id.Status()}
	if m.watch != nil {
		out["intentions_source"] = "consul"
		out["intentions_watch"] = m.watch.Status()
	} else {
		out["intentions_source"] = "config"
	}
	return out
}

// dump is the compiled intentions, for /config_dump.
func (m *meshRun) dump() any {
	t := m.table()
	if t == nil {
		return nil
	}
	return t.Dump()
}

// startMesh validates cfg (the mesh needs a sound section before it
// starts watching) and starts its mesh, with a Consul client of its own
// for identity consul_connect.
func (s *Server) startMesh(cfg *config.Config) (*meshRun, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("server: invalid config: %w", err)
	}
	var consul *api.Client
	if cfg.MeshNeedsConsul() {
		c, err := discovery.NewConsulClient(cfg.Consul.Address, cfg.Consul.Token)
		if err != nil {
			return nil, fmt.Errorf("server: mesh: %w", err)
		}
		consul = c
	}
	m, err := newMesh(cfg, consul, s.log)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return m, nil
}

// applyMesh checks a config's mesh section against the mesh in force and
// takes what may reload (mesh.apply). A mesh cannot be added by a reload:
// its listeners and identity start with meshd.
func (s *Server) applyMesh(old, cfg *config.Config) error {
	switch {
	case s.mesh == nil && cfg.Mesh != nil:
		return errors.New("mesh section added: restart meshd to start the mesh identity")
	case s.mesh == nil:
		return nil
	case old == nil:
		return nil // the mesh was built from this config
	}
	return s.mesh.apply(cfg.Mesh)
}

// Certs implements admin.CertSource.
func (s *Server) Certs() (any, bool) {
	if s.mesh == nil {
		return nil, false
	}
	return s.mesh.certs(), true
}

// MeshState implements metrics.MeshSource.
func (s *Server) MeshState() (metrics.MeshState, bool) {
	if s.mesh == nil {
		return metrics.MeshState{}, false
	}
	return s.mesh.state(), true
}

// warmMesh waits, like warm for clusters and within the same bound, for
// the mesh identity and intentions before the listeners serve: until
// then every mesh handshake would fail and every call be denied, and
// mesh clusters' health checks could not connect. Connections that
// arrive meanwhile wait in the listen backlog.
func (s *Server) warmMesh(ctx context.Context) {
	if s.mesh == nil {
		return
	}
	deadline := time.NewTimer(warmTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for s.mesh.ready() != nil {
		select {
		case <-tick.C:
		case <-deadline.C:
			s.log.Warn("mesh identity not loaded in time; serving anyway (/ready says why)", "timeout", warmTimeout, "why", s.mesh.ready())
			return
		case <-ctx.Done():
			return
		case <-s.stopping:
			return
		}
	}
}
