package engine

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// Abuse protection of client connections.
//
// The engine closes clients that abuse HTTP/2 in ways the protocol itself
// does not bound (the floods and resets behind CVE-2019-9512..9518 and
// CVE-2023-44487), after Envoy's protections. The rules run inside the
// connection, on its reader goroutine, with plain integer state (no lock,
// no allocation):
//
//   - a byte-level scanner (abuseScanner) sits between the socket and the
//     read buffer and follows frame headers, because the x/net Framer
//     assembles HEADERS and CONTINUATION frames into one header block
//     inside ReadFrame: an endless run of empty CONTINUATION frames never
//     returns from it. The scanner counts frames by type and applies the
//     rapid reset, empty frame, SETTINGS, PRIORITY/unknown, frame size,
//     header block size and first-frame rules;
//   - the PING and WINDOW_UPDATE rules, whose allowances grow with the
//     DATA the client received, run in onPing and onWindowUpdate, under
//     the connection lock they take anyway, where the bytes sent to the
//     client can be read from the connection window.
//
// A connection that breaks a rule gets GOAWAY (ENHANCE_YOUR_CALM for
// floods, with the reason as debug data), a write shutdown, and up to a
// second for the client to read it before the socket is closed: closing
// with the flood unread would send a TCP reset that can destroy the
// GOAWAY in flight.

// Thresholds, after Envoy's HTTP/2 protections.
const (
	// A stream reset by the client within prematureResetAge of opening
	// counts as premature (AbuseLimits.MinResetStreams says when that
	// closes the connection).
	prematureResetAge = time.Second

	// bytesPerDataFrame converts the DATA bytes sent to a client into the
	// DATA frames the PING and WINDOW_UPDATE allowances count, which the
	// reader cannot see (the writer frames them). Every gRPC message
	// carries a 5-byte prefix and backends split messages only at their
	// frame size, so one frame per 4 bytes is more frames than any gRPC
	// response has: the allowance errs toward the client. The opened
	// streams are added on top (a response's first DATA frame).
	bytesPerDataFrame = 4

	// After the GOAWAY, the client has abuseDrainTime to close, and what
	// it sends meanwhile (at most abuseDrainMax bytes) is discarded.
	abuseDrainTime = time.Second
	abuseDrainMax  = 4 << 20
	// abuseShutdownPoll is how often the drain checks whether the writer
	// took the GOAWAY, so the connection can be shut down after it.
	abuseShutdownPoll = 5 * time.Millisecond

	// The reader publishes its frame counts every frameFlushEvery frames
	// (and when the connection ends) rather than touching shared counters
	// per frame.
	frameFlushEvery = 256

	// openedRing streams are remembered with their opening time, to tell a
	// premature reset: an attacker resets each stream right after opening
	// it, so its resets always find their stream here.
	openedRing = 256
)

// AbuseReason says why a client connection was closed for misbehaving.
type AbuseReason uint8

// The reasons. The flood and protocol reasons close the connection with a
// GOAWAY; NotHTTP2 and HandshakeTimeout close it silently.
const (
	AbuseRapidReset        AbuseReason = iota // streams reset by the client as soon as opened
	AbuseEmptyFrames                          // DATA/HEADERS/CONTINUATION without payload, in a row
	AbuseSettingsFlood                        // non-ACK SETTINGS beyond the token bucket
	AbusePingFlood                            // non-ACK PING beyond the token bucket
	AbuseWindowUpdateFlood                    // WINDOW_UPDATE out of proportion to the traffic
	AbuseExtraFrames                          // PRIORITY and unknown-type frames beyond the per-stream allowance
	AbuseProtocolError                        // the first frame after the preface is not SETTINGS
	AbuseFrameTooLarge                        // a frame over Config.MaxFrameSize
	AbuseHeadersTooLarge                      // a header block over Config.MaxHeaderListSize, encoded
	AbuseNotHTTP2                             // the client preface is wrong (garbage, HTTP/1.x)
	AbuseHandshakeTimeout                     // the preface and first SETTINGS did not arrive in Config.HandshakeTimeout
	NumAbuseReasons                           // the number of reasons
)

var abuseReasonNames = [NumAbuseReasons]string{"rapid_reset", "empty_frames", "settings_flood", "ping_flood", "window_update_flood", "extra_frames", "protocol_error", "frame_too_large", "headers_too_large", "not_http2", "handshake_timeout"}

// String is the reason's metric label value.
func (r AbuseReason) String() string {
	if r < NumAbuseReasons {
		return abuseReasonNames[r]
	}
	return fmt.Sprintf("reason_%d", uint8(r))
}

// NumFrameTypes is the size of AbuseStats.FramesReceived: the frame types
// DATA (0x0) to CONTINUATION (0x9) and a last slot for every other type.
const NumFrameTypes = 11

var frameNames = [NumFrameTypes]string{"DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION", "UNKNOWN"}

// FrameTypeName is the name of AbuseStats.FramesReceived[i].
func FrameTypeName(i int) string { return frameNames[i] }

// NumErrCodes is the size of AbuseStats.GoAwaysSent and ResetsSent: the
// error codes NO_ERROR (0x0) to HTTP_1_1_REQUIRED (0xd) and a last slot
// for every other code.
const NumErrCodes = 15

var codeNames = [NumErrCodes]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED", "UNKNOWN"}

// ErrCodeName is the name of the error code counted at index i of
// AbuseStats.GoAwaysSent and ResetsSent.
func ErrCodeName(i int) string { return codeNames[i] }

// AbuseStats are a Server's client connection counters, the
// meshd_listener_* metrics.
type AbuseStats struct {
	// ConnsAccepted counts client connections served since start;
	// ConnsActive those open now.
	ConnsAccepted uint64
	ConnsActive   int64
	// ConnsRejected counts connections refused before reaching the engine
	// (the listener's max_connections). The engine does not cap
	// connections: the listener's owner fills it in.
	ConnsRejected uint64
	// FramesReceived counts client frames by type (index: the type,
	// NumFrameTypes-1 for unknown types). A connection's frames are added
	// in batches while it runs and in full when it ends.
	FramesReceived [NumFrameTypes]uint64
	// EmptyFramesReceived counts DATA, HEADERS and CONTINUATION frames with
	// no payload and no END_STREAM (batched like FramesReceived).
	EmptyFramesReceived uint64
	// GoAwaysSent counts GOAWAY frames queued to clients by error code:
	// abuse, protocol errors, graceful drains (two per drain).
	GoAwaysSent [NumErrCodes]uint64
	// ResetsSent counts RST_STREAM frames sent to clients by error code,
	// for the refusals (REFUSED_STREAM) and the stream errors found while
	// reading; resets sent when a call ends are not counted.
	ResetsSent [NumErrCodes]uint64
	// Closed counts connections closed for misbehaving, by AbuseReason.
	Closed [NumAbuseReasons]uint64
}

// abuseCounters back AbuseStats.
type abuseCounters struct {
	accepted atomic.Uint64
	frames   [NumFrameTypes]atomic.Uint64
	empty    atomic.Uint64
	goaways  [NumErrCodes]atomic.Uint64
	resets   [NumErrCodes]atomic.Uint64
	closed   [NumAbuseReasons]atomic.Uint64
}

func errCodeIndex(code http2.ErrCode) int { return int(min(uint32(code), NumErrCodes-1)) }

func (a *abuseCounters) goAway(code http2.ErrCode) { a.goaways[errCodeIndex(code)].Add(1) }
func (a *abuseCounters) reset(code http2.ErrCode)  { a.resets[errCodeIndex(code)].Add(1) }

// AbuseStats returns the client connection counters.
func (s *Server) AbuseStats() AbuseStats {
	a := s.sh.cfg.abuse
	var out AbuseStats
	out.ConnsAccepted = a.accepted.Load()
	out.ConnsActive = s.Stats().ActiveConns
	for i := range out.FramesReceived {
		out.FramesReceived[i] = a.frames[i].Load()
	}
	out.EmptyFramesReceived = a.empty.Load()
	for i := range out.GoAwaysSent {
		out.GoAwaysSent[i] = a.goaways[i].Load()
		out.ResetsSent[i] = a.resets[i].Load()
	}
	// Refusals happen in code shared with the rest of the connection
	// handling, which counts them already.
	out.ResetsSent[http2.ErrCodeRefusedStream] += uint64(s.sh.stats.RefusedStreams.Load())
	for i := range out.Closed {
		out.Closed[i] = a.closed[i].Load()
	}
	return out
}

// abuseError ends a connection's read loop when it broke a rule.
type abuseError struct {
	reason AbuseReason
	code   http2.ErrCode
}

func (e abuseError) Error() string { return "engine: client connection closed: " + e.reason.String() }

func calm(r AbuseReason) error { return abuseError{reason: r, code: http2.ErrCodeEnhanceYourCalm} }

// Frame types and flags the scanner looks at (RFC 9113 §6).
const (
	ftData         = 0x0
	ftHeaders      = 0x1
	ftPriority     = 0x2
	ftRSTStream    = 0x3
	ftSettings     = 0x4
	ftPing         = 0x6
	ftWindowUpdate = 0x8
	ftContinuation = 0x9

	flEndStream = 0x1
	flAck       = 0x1
	flPadded    = 0x8
	flPriority  = 0x20
)

type frameHdr struct {
	length uint32
	typ    byte
	flags  byte
	stream uint32
}

// abuseScanner follows the client's byte stream under the read buffer:
// the preface, then frame headers, skipping payloads. It belongs to the
// connection's reader goroutine, as does the PING and WINDOW_UPDATE state
// (used by onPing and onWindowUpdate).
type abuseScanner struct {
	r    io.Reader // the connection
	ctr  *abuseCounters
	born time.Time

	maxFrame      uint32
	maxHeaderList uint32
	lim           *AbuseLimits

	preface int // preface bytes matched; -1: a bad preface, scanning stopped
	hdr     [9]byte
	hdrN    int
	remain  uint32 // payload bytes of the current frame still to come

	// A PADDED DATA or HEADERS frame is only known to be empty once its
	// first payload byte (the pad length) is read.
	padPending bool
	padFrame   frameHdr

	blockLen     uint64 // encoded bytes of the header block being received
	settingsSeen bool

	streams   uint64 // streams the client opened
	maxID     uint32
	premature uint64
	opened    [openedRing]struct{ id, atMS uint32 }

	consecutiveEmpty int
	settingsTokens   float64
	settingsAt       time.Duration
	extra            uint64

	pingTokens    float64
	pingAt        time.Duration
	pingData      uint64 // DATA frames sent when pingTokens were last refilled
	windowUpdates uint64
	// connIncrements sums the client's connection-level WINDOW_UPDATE
	// increments: with the connection window, it tells the DATA bytes
	// sent. Guarded by conn.mu, like the window.
	connIncrements int64

	frames  [NumFrameTypes]uint64 // not yet added to ctr
	empty   uint64
	pending int
}

func (a *abuseScanner) init(r io.Reader, ctr *abuseCounters, cfg *Config) {
	a.r, a.ctr, a.born = r, ctr, time.Now()
	a.maxFrame, a.maxHeaderList = cfg.MaxFrameSize, cfg.MaxHeaderListSize
	a.lim = &cfg.Abuse
	a.settingsTokens = float64(a.lim.SettingsBurst)
	a.pingTokens = float64(a.lim.PingBurst)
}

func (a *abuseScanner) now() time.Duration { return time.Since(a.born) }

// Read reads from the connection and checks what it read. A rule broken
// fails the read with an abuseError, which ends the read loop.
func (a *abuseScanner) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		if aerr := a.scan(p[:n]); aerr != nil {
			return 0, aerr
		}
	}
	return n, err
}

// flush publishes the frame counts.
func (a *abuseScanner) flush() {
	for i, v := range a.frames {
		if v != 0 {
			a.ctr.frames[i].Add(v)
			a.frames[i] = 0
		}
	}
	if a.empty != 0 {
		a.ctr.empty.Add(a.empty)
		a.empty = 0
	}
	a.pending = 0
}

func (a *abuseScanner) scan(p []byte) error {
	for len(p) > 0 {
		switch {
		case a.preface < 0:
			return nil // serve closes the connection
		case a.preface < len(http2.ClientPreface):
			k := min(len(p), len(http2.ClientPreface)-a.preface)
			if string(p[:k]) != http2.ClientPreface[a.preface:a.preface+k] {
				a.preface = -1
				return nil
			}
			a.preface += k
			p = p[k:]
		case a.remain > 0:
			if a.padPending {
				a.padPending = false
				if err := a.payload(a.padFrame, padIsAll(a.padFrame, p[0])); err != nil {
					return err
				}
			}
			k := uint32(min(len(p), int(min(a.remain, 1<<30))))
			a.remain -= k
			p = p[k:]
		default:
			k := copy(a.hdr[a.hdrN:], p)
			a.hdrN += k
			p = p[k:]
			if a.hdrN < len(a.hdr) {
				return nil
			}
			a.hdrN = 0
			f := frameHdr{
				length: uint32(a.hdr[0])<<16 | uint32(a.hdr[1])<<8 | uint32(a.hdr[2]),
				typ:    a.hdr[3],
				flags:  a.hdr[4],
				stream: binary.BigEndian.Uint32(a.hdr[5:]) & 0x7fffffff,
			}
			a.remain = f.length
			if err := a.onFrame(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// padIsAll says whether a PADDED frame with pad length padLen carries no
// data (or header block).
func padIsAll(f frameHdr, padLen byte) bool {
	used := 1 + uint32(padLen)
	if f.typ == ftHeaders && f.flags&flPriority != 0 {
		used += 5
	}
	return f.length <= used
}

// onFrame applies the rules to a frame whose header was just read.
func (a *abuseScanner) onFrame(f frameHdr) error {
	a.frames[min(int(f.typ), NumFrameTypes-1)]++
	if a.pending++; a.pending >= frameFlushEvery {
		a.flush()
	}
	if !a.settingsSeen {
		if f.typ != ftSettings || f.flags&flAck != 0 {
			return abuseError{reason: AbuseProtocolError, code: http2.ErrCodeProtocol}
		}
		a.settingsSeen = true
	}
	if f.length > a.maxFrame {
		return abuseError{reason: AbuseFrameTooLarge, code: http2.ErrCodeFrameSize}
	}
	switch f.typ {
	case ftData, ftHeaders:
		if f.typ == ftHeaders {
			a.blockLen = uint64(f.length)
			if err := a.checkBlock(); err != nil {
				return err
			}
			if f.stream > a.maxID {
				a.maxID = f.stream
				a.streams++
				slot := &a.opened[(f.stream>>1)%openedRing]
				slot.id, slot.atMS = f.stream, uint32(a.now()/time.Millisecond)
			}
		}
		if f.flags&flPadded != 0 && f.length > 0 {
			a.padPending, a.padFrame = true, f
			return nil
		}
		empty := f.length == 0 || (f.typ == ftHeaders && f.flags&flPriority != 0 && f.length <= 5)
		return a.payload(f, empty)
	case ftContinuation:
		a.blockLen += uint64(f.length)
		if err := a.checkBlock(); err != nil {
			return err
		}
		return a.payload(f, f.length == 0)
	case ftRSTStream:
		slot := &a.opened[(f.stream>>1)%openedRing]
		if slot.id == f.stream && f.stream != 0 &&
			uint32(a.now()/time.Millisecond)-slot.atMS <= uint32(prematureResetAge/time.Millisecond) {
			slot.id = 0 // one reset per stream
			a.premature++
			if a.streams >= uint64(a.lim.MinResetStreams) && 2*a.premature >= a.streams {
				return calm(AbuseRapidReset)
			}
		}
	case ftSettings:
		if f.flags&flAck == 0 {
			now := a.now()
			a.settingsTokens = min(float64(a.lim.SettingsBurst), a.settingsTokens+(now-a.settingsAt).Seconds()*a.lim.SettingsPerSecond)
			a.settingsAt = now
			if a.settingsTokens < 1 {
				return calm(AbuseSettingsFlood)
			}
			a.settingsTokens--
		}
	case ftPriority:
		return a.extraFrame()
	default:
		if f.typ > ftContinuation {
			return a.extraFrame()
		}
	}
	return nil
}

// checkBlock closes a connection whose header block, encoded, is over
// the header list size limit: HPACK never encodes a field in more bytes
// than it counts for in the list, so the block is over the limit however
// it decodes, and reading all of it (a CONTINUATION flood) is the attack.
func (a *abuseScanner) checkBlock() error {
	if a.blockLen > uint64(a.maxHeaderList) {
		return calm(AbuseHeadersTooLarge)
	}
	return nil
}

// payload tracks runs of empty DATA, HEADERS and CONTINUATION frames.
func (a *abuseScanner) payload(f frameHdr, empty bool) error {
	if !empty || (f.typ != ftContinuation && f.flags&flEndStream != 0) {
		a.consecutiveEmpty = 0
		return nil
	}
	a.empty++
	a.consecutiveEmpty++
	if a.consecutiveEmpty > a.lim.MaxConsecutiveEmptyFrames {
		return calm(AbuseEmptyFrames)
	}
	return nil
}

func (a *abuseScanner) extraFrame() error {
	a.extra++
	if a.extra > uint64(a.lim.ExtraFramesPerStream)*(1+a.streams) {
		return calm(AbuseExtraFrames)
	}
	return nil
}

// dataFramesSent estimates the DATA frames sent to the client (see
// bytesPerDataFrame) from the connection window: what it was granted minus
// what is left is what was sent. The caller holds c.mu.
func (a *abuseScanner) dataFramesSent(outWin int64) uint64 {
	sent := max(65535+a.connIncrements-outWin, 0)
	return a.streams + uint64(sent)/bytesPerDataFrame
}

// onPing applies the PING token bucket to a non-ACK PING. The caller
// holds c.mu (outWin is the connection window).
func (a *abuseScanner) onPing(outWin int64) error {
	now, data := a.now(), a.dataFramesSent(outWin)
	earned := float64(max(data, a.pingData)-a.pingData) * a.lim.PingsPerDataFrame
	a.pingTokens = min(float64(a.lim.PingBurst), a.pingTokens+(now-a.pingAt).Seconds()*a.lim.PingsPerSecond+earned)
	a.pingAt, a.pingData = now, max(data, a.pingData)
	if a.pingTokens < 1 {
		return calm(AbusePingFlood)
	}
	a.pingTokens--
	return nil
}

// onWindowUpdate applies the WINDOW_UPDATE allowance. The caller holds
// c.mu.
func (a *abuseScanner) onWindowUpdate(outWin int64) error {
	a.windowUpdates++
	if a.windowUpdates > 100+2*(a.streams+uint64(a.lim.WindowUpdatesPerDataFrame)*a.dataFramesSent(outWin)) {
		return calm(AbuseWindowUpdateFlood)
	}
	return nil
}
