package discovery_test

import (
	"context"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/kubetest"
)

func eps(addrs ...string) []discovery.Endpoint {
	out := []discovery.Endpoint{}
	for _, a := range addrs {
		out = append(out, discovery.Endpoint{ID: a, Address: a, Weight: 1})
	}
	return out
}

// The resolver follows a Service's EndpointSlices on a real API server:
// nothing before the Service exists, the ready endpoints of the named
// port, an endpoint added, one turned not ready, a second slice, within a
// second each.
func TestKubernetesEndpointSlices(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	ns := env.Namespace(t, "disc-slices")
	for _, port := range []string{"9000", "grpc"} { // by number and by name
		t.Run("port "+port, func(t *testing.T) {
			svc := "users-" + map[string]string{"9000": "num", "grpc": "name"}[port]
			w := startWatch(t, discovery.NewKubernetes(env.Dynamic, discovery.KubernetesQuery{Namespace: ns, Service: svc, Port: port}))
			w.expect(10*time.Second, eps()) // no Service yet: a real, empty answer
			env.Service(t, ns, svc, 9000)
			env.ApplySlice(t, kubetest.Slice(ns, svc+"-a", svc, map[string]bool{"10.1.0.1:8080": true, "10.1.0.2:8080": false}))
			w.expect(5*time.Second, eps("10.1.0.1:8080"))

			start := time.Now()
			env.ApplySlice(t, kubetest.Slice(ns, svc+"-a", svc, map[string]bool{"10.1.0.1:8080": true, "10.1.0.2:8080": true}))
			w.expect(time.Second, eps("10.1.0.1:8080", "10.1.0.2:8080"))
			t.Logf("endpoint turned ready: snapshot after %v", time.Since(start))

			start = time.Now()
			env.ApplySlice(t, kubetest.Slice(ns, svc+"-a", svc, map[string]bool{"10.1.0.1:8080": false, "10.1.0.2:8080": true}))
			w.expect(time.Second, eps("10.1.0.2:8080"))
			t.Logf("endpoint turned not ready: snapshot after %v", time.Since(start))

			env.ApplySlice(t, kubetest.Slice(ns, svc+"-b", svc, map[string]bool{"10.1.0.3:8080": true}))
			w.expect(time.Second, eps("10.1.0.2:8080", "10.1.0.3:8080"))

			if err := env.Kube.DiscoveryV1().EndpointSlices(ns).Delete(context.Background(), svc+"-a", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			w.expect(time.Second, eps("10.1.0.3:8080"))
		})
	}
}

// A slice of another Service, or a port the Service does not have, gives
// no endpoints.
func TestKubernetesOtherPortsAndServices(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	ns := env.Namespace(t, "disc-other")
	env.Service(t, ns, "a", 9000)
	env.ApplySlice(t, kubetest.Slice(ns, "b-1", "b", map[string]bool{"10.2.0.1:8080": true}))
	w := startWatch(t, discovery.NewKubernetes(env.Dynamic, discovery.KubernetesQuery{Namespace: ns, Service: "a", Port: "9000"}))
	w.expect(10*time.Second, eps())
	wrong := startWatch(t, discovery.NewKubernetes(env.Dynamic, discovery.KubernetesQuery{Namespace: ns, Service: "a", Port: "9999"}))
	wrong.expect(10*time.Second, eps())
	s := kubetest.Slice(ns, "a-1", "a", map[string]bool{"10.2.0.2:8080": true})
	s.AddressType = discoveryv1.AddressTypeIPv4
	env.ApplySlice(t, s)
	w.expect(5*time.Second, eps("10.2.0.2:8080"))
	// The slice's arrival must not send the unknown port anything: the
	// watcher above saw it, so this one has handled it too or will send
	// nothing for it.
	wrong.none()
}
