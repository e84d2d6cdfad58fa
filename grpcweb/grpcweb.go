package grpcweb

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
)

// DefaultMaxMessageSize is Options.MaxMessageSize when unset (16 MiB,
// meshd's max_message_size default).
const DefaultMaxMessageSize = 16 << 20

// Options configures a Handler. The zero value refuses cross-origin
// requests and makes no native call (Transport nil and none in the
// request's context: UNAVAILABLE).
type Options struct {
	// AllowOrigins are the origins CORS allows ("*": every origin);
	// same-origin requests and requests without Origin are always
	// allowed.
	AllowOrigins []string
	// MaxMessageSize bounds the request's decoded body (its message and
	// prefix); a larger body is refused with 413 / RESOURCE_EXHAUSTED
	// before it is all read. Default DefaultMaxMessageSize.
	MaxMessageSize int
	// Transport makes the native calls of requests whose context carries
	// no Native (WithNative). May be nil.
	Transport http.RoundTripper
	// Logger receives nothing per call (the native call is logged by the
	// access log); only translation failures worth an operator's eye.
	Logger *slog.Logger
}

// Handler translates gRPC-Web requests into native gRPC calls and their
// responses back. It is safe for concurrent use.
type Handler struct {
	allow   []string
	maxBody int64 // encoded body limit
	maxMsg  int
	rt      http.RoundTripper
	log     *slog.Logger
}

// New returns a Handler with opts.
func New(opts Options) *Handler {
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = DefaultMaxMessageSize
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	msg := opts.MaxMessageSize + prefixSize
	return &Handler{
		allow:  append([]string(nil), opts.AllowOrigins...),
		maxMsg: opts.MaxMessageSize,
		// A text body is base64: 4 characters per 3 bytes, and a few
		// padded chunks.
		maxBody: int64(msg)/3*4 + 64,
		rt:      opts.Transport,
		log:     opts.Logger,
	}
}

type nativeKey struct{}

// WithNative returns ctx carrying n, the transport of the requests of one
// client connection (net/http's Server.ConnContext puts it there).
func WithNative(ctx context.Context, n http.RoundTripper) context.Context {
	return context.WithValue(ctx, nativeKey{}, n)
}

// Headers of the browser's request that are not metadata of the call:
// HTTP/1.1 connection fields, what the translation replaces, and what
// only the browser and CORS care about.
var dropRequest = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Upgrade": true, "Te": true, "Host": true, "Content-Length": true, "Content-Type": true,
	"Accept": true, "Accept-Encoding": true, "Accept-Language": true, "Origin": true, "Referer": true,
	"X-Grpc-Web": true, "Cache-Control": true, "Pragma": true, "Priority": true, "Dnt": true,
	"Http2-Settings": true,
}

// Response headers the translation sets itself.
var dropResponse = map[string]bool{
	"Content-Type": true, "Content-Length": true, "Trailer": true, "Te": true, "Transfer-Encoding": true, "Connection": true,
}

// ServeHTTP translates one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodOptions {
		h.preflight(w, r)
		return
	}
	hdr := w.Header()
	if origin := r.Header.Get("Origin"); origin != "" {
		hdr.Add("Vary", "Origin")
		if !allowsOrigin(h.allow, origin, r.Host) {
			refuse(w, http.StatusForbidden, codes.PermissionDenied, "meshd: origin "+strconv.Quote(origin)+" not allowed by this listener's grpc_web.allow_origins")
			return
		}
		hdr.Set("Access-Control-Allow-Origin", origin)
		hdr.Set("Access-Control-Allow-Credentials", "true")
	}
	if r.Method != http.MethodPost {
		hdr.Set("Allow", "POST, OPTIONS")
		refuse(w, http.StatusMethodNotAllowed, codes.Unimplemented, "meshd: gRPC-Web calls are POST, got "+r.Method)
		return
	}
	m, ok := parseContentType(r.Header.Get("Content-Type"))
	if !ok {
		refuse(w, http.StatusUnsupportedMediaType, codes.InvalidArgument, fmt.Sprintf("meshd: invalid gRPC-Web content-type %q", r.Header.Get("Content-Type")))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		// net/http closes the connection: the rest of the body is unread.
		refuse(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted, fmt.Sprintf("meshd: gRPC-Web request body larger than max (%d bytes)", h.maxBody))
		return
	case err != nil:
		refuse(w, http.StatusBadRequest, codes.Internal, "meshd: reading gRPC-Web request body: "+err.Error())
		return
	}
	if m.text {
		if body, err = decodeText(body); err != nil {
			refuse(w, http.StatusBadRequest, codes.InvalidArgument, "meshd: malformed gRPC-Web text body: "+err.Error())
			return
		}
	}
	if len(body) > h.maxMsg+prefixSize {
		refuse(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted, fmt.Sprintf("meshd: received message larger than max (%d vs. %d)", len(body)-prefixSize, h.maxMsg))
		return
	}
	n, err := countMessages(body)
	if err != nil {
		refuse(w, http.StatusBadRequest, codes.InvalidArgument, "meshd: malformed gRPC-Web body: "+err.Error())
		return
	}
	if n > 1 {
		trailersOnly(w, codes.Unimplemented, "meshd: gRPC-Web client streaming is not supported (the request carries "+strconv.Itoa(n)+" messages; gRPC-Web allows unary and server streaming)")
		return
	}
	h.call(w, r, m, body)
}

// call makes the native call and writes its response as gRPC-Web.
func (h *Handler) call(w http.ResponseWriter, r *http.Request, m mode, body []byte) {
	rt, _ := r.Context().Value(nativeKey{}).(http.RoundTripper)
	if rt == nil {
		rt = h.rt
	}
	if rt == nil {
		trailersOnly(w, codes.Unavailable, "meshd: gRPC-Web translation has no native transport")
		return
	}
	path := r.URL.EscapedPath()
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, "http://"+hostOr(r.Host)+path, bytes.NewReader(body))
	if err != nil {
		refuse(w, http.StatusBadRequest, codes.InvalidArgument, "meshd: gRPC-Web request: "+err.Error())
		return
	}
	req.Host = r.Host
	req.ContentLength = int64(len(body))
	for k, vs := range r.Header {
		if dropRequest[k] || strings.HasPrefix(k, "Sec-") || strings.HasPrefix(k, "Access-Control-") {
			continue
		}
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", m.native())
	req.Header.Set("Te", "trailers")
	resp, err := rt.RoundTrip(req)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left
		}
		trailersOnly(w, codes.Unavailable, "meshd: gRPC-Web translation: "+err.Error())
		return
	}
	defer resp.Body.Close()

	hdr := w.Header()
	expose := []string{exposeHeaders}
	for k, vs := range resp.Header {
		if dropResponse[k] {
			continue
		}
		hdr[k] = vs
		expose = append(expose, strings.ToLower(k))
	}
	hdr.Set("Content-Type", m.web())
	if hdr.Get("Access-Control-Allow-Origin") != "" {
		hdr.Set("Access-Control-Expose-Headers", strings.Join(expose, ", "))
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Grpc-Status") != "" {
		// An early rejection by the engine (431...) or a trailers-only
		// response: the status is in the headers, as gRPC-Web allows.
		w.WriteHeader(resp.StatusCode)
		return
	}
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	var enc []byte
	write := func(p []byte) error {
		if m.text {
			enc = base64.StdEncoding.AppendEncode(enc[:0], p)
			p = enc
		}
		_, err := w.Write(p)
		return err
	}
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			if err := write(buf[:k]); err != nil {
				return // the client left; the deferred Close resets the call
			}
			if flusher != nil {
				flusher.Flush() // server streaming: each message as it comes
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if r.Context().Err() != nil {
				return
			}
			// The native stream was reset (meshd ended the call in the
			// middle of a message): say so in a trailer frame.
			code, msg := resetStatus(rerr)
			_ = write(appendTrailerFrame(nil, statusTrailer(code, msg)))
			return
		}
	}
	tr := resp.Trailer
	if tr.Get("Grpc-Status") == "" {
		tr = statusTrailer(codes.Internal, "meshd: response ended without grpc-status")
	}
	_ = write(appendTrailerFrame(buf[:0], tr))
}

func hostOr(h string) string {
	if h == "" {
		return "localhost"
	}
	return h
}

// resetStatus is the status of a native stream that ended with err.
func resetStatus(err error) (codes.Code, string) {
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeCancel {
		return codes.Canceled, "meshd: call cancelled in the middle of a response message"
	}
	return codes.Internal, "meshd: response stream broken: " + err.Error()
}

func statusTrailer(code codes.Code, msg string) http.Header {
	return http.Header{"Grpc-Status": {strconv.Itoa(int(code))}, "Grpc-Message": {encodeGRPCMessage(msg)}}
}

// refuse answers a request meshd cannot translate: an HTTP error status
// (what a browser and a proxy understand) carrying the gRPC status too
// (what a gRPC-Web client reports).
func refuse(w http.ResponseWriter, httpStatus int, code codes.Code, msg string) {
	hdr := w.Header()
	hdr.Set("Content-Type", ctWeb)
	hdr.Set("Grpc-Status", strconv.Itoa(int(code)))
	hdr.Set("Grpc-Message", encodeGRPCMessage(msg))
	if hdr.Get("Access-Control-Allow-Origin") != "" {
		hdr.Set("Access-Control-Expose-Headers", exposeHeaders)
	}
	w.WriteHeader(httpStatus)
}

// trailersOnly answers with a gRPC status and no message (200, status
// in the headers).
func trailersOnly(w http.ResponseWriter, code codes.Code, msg string) {
	refuse(w, http.StatusOK, code, msg)
}

// encodeGRPCMessage percent-encodes msg as grpc-message requires
// (grpc/doc/PROTOCOL-HTTP2.md): bytes outside printable ASCII and '%'.
func encodeGRPCMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
