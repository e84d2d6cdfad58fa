package identity

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/discovery"
)

// NewConsul returns a Source for service's identity from the local Consul
// agent's built-in or external CA (Consul Connect): the agent's CA roots
// (GET /v1/agent/connect/ca/roots) and the service's leaf (GET
// /v1/agent/connect/ca/leaf/:service), each followed by a
// discovery.Follower with opts (WithWaitTime, WithBackoff; log is the
// default logger). The agent signs and renews the leaf itself; the Source
// only follows it. Run starts the loops. The Source adds component=identity,
// kind and service to log (the loops component=consul and watch), so log
// carries none of them.
func NewConsul(client *api.Client, service string, log *slog.Logger, opts ...discovery.ConsulOption) *Source {
	s := newSource(KindConsul, service, log)
	s.log = s.log.With("service", service)
	fopts := append([]discovery.ConsulOption{discovery.WithLogger(log)}, opts...)
	c := &consulLoops{src: s}
	c.roots = discovery.NewFollower("connect ca roots", func(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error) {
		return client.Agent().ConnectCARoots(q)
	}, fopts...)
	c.leaf = discovery.NewFollower("connect ca leaf "+service, func(q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error) {
		return client.Agent().ConnectCALeaf(service, q)
	}, fopts...)
	s.consul = c
	return s
}

// consulLoops follows the roots and the leaf. The two loops deliver on
// their own goroutines; mu serializes what they deliver into one rebuild
// at a time.
type consulLoops struct {
	src   *Source
	roots *discovery.Follower[*api.CARootList]
	leaf  *discovery.Follower[*api.LeafCert]

	mu        sync.Mutex
	rootList  []root // the latest usable roots, nil before the first
	trust     string // their trust domain
	rootsKey  string // content of the latest roots answer
	certPEM   string // the latest leaf
	keyPEM    string
	leafKey   string // content of the latest leaf answer
	failedKey string // inputs of the last failed build, logged once
}

// run runs both loops until ctx is done; both goroutines are joined
// before it returns.
func (c *consulLoops) run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c.roots.Run(ctx, c.onRoots)
	}()
	go func() {
		defer wg.Done()
		c.leaf.Run(ctx, c.onLeaf)
	}()
	wg.Wait()
	return ctx.Err()
}

// health reports whether both loops' last queries succeeded, and if not
// the first error.
func (c *consulLoops) health() (string, bool) {
	for _, st := range []discovery.WatchStatus{c.roots.Status(), c.leaf.Status()} {
		if !st.Healthy {
			if st.LastError == "" {
				return "waiting for the first answer from Consul", false
			}
			return st.LastError, false
		}
	}
	return "", true
}

// onRoots takes a roots answer. The index also moves for changes that do
// not touch the roots, so the content decides whether to rebuild.
func (c *consulLoops) onRoots(l *api.CARootList) {
	if l == nil {
		return
	}
	var key strings.Builder
	key.WriteString(l.TrustDomain + "\x00" + l.ActiveRootID)
	for _, r := range l.Roots {
		fmt.Fprintf(&key, "\x00%s\x00%t\x00%s", r.ID, r.Active, r.RootCertPEM)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if key.String() == c.rootsKey {
		return
	}
	c.rootsKey = key.String()
	roots, err := consulRoots(l)
	if err != nil {
		c.failed(c.rootsKey, err)
		return
	}
	c.rootList, c.trust = roots, l.TrustDomain
	c.rebuild()
}

// onLeaf takes a leaf answer.
func (c *consulLoops) onLeaf(l *api.LeafCert) {
	if l == nil {
		return
	}
	key := l.CertPEM + "\x00" + l.PrivateKeyPEM
	c.mu.Lock()
	defer c.mu.Unlock()
	if key == c.leafKey {
		return
	}
	c.leafKey, c.certPEM, c.keyPEM = key, l.CertPEM, l.PrivateKeyPEM
	c.rebuild()
}

// rebuild builds a Material from the latest leaf and roots once both are
// there. A pair that does not fit together (a restarted agent's new roots
// before its new leaf) keeps the last Material; the other answer follows.
// c.mu must be held.
func (c *consulLoops) rebuild() {
	if c.rootList == nil || c.certPEM == "" {
		return
	}
	m, err := newMaterial([]byte(c.certPEM), []byte(c.keyPEM), c.rootList, c.trust)
	if err != nil {
		c.failed(c.rootsKey+"\x00"+c.leafKey, err)
		return
	}
	c.failedKey = ""
	c.src.install(m)
}

// failed records err and logs it once per distinct input.
func (c *consulLoops) failed(key string, err error) {
	c.src.fail(err)
	if key != c.failedKey {
		c.failedKey = key
		c.src.log.Warn("consul identity answer not usable; keeping the last good one", "error", err)
	}
}

// consulRoots parses Consul's roots. Every root goes into the pool, active
// or not: during a rotation, peers still hold leaves of the old root.
func consulRoots(l *api.CARootList) ([]root, error) {
	if len(l.Roots) == 0 {
		return nil, fmt.Errorf("identity: consul lists no CA roots")
	}
	if l.TrustDomain == "" {
		return nil, fmt.Errorf("identity: consul CA roots have no trust domain")
	}
	roots := make([]root, 0, len(l.Roots))
	for _, r := range l.Roots {
		if r == nil {
			continue
		}
		b, _ := pem.Decode([]byte(r.RootCertPEM))
		if b == nil || b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("identity: consul CA root %s: no PEM certificate", r.ID)
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("identity: consul CA root %s: %w", r.ID, err)
		}
		roots = append(roots, root{id: r.ID, name: r.Name, active: r.Active, cert: cert})
	}
	return roots, nil
}
