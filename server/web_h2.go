package server

import (
	"context"
	"net"
	"net/http"
	"strconv"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/grpcweb"
)

// gRPC-Web over HTTP/2 (what browsers speak to a TLS listener offering h2)
// arrives at the engine, not at the HTTP/1.1 server. On a grpc_web
// listener the engine lets it through as an opaque stream
// (engine.Config.GRPCWeb, engine.Request.GRPCWeb), and webDirector sends
// that stream to the listener's translator: an h2c net/http server inside
// meshd, reached over socketpairs like a backend (the engine's own Pool),
// whose handler is the same grpcweb.Handler as for HTTP/1.1. It makes the
// native call into the engine over an in-process connection whose remote
// address is the browser's, as for HTTP/1.1:
//
//	browser ─h2─▶ engine (opaque stream) ─h2c─▶ translator ─h2 native─▶ engine ─▶ backend
//
// Which browser a translated request came from travels in webConnHeader,
// a field only meshd sets (the engine drops every client "x-meshd-*"
// field, and Target.Header replaces it anyway) and the translator strips:
// it names the browser connection's grpcweb.Native, which dials
// in-process connections with that connection's address. The Native is
// made on the connection's first gRPC-Web stream and closed when the
// connection ends. Native gRPC on the listener only pays the
// Request.GRPCWeb test in webDirector.

// webConnHeader carries the browser connection's id from the engine to
// the translator.
const webConnHeader = "x-meshd-grpc-web-conn"

type browserKey struct{}

// browserConn is a grpc_web listener connection's gRPC-Web state, put in
// its context by the engine's ConnContext. Only the connection's reader
// goroutine (where Direct runs) touches it.
type browserConn struct {
	header []hpack.HeaderField // webConnHeader with its id; nil until the first gRPC-Web stream
}

// withBrowserConn is the ConnContext part of grpc_web listeners.
func withBrowserConn(ctx context.Context) context.Context {
	return context.WithValue(ctx, browserKey{}, &browserConn{})
}

// webDirector sends a grpc_web listener's opaque streams (gRPC-Web over
// HTTP/2, CORS preflights) to its translator and everything else to next.
type webDirector struct {
	next engine.Director
	web  *webAccept // set before the listener serves
}

func (d *webDirector) Direct(ctx context.Context, req *engine.Request) (engine.Target, error) {
	if !req.GRPCWeb {
		return d.next.Direct(ctx, req)
	}
	return d.web.h2Target(ctx, req.RemoteAddr)
}

// h2Target is the translator's Target for a stream of the connection
// whose context is ctx and remote address remote.
func (a *webAccept) h2Target(ctx context.Context, remote net.Addr) (engine.Target, error) {
	bc, _ := ctx.Value(browserKey{}).(*browserConn)
	if bc == nil {
		return engine.Target{}, status.Error(codes.Internal, "meshd: gRPC-Web stream on a connection without gRPC-Web state")
	}
	if bc.header == nil {
		id, err := a.registerBrowser(ctx, remote)
		if err != nil {
			return engine.Target{}, err
		}
		bc.header = []hpack.HeaderField{{Name: webConnHeader, Value: id}}
	}
	t := a.h2target
	t.Header = bc.header
	return t, nil
}

// registerBrowser makes the Native of a browser connection, kept until
// ctx (the connection's) ends, and returns its id.
func (a *webAccept) registerBrowser(ctx context.Context, remote net.Addr) (string, error) {
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return "", status.Error(codes.Unavailable, "meshd: listener stopping")
	}
	a.nextBrowser++
	id := strconv.FormatUint(a.nextBrowser, 10)
	n := grpcweb.NewNative(func() (net.Conn, error) { return a.connect(remote) })
	a.browsers[id] = n
	a.mu.Unlock()
	context.AfterFunc(ctx, func() {
		a.mu.Lock()
		delete(a.browsers, id)
		a.mu.Unlock()
		_ = n.Close()
	})
	return id, nil
}

// translateH2 is the translator's handler: the request's browser
// connection gives the Native its call goes through.
func (a *webAccept) translateH2(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get(webConnHeader)
	r.Header.Del(webConnHeader)
	a.mu.Lock()
	n := a.browsers[id]
	a.mu.Unlock()
	if n != nil {
		r = r.WithContext(grpcweb.WithNative(r.Context(), n))
	} // else: the browser left; the Handler answers UNAVAILABLE
	a.h.ServeHTTP(w, r)
}

// newTranslator sets up a's translator (its server and the Target that
// reaches it); it serves once serve runs.
func (a *webAccept) newTranslator(maxHeader int) {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true) // prior knowledge: the engine's Pool speaks h2c
	a.h2q = newConnQueue()
	a.h2 = &http.Server{
		Handler:        http.HandlerFunc(a.translateH2),
		Protocols:      &protos,
		MaxHeaderBytes: maxHeader + 1024, // what the engine let through, and webConnHeader
		ErrorLog:       a.hs.ErrorLog,
	}
	up := &engine.Upstream{Name: "meshd-grpc-web", Dial: func(ctx context.Context, _ string) (net.Conn, error) {
		mine, theirs, err := socketpair()
		if err != nil {
			return nil, err
		}
		a.h2q.push(theirs)
		return mine, nil
	}}
	a.h2target = engine.Target{Addr: "meshd-grpc-web", Upstream: up}
}
