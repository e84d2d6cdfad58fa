package h2guard

import "encoding/binary"

// Frame types and flags the guard looks at (RFC 9113 §6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	framePriority     = 0x2
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream = 0x1
	flagAck       = 0x1
	flagPadded    = 0x8
	flagPriority  = 0x20
)

// ringSize streams are remembered with their opening time, to tell a
// premature reset. An attacker resets each stream right after opening it,
// so its resets always find their stream here; a reset of an older stream
// is not premature anyway.
const ringSize = 256

// inState follows the client's byte stream: the preface, then frame
// headers, skipping payloads.
type inState struct {
	preface int // preface bytes matched; -1: not HTTP/2, no longer parsed
	hdr     [9]byte
	hdrN    int
	remain  uint32 // payload bytes of the current frame still to come

	// A PADDED DATA or HEADERS frame is only known to be empty once its
	// first payload byte (the pad length) is read.
	padPending bool
	padFrame   frameHeader

	blockLen     uint64 // bytes of the header block being received
	settingsSeen bool   // the first frame (SETTINGS) arrived
	timeoutSeen  bool

	streams   uint64 // streams the client opened
	maxID     uint32 // highest stream id the client opened
	premature uint64 // of those, reset by the client within PrematureResetAge
	opened    [ringSize]struct {
		id uint32
		at int64
	}
	consecutiveEmpty int
	settingsTokens   float64
	settingsAt       int64
	pingTokens       float64
	pingAt           int64
	pingData         uint64 // DATA frames sent when pingTokens were last refilled
	windowUpdates    uint64
	extra            uint64
}

type frameHeader struct {
	length uint32
	typ    byte
	flags  byte
	stream uint32
}

func parseHeader(h *[9]byte) frameHeader {
	return frameHeader{
		length: uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2]),
		typ:    h[3],
		flags:  h[4],
		stream: binary.BigEndian.Uint32(h[5:]) & 0x7fffffff,
	}
}

// scanIn follows p, the next bytes from the client. It returns bad with a
// reason and GOAWAY code when the connection must be closed.
func (c *conn) scanIn(p []byte) (r Reason, code uint32, bad bool) {
	s := &c.in
	for len(p) > 0 {
		switch {
		case s.preface < 0:
			return 0, 0, false
		case s.preface < len(clientPreface):
			k := min(len(p), len(clientPreface)-s.preface)
			if string(p[:k]) != clientPreface[s.preface:s.preface+k] {
				// Not HTTP/2: the server answers (closes); count it and
				// stop looking.
				s.preface = -1
				c.g.closed[NotHTTP2].Add(1)
				return 0, 0, false
			}
			s.preface += k
			p = p[k:]
		case s.remain > 0:
			if s.padPending {
				s.padPending = false
				if r, code, bad := c.payload(s.padFrame, padEmpty(s.padFrame, p[0])); bad {
					return r, code, bad
				}
			}
			k := uint32(min(len(p), int(min(s.remain, 1<<30))))
			s.remain -= k
			p = p[k:]
		default:
			k := copy(s.hdr[s.hdrN:], p)
			s.hdrN += k
			p = p[k:]
			if s.hdrN < len(s.hdr) {
				return 0, 0, false
			}
			s.hdrN = 0
			f := parseHeader(&s.hdr)
			s.remain = f.length
			if r, code, bad := c.onFrame(f); bad {
				return r, code, bad
			}
		}
	}
	return 0, 0, false
}

// padEmpty says whether a PADDED frame with pad length padLen carries no
// data (or header block).
func padEmpty(f frameHeader, padLen byte) bool {
	used := 1 + uint32(padLen)
	if f.typ == frameHeaders && f.flags&flagPriority != 0 {
		used += 5
	}
	return f.length <= used
}

// onFrame applies the limits to a frame whose header was just read.
func (c *conn) onFrame(f frameHeader) (Reason, uint32, bool) {
	s, lim := &c.in, &c.g.lim
	c.g.frames[min(int(f.typ), NumFrameTypes-1)].Add(1)
	if !s.settingsSeen {
		if f.typ != frameSettings || f.flags&flagAck != 0 {
			return ProtocolError, codeProtocol, true
		}
		s.settingsSeen = true
	}
	if f.length > lim.MaxFrameSize {
		return FrameTooLarge, codeFrameSize, true
	}
	if f.typ == frameHeaders || f.typ == frameContinuation {
		if f.typ == frameHeaders {
			s.blockLen = 0
		}
		s.blockLen += uint64(f.length)
		if lim.MaxHeaderListSize > 0 && s.blockLen > uint64(lim.MaxHeaderListSize) {
			return HeadersTooLarge, codeCalm, true
		}
	}
	switch f.typ {
	case frameData, frameHeaders:
		if f.typ == frameHeaders && f.stream > s.maxID {
			s.maxID = f.stream
			s.streams++
			slot := &s.opened[(f.stream>>1)%ringSize]
			slot.id, slot.at = f.stream, c.now()
		}
		if f.flags&flagPadded != 0 && f.length > 0 {
			s.padPending, s.padFrame = true, f
			return 0, 0, false
		}
		empty := f.length == 0 || (f.typ == frameHeaders && f.flags&flagPriority != 0 && f.length <= 5)
		return c.payload(f, empty)
	case frameContinuation:
		return c.payload(f, f.length == 0)
	case frameRSTStream:
		slot := &s.opened[(f.stream>>1)%ringSize]
		if slot.id == f.stream && c.now()-slot.at <= int64(lim.PrematureResetAge) {
			slot.id = 0 // one reset per stream
			s.premature++
			if s.streams >= uint64(lim.MinResetStreams) && 2*s.premature >= s.streams {
				return RapidReset, codeCalm, true
			}
		}
	case frameSettings:
		if f.flags&flagAck == 0 {
			now := c.now()
			s.settingsTokens = min(float64(lim.SettingsBurst), s.settingsTokens+float64(now-s.settingsAt)/1e9*lim.SettingsPerSecond)
			s.settingsAt = now
			if s.settingsTokens < 1 {
				return SettingsFlood, codeCalm, true
			}
			s.settingsTokens--
		}
	case framePing:
		if f.flags&flagAck == 0 {
			now, data := c.now(), c.outData.Load()
			s.pingTokens = min(float64(lim.PingBurst), s.pingTokens+
				float64(now-s.pingAt)/1e9*lim.PingsPerSecond+float64((data-s.pingData)*uint64(lim.PingsPerDataFrame)))
			s.pingAt, s.pingData = now, data
			if s.pingTokens < 1 {
				return PingFlood, codeCalm, true
			}
			s.pingTokens--
		}
	case frameWindowUpdate:
		s.windowUpdates++
		if s.windowUpdates > 100+2*(s.streams+uint64(lim.WindowUpdatesPerDataFrame)*c.outData.Load()) {
			return WindowUpdateFlood, codeCalm, true
		}
	case framePriority:
		return c.extraFrame()
	default:
		if f.typ > frameContinuation {
			return c.extraFrame()
		}
	}
	return 0, 0, false
}

// payload tracks runs of empty DATA, HEADERS and CONTINUATION frames.
func (c *conn) payload(f frameHeader, empty bool) (Reason, uint32, bool) {
	s := &c.in
	if !empty || (f.typ != frameContinuation && f.flags&flagEndStream != 0) {
		s.consecutiveEmpty = 0
		return 0, 0, false
	}
	c.g.empty.Add(1)
	s.consecutiveEmpty++
	if s.consecutiveEmpty > c.g.lim.MaxConsecutiveEmptyFrames {
		return EmptyFrames, codeCalm, true
	}
	return 0, 0, false
}

func (c *conn) extraFrame() (Reason, uint32, bool) {
	s := &c.in
	s.extra++
	if s.extra > uint64(c.g.lim.ExtraFramesPerStream)*(1+s.streams) {
		return ExtraFrames, codeCalm, true
	}
	return 0, 0, false
}

// outState follows the server's byte stream (frames from the first byte),
// capturing the error code of GOAWAY and RST_STREAM frames.
type outState struct {
	hdr     [9]byte
	hdrN    int
	remain  uint32
	typ     byte
	capture [8]byte
	capN    int
	capWant int
}

// atBoundary says whether the server's output stopped between two frames,
// where a GOAWAY of the guard's can go in.
func (o *outState) atBoundary() bool { return o.hdrN == 0 && o.remain == 0 }

// scanOut follows p, bytes the server wrote. The caller holds wlock.
func (c *conn) scanOut(p []byte) {
	o := &c.out
	for len(p) > 0 {
		if o.remain > 0 {
			if o.capN < o.capWant {
				k := copy(o.capture[o.capN:o.capWant], p)
				o.capN += k
				o.remain -= uint32(k)
				p = p[k:]
				if o.capN == o.capWant {
					c.outCaptured()
				}
				continue
			}
			k := uint32(min(len(p), int(min(o.remain, 1<<30))))
			o.remain -= k
			p = p[k:]
			continue
		}
		k := copy(o.hdr[o.hdrN:], p)
		o.hdrN += k
		p = p[k:]
		if o.hdrN < len(o.hdr) {
			return
		}
		o.hdrN = 0
		f := parseHeader(&o.hdr)
		o.remain, o.typ, o.capN, o.capWant = f.length, f.typ, 0, 0
		switch {
		case f.typ == frameData:
			c.outData.Add(1)
		case f.typ == frameGoAway && f.length >= 8:
			o.capWant = 8
		case f.typ == frameRSTStream && f.length >= 4:
			o.capWant = 4
		}
	}
}

func (c *conn) outCaptured() {
	o := &c.out
	switch o.typ {
	case frameGoAway:
		c.g.goaways[codeIndex(binary.BigEndian.Uint32(o.capture[4:8]))].Add(1)
	case frameRSTStream:
		c.g.resets[codeIndex(binary.BigEndian.Uint32(o.capture[0:4]))].Add(1)
	}
}

func codeIndex(code uint32) int { return int(min(code, NumErrCodes-1)) }
