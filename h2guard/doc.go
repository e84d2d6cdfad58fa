// Package h2guard watches the HTTP/2 frames on a listener's client
// connections, counts them, and closes connections that abuse the protocol
// in ways the HTTP/2 server behind it does not bound by itself.
//
// It sits between the socket (or the TLS layer) and the server, as a
// net.Conn wrapper: it reads every frame header going in and coming out and
// never changes a byte. That keeps it independent of the server it
// protects (grpc-go's transport for meshd's grpc engine, h2proxy for the
// frame engine), costs a few branches per frame, and gives meshd counters
// no HTTP/2 server exports: frames received by type, GOAWAY and RST_STREAM
// frames sent by code, and connections closed by reason.
//
// What it stops, with the thresholds of Limits (defaults after Envoy's
// HTTP/2 protections, which have run in front of gRPC clients for years,
// except MinResetStreams; see its comment):
//
//   - rapid reset (CVE-2023-44487): once a connection has opened
//     MinResetStreams streams, if at least half of them were reset by the
//     client within PrematureResetAge of being opened;
//   - empty frames (CVE-2019-9518): more than MaxConsecutiveEmptyFrames
//     DATA, HEADERS or CONTINUATION frames in a row with no payload and no
//     END_STREAM, which includes endless empty CONTINUATION frames;
//   - SETTINGS floods: non-ACK SETTINGS beyond a token bucket
//     (SettingsBurst, SettingsPerSecond);
//   - PING floods: non-ACK PINGs beyond a token bucket that refills with
//     time and with the DATA frames the client receives (PingBurst,
//     PingsPerSecond, PingsPerDataFrame);
//   - WINDOW_UPDATE floods: more than 100 + 2*(streams +
//     WindowUpdatesPerDataFrame * DATA frames sent) WINDOW_UPDATE frames;
//   - PRIORITY and unknown-type floods: more than ExtraFramesPerStream *
//     (1 + streams) such frames;
//   - header blocks whose encoded size exceeds MaxHeaderListSize, the
//     server's own limit (CONTINUATION floods, CVE-2024-27316 and
//     CVE-2023-45288, and oversized requests);
//   - a first frame that is not SETTINGS, and frames larger than the
//     server's SETTINGS_MAX_FRAME_SIZE (protocol errors the server would
//     also close the connection for, but silently).
//
// A connection it stops gets GOAWAY (ENHANCE_YOUR_CALM for floods,
// PROTOCOL_ERROR or FRAME_SIZE_ERROR for protocol errors) when the
// server's writer is between frames, then a write shutdown, then up to a
// second for the client to read the GOAWAY before the socket closes (a
// close with unread input would send a TCP reset that can destroy the
// GOAWAY in flight). The server sees a read error and tears the
// connection down as for any dead peer.
//
// It also recognizes, without acting on them (the server closes those
// connections itself), clients that do not speak HTTP/2 (a bad preface:
// garbage, HTTP/1.1) and clients whose preface did not arrive before the
// server's handshake deadline (slowloris), so they are counted too.
//
// grpc-go's keepalive enforcement answers a PING flood too (GOAWAY
// ENHANCE_YOUR_CALM "too_many_pings" after three), but it then answers
// every PING the client already sent before it closes the connection,
// which at line rate costs a core; the guard closes it instead.
package h2guard
