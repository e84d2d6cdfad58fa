package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/internal/kubeobj"
)

// KubernetesQuery selects the endpoints of one Service port.
type KubernetesQuery struct {
	// Namespace and Service name the Service.
	Namespace, Service string
	// Port is the Service port: a number ("9000") or a port name ("grpc").
	// Endpoints are dialled on the port their EndpointSlices give for the
	// Service port's name (the target port), as kube-proxy does.
	Port string
}

// Kubernetes is a Resolver over a Service's EndpointSlices, followed with
// client-go informers over the dynamic client (list, then watch, relisting
// after a broken watch): the ready endpoints of one port. Create it with [NewKubernetes]. Watch
// must not be called concurrently on the same Kubernetes; Status may be
// called from any goroutine.
//
// While the API server is unreachable the informers keep their caches, so
// the last snapshot stays in force, as with Consul.
type Kubernetes struct {
	client dynamic.Interface
	q      KubernetesQuery
	log    *slog.Logger

	mu     sync.Mutex
	status WatchStatus
}

var _ Resolver = (*Kubernetes)(nil)

// KubernetesOption configures NewKubernetes.
type KubernetesOption func(*Kubernetes)

// WithKubernetesLogger sets the resolver's logger (default: discard).
func WithKubernetesLogger(l *slog.Logger) KubernetesOption {
	return func(k *Kubernetes) {
		if l != nil {
			k.log = l
		}
	}
}

// The resources the resolver watches, read through the dynamic client and
// converted into the k8s.io/api types.
var (
	servicesResource       = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	endpointSlicesResource = schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}
)

// NewKubernetes returns a resolver for q's endpoints through client.
func NewKubernetes(client dynamic.Interface, q KubernetesQuery, opts ...KubernetesOption) *Kubernetes {
	k := &Kubernetes{client: client, q: q, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(k)
	}
	k.log = k.log.With("component", "discovery", "service", q.Namespace+"/"+q.Service, "port", q.Port)
	return k
}

// Status returns the watch's state: Synced once both caches (the Service
// and its EndpointSlices) have listed and the first snapshot was sent.
func (k *Kubernetes) Status() WatchStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.status
}

// Watch starts informers on the Service and on its EndpointSlices (label
// kubernetes.io/service-name), sends a snapshot once both have synced and
// another after every change that alters it. It returns ctx.Err() when ctx
// is done, after the informers' goroutines have stopped.
func (k *Kubernetes) Watch(ctx context.Context, update func([]Endpoint)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sInf := kubeobj.NewInformer(k.client, endpointSlicesResource, k.q.Namespace, func(o *metav1.ListOptions) {
		o.LabelSelector = discoveryv1.LabelServiceName + "=" + k.q.Service
	})
	vInf := kubeobj.NewInformer(k.client, servicesResource, k.q.Namespace, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.q.Service).String()
	})
	changed := make(chan struct{}, 1)
	poke := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { signal(changed) },
		UpdateFunc: func(any, any) { signal(changed) },
		DeleteFunc: func(any) { signal(changed) },
	}
	for _, inf := range []cache.SharedIndexInformer{sInf, vInf} {
		if _, err := inf.AddEventHandler(poke); err != nil {
			return fmt.Errorf("discovery: kubernetes %s/%s: %w", k.q.Namespace, k.q.Service, err)
		}
	}
	// The informers stop and are waited for however Watch returns.
	defer kubeobj.Run(ctx, sInf, vInf)()
	if !cache.WaitForCacheSync(ctx.Done(), sInf.HasSynced, vInf.HasSynced) {
		return ctx.Err()
	}
	var last []Endpoint
	sent := false
	for {
		svc, err := kubeobj.Get[corev1.Service](vInf, k.q.Namespace, k.q.Service)
		if err != nil {
			k.log.Warn("service unreadable", "err", err)
		}
		all, err := kubeobj.List[discoveryv1.EndpointSlice](sInf)
		if err != nil {
			k.log.Warn("EndpointSlices unreadable", "err", err)
		}
		eps := endpointsOf(svc, all, k.q.Port)
		if !sent || !equalEndpoints(eps, last) {
			if svc == nil {
				k.log.Warn("service not found; the cluster has no endpoints")
			}
			update(cloneEndpoints(eps))
			last, sent = eps, true
		}
		k.mu.Lock()
		k.status = WatchStatus{Synced: true, Healthy: true, LastSuccess: time.Now()}
		k.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// ServicePortName returns the name of svc's port named or numbered port
// (the key EndpointSlices list their ports by), and whether svc has it.
func ServicePortName(svc *corev1.Service, port string) (string, bool) {
	if svc == nil {
		return "", false
	}
	n, err := strconv.ParseInt(port, 10, 32)
	for _, p := range svc.Spec.Ports {
		if (err == nil && int64(p.Port) == n) || (err != nil && p.Name == port) {
			return p.Name, true
		}
	}
	return "", false
}

// endpointsOf is the sorted snapshot of the ready endpoints of svc's port
// in slices. A Service that does not exist, or lacks the port, has none.
// An endpoint listed by two slices (during a move) is kept once.
func endpointsOf(svc *corev1.Service, slices []*discoveryv1.EndpointSlice, port string) []Endpoint {
	name, ok := ServicePortName(svc, port)
	out := []Endpoint{}
	if !ok {
		return out
	}
	seen := map[string]bool{}
	for _, s := range slices {
		var num int32
		found := false
		for _, p := range s.Ports {
			pn := ""
			if p.Name != nil {
				pn = *p.Name
			}
			if pn == name && p.Port != nil {
				num, found = *p.Port, true
				break
			}
		}
		if !found {
			continue
		}
		for _, e := range s.Endpoints {
			// A nil Ready means "unknown", which the API says to read as ready.
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				addr := net.JoinHostPort(a, strconv.Itoa(int(num)))
				if seen[addr] {
					continue
				}
				seen[addr] = true
				ep := Endpoint{ID: addr, Address: addr, Weight: 1}
				if e.Zone != nil && *e.Zone != "" {
					ep.Meta = map[string]string{"zone": *e.Zone}
				}
				out = append(out, ep)
			}
		}
	}
	sortEndpoints(out)
	return out
}
