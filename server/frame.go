package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/director"
	"github.com/meshd/meshd/engine"
)

// serveStopped reports whether err is the engine's normal "stopped".
func serveStopped(err error) bool {
	return err == nil || errors.Is(err, engine.ErrServerClosed)
}

// frameServer is one listener's engine. On an original_dst listener odst
// accepts the connections instead of the engine (frame_origdst.go); it is
// nil otherwise.
type frameServer struct {
	*engine.Server
	odst *odstAccept
	web  *webAccept // grpc_web listeners (web.go); nil otherwise
	// refl serves merged reflection on reflection listeners
	// (reflection.go); nil otherwise.
	refl *localReflection
}

// Serve runs origdst's accept loop on an original_dst listener, the
// engine's own otherwise.
func (f frameServer) Serve(ln net.Listener) error {
	if f.odst != nil {
		return f.odst.serve(ln)
	}
	if f.web != nil {
		return f.web.serve(ln)
	}
	return f.Server.Serve(ln)
}

// GracefulStop stops accepting, sends GOAWAY and waits for in-flight
// calls.
func (f frameServer) GracefulStop() {
	if f.refl != nil {
		// In-flight reflection streams finish; its connections then
		// close, which lets the engine's own pool go idle.
		defer f.refl.stop()
		go f.refl.gracefulStop()
	}
	if f.odst != nil {
		f.odst.stop()
	}
	if f.web != nil {
		// HTTP/1.1 calls in flight finish while the engine drains their
		// in-process connections; Stop (drain's timer) ends both waits.
		f.web.stop()
		done := make(chan struct{})
		go func() { defer close(done); f.web.shutdown(context.Background()) }()
		_ = f.Shutdown(context.Background())
		<-done
		f.web.closeTranslator()
		f.web.wait()
		return
	}
	// Shutdown waits for in-flight streams; drain's own timer bounds it by
	// calling Stop, which ends the wait.
	_ = f.Shutdown(context.Background())
	if f.odst != nil {
		f.odst.wait()
	}
}

// Stop closes every connection at once.
func (f frameServer) Stop() {
	if f.refl != nil {
		f.refl.stop()
	}
	if f.odst != nil {
		f.odst.stop()
	}
	if f.web != nil {
		f.web.stop()
		f.web.close()
	}
	_ = f.Close()
	if f.odst != nil {
		f.odst.wait()
	}
	if f.web != nil {
		f.web.wait()
	}
}

// frameListener builds the engine for one listener. The engine does its
// own HTTP/2 protocol policing (stream, header and frame limits, flood,
// reset and handshake rules inside its connections); its counters reach
// /metrics through ListenerStats. Its calls go to backends through the
// pool of their cluster (clusterRun.pool, named by the Target's Upstream),
// which every listener shares; the engine's own Pool stays empty.
//
// An original_dst listener's connections go through origdst's handshake
// first (frame_origdst.go): opaque TCP is relayed to its original
// destination and never reaches the engine, and the Director finds a gRPC
// connection's original destination in the connection's context.
func (s *Server) frameListener(cfg *config.Config, lc config.Listener, lis net.Listener) (frameServer, net.Listener, error) {
	var idle config.Duration // nil (defaults skipped): kept, as listenerOptions does
	if lc.IdleTimeout != nil {
		idle = *lc.IdleTimeout
	}
	ecfg := engine.Config{
		MaxConcurrentStreams: lc.MaxConcurrentStreams,
		MaxHeaderListSize:    lc.MaxHeaderListSize,
		MaxRecvMsgSize:       cfg.MaxMessageSize,
		MaxSendMsgSize:       cfg.MaxMessageSize,
		HandshakeTimeout:     lc.HandshakeTimeout.D(),
		// The listener's connection limits, with grpc-go's semantics.
		IdleTimeout:                  idle.D(),
		MaxConnectionAge:             lc.MaxConnectionAge.D(),
		MaxConnectionAgeGrace:        lc.MaxConnectionAgeGrace.D(),
		KeepaliveTime:                lc.Keepalive.Time.D(),
		KeepaliveTimeout:             lc.Keepalive.Timeout.D(),
		KeepaliveMinTime:             lc.Keepalive.MinTime.D(),
		KeepalivePermitWithoutStream: lc.Keepalive.PermitWithoutStream != nil && *lc.Keepalive.PermitWithoutStream,
		Abuse:                        lc.FloodProtection.Engine(),
		Logger:                       s.log.With("listener", lc.Name), // the engine adds its component
	}
	// Every connection names its listener to the Director, for routes
	// limited to listeners.
	name := lc.Name
	ecfg.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return director.WithListener(ctx, name)
	}
	if lc.GRPCWeb != nil {
		// gRPC-Web over HTTP/2 and CORS preflights go through the engine
		// as opaque streams, to the translator (web_h2.go).
		ecfg.GRPCWeb = true
		ecfg.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
			return withBrowserConn(director.WithListener(ctx, name))
		}
	}
	if lc.MeshTLS != "" {
		// Mesh TLS with the workload's identity; each connection's
		// caller reaches the Director through the connection context.
		lis = s.mesh.listen(lis, lc)
		ecfg.ConnContext = func(ctx context.Context, nc net.Conn) context.Context {
			return connContext(director.WithListener(ctx, name), nc)
		}
	}
	if lc.TLS != nil {
		tc, err := loadServerTLS(lc.TLS, lc.GRPCWeb != nil, s.log.With("listener", lc.Name))
		if err != nil {
			return frameServer{}, nil, fmt.Errorf("tls: %w", err)
		}
		lis = tls.NewListener(rawListener{lis}, tc)
	}
	var dir engine.Director = s.dir
	var refl *localReflection
	if lc.Reflection {
		refl = s.newLocalReflection(lc)
		dir = reflectionDirector{next: s.dir, local: refl}
	}
	var web *webDirector
	if lc.GRPCWeb != nil {
		web = &webDirector{next: dir}
		dir = web
	}
	fs := engine.NewServer(dir, ecfg)
	srv := frameServer{Server: fs, refl: refl}
	if lc.OriginalDst != nil {
		srv.odst = s.originalDstAccept(lc, fs)
	}
	if lc.GRPCWeb != nil {
		srv.web = s.webAcceptFor(cfg, lc, fs, ecfg)
		web.web = srv.web
	}
	return srv, lis, nil
}

// ListenerStats returns each listener's connection and HTTP/2 abuse
// counters by listener name (metrics.ListenerSource).
func (s *Server) ListenerStats() map[string]engine.AbuseStats {
	out := make(map[string]engine.AbuseStats, len(s.listeners))
	for _, l := range s.listeners {
		st := l.srv.AbuseStats()
		if ll, ok := l.capped.(*limitListener); ok {
			st.ConnsRejected = ll.rejected.Load()
		}
		out[l.cfg.Name] = st
	}
	return out
}
