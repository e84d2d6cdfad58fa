package callrecord

import (
	"net"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
)

// Call describes one finished call. Observers must not keep the pointer
// after ObserveCall returns: the data path may reuse it.
type Call struct {
	Method   string
	Route    string // "" when no route matched
	Cluster  string // "" when no cluster was chosen
	Endpoint string // address of the last attempt's endpoint, "" if none
	Code     codes.Code
	// Message is meshd's own error text when meshd produced the status.
	Message  string
	Start    time.Time
	Duration time.Duration
	Attempts int   // upstream attempts made (0: failed before any)
	BytesIn  int64 // message bytes client → backend
	BytesOut int64 // message bytes backend → client
	// PeerAddr is the client's address (nil when unknown) and TraceID the
	// SERVER span's trace id (zero when not traced). They are kept raw and
	// formatted by PeerString and TraceIDString only by the observers that
	// print them, and only for calls they print: formatting both on every
	// call costs allocations the metrics observer never needs.
	PeerAddr net.Addr
	TraceID  trace.TraceID
	// Peer is the caller's mesh identity (its SPIFFE ID) on a mesh
	// listener, "" elsewhere and for plaintext callers.
	Peer string
	// Denied is true when meshd's authorization (the mesh's intentions)
	// refused the call: Code is then PERMISSION_DENIED and no route was
	// looked up.
	Denied bool
	// JWTProvider and JWTDenied are set when the route's JWT provider
	// refused the call's token (Code UNAUTHENTICATED): the provider's name
	// and the reason, one of a fixed set (jwtauth.Reason*). Both "" else.
	JWTProvider, JWTDenied string
	// Protocol is how the call arrived when not as native gRPC:
	// "grpc-web" for a gRPC-Web request meshd translated (package
	// grpcweb); "" for native gRPC.
	Protocol string
	// Fault names the fault the route injected into the call ("delay",
	// "abort"), "" for none (route fault injection, for drills).
	Fault string
}

// PeerString is the client's address, "" when unknown.
func (c *Call) PeerString() string {
	if c.PeerAddr == nil {
		return ""
	}
	return c.PeerAddr.String()
}

// TraceIDString is the trace id in W3C hex, "" when the call was not traced.
func (c *Call) TraceIDString() string {
	if !c.TraceID.IsValid() {
		return ""
	}
	return c.TraceID.String()
}

// Observer is told about every call when it ends. It runs on one of the
// data path's goroutines, so it must be quick and must not block.
type Observer interface {
	ObserveCall(c *Call)
}

// MirrorObserver is an Observer that is also told what became of each
// mirrored copy of a call (route mirror): result is "answered",
// "dropped", "failed" or "no_endpoint". It must not block.
type MirrorObserver interface {
	Observer
	ObserveMirror(route, result string)
}

// StartObserver is an Observer that is also told when a call starts, before
// routing, so it can keep gauges such as the number of calls in flight.
// Every CallStarted is followed by exactly one ObserveCall for the same
// call. Like ObserveCall it must not block.
type StartObserver interface {
	Observer
	CallStarted()
}
