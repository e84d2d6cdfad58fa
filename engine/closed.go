package engine

import "golang.org/x/net/http2"

// Frames on closed client streams.
//
// Once a client stream is closed meshd forgets it (its hstream leaves the
// stream table), but RFC 9113 §5.1 answers a frame on a closed stream by
// how the stream closed:
//
//   - the client had sent END_STREAM: DATA or HEADERS after it are a
//     connection error STREAM_CLOSED (the stream is closed for good, and
//     the client knew it);
//   - the client had reset the stream: DATA or HEADERS after its
//     RST_STREAM are a stream error STREAM_CLOSED;
//   - meshd reset it (a stream error, a refusal, a call meshd ended):
//     frames the client sent before it saw the RST_STREAM are legal and
//     are discarded (their DATA still counts against the connection
//     window);
//   - a HEADERS frame for an id below the highest one used that meshd
//     cannot place (never opened, or closed too long ago) tries to open a
//     stream with a used id: a connection error PROTOCOL_ERROR (§5.1.1).
//
// closedStreams keeps that "how" for the last closedMemory streams, on
// the connection (conn.recent, guarded by conn.mu). A client cannot make
// it grow; it only decides between answers the RFC allows for a frame
// that should never have been sent, so forgetting an old stream costs
// at worst a stricter answer to a misbehaving client. Frames other than
// DATA and HEADERS on closed streams (WINDOW_UPDATE, RST_STREAM, PRIORITY)
// are always ignored: they may cross meshd's own END_STREAM or RST_STREAM.

// closedMemory is how many closed client streams a connection remembers.
const closedMemory = 32

// closeKind is how a client stream closed.
type closeKind uint8

const (
	closedUnknown   closeKind = iota // not remembered
	closedByMeshd                    // meshd reset it; the client had not ended it
	closedPeerEnded                  // the client sent END_STREAM
	closedPeerReset                  // the client sent RST_STREAM (without END_STREAM first)
)

// closedHow classifies a stream leaving the table by what the client
// sent on it.
func closedHow(endRecv, rstRecv bool) closeKind {
	switch {
	case endRecv:
		return closedPeerEnded
	case rstRecv:
		return closedPeerReset
	}
	return closedByMeshd
}

// closedStreams is a ring of the last closed client streams.
type closedStreams struct {
	ring [closedMemory]struct {
		id  uint32
		how closeKind
	}
	next int
}

func (r *closedStreams) add(id uint32, how closeKind) {
	e := &r.ring[r.next]
	e.id, e.how = id, how
	r.next = (r.next + 1) % closedMemory
}

// lookup reports how stream id closed, or closedUnknown.
func (r *closedStreams) lookup(id uint32) closeKind {
	for i := range r.ring {
		if r.ring[i].id == id && id != 0 {
			return r.ring[i].how
		}
	}
	return closedUnknown
}

// peerReset records that the client reset stream id after meshd closed
// it (the two RST_STREAMs crossed, or the client's came later): what the
// client sends on it from now on breaks §5.1.
func (r *closedStreams) peerReset(id uint32) {
	for i := range r.ring {
		if e := &r.ring[i]; e.id == id && id != 0 && e.how == closedByMeshd {
			e.how = closedPeerReset
		}
	}
}

// Ending a stream the client is still sending on.
//
// When meshd has written the end of a response (END_STREAM) and the
// client has not ended its request, RFC 9113 §8.1 lets meshd ask it to
// stop with RST_STREAM(NO_ERROR), which grpc-go's server and x/net send
// at once. meshd sends it one round trip later: it writes a PING after
// the responses (endPing), and resets the streams still open when the
// client acknowledges it, as §5.1 allows ("signals to detect that the
// peer has received the frames that caused the stream to enter the
// closed state"). Until then the stream is half-closed (local), so what
// the client still sends on it is answered as the RFC says (a second
// HEADERS without END_STREAM, DATA over its content-length, a window
// overflow) instead of being discarded as frames that crossed a reset,
// whatever the timing. Clients usually end or reset such a stream
// themselves first (grpc-go: RST_STREAM(NO_ERROR) when the response
// ends while it is still sending); the reset after the PING covers the
// one that does not: a grpc-go client that had half-closed drops its
// queued END_STREAM when the response ends first, and sends nothing more
// on the stream.

// endPing is the payload of the PING that confirms responses (closed.go).
const endPing = "meshdend"

// endSentLocked notes that the END_STREAM of st's response was handed to
// the writer. Called with c.mu held, by the write token holder.
func (c *conn) endSentLocked(st *hstream) {
	if c.isUp || st.recvDone {
		return
	}
	if len(c.endWait) == cap(c.endWait) && len(c.endWait) > 0 {
		// A client that never acknowledges the PING cannot grow the list
		// past its live streams (at most MaxConcurrentStreams).
		live := c.endWait[:0]
		for _, w := range c.endWait {
			if !w.removed {
				live = append(live, w)
			}
		}
		clear(c.endWait[len(live):])
		c.endWait = live
	}
	c.endWait = append(c.endWait, st)
}

// endPingLocked returns the PING to write after the responses in
// c.endWait, which it covers from now on. Called with c.mu held.
func (c *conn) endPingLocked() op {
	c.endPingOut = true
	c.endPinged = append(c.endPinged[:0], c.endWait...)
	clear(c.endWait)
	c.endWait = c.endWait[:0]
	return op{kind: opPing, ping: [8]byte([]byte(endPing))}
}

// onEndPingAck resets the streams the acknowledged end PING covered that
// the client has neither ended nor reset, and confirms the responses
// written since with a new PING. Client reader goroutine.
func (sc *serverConn) onEndPingAck() {
	var cs []credit
	sc.mu.Lock()
	if sc.endPingOut {
		sc.endPingOut = false
		for i, st := range sc.endPinged {
			// Once the response has ended, only a reset can be queued on
			// the stream: one with a code of its own is left alone.
			if !st.removed && !st.recvDone && st.qlen() == 0 {
				sc.resetLocked(st, http2.ErrCodeNo, &cs, &sc.fl)
			}
			sc.endPinged[i] = nil
		}
		sc.endPinged = sc.endPinged[:0]
		if len(sc.endWait) > 0 {
			// Those responses are written already: the PING can go
			// ahead of anything queued.
			sc.pushCtrlLocked(sc.endPingLocked(), &sc.fl)
		}
	}
	sc.mu.Unlock()
	applyCredits(cs)
}
