package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// grpcWebOnlyUnary is why meshd-grpcweb is measured in the unary
// throughput phase only (its calls/s, CPU per call and peak RSS): issue 17
// asks what a gRPC-Web unary call costs against a native one, and the
// latency, -rates, streaming and idle-streams phases drive native gRPC
// clients.
const grpcWebOnlyUnary = "gRPC-Web (HTTP/1.1) is measured in the unary throughput phase only; latency, -rates, streaming and idle streams are native-gRPC phases"

// grpcWebListener is what meshd-grpcweb's listener adds to meshd's.
const grpcWebListener = `, grpc_web: {allow_origins: ["*"]}`

// grpcWebMaxBody bounds a gRPC-Web response body the harness reads.
const grpcWebMaxBody = 64 << 20

// dialGRPCWebClient is n HTTP/1.1 keep-alive connections to addr, one
// net/http Transport each (at most one connection), that make
// TestService/UnaryCall as gRPC-Web calls (application/grpc-web+proto).
// Several workers share a connection as they share a native one, but
// HTTP/1.1 carries one call at a time: the others wait for it.
func dialGRPCWebClient(addr string, n int) *client {
	c := &client{}
	for range n {
		tr := &http.Transport{
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		}
		c.webs = append(c.webs, tr)
		c.stubs = append(c.stubs, &grpcWebStub{
			url: "http://" + addr + "/grpc.testing.TestService/UnaryCall",
			hc:  &http.Client{Transport: tr},
		})
	}
	return c
}

// grpcWebStub makes UnaryCall over gRPC-Web. The embedded interface is nil:
// any other method panics, and no phase that runs against meshd-grpcweb
// calls one (see grpcWebOnlyUnary).
type grpcWebStub struct {
	testpb.TestServiceClient
	url string
	hc  *http.Client
}

// UnaryCall sends req as one gRPC-Web data frame (flag 0, 4-byte big-endian
// length, protobuf) and reads the response body's data frame and trailer
// frame (flag 0x80), whose grpc-status must be 0. A trailers-only answer
// carries its status in the headers.
func (s *grpcWebStub) UnaryCall(ctx context.Context, req *testpb.SimpleRequest, _ ...grpc.CallOption) (*testpb.SimpleResponse, error) {
	msg, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:5], uint32(len(msg)))
	copy(body[5:], msg)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/grpc-web+proto")
	hreq.Header.Set("X-Grpc-Web", "1")
	if dl, ok := ctx.Deadline(); ok {
		hreq.Header.Set("Grpc-Timeout", strconv.FormatInt(max(time.Until(dl).Milliseconds(), 1), 10)+"m")
	}
	resp, err := s.hc.Do(hreq)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, grpcWebMaxBody))
	if err != nil {
		return nil, fmt.Errorf("grpc-web: reading the response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("grpc-web: HTTP %s (grpc-status %q, %q)", resp.Status, resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message"))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/grpc-web") {
		return nil, fmt.Errorf("grpc-web: response content-type %q", ct)
	}
	if st := resp.Header.Get("Grpc-Status"); st != "" { // trailers-only
		return nil, grpcWebStatus(st, resp.Header.Get("Grpc-Message"), "trailers-only answer")
	}
	return parseGRPCWebResponse(rb)
}

// parseGRPCWebResponse reads a unary gRPC-Web response body: exactly one
// uncompressed data frame, then a trailer frame with grpc-status 0.
func parseGRPCWebResponse(b []byte) (*testpb.SimpleResponse, error) {
	var out *testpb.SimpleResponse
	for len(b) > 0 {
		if len(b) < 5 {
			return nil, fmt.Errorf("grpc-web: truncated frame header (%d bytes)", len(b))
		}
		flag, n := b[0], binary.BigEndian.Uint32(b[1:5])
		if uint64(len(b)-5) < uint64(n) {
			return nil, fmt.Errorf("grpc-web: frame of %d bytes, %d left", n, len(b)-5)
		}
		payload := b[5 : 5+n]
		b = b[5+n:]
		switch {
		case flag&0x80 != 0:
			if len(b) != 0 {
				return nil, fmt.Errorf("grpc-web: %d bytes after the trailer frame", len(b))
			}
			tr := parseGRPCWebTrailers(payload)
			if err := grpcWebStatus(tr["grpc-status"], tr["grpc-message"], "trailer frame"); err != nil {
				return nil, err
			}
			if out == nil {
				return nil, errors.New("grpc-web: grpc-status 0 without a data frame")
			}
			return out, nil
		case flag != 0:
			return nil, fmt.Errorf("grpc-web: data frame flag %#x (compressed?)", flag)
		case out != nil:
			return nil, errors.New("grpc-web: more than one data frame in a unary response")
		default:
			out = &testpb.SimpleResponse{}
			if err := proto.Unmarshal(payload, out); err != nil {
				return nil, fmt.Errorf("grpc-web: data frame: %w", err)
			}
		}
	}
	return nil, errors.New("grpc-web: response without a trailer frame")
}

// parseGRPCWebTrailers reads a trailer frame's "name: value" lines (CRLF
// separated, names lower-cased).
func parseGRPCWebTrailers(b []byte) map[string]string {
	out := map[string]string{}
	for line := range strings.SplitSeq(string(b), "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
	}
	return out
}

// grpcWebStatus is nil for grpc-status 0 and the call's error otherwise.
func grpcWebStatus(st, msg, where string) error {
	code, err := strconv.ParseUint(strings.TrimSpace(st), 10, 32)
	if err != nil {
		return fmt.Errorf("grpc-web: %s: grpc-status %q", where, st)
	}
	if code != 0 {
		return status.Error(codes.Code(code), msg)
	}
	return nil
}
