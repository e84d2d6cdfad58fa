package engine

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// abuser is a raw HTTP/2 connection under attack: one goroutine writes
// the attack while the test reads what meshd answers.
type abuser struct {
	t    *testing.T
	c    *h2raw.Conn
	wg   sync.WaitGroup
	stop atomic.Bool
	// debug is the GOAWAY's debug data.
	debug string
}

// abuseConn connects and sends prefix (the client preface and SETTINGS
// when nil).
func abuseConn(t *testing.T, addr string, prefix []byte) *abuser {
	t.Helper()
	var c *h2raw.Conn
	var err error
	if prefix == nil {
		c, err = h2raw.Dial(addr)
	} else if c, err = h2raw.DialTCP(addr); err == nil {
		err = c.WriteRaw(prefix)
	}
	if err != nil {
		t.Fatal(err)
	}
	a := &abuser{t: t, c: c}
	t.Cleanup(func() {
		a.stop.Store(true)
		_ = c.Close()
		a.wg.Wait()
	})
	return a
}

// attack runs write up to n times (frame i) on its own goroutine, each
// frame sent at once, until a write fails or the test ends.
func (a *abuser) attack(n int, write func(fr *http2.Framer, i int) error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for i := 0; i < n && !a.stop.Load(); i++ {
			if a.c.Write(func(fr *http2.Framer) error { return write(fr, i) }) != nil {
				return
			}
		}
	}()
}

// answer reads, answering nothing, until the connection ends and returns
// the GOAWAY meshd sent, if any, and the read error that ended the
// connection.
func (a *abuser) answer() (*http2.GoAwayFrame, error) {
	a.t.Helper()
	_ = a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ga *http2.GoAwayFrame
	for {
		f, err := a.c.ReadFrame()
		if err != nil {
			return ga, err
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			ga = &http2.GoAwayFrame{LastStreamID: g.LastStreamID, ErrCode: g.ErrCode}
			a.debug = string(g.DebugData())
		}
	}
}

// TestAbuseRules attacks a Server with each rule's flood, on its own
// connection, while a well-behaved gRPC client keeps calling through the
// same Server: each attacker gets the rule's GOAWAY (or a silent close),
// then the close, and the counter; the good client sees no failure.
func TestAbuseRules(t *testing.T) {
	p, good := setup(t, &testBackend{}, Config{MaxHeaderListSize: 8 << 10, HandshakeTimeout: 300 * time.Millisecond})
	block := h2raw.Block(h2raw.Request("/grpc.testing.TestService/UnaryCall")...)
	download := make([]int, 30)
	for i := range download {
		download[i] = 16 << 10
	}

	// The well-behaved client calls throughout, with streaming downloads
	// that make it send BDP pings and WINDOW_UPDATEs.
	stopGood := make(chan struct{})
	goodDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stopGood:
				goodDone <- nil
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := good.UnaryCall(ctx, &testpb.SimpleRequest{Payload: payload(100)})
			if err == nil {
				var s testgrpc.TestService_StreamingOutputCallClient
				s, err = good.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params(download...)})
				for err == nil {
					_, err = s.Recv()
				}
			}
			cancel()
			if err != io.EOF {
				goodDone <- err
				return
			}
		}
	}()

	tests := []struct {
		name   string
		prefix []byte // default: preface and SETTINGS
		n      int
		write  func(fr *http2.Framer, i int) error
		code   http2.ErrCode // 0: closed without GOAWAY
		reason AbuseReason
	}{
		{name: "rapid reset", n: 2 * DefaultAbuseLimits.MinResetStreams, reason: AbuseRapidReset, code: http2.ErrCodeEnhanceYourCalm,
			write: func(fr *http2.Framer, i int) error {
				id := uint32(2*i + 1)
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
					return err
				}
				return fr.WriteRSTStream(id, http2.ErrCodeCancel)
			}},
		{name: "ping flood", n: 2 * DefaultAbuseLimits.PingBurst, reason: AbusePingFlood, code: http2.ErrCodeEnhanceYourCalm,
			write: func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{byte(i)}) }},
		{name: "settings flood", n: 2 * DefaultAbuseLimits.SettingsBurst, reason: AbuseSettingsFlood, code: http2.ErrCodeEnhanceYourCalm,
			write: func(fr *http2.Framer, i int) error {
				return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
			}},
		{name: "empty DATA flood", n: 100, reason: AbuseEmptyFrames, code: http2.ErrCodeEnhanceYourCalm,
			write: func(fr *http2.Framer, i int) error {
				if i == 0 {
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
				}
				return fr.WriteData(1, false, nil)
			}},
		{name: "empty CONTINUATION flood", n: 100, reason: AbuseEmptyFrames, code: http2.ErrCodeEnhanceYourCalm,
			write: func(fr *http2.Framer, i int) error {
				if i == 0 {
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndStream: true})
				}
				return fr.WriteContinuation(1, false, nil)
			}},
		{name: "WINDOW_UPDATE flood", n: 1000, reason: AbuseWindowUpdateFlood, code: http2.ErrCodeEnhanceYourCalm,
			write: func(fr *http2.Framer, i int) error { return fr.WriteWindowUpdate(0, 1) }},
		{name: "PRIORITY flood", n: 2 * DefaultAbuseLimits.ExtraFramesPerStream, reason: AbuseExtraFrames, code: http2.ErrCodeEnhanceYourCalm,
			write: func(fr *http2.Framer, i int) error {
				return fr.WritePriority(uint32(2*i+1), http2.PriorityParam{Weight: 1})
			}},
		{name: "CONTINUATION flood over the header list size", n: 100, reason: AbuseHeadersTooLarge, code: http2.ErrCodeEnhanceYourCalm,
			write: func(fr *http2.Framer, i int) error {
				if i == 0 {
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndStream: true})
				}
				return fr.WriteContinuation(1, false, h2raw.Block(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("p", 1000), Sensitive: true}))
			}},
		{name: "frame over MAX_FRAME_SIZE", n: 1, reason: AbuseFrameTooLarge, code: http2.ErrCodeFrameSize,
			write: func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{}) }},
		{name: "first frame not SETTINGS", prefix: []byte(http2.ClientPreface), n: 1, reason: AbuseProtocolError, code: http2.ErrCodeProtocol,
			write: func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{}) }},
		{name: "not HTTP/2", prefix: []byte("GET / HTTP/1.1\r\nHost: meshd\r\n\r\n"), reason: AbuseNotHTTP2},
		{name: "no preface", prefix: []byte{}, reason: AbuseHandshakeTimeout},
		{name: "preface, no SETTINGS", prefix: []byte(http2.ClientPreface), reason: AbuseHandshakeTimeout},
	}
	t.Run("rules", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				a := abuseConn(t, p.addr, tt.prefix)
				if tt.name == "frame over MAX_FRAME_SIZE" {
					// A PING header claiming 20000 bytes.
					hdr := []byte{0, 0x4e, 0x20, byte(http2.FramePing), 0, 0, 0, 0, 0}
					if err := a.c.WriteRaw(append(hdr, make([]byte, 20000)...)); err != nil {
						t.Fatal(err)
					}
				} else if tt.n > 0 {
					a.attack(tt.n, tt.write)
				}
				start := time.Now()
				ga, err := a.answer()
				if tt.code == 0 {
					if ga != nil {
						t.Errorf("GOAWAY %v; want a close without GOAWAY", ga.ErrCode)
					}
				} else if ga == nil || ga.ErrCode != tt.code || a.debug != tt.reason.String() {
					t.Errorf("GOAWAY %v (connection ended by %v); want GOAWAY %v %q", ga, err, tt.code, tt.reason)
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Errorf("connection still open after %s", time.Since(start))
				}
				if tt.reason == AbuseHandshakeTimeout && time.Since(start) < 250*time.Millisecond {
					t.Errorf("closed after %s, before the handshake timeout", time.Since(start))
				}
				testkit.WaitFor(t, 5*time.Second, tt.reason.String()+" counted", func() bool {
					return p.srv.AbuseStats().Closed[tt.reason] >= 1
				})
			})
		}
	})
	close(stopGood)
	if err := <-goodDone; err != nil {
		t.Errorf("well-behaved client: %v", err)
	}
	st := p.srv.AbuseStats()
	if st.FramesReceived[http2.FramePing] == 0 || st.FramesReceived[http2.FrameHeaders] == 0 || st.EmptyFramesReceived == 0 {
		t.Errorf("frame counters not kept: %+v", st)
	}
	if st.GoAwaysSent[http2.ErrCodeEnhanceYourCalm] < 8 {
		t.Errorf("GoAwaysSent[ENHANCE_YOUR_CALM] = %d, want >= 8", st.GoAwaysSent[http2.ErrCodeEnhanceYourCalm])
	}
	if st.ConnsAccepted < uint64(len(tests))+1 {
		t.Errorf("ConnsAccepted = %d, want >= %d", st.ConnsAccepted, len(tests)+1)
	}
}
