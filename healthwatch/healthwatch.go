package healthwatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// State is a backend's health as meshd sees it.
type State int

const (
	// StateUnknown means no answer yet. It is the implicit starting point of
	// every Watch and is never reported.
	StateUnknown State = iota
	// StateServing means the backend may take traffic.
	StateServing
	// StateNotServing means the backend must not take traffic: it said so,
	// it does not know the service, or it could not be asked.
	StateNotServing
)

// String returns the name used in logs, metrics and the admin API.
func (s State) String() string {
	switch s {
	case StateUnknown:
		return "unknown"
	case StateServing:
		return "serving"
	case StateNotServing:
		return "not_serving"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

// Values of [Report.Source]: where an observation came from.
const (
	// SourceWatch: a message or failure of the Health/Watch stream.
	SourceWatch = "watch"
	// SourceCheck: a Health/Check poll, used when Watch is unimplemented.
	SourceCheck = "check"
	// SourceAbsent: the backend has no health service at all.
	SourceAbsent = "absent"
)

// reasonAbsent is the Reason of every "absent" report.
const reasonAbsent = "no health service"

// Report is one observation handed to the caller. Reports are comparable,
// which is what deduplication relies on.
type Report struct {
	// State is the verdict.
	State State
	// Source is one of SourceWatch, SourceCheck or SourceAbsent.
	Source string
	// Reason is a short human reason: the serving status name ("SERVING",
	// "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN"), "stream error: <err>",
	// "check error: <err>" or "no health service".
	Reason string
	// Unreachable marks a NotServing verdict that comes from not reaching
	// the backend at all (its connection is refused, broken or timed out:
	// the RPC failed with UNAVAILABLE or DEADLINE_EXCEEDED) rather than
	// from an answer of the backend. A caller that would send calls to
	// unhealthy backends anyway (panic mode) leaves these out: a call
	// there could only fail.
	Unreachable bool
}

// Option configures Watch.
type Option func(*options)

type options struct {
	backoffBase    time.Duration
	backoffMax     time.Duration
	checkInterval  time.Duration
	reprobe        time.Duration // 0: derived from checkInterval
	missingServing bool
	rand           func() float64
}

const (
	defaultBackoffBase   = 100 * time.Millisecond
	defaultBackoffMax    = 5 * time.Second
	defaultCheckInterval = time.Second
	// minReprobe keeps an "absent" backend from being probed for a health
	// service more often than this when the re-probe interval is derived.
	minReprobe = 10 * time.Second
	// minCheckTimeout bounds one Check call from below: a short poll interval
	// must not turn a slightly slow backend into a NotServing one.
	minCheckTimeout = time.Second
	// jitter spreads reconnects of many watchers by ±20%, as grpc-go does.
	jitter = 0.2
)

// WithBackoff sets the delay before reopening a broken Watch stream: it
// starts at base, doubles after each failed attempt up to max, carries ±20%
// jitter (never above max) and restarts from base after each received
// message. Defaults: 100ms and 5s. A non-positive base keeps the default;
// a max below base is raised to base.
func WithBackoff(base, max time.Duration) Option {
	return func(o *options) {
		if base > 0 {
			o.backoffBase = base
		}
		if max > 0 {
			o.backoffMax = max
		}
	}
}

// WithCheckInterval sets how often Health/Check is polled when the backend
// does not implement Watch. Default 1s; a non-positive d keeps it.
func WithCheckInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.checkInterval = d
		}
	}
}

// WithMissingService sets the verdict for a backend with no health service
// at all (both Watch and Check unimplemented). false, the default, reports
// it NotServing so that a misconfigured backend takes no traffic; true
// reports it Serving, as grpc-go's client-side health checking does, for
// fleets where not every backend exposes grpc.health.v1.
//
// An absent backend is asked again only every re-probe interval
// ([WithReprobeInterval]), so a Serving verdict outlives the backend by up
// to that long; the connection's own state is the faster signal there.
func WithMissingService(serving bool) Option {
	return func(o *options) { o.missingServing = serving }
}

// WithReprobeInterval sets how long an "absent" backend waits before Watch
// probes it for a health service again. Default: ten check intervals, but
// at least 10s. A non-positive d keeps the default.
func WithReprobeInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.reprobe = d
		}
	}
}

// WithRand sets the jitter source; r must return values in [0, 1) and is
// only called from Watch's goroutine. Default: math/rand/v2's Float64.
// Tests inject a fixed source to make delays predictable.
func WithRand(r func() float64) Option {
	return func(o *options) {
		if r != nil {
			o.rand = r
		}
	}
}

func newOptions(opts []Option) options {
	o := options{
		backoffBase:   defaultBackoffBase,
		backoffMax:    defaultBackoffMax,
		checkInterval: defaultCheckInterval,
		rand:          rand.Float64,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.backoffMax < o.backoffBase {
		o.backoffMax = o.backoffBase
	}
	if o.reprobe == 0 {
		o.reprobe = max(10*o.checkInterval, minReprobe)
	}
	return o
}

// backoff returns the delay before attempt number n (0-based) of reopening
// the stream: base·2ⁿ capped at max, then jittered by ±20% and capped again
// so that max really is the longest wait.
func (o *options) backoff(n int) time.Duration {
	d := o.backoffBase
	for i := 0; i < n && d < o.backoffMax; i++ {
		d *= 2
	}
	d = min(d, o.backoffMax)
	d = time.Duration(float64(d) * (1 + jitter*(2*o.rand()-1)))
	return max(min(d, o.backoffMax), 0)
}

// mode is what Watch does next; each mode's function returns the next one.
type mode int

const (
	modeWatch mode = iota
	modeCheck
	modeAbsent
	modeDone
)

// watcher holds one Watch call's state. It is used by one goroutine only.
type watcher struct {
	client  healthpb.HealthClient
	service string
	report  func(Report)
	opts    options
	last    Report // last report handed out; the zero Report before any
	// waitReady makes RPCs wait for the connection to be READY instead of
	// failing while it is not; set once a failure has been reported (see
	// watch).
	waitReady bool
}

// Watch follows the health of service ("" = the whole server) on the
// backend behind conn and calls report with every change of State, Source
// or Reason, starting with the first observation. report is called from
// Watch's goroutine, one call at a time; Watch waits while it runs, so it
// should be quick.
//
// Watch blocks until ctx is done and returns only once every RPC it opened
// has been cancelled. It does not close conn. See the package
// documentation for the modes it moves through.
func Watch(ctx context.Context, conn grpc.ClientConnInterface, service string, report func(Report), opts ...Option) {
	w := &watcher{
		client:  healthpb.NewHealthClient(conn),
		service: service,
		report:  report,
		opts:    newOptions(opts),
	}
	for m := modeWatch; m != modeDone; {
		switch m {
		case modeWatch:
			m = w.watch(ctx)
		case modeCheck:
			m = w.check(ctx)
		case modeAbsent:
			m = w.absent(ctx)
		}
	}
}

// emit hands r to the caller unless it repeats the previous report.
func (w *watcher) emit(r Report) {
	if r == w.last {
		return
	}
	w.last = r
	w.report(r)
}

// watch keeps a Health/Watch stream open, reopening it with backoff when it
// breaks, until ctx is done or the backend says Watch is unimplemented.
//
// The first stream fails fast, so that a backend that cannot be reached
// gets a verdict (and its reason) at once. Once a failure has been
// reported, every later stream is wait-for-ready: it waits, without
// failing, until the connection is READY again and opens at that moment,
// so a backend that comes back is judged as soon as the connection's own
// reconnect reaches it, not on the next tick of this loop's backoff.
func (w *watcher) watch(ctx context.Context) mode {
	for attempt := 0; ; {
		received, err := w.stream(ctx)
		if ctx.Err() != nil {
			return modeDone
		}
		if status.Code(err) == codes.Unimplemented {
			// Not a failure of the backend: it answered, just not to Watch.
			// Report nothing until Check says what the health is.
			return modeCheck
		}
		if received {
			// The stream worked for a while: this breakage is news, not a
			// backend that keeps refusing us, so start the backoff over.
			attempt = 0
		}
		w.emit(Report{State: StateNotServing, Source: SourceWatch, Reason: "stream error: " + err.Error(), Unreachable: unreachable(err)})
		w.waitReady = true
		if !sleep(ctx, w.opts.backoff(attempt)) {
			return modeDone
		}
		attempt++
	}
}

// stream runs one Health/Watch stream until it fails, reporting every
// message. It says whether any message arrived and returns the error that
// ended the stream (never nil).
func (w *watcher) stream(ctx context.Context) (received bool, err error) {
	// A stream context of our own, cancelled on every path, so nothing of
	// this stream outlives the call even when it ends on a Recv error.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	s, err := w.client.Watch(ctx, &healthpb.HealthCheckRequest{Service: w.service}, grpc.WaitForReady(w.waitReady))
	if err != nil {
		return false, err
	}
	for {
		resp, rerr := s.Recv()
		if errors.Is(rerr, io.EOF) {
			// The server ended a stream that is meant to last forever.
			rerr = errors.New("stream closed by server")
		}
		if rerr != nil {
			return received, rerr
		}
		received = true
		w.emit(fromStatus(SourceWatch, resp.GetStatus()))
	}
}

// check polls Health/Check every check interval until ctx is done or the
// backend says Check is unimplemented too.
func (w *watcher) check(ctx context.Context) mode {
	timeout := max(w.opts.checkInterval, minCheckTimeout)
	for {
		waited, start := w.waitReady, time.Now()
		r, unimplemented := w.checkOnce(ctx, timeout)
		if ctx.Err() != nil {
			return modeDone
		}
		if unimplemented {
			return modeAbsent
		}
		if waited && r.Unreachable && w.last.State == StateNotServing {
			// The backend is still out of reach: the NotServing verdict
			// already reported, and its reason, stand (a wait-for-ready
			// Check that timed out would only say "deadline exceeded").
			// A wait at least as long as the poll interval was the pause.
			if time.Since(start) >= w.opts.checkInterval {
				continue
			}
		} else {
			w.emit(r)
			// After an unreachable verdict, wait for the connection rather
			// than failing at once, so the next Check runs the moment the
			// backend is back (see watch).
			w.waitReady = r.Unreachable
		}
		if !sleep(ctx, w.opts.checkInterval) {
			return modeDone
		}
	}
}

// checkOnce makes one Check call bounded by timeout, so a hung backend
// reads as NotServing instead of stalling the poll.
func (w *watcher) checkOnce(ctx context.Context, timeout time.Duration) (r Report, unimplemented bool) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := w.client.Check(ctx, &healthpb.HealthCheckRequest{Service: w.service}, grpc.WaitForReady(w.waitReady))
	switch status.Code(err) {
	case codes.OK:
		return fromStatus(SourceCheck, resp.GetStatus()), false
	case codes.Unimplemented:
		return Report{}, true
	case codes.NotFound:
		// The protocol's Check answer for a service the server does not
		// know; Watch says the same with SERVICE_UNKNOWN, so report it alike.
		return fromStatus(SourceCheck, healthpb.HealthCheckResponse_SERVICE_UNKNOWN), false
	default:
		return Report{State: StateNotServing, Source: SourceCheck, Reason: "check error: " + err.Error(), Unreachable: unreachable(err)}, false
	}
}

// unreachable says whether a failed health RPC failed to reach the backend
// (connection refused, broken or timed out) rather than being answered.
func unreachable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// absent reports the configured verdict for a backend without a health
// service, then waits for the re-probe interval and starts over with Watch.
func (w *watcher) absent(ctx context.Context) mode {
	st := StateNotServing
	if w.opts.missingServing {
		st = StateServing
	}
	w.emit(Report{State: st, Source: SourceAbsent, Reason: reasonAbsent})
	if !sleep(ctx, w.opts.reprobe) {
		return modeDone
	}
	// The re-probe fails fast: a backend that went away meanwhile must
	// read as NotServing, not leave the absent verdict standing while a
	// wait-for-ready stream waits for it.
	w.waitReady = false
	return modeWatch
}

// fromStatus maps a grpc.health.v1 serving status to a report: only SERVING
// is Serving; NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN and any value added to
// the protocol later are NotServing, because traffic must not go to a
// backend that has not said it can take it.
func fromStatus(source string, s healthpb.HealthCheckResponse_ServingStatus) Report {
	st := StateNotServing
	if s == healthpb.HealthCheckResponse_SERVING {
		st = StateServing
	}
	return Report{State: st, Source: source, Reason: s.String()}
}

// sleep waits for d or until ctx is done, whichever comes first, and says
// whether the full wait elapsed. The timer is stopped either way.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
