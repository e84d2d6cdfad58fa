package server

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/origdst"
)

// A frame engine original_dst listener runs origdst's handshake on each
// connection and serves the gRPC ones with the connection's origdst.Info
// in the context its Director gets. (The connections here are not
// redirected, so the Info has no destination; the netns test covers
// redirected ones and relays.) The passthrough cluster of a destination
// releases the engine's upstream connection to it when it idles out, and
// a graceful stop ends the accept loop and every connection goroutine.
func TestFrameOriginalDstListener(t *testing.T) {
	t.Parallel()
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := grpc.NewServer()
	healthpb.RegisterHealthServer(backend, health.NewServer())
	go backend.Serve(bl)
	defer backend.Stop()
	backendAddr := bl.Addr().String()

	log := slog.New(slog.DiscardHandler)
	s := &Server{log: log, dests: newDestinations(log)}
	defer s.dests.close()
	infos := make(chan any, 1)
	fs := engine.NewServer(engine.DirectorFunc(func(ctx context.Context, req *engine.Request) (engine.Target, error) {
		var auth any
		if p, ok := peer.FromContext(ctx); ok {
			auth = p.AuthInfo
		}
		select {
		case infos <- auth:
		default:
		}
		// What proxy.Proxy.cluster does for the original_dst cluster.
		if _, err := s.dests.Passthrough(backendAddr); err != nil {
			return engine.Target{}, err
		}
		return engine.Target{Addr: backendAddr}, nil
	}), engine.Config{HandshakeTimeout: 10 * time.Second, Logger: log})
	s.frameSet.Store(&[]*engine.Server{fs})
	lc := config.Listener{Name: "out", OriginalDst: &config.OriginalDst{Direction: config.DirectionOutbound, DetectTimeout: config.Duration(time.Second)}}
	srv := frameServer{Server: fs, odst: s.originalDstAccept(lc, fs)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("call through the original_dst listener: %v", err)
	}
	switch info := (<-infos).(type) {
	case origdst.Info:
		if info.Dst.IsValid() || info.Inbound {
			t.Errorf("Director's connection info %+v, want no destination (not redirected), outbound", info)
		}
	default:
		t.Errorf("Director's peer AuthInfo is %T, want origdst.Info from the listener's handshake", info)
	}
	if a := fs.AbuseStats(); a.ConnsAccepted != 1 {
		t.Errorf("engine counted %d accepted connections, want 1", a.ConnsAccepted)
	}

	// The passthrough cluster idles out: the engine lets go of its
	// connection to the destination.
	if n := fs.Stats().UpstreamConns; n != 1 {
		t.Fatalf("engine has %d upstream connections, want 1", n)
	}
	if n := s.dests.evictIdle(time.Now().Add(time.Minute)); n != 1 {
		t.Fatalf("evicted %d passthrough clusters, want 1", n)
	}
	if !testkit.Poll(10*time.Second, 0, func() bool { return fs.Stats().UpstreamConns == 0 }) {
		t.Fatalf("engine still has %d upstream connections to an evicted passthrough destination", fs.Stats().UpstreamConns)
	}

	srv.GracefulStop()
	if err := <-served; !serveStopped(err) {
		t.Errorf("Serve after GracefulStop: %v", err)
	}
}
