package config

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Kubernetes is the Kubernetes API section: where EndpointSlices (for
// clusters with a kubernetes section) and Gateway API GRPCRoutes (with
// grpcroutes set) are read from.
type Kubernetes struct {
	// Kubeconfig is a kubeconfig file; "" uses the pod's service account
	// (in-cluster config).
	Kubeconfig string `yaml:"kubeconfig"`
	// Namespaces limits the GRPCRoutes watched to these namespaces; empty
	// watches every namespace. Clusters name their own namespace.
	Namespaces []string `yaml:"namespaces"`
	// GRPCRoutes, when set, makes the GRPCRoutes attached to meshd a config
	// source: their rules are matched before the file's (and the Consul
	// key's), and their backends become clusters with EndpointSlice
	// discovery named "kube:NAMESPACE/SERVICE:PORT".
	GRPCRoutes *GRPCRoutes `yaml:"grpcroutes"`
	// LeaseNamespace is where the Lease that elects the one meshd replica
	// writing GRPCRoute status lives. Default: $POD_NAMESPACE, else
	// "default".
	LeaseNamespace string `yaml:"lease_namespace"`
	// LeaseName names that Lease. Default "meshd-grpcroute-status".
	LeaseName string `yaml:"lease_name"`
}

// GRPCRoutes says which GRPCRoutes meshd serves. Exactly one of Gateway
// and Mesh is required.
type GRPCRoutes struct {
	// Gateway (edge): routes whose parentRefs name this Gateway apply to
	// every call on meshd's listeners whose :authority matches the route's
	// hostnames (all calls when it has none).
	Gateway *GatewayRef `yaml:"gateway"`
	// Mesh (GAMMA): routes whose parentRefs are Services apply to the calls
	// addressed to that Service: an original destination equal to the
	// Service's cluster IP and port, or an :authority that is one of its
	// DNS names (name, name.ns, name.ns.svc, name.ns.svc.cluster.local,
	// with or without the port).
	Mesh bool `yaml:"mesh"`
}

// GatewayRef names a Gateway.
type GatewayRef struct {
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace"`
}

// KubernetesService selects a Service's endpoints for a cluster: the ready
// endpoints of one of its ports, from its EndpointSlices.
type KubernetesService struct {
	// Service is the Service's name. Required.
	Service string `yaml:"service"`
	// Namespace is the Service's namespace. Default "default".
	Namespace string `yaml:"namespace"`
	// Port is the Service port, by number (9000) or by name (grpc). The
	// endpoints are dialled on the port the EndpointSlices give for it
	// (the target port). Required.
	Port string `yaml:"port"`
}

// PortNumber returns the port as a number, or 0 when it is a name.
func (k *KubernetesService) PortNumber() int32 {
	n, err := strconv.ParseInt(k.Port, 10, 32)
	if err != nil {
		return 0
	}
	return int32(n)
}

func (v *validator) kubernetesCluster(p string, k *KubernetesService) {
	if k == nil {
		return
	}
	if k.Service == "" {
		v.add(p+".service", "required")
	} else if errs := validation.IsDNS1035Label(k.Service); len(errs) > 0 {
		v.add(p+".service", "invalid Service name %q: %s", k.Service, strings.Join(errs, "; "))
	}
	if k.Namespace != "" {
		if errs := validation.IsDNS1123Label(k.Namespace); len(errs) > 0 {
			v.add(p+".namespace", "invalid namespace %q: %s", k.Namespace, strings.Join(errs, "; "))
		}
	}
	switch {
	case k.Port == "":
		v.add(p+".port", "required (a Service port number or name)")
	case k.PortNumber() != 0:
		if n := k.PortNumber(); n < 1 || n > 65535 {
			v.add(p+".port", "port %d out of range", n)
		}
	default:
		if errs := validation.IsValidPortName(k.Port); len(errs) > 0 {
			v.add(p+".port", "invalid port %q: %s", k.Port, strings.Join(errs, "; "))
		}
	}
	if v.c.Kubernetes == nil {
		v.add(p, "needs the top-level kubernetes section (kubernetes: {} uses the in-cluster service account)")
	}
}

func (v *validator) kubernetes() {
	k := v.c.Kubernetes
	if k == nil {
		return
	}
	for i, ns := range k.Namespaces {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			v.add(fmt.Sprintf("kubernetes.namespaces[%d]", i), "invalid namespace %q: %s", ns, strings.Join(errs, "; "))
		}
	}
	if g := k.GRPCRoutes; g != nil {
		switch {
		case g.Gateway != nil && g.Mesh:
			v.add("kubernetes.grpcroutes", "set either gateway or mesh: true, not both")
		case g.Gateway == nil && !g.Mesh:
			v.add("kubernetes.grpcroutes", "gateway or mesh: true is required")
		case g.Gateway != nil:
			if g.Gateway.Name == "" {
				v.add("kubernetes.grpcroutes.gateway.name", "required")
			}
			if g.Gateway.Namespace == "" {
				v.add("kubernetes.grpcroutes.gateway.namespace", "required")
			}
		}
	}
}

// KubernetesNamespace is a cluster's Service namespace with its default.
func (k *KubernetesService) KubernetesNamespace() string {
	if k.Namespace == "" {
		return "default"
	}
	return k.Namespace
}
