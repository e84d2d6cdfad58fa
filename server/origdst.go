package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/director"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/origdst"
)

// passthroughIdle is how long a passthrough cluster (one original
// destination) lives without calls before its connection is closed.
const passthroughIdle = 2 * time.Minute

// destinations is the Server's side of transparent interception: which
// cluster owns an address (from the clusters' live discovery snapshots),
// and one small cluster per original destination that no cluster owns. It
// implements director.Destinations.
type destinations struct {
	// log is the server's logger, not narrowed: the passthrough clusters
	// and pools it is handed to add their own component.
	log *slog.Logger

	// owners maps "ip:port" to the owning cluster's name; rebuilt (copy on
	// write) whenever a cluster's endpoints change.
	owners atomic.Pointer[map[string]string]
	omu    sync.Mutex
	byRun  map[*clusterRun]ownedAddrs

	pmu          sync.RWMutex
	passthroughs map[string]*passthrough
	// evicted holds the counters of the passthrough pools closed so far,
	// so that their sum (poolStats) never goes down.
	evicted engine.PoolStats
	closed  bool
	janitor chan struct{} // closed to stop the janitor; nil until started
	jdone   chan struct{}

	cmu   sync.Mutex
	creds []*origdst.Credentials
}

type ownedAddrs struct {
	cluster string
	addrs   []string
}

// passthrough is the cluster of one original destination, with the pool
// of its connections for calls (up.Pool): closed with the cluster when it
// idles out, so meshd does not keep a connection to every destination ever
// passed through.
type passthrough struct {
	cl       *balancer.Cluster
	up       *engine.Upstream
	lastUsed atomic.Int64 // unix nanoseconds
}

// close closes the cluster, then its pool, within ctx.
func (p *passthrough) close(ctx context.Context) {
	p.cl.Close()
	_ = p.up.Pool.Shutdown(ctx)
}

var _ director.Destinations = (*destinations)(nil)

func newDestinations(log *slog.Logger) *destinations {
	d := &destinations{log: log, byRun: map[*clusterRun]ownedAddrs{}, passthroughs: map[string]*passthrough{}}
	d.owners.Store(&map[string]string{})
	return d
}

// normAddr writes IP addresses one way ("::ffff:10.0.0.1:80" and
// "10.0.0.1:80" are the same destination); other strings are kept.
func normAddr(a string) string {
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		return a
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// watch wraps a cluster's discovery update so that each snapshot also
// updates the owner index, before the cluster sees it.
func (d *destinations) watch(r *clusterRun, cluster string, update func([]discovery.Endpoint)) func([]discovery.Endpoint) {
	return func(eps []discovery.Endpoint) {
		addrs := make([]string, len(eps))
		for i, e := range eps {
			addrs[i] = normAddr(e.Address)
		}
		d.omu.Lock()
		d.byRun[r] = ownedAddrs{cluster: cluster, addrs: addrs}
		d.rebuildLocked()
		d.omu.Unlock()
		update(eps)
	}
}

// forget drops a stopped cluster's addresses.
func (d *destinations) forget(r *clusterRun) {
	d.omu.Lock()
	defer d.omu.Unlock()
	if _, ok := d.byRun[r]; ok {
		delete(d.byRun, r)
		d.rebuildLocked()
	}
}

// rebuildLocked recomputes the owner index. An address listed by several
// clusters belongs to the one whose name sorts first, so the answer does
// not depend on the order discovery results arrived in.
func (d *destinations) rebuildLocked() {
	m := make(map[string]string)
	for _, o := range d.byRun {
		for _, a := range o.addrs {
			if cur, ok := m[a]; !ok || o.cluster < cur {
				m[a] = o.cluster
			}
		}
	}
	d.owners.Store(&m)
}

// Owner implements director.Destinations.
func (d *destinations) Owner(addr string) (string, bool) {
	name, ok := (*d.owners.Load())[addr]
	return name, ok
}

// Passthrough implements director.Destinations: the cluster whose only
// endpoint is addr, created on first use, and the Upstream whose pool its
// calls use. Health watching is off (the destination was the app's choice,
// whatever it serves) and so is outlier ejection (there is nowhere else to
// send the call).
func (d *destinations) Passthrough(addr string) (*balancer.Cluster, *engine.Upstream, error) {
	now := time.Now().UnixNano()
	d.pmu.RLock()
	p := d.passthroughs[addr]
	d.pmu.RUnlock()
	if p != nil {
		p.lastUsed.Store(now)
		return p.cl, p.up, nil
	}
	d.pmu.Lock()
	defer d.pmu.Unlock()
	if d.closed {
		return nil, nil, fmt.Errorf("server: stopping")
	}
	if p := d.passthroughs[addr]; p != nil {
		p.lastUsed.Store(now)
		return p.cl, p.up, nil
	}
	cl, err := balancer.NewCluster(balancer.Options{
		Name:    config.OriginalDstCluster,
		Health:  balancer.HealthOptions{Disabled: true},
		Outlier: balancer.OutlierOptions{Disabled: true},
		AllDown: balancer.AllDownAny,
		Logger:  d.log.With("dst", addr), // the Cluster adds component and cluster
	}, func(ep discovery.Endpoint) (*grpc.ClientConn, error) {
		// Health watching is off: this connection is never used, but
		// the balancer's endpoints own one.
		return grpc.NewClient(ep.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	})
	if err != nil {
		return nil, nil, fmt.Errorf("server: original destination %s: %w", addr, err)
	}
	cl.Update([]discovery.Endpoint{{ID: addr, Address: addr, Weight: 1}})
	pool := engine.NewPool(engine.PoolConfig{Logger: d.log.With("cluster", config.OriginalDstCluster, "dst", addr)})
	p = &passthrough{cl: cl, up: &engine.Upstream{Name: config.OriginalDstCluster, Pool: pool}}
	p.lastUsed.Store(now)
	d.passthroughs[addr] = p
	if d.janitor == nil {
		d.janitor, d.jdone = make(chan struct{}), make(chan struct{})
		go d.sweep(d.janitor, d.jdone)
	}
	return cl, p.up, nil
}

// sweep closes passthrough clusters idle for passthroughIdle, until stop.
func (d *destinations) sweep(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(passthroughIdle / 4)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			d.evictIdle(time.Now().Add(-passthroughIdle))
		}
	}
}

// evictIdle closes passthrough clusters, with their pools, last used
// before cutoff that have no call in flight.
func (d *destinations) evictIdle(cutoff time.Time) int {
	var idle []*passthrough
	d.pmu.Lock()
	for addr, p := range d.passthroughs {
		if p.lastUsed.Load() < cutoff.UnixNano() && inFlight(p.cl) == 0 {
			delete(d.passthroughs, addr)
			idle = append(idle, p)
		}
	}
	d.pmu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), poolCloseGrace)
	defer cancel()
	for _, p := range idle {
		p.close(ctx)
		st := p.up.Pool.Stats()
		d.pmu.Lock()
		d.evicted.DialErrors += st.DialErrors
		d.evicted.ProtocolErrors += st.ProtocolErrors
		d.evicted.StreamErrors += st.StreamErrors
		d.pmu.Unlock()
	}
	return len(idle)
}

// poolStats sums the passthrough clusters' pool counters, those of the
// evicted ones included; ok is false until there was one.
func (d *destinations) poolStats() (sum engine.PoolStats, ok bool) {
	d.pmu.RLock()
	defer d.pmu.RUnlock()
	sum = d.evicted
	for _, p := range d.passthroughs {
		st := p.up.Pool.Stats()
		sum.Conns += st.Conns
		sum.Streams += st.Streams
		sum.DialErrors += st.DialErrors
		sum.ProtocolErrors += st.ProtocolErrors
		sum.StreamErrors += st.StreamErrors
		sum.BufferedBytes += st.BufferedBytes
	}
	return sum, d.janitor != nil
}

func inFlight(cl *balancer.Cluster) int64 {
	var n int64
	for _, e := range cl.Status().Endpoints {
		n += e.Outstanding
	}
	return n
}

// addCredentials registers an original_dst listener's credentials so that
// close ends their relays.
func (d *destinations) addCredentials(c *origdst.Credentials) {
	d.cmu.Lock()
	d.creds = append(d.creds, c)
	d.cmu.Unlock()
}

// close ends the relays, stops the janitor and closes every passthrough
// cluster. Call it after the listeners stopped.
func (d *destinations) close() {
	d.cmu.Lock()
	creds := d.creds
	d.creds = nil
	d.cmu.Unlock()
	for _, c := range creds {
		c.Close()
	}
	d.pmu.Lock()
	d.closed = true
	pts := d.passthroughs
	d.passthroughs = map[string]*passthrough{}
	stop, done := d.janitor, d.jdone
	d.janitor = nil
	d.pmu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
	ctx, cancel := context.WithTimeout(context.Background(), poolCloseGrace)
	defer cancel()
	for _, p := range pts {
		p.close(ctx)
	}
}
