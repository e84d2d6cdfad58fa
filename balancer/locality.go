package balancer

// Zone-aware balancing, a simplified form of Envoy's zone-aware routing.
//
// Each endpoint carries a zone from discovery (Consul node or service
// metadata, or a static endpoint's zone). With Options.Locality.LocalZone
// set, the rebuild decides which endpoints the picker holds:
//
//   - The local zone's healthy share is its serving endpoints over its
//     endpoints with a health verdict (serving, NOT_SERVING, ejected,
//     unreachable). Endpoints still awaiting their first verdict count for
//     neither, as in panic mode (panic.go), so a scale-up of the local zone
//     does not push calls out of it.
//   - While that share is at least MinHealthyPercent (and some local
//     endpoint serves), every pick stays in the local zone.
//   - Below it, the picker holds the serving endpoints of every zone, as
//     without locality: each zone then gets calls in proportion to its
//     serving weight, the local zone's remaining endpoints included.
//     (Envoy computes a residual spill-over per zone; the simple rule
//     moves all of the traffic that its local zone cannot take with
//     confidence, which is what a degraded zone usually calls for.)
//   - In panic mode zones are ignored: panic already spreads over every
//     endpoint that answered (Envoy also turns zone routing off then).
//   - An endpoint without a zone is a zone of its own, never the local
//     one: it takes calls only when they spread.
//
// Like everything else the decision is made on the update loop at each
// rebuild, which every health or outlier change triggers; a pick costs
// nothing more.

// LocalityOptions configures zone-aware balancing.
type LocalityOptions struct {
	// LocalZone is this meshd's zone. Empty, the default, turns
	// zone-aware balancing off.
	LocalZone string
	// MinHealthyPercent is the share (0..100) of the local zone's
	// endpoints with a verdict that must be serving for picks to stay in
	// the local zone. 0 keeps them local while any local endpoint serves.
	// The config layer defaults it to 70.
	MinHealthyPercent int
}

// localityFilter returns the endpoints of eps a picker should hold and the
// zone picks stay in ("" when they spread over every zone). live is the
// cluster's live endpoints, eps what pickSet chose from them. Called on
// the loop.
func localityFilter(live, eps []*Endpoint, lo LocalityOptions, panicking bool) ([]*Endpoint, string) {
	if lo.LocalZone == "" || panicking || len(eps) == 0 {
		return eps, ""
	}
	serving, judged := 0, 0
	for _, e := range live {
		if e.zone != lo.LocalZone {
			continue
		}
		switch e.class() {
		case classServing:
			serving++
			judged++
		case classAnswered, classUnreachable:
			judged++
		}
	}
	if serving == 0 || serving*100 < lo.MinHealthyPercent*judged {
		return eps, ""
	}
	local := make([]*Endpoint, 0, serving)
	for _, e := range eps {
		if e.zone == lo.LocalZone {
			local = append(local, e)
		}
	}
	if len(local) == 0 {
		return eps, ""
	}
	return local, lo.LocalZone
}
