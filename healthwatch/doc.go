// Package healthwatch follows one backend's health over the standard
// grpc.health.v1 protocol and hands each change to a callback.
//
// It is meshd's per-endpoint health source: the balancer runs one [Watch]
// per endpoint connection and rebuilds its picker from the reports. The
// design follows grpc-go's health/client.go (the client side of
// https://github.com/grpc/grpc/blob/master/doc/health-checking.md), with
// two differences that matter for a proxy:
//
//   - A broken stream is reported as NotServing instead of being hidden
//     behind a connectivity state, so a dead backend leaves the picker at
//     once rather than on the next failed call.
//   - A backend whose health service lacks Watch is polled with Check, and
//     a backend with no health service at all is reported as "absent" with
//     a configurable verdict ([WithMissingService]); grpc-go can only treat
//     it as healthy.
//
// # Modes
//
// Watch moves between three modes, each named by [Report.Source]:
//
//   - "watch": a Health/Watch stream is open. Each message is reported. When
//     the stream breaks (backend gone, conn in TRANSIENT_FAILURE, server
//     closed it), Watch reports NotServing with Reason "stream error: ..."
//     and opens a new stream after a capped exponential backoff with
//     jitter. The backoff restarts from its base after every received
//     message, so a backend that was healthy for a while is retried quickly.
//   - "check": Watch answered Unimplemented, so Health/Check is polled every
//     check interval. A backend stays in this mode until Check also answers
//     Unimplemented; it is not re-probed for Watch, because Check alone gives
//     the same answers, only later.
//   - "absent": both Watch and Check answered Unimplemented. The verdict set
//     by [WithMissingService] is reported once, and after every re-probe
//     interval Watch starts over from the "watch" mode, so a backend that is
//     redeployed with a health service is picked up. Nothing is reported
//     during a re-probe unless the answer differs.
//
// Reports are deduplicated: identical consecutive reports are dropped, so
// the callback sees only changes of State, Source or Reason.
//
// # Connections
//
// Watch uses the caller's connection as it is and never dials. Its first
// RPC is not wait-for-ready, so a backend that cannot be reached reads as
// NotServing at once, with the connection error as the reason (Report
// Unreachable is set). Once a failure has been reported, the next stream
// (or Check) is wait-for-ready: it opens the moment the connection is
// READY again. How quickly a restarted backend reads as Serving is
// therefore set by the connection's own reconnect backoff, which
// [ConnectParams] bounds: with it, a backend is judged within the
// configured reconnect maximum of listening again, however long it was
// down, and a backend that accepts connections but never speaks HTTP/2
// costs one connection per connect timeout.
//
// # Goroutines
//
// Watch runs entirely on its caller's goroutine and starts none of its own.
// Every RPC it opens is bound to a context it cancels before moving on, and
// every wait selects on the caller's context, so Watch returns promptly once
// that context is done and leaves nothing running behind it.
package healthwatch
