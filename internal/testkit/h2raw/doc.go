// Package h2raw speaks HTTP/2 frame by frame, for the tests that need what
// grpc-go will never send or answer: malformed frames, floods, a backend
// that resets every stream or stops mid-message.
//
//   - [Conn] is the client. [New] and [Dial] connect, send the client
//     preface and SETTINGS; [DialTCP] only connects. A test writes frames
//     with [Conn.Write] (or queues a flood with [Conn.Queue] and sends it
//     with [Conn.Flush]) and reads the answer on its own goroutine:
//     [Conn.Next] and [Conn.Until] read frames with a deadline, answering
//     SETTINGS, and [Conn.ExpectGoAway], [Conn.ExpectRST] and [Conn.Ping]
//     wait for one answer and check it.
//   - [Record] hands a Conn's reading to a goroutine that keeps a summary
//     ([Result]) of what the server did, for attacks that write while the
//     server answers; [Handshake] dials and records.
//   - [StartBackend] is the server: it completes the handshake and hands
//     every frame to a handler that plays the misbehaving backend.
//   - [Request], [Block] and [Message] build a gRPC request's header list,
//     a header block and a length-prefixed message.
package h2raw
