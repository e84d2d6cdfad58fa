package tap

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/callrecord"
)

// Defaults and bounds of a Subscription.
const (
	// DefaultRate is the most calls per second a tapper is sent when it
	// does not ask for a rate; MaxRate the most it may ask for.
	DefaultRate = 100
	MaxRate     = 1000
	// Buffer is how many calls wait for a slow tapper before further
	// ones are dropped (and counted).
	Buffer = 256
	// MaxTappers bounds the concurrent subscriptions of one Hub, so that
	// tapping can not make the data path's cost grow without bound.
	MaxTappers = 16
)

// ErrTooMany is returned by Subscribe when MaxTappers are already tapping.
var ErrTooMany = errors.New("tap: too many tappers")

// Event is one finished call as a tapper sees it: one JSON line on GET /tap.
type Event struct {
	// Time is when the call ended.
	Time     time.Time `json:"time"`
	Route    string    `json:"route,omitempty"`
	Cluster  string    `json:"cluster,omitempty"`
	Method   string    `json:"method"`
	Status   string    `json:"status"`            // gRPC code name, "UNAVAILABLE"
	Message  string    `json:"message,omitempty"` // meshd's own error text
	Latency  Duration  `json:"latency"`
	Endpoint string    `json:"endpoint,omitempty"`
	Attempts int       `json:"attempts"`
	// Peer is the caller's mesh identity (SPIFFE ID) when known.
	Peer     string `json:"peer,omitempty"`
	BytesIn  int64  `json:"bytes_in"`
	BytesOut int64  `json:"bytes_out"`
	// Protocol is "grpc" or "grpc-web".
	Protocol string `json:"protocol"`
}

// Duration is a time.Duration that reads and writes as text ("1.5ms").
type Duration time.Duration

// MarshalText writes d as time.Duration's String.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads time.ParseDuration's syntax.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// Filter selects calls. Zero fields match everything.
type Filter struct {
	Route  string
	Method string // full method, "/pkg.Service/Method"; or a service, "pkg.Service"
	Code   *codes.Code
	// Rate caps the calls per second sent (0: DefaultRate; at most MaxRate).
	Rate int
}

func (f *Filter) match(c *callrecord.Call) bool {
	if f.Route != "" && c.Route != f.Route {
		return false
	}
	if f.Method != "" && c.Method != f.Method && !strings.HasPrefix(c.Method, "/"+f.Method+"/") {
		return false
	}
	return f.Code == nil || *f.Code == c.Code
}

// Hub hands finished calls to its subscriptions. The zero value is ready
// to use; all methods are safe for concurrent use.
type Hub struct {
	// subs is the current subscriptions, nil when there are none, so
	// that ObserveCall costs one atomic load while nobody taps. It is
	// copied on write under mu.
	subs atomic.Pointer[[]*Subscription]
	mu   sync.Mutex
}

var _ callrecord.Observer = (*Hub)(nil)

// ObserveCall offers c to each subscription whose filter matches it. It
// never blocks: a subscription over its rate skips the call, one whose
// buffer is full drops it and counts the drop.
func (h *Hub) ObserveCall(c *callrecord.Call) {
	subs := h.subs.Load()
	if subs == nil {
		return
	}
	var ev Event // built once, for the first subscription that takes c
	end := c.Start.Add(c.Duration)
	for _, s := range *subs {
		if !s.f.match(c) || !s.admit(end) {
			continue
		}
		if ev.Method == "" {
			ev = newEvent(c, end)
		}
		select {
		case s.c <- ev:
		default:
			s.dropped.Add(1)
		}
	}
}

func newEvent(c *callrecord.Call, end time.Time) Event {
	proto := c.Protocol
	if proto == "" {
		proto = "grpc"
	}
	return Event{Time: end, Route: c.Route, Cluster: c.Cluster, Method: c.Method, Status: CodeName(c.Code), Message: c.Message,
		Latency: Duration(c.Duration), Endpoint: c.Endpoint, Attempts: c.Attempts, Peer: c.Peer,
		BytesIn: c.BytesIn, BytesOut: c.BytesOut, Protocol: proto}
}

// Subscribe starts a subscription to the calls f selects. Close it when
// done. It fails with ErrTooMany past MaxTappers.
func (h *Hub) Subscribe(f Filter) (*Subscription, error) {
	if f.Rate <= 0 {
		f.Rate = DefaultRate
	}
	f.Rate = min(f.Rate, MaxRate)
	s := &Subscription{h: h, f: f, c: make(chan Event, Buffer), interval: time.Second / time.Duration(f.Rate)}
	h.mu.Lock()
	defer h.mu.Unlock()
	var cur []*Subscription
	if p := h.subs.Load(); p != nil {
		cur = *p
	}
	if len(cur) >= MaxTappers {
		return nil, ErrTooMany
	}
	next := append(append(make([]*Subscription, 0, len(cur)+1), cur...), s)
	h.subs.Store(&next)
	return s, nil
}

// Tappers is the number of open subscriptions.
func (h *Hub) Tappers() int {
	if p := h.subs.Load(); p != nil {
		return len(*p)
	}
	return 0
}

func (h *Hub) remove(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.subs.Load()
	if p == nil {
		return
	}
	next := make([]*Subscription, 0, len(*p))
	for _, o := range *p {
		if o != s {
			next = append(next, o)
		}
	}
	if len(next) == 0 {
		h.subs.Store(nil)
		return
	}
	h.subs.Store(&next)
}

// Subscription is one tapper's stream of calls.
type Subscription struct {
	h        *Hub
	f        Filter
	c        chan Event
	interval time.Duration
	// next is the earliest end time (UnixNano) of the next call admitted:
	// a rate cap with a burst of one interval, kept without a lock.
	next    atomic.Int64
	dropped atomic.Uint64
	once    sync.Once
}

// admit applies the rate cap at the call's end time t.
func (s *Subscription) admit(t time.Time) bool {
	now := t.UnixNano()
	for {
		n := s.next.Load()
		if now < n {
			return false
		}
		if s.next.CompareAndSwap(n, now+int64(s.interval)) {
			return true
		}
	}
}

// Events delivers the subscription's calls. It is never closed: stop
// reading after Close.
func (s *Subscription) Events() <-chan Event { return s.c }

// Dropped is how many matching calls were lost because the buffer was full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription; calls stop arriving.
func (s *Subscription) Close() { s.once.Do(func() { s.h.remove(s) }) }

var codeNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
	"UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// CodeName is c's name as the gRPC spec writes it ("UNAVAILABLE").
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "CODE(" + strconv.Itoa(int(c)) + ")"
}

// ParseCode reads a code by name (any case) or number.
func ParseCode(s string) (codes.Code, error) {
	for i, n := range codeNames {
		if strings.EqualFold(s, n) {
			return codes.Code(i), nil
		}
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 && n < len(codeNames) {
		return codes.Code(n), nil
	}
	return 0, fmt.Errorf("tap: unknown gRPC code %q", s)
}
