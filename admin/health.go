package admin

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Health service names the admin port's grpc.health.v1 service knows.
const (
	// HealthReadiness ("", the name probes send by default) is SERVING
	// exactly when /ready answers 200.
	HealthReadiness = ""
	// HealthLiveness is SERVING whenever the admin server answers, like
	// /live.
	HealthLiveness = "liveness"
)

// DefaultHealthPollInterval is how often a health Watch stream re-reads
// readiness without WithHealthPollInterval.
const DefaultHealthPollInterval = time.Second

// healthServer answers grpc.health.v1 from Source.Ready. It is meshd's own
// rather than grpc-go's health.Server because that one holds statuses that
// someone must push; computing Check from Ready on every request makes it
// fail at the same instant /ready does (a drain flips both at once), with
// no goroutine keeping the two in step. Watch streams poll.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	ready func() error
	poll  time.Duration

	stopOnce sync.Once
	stop     chan struct{} // closed at shutdown: Watch streams end
}

func newHealthServer(ready func() error, poll time.Duration) *healthServer {
	return &healthServer{ready: ready, poll: poll, stop: make(chan struct{})}
}

// shutdown ends every Watch stream, now and later, with UNAVAILABLE. The
// handlers return at once; the HTTP server's shutdown waits for them.
func (h *healthServer) shutdown() { h.stopOnce.Do(func() { close(h.stop) }) }

// status returns service's status, and false for an unknown service.
func (h *healthServer) status(service string) (healthpb.HealthCheckResponse_ServingStatus, bool) {
	switch service {
	case HealthReadiness:
		if h.ready() != nil {
			return healthpb.HealthCheckResponse_NOT_SERVING, true
		}
		return healthpb.HealthCheckResponse_SERVING, true
	case HealthLiveness:
		return healthpb.HealthCheckResponse_SERVING, true
	}
	return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, false
}

// Check answers the current status, or NOT_FOUND for an unknown service,
// as grpc-go's health server does.
func (h *healthServer) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st, ok := h.status(req.GetService())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown service %q", req.GetService())
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

// List reports every known service.
func (h *healthServer) List(context.Context, *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	out := &healthpb.HealthListResponse{Statuses: map[string]*healthpb.HealthCheckResponse{}}
	for _, svc := range []string{HealthReadiness, HealthLiveness} {
		st, _ := h.status(svc)
		out.Statuses[svc] = &healthpb.HealthCheckResponse{Status: st}
	}
	return out, nil
}

// Watch sends the status at once and then each change, polling every
// h.poll. An unknown service is SERVICE_UNKNOWN and stays watched, as the
// health protocol says. The stream ends with the client, or with
// UNAVAILABLE when the admin server shuts down.
func (h *healthServer) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	t := time.NewTicker(h.poll)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		st, _ := h.status(req.GetService())
		if st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-t.C:
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-h.stop:
			return status.Error(codes.Unavailable, "meshd admin: shutting down")
		}
	}
}
