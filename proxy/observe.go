package proxy

import (
	"time"

	"google.golang.org/grpc/codes"
)

// Call describes one finished call, for metrics and access logs. Observers
// must not keep the pointer after ObserveCall returns: it is reused.
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
	Peer     string
	TraceID  string // W3C trace id of the SERVER span, "" when not traced
}

// Observer is told about every call when it ends. It runs on the call's
// goroutine, so it must be quick and must not block.
type Observer interface {
	ObserveCall(c *Call)
}

// WithObserver adds an observer (metrics, access log). Several may be added.
func WithObserver(o Observer) Option {
	return func(p *Proxy) { p.observers = append(p.observers, o) }
}
