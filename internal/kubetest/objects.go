package kubetest

import (
	"context"
	"net"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Namespace creates a namespace for tb (tests share an API server and
// keep to their own namespace).
func (e *Env) Namespace(tb testing.TB, name string) string {
	tb.Helper()
	_, err := e.Kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return name
}

// Service creates a ClusterIP Service with one TCP port named "grpc".
func (e *Env) Service(tb testing.TB, ns, name string, port int32) *corev1.Service {
	tb.Helper()
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "grpc", Port: port, TargetPort: intstr.FromString("grpc")}},
	}}
	s, err := e.Kube.CoreV1().Services(ns).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// Slice builds an EndpointSlice of Service svc listing addrs ("ip:port",
// all with one port, named "grpc"), each ready or not as ready says.
func Slice(ns, name, svc string, ready map[string]bool) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	var port int32
	for addr, r := range ready {
		host, p, _ := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(p)
		port = int32(n)
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
	}
	name2 := "grpc"
	s.Ports = []discoveryv1.EndpointPort{{Name: &name2, Port: &port}}
	return s
}

// ApplySlice creates or replaces an EndpointSlice.
func (e *Env) ApplySlice(tb testing.TB, s *discoveryv1.EndpointSlice) {
	tb.Helper()
	c := e.Kube.DiscoveryV1().EndpointSlices(s.Namespace)
	cur, err := c.Get(context.Background(), s.Name, metav1.GetOptions{})
	if err == nil {
		s.ResourceVersion = cur.ResourceVersion
		_, err = c.Update(context.Background(), s, metav1.UpdateOptions{})
	} else {
		_, err = c.Create(context.Background(), s, metav1.CreateOptions{})
	}
	if err != nil {
		tb.Fatal(err)
	}
}
