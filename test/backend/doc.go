// Package backend is a real gRPC backend for meshd's tests, demo and load
// harness: grpc-go's interop TestService (unary and every streaming shape)
// plus a grpc.health.v1 server, whose behaviour each call steers through
// request metadata, so the same binary serves every scenario:
//
//	x-echo-*         echoed into the response headers and trailers
//	x-delay          a Go duration to wait (context-aware) before answering
//	x-header-first   "1": send response headers before the delay
//	x-fail           a status code number or name to answer with
//	x-fail-message   the status message for x-fail (x-fail-message-bin for unicode)
//	x-fail-details   "1": attach a status detail (google.rpc.ErrorInfo)
//	x-trailers-only  "1": answer with no response headers at all
//	x-pad-header     N: add a response header x-pad of N bytes (PadValue);
//	                 x-pad-header-bin: a binary x-pad-bin of N bytes (PadBytes)
//	x-pad-trailer    N: the same as trailers (x-pad-trailer-bin for x-pad-bin)
//
// The trailer x-seen-keys lists the request metadata keys the backend got.
//
// Every response (except trailers-only) carries header x-backend: NAME so a
// test can see which backend answered.
package backend
