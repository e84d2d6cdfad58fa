// Package kubeobj converts between the unstructured objects of client-go's
// dynamic client and informers and the typed structs of k8s.io/api and the
// Gateway API. meshd reads the API server only through the dynamic client:
// the typed clientsets (k8s.io/client-go/kubernetes and the Gateway API's)
// register every API group in their schemes, which costs megabytes of
// binary and of memory even when no kubernetes section is configured.
package kubeobj

import (
	"context"
	"errors"
	"fmt"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
)

// From converts obj, an *unstructured.Unstructured from a dynamic client
// or informer, into a new T.
func From[T any](obj runtime.Object) (*T, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("kubeobj: %T is not unstructured", obj)
	}
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), out); err != nil {
		return nil, fmt.Errorf("kubeobj: %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return out, nil
}

// To converts obj, a typed object, into an unstructured one with the given
// apiVersion and kind.
func To(obj any, apiVersion, kind string) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("kubeobj: %w", err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	return u, nil
}

// NewInformer returns a shared informer on the objects of resource gvr in
// namespace ("": all), listed and watched through the dynamic client with
// the list options tweak sets (tweak may be nil). Its store holds
// *unstructured.Unstructured objects keyed "namespace/name". It is what
// client-go's dynamicinformer builds, without that package, which links
// the typed informers and clientset.
func NewInformer(client dynamic.Interface, gvr schema.GroupVersionResource, namespace string, tweak func(*metav1.ListOptions)) cache.SharedIndexInformer {
	res := client.Resource(gvr).Namespace(namespace)
	opts := func(o metav1.ListOptions) metav1.ListOptions {
		if tweak != nil {
			tweak(&o)
		}
		return o
	}
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			return res.List(context.Background(), opts(o))
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(context.Background(), opts(o))
		},
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, opts(o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, opts(o))
		},
	}
	return cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client),
		&unstructured.Unstructured{}, cache.SharedIndexInformerOptions{
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: gvr.String(),
		})
}

// Get returns the object namespace/name from inf's store converted into a
// new T, nil if the store does not hold it.
func Get[T any](inf cache.SharedIndexInformer, namespace, name string) (*T, error) {
	obj, ok, err := inf.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil, err
	}
	return From[T](obj.(runtime.Object))
}

// List returns the objects in inf's store converted into new Ts; an
// object that does not convert is left out, and its error returned with
// the others'.
func List[T any](inf cache.SharedIndexInformer) ([]*T, error) {
	var out []*T
	var errs []error
	for _, obj := range inf.GetStore().List() {
		o, ok := obj.(runtime.Object)
		if !ok {
			continue
		}
		t, err := From[T](o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, t)
	}
	return out, errors.Join(errs...)
}

// Run runs infs until ctx is done; the returned function stops them and
// waits for their goroutines.
func Run(ctx context.Context, infs ...cache.SharedIndexInformer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, inf := range infs {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}
