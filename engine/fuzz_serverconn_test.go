package engine

import (
	"github.com/meshd/meshd/internal/testkit"

	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// FuzzServerConn feeds a real frame-engine listener, in front of a real
// grpc-go backend, what a client may send after the connection preface:
//
//   - input[0] even: the rest of the input as it is (arbitrary bytes);
//   - input[0] odd: the rest drives frameGen, a small generator over frame
//     types, flags, stream ids and lengths, after a SETTINGS frame, so
//     that inputs reach the stream states rather than die at the framing.
//
// The client then half-closes. Whatever it sent, meshd must not panic,
// must close the connection after the client's EOF, and must end up with
// no more goroutines, streams or buffered bytes than before the input,
// while a neighbour connection's stream, held open across all inputs,
// keeps answering. The seed corpus (testdata/fuzz/FuzzServerConn) holds
// the abuse rules' floods and the RFC 9113 cases of TestRFC9113 and
// TestAbuseRules; TestServerConnSeeds keeps it in step.
//
// make fuzz-smoke runs it for a few seconds; before a release, run it
// for minutes (README, Testing).
func FuzzServerConn(f *testing.F) {
	b := startBackend(f, &testBackend{})
	p := startProxy(f, b.addr, fuzzConfig)
	_, client := dial(f, p.addr)
	neighbour, err := client.FullDuplexCall(ctxT(f, time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	roundTrip := func(t testing.TB) {
		t.Helper()
		done := make(chan error, 1)
		go func() { // ends with the round trip, or when the stream's context ends at cleanup
			err := neighbour.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: params(10)})
			if err == nil {
				_, err = neighbour.Recv()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("neighbour connection: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("neighbour connection: no answer in 10s; %+v\n%s", p.srv.Stats(), goroutines())
		}
	}
	roundTrip(f)
	// The neighbour's stream and its backend stream are what stays.
	settled := func() bool {
		st := p.srv.Stats()
		return st.ActiveConns == 1 && st.ActiveStreams == 1 && st.UpstreamStreams == 1 && st.BufferedBytes == 0
	}
	testkit.WaitFor(f, 10*time.Second, "the neighbour alone", settled)
	baseline := -1

	f.Fuzz(func(t *testing.T, input []byte) {
		if baseline < 0 {
			// Counted here, where the goroutine running the input exists.
			baseline = stableGoroutines()
		}
		if len(input) == 0 {
			return
		}
		wire := input[1:]
		if input[0]&1 == 1 {
			wire = generateFrames(wire)
		}
		fuzzConn(t, p.addr, wire)
		deadline := time.Now().Add(10 * time.Second)
		for !settled() || runtime.NumGoroutine() > baseline {
			if time.Now().After(deadline) {
				t.Fatalf("after the connection closed: %+v, %d goroutines (%d before)\n%s",
					p.srv.Stats(), runtime.NumGoroutine(), baseline, goroutines())
			}
			time.Sleep(time.Millisecond) // polling interval, not a wait for state
		}
		roundTrip(t)
	})
}

// fuzzConfig keeps the abuse thresholds low, so that short inputs can
// reach every rule.
var fuzzConfig = Config{
	MaxConcurrentStreams: 8,
	InitialWindowSize:    65535,
	MaxHeaderListSize:    8 << 10,
	HandshakeTimeout:     2 * time.Second,
	ConnsPerBackend:      1,
	Abuse: AbuseLimits{
		MinResetStreams:      20,
		SettingsBurst:        10,
		PingBurst:            10,
		ExtraFramesPerStream: 10,
	},
}

// goroutines is a dump of every goroutine, for a failure message.
func goroutines() string {
	var dump strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
	return dump.String()
}

// stableGoroutines is the goroutine count once it stops changing.
func stableGoroutines() int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100; i++ {
		time.Sleep(5 * time.Millisecond) // sampling interval
		m := runtime.NumGoroutine()
		if m == n {
			return n
		}
		n = m
	}
	return n
}

// fuzzConn writes the preface and wire to meshd, half-closes, and reads
// until meshd closes the connection.
func fuzzConn(t *testing.T, addr string, wire []byte) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	closed := make(chan struct{})
	go func() { // ends when meshd closes the connection (or the deferred Close)
		defer close(closed)
		_, _ = io.Copy(io.Discard, nc)
	}()
	_ = nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	// meshd may close first (a connection error): write errors are fine.
	if _, err := nc.Write(append([]byte(http2.ClientPreface), wire...)); err == nil {
		_ = nc.(*net.TCPConn).CloseWrite()
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("meshd kept the connection open after the client's EOF")
	}
}

// Operations of frameGen, one input byte each (modulo genOps).
const (
	genSettings = iota
	genHeaders
	genData
	genRST
	genWindowUpdate
	genPing
	genPriority
	genContinuation
	genGoAway
	genRaw
	genPushPromise
	genOps
)

// frameGen turns input bytes into HTTP/2 frames: each operation byte
// picks a frame type, the bytes after it its stream, flags, lengths and
// contents. Header blocks come from a few request templates, encoded
// with one HPACK encoder, as a client's would be. Input that runs out
// reads as zeros.
type frameGen struct {
	in   []byte
	out  bytes.Buffer
	fr   *http2.Framer
	hbuf bytes.Buffer
	henc *hpack.Encoder
}

// genStreams are the stream ids frameGen picks from.
var genStreams = [...]uint32{1, 3, 5, 7, 9, 11, 13, 0, 2, 1<<31 - 1}

// genRequests are the header block templates: well-formed gRPC requests
// and each kind of malformed one.
var genRequests = [...][]string{
	{":method", "POST", ":scheme", "http", ":path", "/grpc.testing.TestService/UnaryCall", ":authority", "fuzz", "content-type", "application/grpc", "te", "trailers"},
	{":method", "POST", ":scheme", "http", ":path", "/grpc.testing.TestService/FullDuplexCall", ":authority", "fuzz", "content-type", "application/grpc"},
	{":method", "POST", ":scheme", "http", ":path", "/grpc.testing.TestService/StreamingOutputCall", "content-type", "application/grpc", "grpc-timeout", "100m"},
	{":method", "GET", ":scheme", "http", ":path", "/", ":authority", "fuzz"},
	{":method", "POST", ":scheme", "http", ":path", "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "connection", "close"},
	{":method", "POST", ":scheme", "http", ":path", "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "content-length", "5"},
	{":method", "POST", ":scheme", "http", ":path", "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "te", "gzip"},
	{":method", "POST", ":scheme", "http", "content-type", "application/grpc"},
	{"x-trailer", "1"},
	{":path", "/x", "x-trailer", "1"},
	{":method", "POST", ":scheme", "http", ":path", "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "X-Upper", "1"},
	{":status", "200", ":method", "POST", ":scheme", "http", ":path", "/x"},
}

// generateFrames is frameGen's output for in, after a SETTINGS frame.
func generateFrames(in []byte) []byte {
	g := &frameGen{in: in}
	g.fr = http2.NewFramer(&g.out, nil)
	g.fr.AllowIllegalWrites = true
	g.henc = hpack.NewEncoder(&g.hbuf)
	_ = g.fr.WriteSettings()
	for ops := 0; len(g.in) > 0 && ops < 256 && g.out.Len() < 256<<10; ops++ {
		g.op()
	}
	return g.out.Bytes()
}

func (g *frameGen) next() byte {
	if len(g.in) == 0 {
		return 0
	}
	b := g.in[0]
	g.in = g.in[1:]
	return b
}

func (g *frameGen) bytes(n int) []byte {
	n = min(n, len(g.in))
	b := g.in[:n]
	g.in = g.in[n:]
	return b
}

func (g *frameGen) stream() uint32 { return genStreams[int(g.next())%len(genStreams)] }

func (g *frameGen) u32() uint32 {
	var b [4]byte
	copy(b[:], g.bytes(4))
	return binary.BigEndian.Uint32(b[:])
}

// block encodes a request template, with a pad field of the size the
// next byte asks for (in units of 64 bytes, 0 for none).
func (g *frameGen) block() []byte {
	tmpl := genRequests[int(g.next())%len(genRequests)]
	g.hbuf.Reset()
	for i := 0; i+1 < len(tmpl); i += 2 {
		_ = g.henc.WriteField(hpack.HeaderField{Name: tmpl[i], Value: tmpl[i+1]})
	}
	if pad := int(g.next()) * 64; pad > 0 {
		_ = g.henc.WriteField(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("p", pad)})
	}
	return append([]byte(nil), g.hbuf.Bytes()...)
}

func (g *frameGen) op() {
	switch g.next() % genOps {
	case genSettings:
		flags := g.next()
		var ss []http2.Setting
		for i := 0; i < int(flags%4); i++ {
			ss = append(ss, http2.Setting{ID: http2.SettingID(g.next() % 8), Val: g.u32()})
		}
		if flags&0x80 != 0 {
			_ = g.fr.WriteSettingsAck()
		} else {
			_ = g.fr.WriteSettings(ss...)
		}
	case genHeaders:
		id, flags := g.stream(), g.next()
		blk := g.block()
		p := http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndStream: flags&1 != 0, EndHeaders: flags&2 == 0}
		if flags&4 != 0 {
			p.Priority = http2.PriorityParam{StreamDep: g.stream(), Exclusive: flags&8 != 0, Weight: g.next()}
		}
		if flags&16 != 0 {
			p.PadLength = g.next()
		}
		if !p.EndHeaders && len(blk) > 1 {
			// The rest of the block follows in a CONTINUATION frame,
			// unless the input asks for something else next.
			p.BlockFragment = blk[:len(blk)/2]
			_ = g.fr.WriteHeaders(p)
			if flags&32 == 0 {
				_ = g.fr.WriteContinuation(id, true, blk[len(blk)/2:])
			}
			return
		}
		_ = g.fr.WriteHeaders(p)
	case genData:
		id, flags, n := g.stream(), g.next(), int(g.next())
		var data []byte
		if flags&2 != 0 {
			// A gRPC message of n bytes.
			data = binary.BigEndian.AppendUint32([]byte{0}, uint32(n))
			data = append(data, make([]byte, n)...)
		} else {
			data = append(data, g.bytes(n)...)
		}
		if flags&4 != 0 {
			_ = g.fr.WriteDataPadded(id, flags&1 != 0, data, make([]byte, g.next()))
		} else {
			_ = g.fr.WriteData(id, flags&1 != 0, data)
		}
	case genRST:
		_ = g.fr.WriteRSTStream(g.stream(), http2.ErrCode(g.next()%15))
	case genWindowUpdate:
		id := g.stream()
		incs := [...]uint32{0, 1, 65535, 1 << 20, 1<<31 - 1}
		inc := incs[int(g.next())%len(incs)]
		_ = g.fr.WriteWindowUpdate(id, inc)
	case genPing:
		flags := g.next()
		var data [8]byte
		copy(data[:], g.bytes(8))
		_ = g.fr.WritePing(flags&1 != 0, data)
	case genPriority:
		id, flags := g.stream(), g.next()
		_ = g.fr.WritePriority(id, http2.PriorityParam{StreamDep: g.stream(), Exclusive: flags&1 != 0, Weight: g.next()})
	case genContinuation:
		id, flags := g.stream(), g.next()
		_ = g.fr.WriteContinuation(id, flags&1 != 0, g.block())
	case genGoAway:
		_ = g.fr.WriteGoAway(g.stream(), http2.ErrCode(g.next()%15), nil)
	case genRaw:
		typ, flags, id := g.next(), g.next(), g.u32()
		_ = g.fr.WriteRawFrame(http2.FrameType(typ), http2.Flags(flags), id&(1<<31-1), g.bytes(int(g.next())))
	case genPushPromise:
		id, promised := g.stream(), g.stream()
		_ = g.fr.WritePushPromise(http2.PushPromiseParam{StreamID: id, PromiseID: promised, BlockFragment: g.block(), EndHeaders: true})
	}
}

// serverConnSeeds is FuzzServerConn's seed corpus: raw inputs (a leading
// 0) built with a Framer from TestAbuseRules' floods and TestRFC9113's
// violations, and a few frameGen programs (a leading 1).
func serverConnSeeds() map[string][]byte {
	seeds := map[string][]byte{}
	unary := genRequests[0]
	raw := func(name string, write func(fr *http2.Framer, block func(fields ...string) []byte)) {
		var out, hb bytes.Buffer
		fr := http2.NewFramer(&out, nil)
		fr.AllowIllegalWrites = true
		enc := hpack.NewEncoder(&hb)
		block := func(fields ...string) []byte {
			hb.Reset()
			for i := 0; i+1 < len(fields); i += 2 {
				_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
			}
			return append([]byte(nil), hb.Bytes()...)
		}
		write(fr, block)
		seeds["raw-"+name] = append([]byte{0}, out.Bytes()...)
	}
	headers := func(fr *http2.Framer, id uint32, blk []byte, end bool) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndStream: end, EndHeaders: true})
	}
	msg := []byte{0, 0, 0, 0, 0}
	lim := fuzzConfig.Abuse.WithDefaults()

	// Well-behaved.
	raw("unary", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(unary...), false)
		_ = fr.WriteData(1, true, msg)
	})
	// TestAbuseRules' floods.
	raw("rapid-reset", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		for i := 0; i < 2*lim.MinResetStreams; i++ {
			id := uint32(2*i + 1)
			headers(fr, id, block(unary...), true)
			_ = fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
	})
	raw("ping-flood", func(fr *http2.Framer, _ func(...string) []byte) {
		_ = fr.WriteSettings()
		for i := 0; i < 2*lim.PingBurst; i++ {
			_ = fr.WritePing(false, [8]byte{byte(i)})
		}
	})
	raw("settings-flood", func(fr *http2.Framer, _ func(...string) []byte) {
		for i := 0; i < 2*lim.SettingsBurst+1; i++ {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
		}
	})
	raw("empty-data-flood", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(unary...), false)
		for i := 0; i < 2*lim.MaxConsecutiveEmptyFrames; i++ {
			_ = fr.WriteData(1, false, nil)
		}
	})
	raw("empty-continuation-flood", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(unary...), EndStream: true})
		for i := 0; i < 2*lim.MaxConsecutiveEmptyFrames; i++ {
			_ = fr.WriteContinuation(1, false, nil)
		}
	})
	raw("window-update-flood", func(fr *http2.Framer, _ func(...string) []byte) {
		_ = fr.WriteSettings()
		for i := 0; i < 200; i++ {
			_ = fr.WriteWindowUpdate(0, 1)
		}
	})
	raw("priority-flood", func(fr *http2.Framer, _ func(...string) []byte) {
		_ = fr.WriteSettings()
		for i := 0; i < 2*lim.ExtraFramesPerStream+2; i++ {
			_ = fr.WritePriority(uint32(2*i+1), http2.PriorityParam{Weight: 1})
		}
	})
	raw("continuation-over-header-list", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(unary...), EndStream: true})
		for i := 0; i < 12; i++ {
			_ = fr.WriteContinuation(1, false, block("x-pad", strings.Repeat("p", 1000)))
		}
	})
	// An empty SETTINGS, then a PING header claiming 20000 bytes: the
	// rule reads the header only.
	seeds["raw-frame-over-max-frame-size"] = []byte{0,
		0, 0, 0, byte(http2.FrameSettings), 0, 0, 0, 0, 0,
		0, 0x4e, 0x20, byte(http2.FramePing), 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}
	raw("first-frame-not-settings", func(fr *http2.Framer, _ func(...string) []byte) {
		_ = fr.WritePing(false, [8]byte{})
	})
	// TestRFC9113's violations.
	raw("lower-stream-id", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 5, block(unary...), true)
		headers(fr, 3, block(unary...), true)
	})
	raw("headers-half-closed-remote", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(unary...), true)
		headers(fr, 1, block(unary...), true)
	})
	raw("data-after-client-reset", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(unary...), false)
		_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
		_ = fr.WriteData(1, true, msg)
		headers(fr, 1, block(unary...), true)
	})
	raw("second-headers-without-end-stream", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(unary...), false)
		_ = fr.WriteData(1, false, msg)
		headers(fr, 1, block("x-test", "ok"), false)
	})
	raw("pseudo-header-in-trailers", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(unary...), false)
		headers(fr, 1, block(":path", "/x"), true)
	})
	raw("connection-specific-field", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(genRequests[4]...), false)
		_ = fr.WriteData(1, true, msg)
	})
	raw("content-length-mismatch", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(genRequests[5]...), false)
		_ = fr.WriteData(1, false, msg)
		_ = fr.WriteData(1, true, msg)
	})
	raw("beyond-max-concurrent-streams", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		for id := uint32(1); id <= 2*fuzzConfig.MaxConcurrentStreams+1; id += 2 {
			headers(fr, id, block(genRequests[1]...), false)
		}
	})
	raw("self-dependency", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		_ = fr.WritePriority(3, http2.PriorityParam{StreamDep: 3})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(unary...), EndStream: true, EndHeaders: true,
			Priority: http2.PriorityParam{StreamDep: 1, Weight: 255}})
	})
	raw("window-overflow", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings()
		headers(fr, 1, block(genRequests[1]...), false)
		_ = fr.WriteWindowUpdate(1, 1<<31-1)
		_ = fr.WriteWindowUpdate(1, 0)
		_ = fr.WriteWindowUpdate(0, 1<<31-1)
	})
	raw("early-answer-then-violations", func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		headers(fr, 1, block(genRequests[3]...), false)
		_ = fr.WriteData(1, false, []byte("test"))
		headers(fr, 1, block("x-test", "ok"), false)
		_ = fr.WriteWindowUpdate(1, 1<<31-1)
	})
	// frameGen programs.
	seeds["gen-unary"] = []byte{1, genHeaders, 0, 0, 0, 0, genData, 0, 3, 10}
	seeds["gen-streams-and-resets"] = []byte{1,
		genHeaders, 0, 0, 1, 0, genHeaders, 1, 0, 0, 0, genData, 1, 2, 100, genRST, 0, 8,
		genHeaders, 2, 1, 2, 0, genWindowUpdate, 2, 4, genPriority, 2, 0, 2, 16, genData, 2, 3, 0, genPing, 0, 1, 2, 3, 4, 5, 6, 7, 8}
	seeds["gen-malformed"] = []byte{1,
		genHeaders, 0, 0, 4, 0, genHeaders, 1, 0, 9, 0, genContinuation, 1, 1, 8, 0,
		genHeaders, 2, 1, 11, 0, genData, 3, 1, 5, genRaw, 0x20, 0xff, 0, 0, 0, 5, 3, 1, 2, 3, genGoAway, 0, 0}
	return seeds
}

// fuzzSeedDir is where the seed corpus lives.
const fuzzSeedDir = "testdata/fuzz/FuzzServerConn"

// TestServerConnSeeds keeps the seed corpus in step with
// serverConnSeeds. MESHD_WRITE_FUZZ_SEEDS=1 rewrites it.
func TestServerConnSeeds(t *testing.T) {
	t.Parallel()
	seeds := serverConnSeeds()
	names := make([]string, 0, len(seeds))
	for name := range seeds {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(seeds[name])))
		path := filepath.Join(fuzzSeedDir, name)
		if os.Getenv("MESHD_WRITE_FUZZ_SEEDS") == "1" {
			if err := os.MkdirAll(fuzzSeedDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if got, err := os.ReadFile(path); err != nil || string(got) != want {
			t.Errorf("seed %s is missing or stale (%v): run MESHD_WRITE_FUZZ_SEEDS=1 go test -run TestServerConnSeeds ./engine/", path, err)
		}
	}
}
