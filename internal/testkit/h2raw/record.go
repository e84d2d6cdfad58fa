package h2raw

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// Result is what the server did on one recorded connection.
type Result struct {
	Frames   map[http2.FrameType]int // frames received, by type
	Resets   map[http2.ErrCode]int   // RST_STREAM frames received, by code
	Statuses map[string]int          // grpc-status values in response headers and trailers; "http:431" for a :status other than 200
	Message  string                  // the first grpc-message
	// GoAway is the first GOAWAY received, nil if none.
	GoAway *GoAway
	// Settings are the server's first SETTINGS values.
	Settings map[http2.SettingID]uint32
	// Ended is true once the connection is closed (EOF or reset); EndedAt
	// is then the time since dial, and EndErr the reader's error.
	Ended   bool
	EndedAt time.Duration
	EndErr  error
	// Bytes are the first bytes received (up to 4 KiB), kept when the
	// server did not speak HTTP/2 back, for diagnostics.
	Bytes []byte
}

// GoAway is a GOAWAY frame as received.
type GoAway struct {
	Code         http2.ErrCode
	LastStreamID uint32        // the last stream the server may still process
	Debug        string        // its debug data, which meshd fills with the reason
	At           time.Duration // since dial
}

// String describes g, or says there was none.
func (g *GoAway) String() string {
	if g == nil {
		return "no GOAWAY"
	}
	return fmt.Sprintf("GOAWAY %s last_stream=%d debug=%q at %s", g.Code, g.LastStreamID, g.Debug, g.At.Round(time.Millisecond))
}

// String summarizes the result for test logs.
func (r Result) String() string {
	var b strings.Builder
	b.WriteString(r.GoAway.String())
	if len(r.Resets) > 0 {
		fmt.Fprintf(&b, "; RST_STREAM %v", sortedCounts(r.Resets))
	}
	if len(r.Statuses) > 0 {
		fmt.Fprintf(&b, "; grpc-status %v (first message %q)", r.Statuses, r.Message)
	}
	if r.Ended {
		fmt.Fprintf(&b, "; closed at %s", r.EndedAt.Round(time.Millisecond))
	} else {
		b.WriteString("; still open")
	}
	return b.String()
}

func sortedCounts[K ~uint32](m map[K]int) string {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%v:%d", any(k), m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// Recorder reads a Conn on a goroutine of its own until the connection
// ends, keeping a Result: for attacks, which write while the server
// answers. It acknowledges the server's SETTINGS once the client preface is
// out. The Conn's write methods stay the test's; its read methods are the
// Recorder's alone.
type Recorder struct {
	*Conn

	mu   sync.Mutex // guards res
	res  Result
	done chan struct{} // closed when the reader has seen the connection end
	// changed gets a token after each frame recorded, so that a waiter
	// can look at Result again (capacity 1: tokens coalesce).
	changed chan struct{}
	// settings is closed once the server's first SETTINGS is recorded
	// (and acknowledged, if the preface is out).
	settings     chan struct{}
	settingsOnce sync.Once
}

// Record starts reading c on a goroutine that records what the server
// does; it runs until the connection ends.
func Record(c *Conn) *Recorder {
	r := &Recorder{
		Conn:     c,
		res:      Result{Frames: map[http2.FrameType]int{}, Resets: map[http2.ErrCode]int{}, Statuses: map[string]int{}},
		done:     make(chan struct{}),
		changed:  make(chan struct{}, 1),
		settings: make(chan struct{}),
	}
	go r.read()
	return r
}

// Handshake dials addr (Dial), records the connection and waits, up to
// Timeout, until the server's first SETTINGS has been acknowledged: the
// acknowledgement is then out of the way of what the test sends next (it
// must not land inside a header block). A connection the server closes
// first is returned as it is. The caller closes it.
func Handshake(addr string) (*Recorder, error) {
	c, err := Dial(addr)
	if err != nil {
		return nil, err
	}
	r := Record(c)
	wait := time.NewTimer(Timeout)
	defer wait.Stop()
	select {
	case <-r.settings:
	case <-r.done:
	case <-wait.C:
	}
	return r, nil
}

func (r *Recorder) read() {
	defer close(r.done)
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			r.mu.Lock()
			r.res.Ended, r.res.EndedAt, r.res.EndErr = true, r.Since(), err
			if r.res.Frames[http2.FrameSettings] == 0 {
				r.res.Bytes = r.rd.kept
			}
			r.mu.Unlock()
			return
		}
		r.mu.Lock()
		r.res.Frames[f.Header().Type]++
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			if r.res.GoAway == nil {
				r.res.GoAway = &GoAway{Code: f.ErrCode, LastStreamID: f.LastStreamID, Debug: string(f.DebugData()), At: r.Since()}
				// Stop sending, as a client that heard the GOAWAY would:
				// the server then sees EOF and closes at once instead of
				// waiting out its drain; the close is still observed.
				if tc, ok := r.nc.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
		case *http2.RSTStreamFrame:
			r.res.Resets[f.ErrCode]++
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" && s != "200" {
				r.res.Statuses["http:"+s]++
			}
			for _, hf := range f.RegularFields() {
				if hf.Name == "grpc-status" {
					r.res.Statuses[hf.Value]++
				}
				if hf.Name == "grpc-message" && r.res.Message == "" {
					r.res.Message = hf.Value
				}
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				first := r.res.Settings == nil
				if first {
					r.res.Settings = map[http2.SettingID]uint32{}
					_ = f.ForeachSetting(func(s http2.Setting) error { r.res.Settings[s.ID] = s.Val; return nil })
				}
				r.mu.Unlock()
				if r.spoke.Load() {
					// A write error means the connection is going away;
					// the next ReadFrame sees it.
					_ = r.Write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
				}
				if first {
					r.settingsOnce.Do(func() { close(r.settings) })
				}
				r.notify()
				continue
			}
		}
		r.mu.Unlock()
		r.notify()
	}
}

// notify tells a waiter that the result changed.
func (r *Recorder) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Result returns a copy of what was recorded so far.
func (r *Recorder) Result() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := r.res
	res.Frames = clone(res.Frames)
	res.Resets = clone(res.Resets)
	res.Statuses = clone(res.Statuses)
	if res.GoAway != nil {
		g := *res.GoAway
		res.GoAway = &g
	}
	return res
}

func clone[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Changed gets a token when the result has changed since the last one was
// taken.
func (r *Recorder) Changed() <-chan struct{} { return r.changed }

// WaitEnd waits up to d for the server to close the connection and
// returns the result either way.
func (r *Recorder) WaitEnd(d time.Duration) Result {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
	}
	return r.Result()
}

// Done is closed when the connection has ended.
func (r *Recorder) Done() <-chan struct{} { return r.done }

// Close closes the connection and waits for the reader.
func (r *Recorder) Close() error {
	err := r.nc.Close()
	<-r.done
	return err
}
