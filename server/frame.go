package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"

	"google.golang.org/grpc"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/h2guard"
	"github.com/meshd/meshd/h2proxy"
)

// dataServer is what a listener serves with: a grpc.Server for engine grpc,
// the frame engine for engine frame.
type dataServer interface {
	Serve(net.Listener) error
	// GracefulStop stops accepting, sends GOAWAY and waits for in-flight
	// calls.
	GracefulStop()
	// Stop closes every connection at once.
	Stop()
}

var _ dataServer = (*grpc.Server)(nil)

// serveStopped reports whether err is a data server's normal "stopped".
func serveStopped(err error) bool {
	return err == nil || errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, h2proxy.ErrServerClosed)
}

// frameServer adapts h2proxy.Server to dataServer. On an original_dst
// listener odst accepts the connections instead of the engine
// (frame_origdst.go); it is nil otherwise.
type frameServer struct {
	*h2proxy.Server
	odst *odstAccept
}

// Serve runs origdst's accept loop on an original_dst listener, the
// engine's own otherwise.
func (f frameServer) Serve(ln net.Listener) error {
	if f.odst != nil {
		return f.odst.serve(ln)
	}
	return f.Server.Serve(ln)
}

func (f frameServer) GracefulStop() {
	if f.odst != nil {
		f.odst.stop()
	}
	// Shutdown waits for in-flight streams; drain's own timer bounds it by
	// calling Stop, which ends the wait.
	_ = f.Shutdown(context.Background())
	if f.odst != nil {
		f.odst.wait()
	}
}

func (f frameServer) Stop() {
	if f.odst != nil {
		f.odst.stop()
	}
	_ = f.Close()
	if f.odst != nil {
		f.odst.wait()
	}
}

// frameListener builds the frame engine for one listener. The engine does
// its own HTTP/2 protocol policing (stream, header and frame limits, and
// h2guard's flood, reset and handshake rules inside its connections), so no
// h2guard sits in front of it; its counters reach /metrics through
// frameListenerStats.
//
// An original_dst listener's connections go through origdst's handshake
// first (frame_origdst.go): opaque TCP is relayed to its original
// destination and never reaches the engine, and the Director finds a gRPC
// connection's original destination in the connection's context.
func (s *Server) frameListener(cfg *config.Config, lc config.Listener, lis net.Listener) (dataServer, net.Listener, error) {
	var idle config.Duration // nil (defaults skipped): kept, as listenerOptions does
	if lc.IdleTimeout != nil {
		idle = *lc.IdleTimeout
	}
	fs := h2proxy.NewServer(s.proxy, h2proxy.Config{
		MaxConcurrentStreams: lc.MaxConcurrentStreams,
		MaxHeaderListSize:    lc.MaxHeaderListSize,
		MaxRecvMsgSize:       cfg.MaxMessageSize,
		MaxSendMsgSize:       cfg.MaxMessageSize,
		HandshakeTimeout:     lc.HandshakeTimeout.D(),
		// The listener's connection limits, with grpc-go's semantics as
		// listenerOptions gives them to the grpc engine.
		IdleTimeout:                  idle.D(),
		MaxConnectionAge:             lc.MaxConnectionAge.D(),
		MaxConnectionAgeGrace:        lc.MaxConnectionAgeGrace.D(),
		KeepaliveTime:                lc.Keepalive.Time.D(),
		KeepaliveTimeout:             lc.Keepalive.Timeout.D(),
		KeepaliveMinTime:             lc.Keepalive.MinTime.D(),
		KeepalivePermitWithoutStream: lc.Keepalive.PermitWithoutStream != nil && *lc.Keepalive.PermitWithoutStream,
		Logger:                       s.log.With("component", "h2proxy", "listener", lc.Name),
	})
	if lc.TLS != nil {
		tc, err := loadServerTLS(lc.TLS, s.log.With("listener", lc.Name))
		if err != nil {
			return nil, nil, fmt.Errorf("tls: %w", err)
		}
		lis = tls.NewListener(lis, tc)
	}
	srv := frameServer{Server: fs}
	if lc.OriginalDst != nil {
		srv.odst = s.originalDstAccept(lc, fs)
	}
	s.frames = append(s.frames, fs)
	frames := slices.Clone(s.frames)
	s.frameSet.Store(&frames)
	return srv, lis, nil
}

// forgetUpstream releases the frame engine's upstream connections to an
// address whose endpoint was removed: without it they would live as long as
// meshd, and endpoint churn (new pod addresses) would pile them up. If
// another cluster still uses the address, its next call simply redials.
// It runs on a balancer cluster's goroutine, which may be stopped while
// s.mu is held, so it reads the servers through an atomic pointer instead
// of taking the lock.
func (s *Server) forgetUpstream(addr string) {
	if p := s.frameSet.Load(); p != nil {
		for _, fs := range *p {
			fs.Pool().Forget(addr)
		}
	}
}

// frameReasons maps the frame engine's close reasons to h2guard's (the
// same rules under the same names).
var frameReasons = [h2proxy.NumAbuseReasons]h2guard.Reason{
	h2proxy.AbuseRapidReset:        h2guard.RapidReset,
	h2proxy.AbuseEmptyFrames:       h2guard.EmptyFrames,
	h2proxy.AbuseSettingsFlood:     h2guard.SettingsFlood,
	h2proxy.AbusePingFlood:         h2guard.PingFlood,
	h2proxy.AbuseWindowUpdateFlood: h2guard.WindowUpdateFlood,
	h2proxy.AbuseExtraFrames:       h2guard.ExtraFrames,
	h2proxy.AbuseProtocolError:     h2guard.ProtocolError,
	h2proxy.AbuseFrameTooLarge:     h2guard.FrameTooLarge,
	h2proxy.AbuseHeadersTooLarge:   h2guard.HeadersTooLarge,
	h2proxy.AbuseNotHTTP2:          h2guard.NotHTTP2,
	h2proxy.AbuseHandshakeTimeout:  h2guard.HandshakeTimeout,
}

// frameListenerStats reports a frame engine listener's counters in
// h2guard's shape, so that both engines' listeners have the same
// meshd_listener_* series. The frame and error code arrays are indexed
// alike (the assignments do not compile if their sizes differ).
func frameListenerStats(fs *h2proxy.Server) h2guard.Stats {
	a := fs.AbuseStats()
	st := h2guard.Stats{
		ConnsAccepted:       a.ConnsAccepted,
		ConnsActive:         fs.Stats().ActiveConns,
		FramesReceived:      a.FramesReceived,
		EmptyFramesReceived: a.EmptyFramesReceived,
		GoAwaysSent:         a.GoAwaysSent,
		ResetsSent:          a.ResetsSent,
	}
	for r, v := range a.Closed {
		st.Closed[frameReasons[r]] += v
	}
	return st
}
