// Package director makes each call's decision for the frame engine
// (engine.Director): it looks the call up in the route table (router),
// applies the route's policy (policy: admission, time budget, retry
// decision), picks an endpoint of the route's cluster (balancer) and hands
// the engine a Target. When the engine reports the call's end, the
// director tells the balancer (load, outlier detection), ends the call's
// spans (tracing) and hands a callrecord.Call to the observers (metrics,
// access log).
//
// Direct runs on the client connection's reader goroutine, so it never
// blocks: lookup, admission and pick work on immutable snapshots. A
// call's per-call state (call.go) is owned by the engine's serialisation
// of Done, Reroute and Retry: they are never called concurrently.
//
// Transparent (original_dst) calls are routed by their original
// destination (origdst.go).
//
// Traffic policies of issue 18 and where their parts live:
//   - retry after response headers: the engine holds a retryable
//     attempt's HEADERS (engine/lifecycle.go, state held; engine/retry.go);
//     the decision stays policy.Decide's (retry.go here).
//   - fault injection: config.Fault (config/traffic.go) becomes
//     policy.Fault (policy/fault.go, server.policies); Direct draws it
//     before admission and the pick, answers an abort itself and hands a
//     delay to the engine (engine.Target.FaultDelay, a timer: state
//     delayed); metrics count callrecord.Call.Fault
//     (meshd_fault_injected_total), tracing marks the SERVER span
//     (meshd.fault), cmd/meshd's route explain prints it.
//   - mirroring: config.Mirror (config/traffic.go) becomes policy.Mirror
//     (Sample); Direct samples it last and picks from the mirror cluster
//     (mirror.go here), the engine runs the copy as a shadow call
//     (engine/mirror.go: engine.Target.Mirror), and its outcome reaches
//     callrecord.MirrorObserver (meshd_mirror_requests_total).
//   - hedging: config.Hedge (config/traffic.go, validated with retry)
//     becomes policy.Hedge (policy/hedge.go: Fatal; server.policies adds
//     the implicit retry of hedge alone); the call is the engine's
//     Hedger (hedge.go here: picks, the retry budget, one CLIENT span per
//     attempt marked meshd.hedge); the engine runs the sibling attempts
//     (engine/hedge.go, state machine in engine/lifecycle.go); cmd/meshd's
//     route explain prints it; README "Hedging".
package director
