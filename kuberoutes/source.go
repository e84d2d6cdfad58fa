package kuberoutes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshd/meshd/internal/kubeobj"
)

// The resources the source reads, through the dynamic client, converted
// into the k8s.io/api and Gateway API types.
var (
	grpcRoutesResource = gwv1.SchemeGroupVersion.WithResource("grpcroutes")
	servicesResource   = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	leasesResource     = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}
)

// Apply hands meshd a new translation. It returns, by route source
// ("grpcroute:NS/NAME"), why the rules of each route it refused were
// refused (the others are in force), or an error if none could be
// applied. It is called from Run's goroutine, one call at a time.
type Apply func(ctx context.Context, rules Rules) (rejected map[string]error, err error)

// Options configures New. Zero values take the documented defaults.
type Options struct {
	// Mode selects the routes (required).
	Mode Mode
	// Namespaces limits the routes watched; empty: all namespaces.
	Namespaces []string
	// LeaseNamespace and LeaseName name the Lease electing the replica
	// that writes status. Defaults: $POD_NAMESPACE else "default", and
	// "meshd-grpcroute-status".
	LeaseNamespace, LeaseName string
	// Identity is this replica's name in the Lease. Default: $POD_NAME,
	// else the host name, with the process id.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are the leader
	// election's timings. Defaults 15s, 10s, 2s (client-go's usual ones).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Logger (default: discard).
	Logger *slog.Logger
}

// Status is the source's state, for /config_dump.
type Status struct {
	// Synced is true once the caches listed and a translation was applied.
	Synced bool `json:"synced"`
	// Leader says whether this replica writes GRPCRoute status.
	Leader bool `json:"leader"`
	// Routes are the GRPCRoutes attached to meshd, by source, with what
	// meshd made of them ("accepted" or why not).
	Routes map[string]string `json:"routes"`
	// LastError is why the last translation could not be applied.
	LastError string `json:"last_error,omitempty"`
	// LastApplied is when a translation was last applied.
	LastApplied time.Time `json:"last_applied,omitzero"`
	// StatusWrites counts the GRPCRoute status updates this replica made.
	StatusWrites uint64 `json:"status_writes"`
}

// Source follows the GRPCRoutes attached to meshd with client-go
// informers over the dynamic client, translates them (Translate) and
// hands each new translation to Apply; the elected replica writes each route's status. Create it
// with New and run it with Run (once).
type Source struct {
	dyn   dynamic.Interface
	apply Apply
	o     Options
	log   *slog.Logger

	changed chan struct{}
	leader  chan bool

	mu     sync.Mutex
	status Status
	first  chan struct{} // closed after the first translation was handed over
	once   sync.Once
}

// New returns a Source reading (and writing status and the Lease) through
// the dynamic client dyn, applying through apply.
func New(dyn dynamic.Interface, apply Apply, o Options) *Source {
	if o.LeaseNamespace == "" {
		o.LeaseNamespace = os.Getenv("POD_NAMESPACE")
	}
	if o.LeaseNamespace == "" {
		o.LeaseNamespace = "default"
	}
	if o.LeaseName == "" {
		o.LeaseName = "meshd-grpcroute-status"
	}
	if o.Identity == "" {
		host := os.Getenv("POD_NAME")
		if host == "" {
			host, _ = os.Hostname()
		}
		o.Identity = fmt.Sprintf("%s_%d", host, os.Getpid())
	}
	if o.LeaseDuration == 0 {
		o.LeaseDuration = 15 * time.Second
	}
	if o.RenewDeadline == 0 {
		o.RenewDeadline = 10 * time.Second
	}
	if o.RetryPeriod == 0 {
		o.RetryPeriod = 2 * time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{dyn: dyn, apply: apply, o: o, log: log.With("component", "grpcroutes"),
		changed: make(chan struct{}, 1), leader: make(chan bool, 1), first: make(chan struct{})}
}

// Status returns a copy of the source's state.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Routes = make(map[string]string, len(s.status.Routes))
	for k, v := range s.status.Routes {
		st.Routes[k] = v
	}
	return st
}

// First is closed once the first translation has been handed to Apply
// (meshd is not ready before: it would serve without its routes).
func (s *Source) First() <-chan struct{} { return s.first }

func (s *Source) poke() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Run watches until ctx is done, then stops its informers and the leader
// election (releasing the Lease if held), waits for their goroutines and
// returns ctx.Err().
func (s *Source) Run(ctx context.Context) error {
	namespaces := s.o.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.poke() },
		UpdateFunc: func(any, any) { s.poke() },
		DeleteFunc: func(any) { s.poke() },
	}
	var routeInfs, svcInfs, all []cache.SharedIndexInformer
	var synced []cache.InformerSynced
	for _, ns := range namespaces {
		ri := kubeobj.NewInformer(s.dyn, grpcRoutesResource, ns, nil)
		si := kubeobj.NewInformer(s.dyn, servicesResource, ns, nil)
		for _, inf := range []cache.SharedIndexInformer{ri, si} {
			if _, err := inf.AddEventHandler(handler); err != nil {
				return fmt.Errorf("kuberoutes: %w", err)
			}
			synced = append(synced, inf.HasSynced)
		}
		routeInfs = append(routeInfs, ri)
		svcInfs = append(svcInfs, si)
		all = append(all, ri, si)
	}
	// The informers stop and are waited for however Run returns.
	defer kubeobj.Run(ctx, all...)()
	var wg sync.WaitGroup
	defer wg.Wait()
	lctx, stopLeading := context.WithCancel(ctx)
	defer stopLeading()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.elect(lctx)
	}()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	services := func(ns, name string) *corev1.Service {
		for _, inf := range svcInfs {
			svc, err := kubeobj.Get[corev1.Service](inf, ns, name)
			if err != nil {
				s.log.Warn("Service unreadable", "err", err)
			}
			if svc != nil {
				return svc
			}
		}
		return nil
	}
	var (
		applied  *Rules
		rejected map[string]error
		leader   bool
		retry    <-chan time.Time
	)
	for {
		var routes []*gwv1.GRPCRoute
		for _, inf := range routeInfs {
			rs, err := kubeobj.List[gwv1.GRPCRoute](inf)
			if err != nil {
				s.log.Warn("GRPCRoutes unreadable", "err", err)
			}
			routes = append(routes, rs...)
		}
		rules, verdicts := Translate(s.o.Mode, routes, services)
		if applied == nil || !reflect.DeepEqual(*applied, rules) {
			rej, err := s.apply(ctx, rules)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				s.log.Error("GRPCRoute rules rejected; the last good rules keep serving", "err", err)
				s.mu.Lock()
				s.status.LastError = err.Error()
				s.mu.Unlock()
			} else {
				r := rules
				applied, rejected = &r, rej
				s.mu.Lock()
				s.status.LastError, s.status.LastApplied, s.status.Synced = "", time.Now(), true
				s.mu.Unlock()
				s.log.Info("GRPCRoute rules applied", "routes", len(rules.Routes), "clusters", len(rules.Clusters), "refused", len(rej))
			}
			s.once.Do(func() { close(s.first) })
		}
		s.record(verdicts, rejected)
		retry = nil
		if leader {
			if err := s.writeStatuses(ctx, routes, verdicts, rejected); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s.log.Warn("writing GRPCRoute status failed; retrying", "err", err)
				retry = time.After(time.Second)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.changed:
		case leader = <-s.leader:
			s.mu.Lock()
			s.status.Leader = leader
			s.mu.Unlock()
		case <-retry:
		}
	}
}

// record keeps the verdicts for Status.
func (s *Source) record(verdicts []Verdict, rejected map[string]error) {
	m := make(map[string]string, len(verdicts))
	for _, v := range verdicts {
		src := SourceName(v.Namespace, v.Name)
		switch {
		case v.Unsupported != "":
			m[src] = "refused: " + v.Unsupported
		case rejected[src] != nil:
			m[src] = "refused: " + rejected[src].Error()
		default:
			m[src] = "accepted"
			for _, p := range v.Parents {
				if p.NotAccepted != "" {
					m[src] = "parent not accepted: " + p.Message
				}
			}
			if v.RefsReason != "" {
				m[src] += "; " + v.RefsReason + ": " + v.RefsMessage
			}
		}
	}
	s.mu.Lock()
	s.status.Routes = m
	s.mu.Unlock()
}

// writeStatuses updates the status of every route whose meshd entries
// differ from the verdict (routes meshd no longer serves lose theirs).
// Nothing is written when nothing changed.
func (s *Source) writeStatuses(ctx context.Context, routes []*gwv1.GRPCRoute, verdicts []Verdict, rejected map[string]error) error {
	byKey := make(map[string]Verdict, len(verdicts))
	for _, v := range verdicts {
		byKey[v.Namespace+"/"+v.Name] = v
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	var errs []error
	for _, gr := range routes {
		v, ok := byKey[gr.Namespace+"/"+gr.Name]
		if !ok {
			v = Verdict{Namespace: gr.Namespace, Name: gr.Name, Generation: gr.Generation}
		}
		var rej string
		if e := rejected[SourceName(gr.Namespace, gr.Name)]; e != nil {
			rej = e.Error()
		}
		want := desiredStatus(gr, v, rej, now)
		if statusEqual(want, gr.Status.RouteStatus) {
			continue
		}
		up := gr.DeepCopy()
		up.Status.RouteStatus = want
		u, err := kubeobj.To(up, gwv1.SchemeGroupVersion.String(), "GRPCRoute")
		if err == nil {
			_, err = s.dyn.Resource(grpcRoutesResource).Namespace(gr.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{})
		}
		switch {
		case err == nil:
			s.mu.Lock()
			s.status.StatusWrites++
			s.mu.Unlock()
		case apierrors.IsNotFound(err):
		default:
			// A conflict means the informer will bring the newer
			// object, and with it another try.
			errs = append(errs, fmt.Errorf("kuberoutes: status of %s/%s: %w", gr.Namespace, gr.Name, err))
		}
	}
	return errors.Join(errs...)
}

// elect runs the leader election until ctx is done, telling Run about
// each change; a replica that lost the Lease stands again.
func (s *Source) elect(ctx context.Context) {
	tell := func(v bool) {
		select {
		case <-s.leader:
		default:
		}
		s.leader <- v
	}
	e := &elector{
		leases:        s.dyn.Resource(leasesResource).Namespace(s.o.LeaseNamespace),
		name:          s.o.LeaseName,
		identity:      s.o.Identity,
		leaseDuration: s.o.LeaseDuration,
		renewDeadline: s.o.RenewDeadline,
		retryPeriod:   s.o.RetryPeriod,
		log:           s.log,
	}
	for ctx.Err() == nil {
		e.run(ctx, func() {
			s.log.Info("elected to write GRPCRoute status", "identity", s.o.Identity)
			tell(true)
		})
		tell(false)
	}
}
