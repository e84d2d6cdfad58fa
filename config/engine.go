package config

import "fmt"

// frameEngine rejects what engine frame cannot honour yet, so a config never
// silently loses a feature by switching engines. The frame engine forwards
// HTTP/2 frames without holding messages, so it cannot replay a request on
// another endpoint (retry), has no per-message timer (idle_timeout), and
// dials upstreams in cleartext h2c only.
func (v *validator) frameEngine() {
	if v.c.Engine != "frame" {
		return
	}
	for i, r := range v.c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		if r.Retry != nil {
			v.add(p+".retry", "needs engine grpc (the frame engine does not replay requests; clients still retry refused streams transparently)")
		}
		if r.IdleTimeout != 0 {
			v.add(p+".idle_timeout", "needs engine grpc")
		}
	}
	for i, c := range v.c.Clusters {
		if c.TLS != nil {
			v.add(fmt.Sprintf("clusters[%d].tls", i), "needs engine grpc (the frame engine dials upstreams in cleartext h2c)")
		}
	}
}
