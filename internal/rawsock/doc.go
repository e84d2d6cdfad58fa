// Package rawsock reads and writes non-blocking sockets with raw system
// calls, inside syscall.RawConn's Read and Write.
//
// Why: a socket read or write through net.Conn goes through
// syscall.Syscall, which tells the scheduler the goroutine may block
// (entersyscall). When the process was idle, Go's sysmon thread was asleep
// for good, and entersyscall wakes it: a futex wake, then sysmon polls
// every 20 µs (nanosleep) until it sees every P idle again and goes back to
// sleep (another futex). At the rates a sidecar lives at, where meshd idles
// between calls, that was about five system calls and two thread wake-ups
// per call, half of meshd's system calls (perf stat, meshbench -syscalls).
//
// Go's network sockets are non-blocking, so a read or write returns at
// once with data, EAGAIN or an error: there is nothing for the scheduler to
// hand the P off for. RawConn's Read and Write keep the netpoller's
// readiness protocol (the poller is armed before the call that may return
// EAGAIN, and the goroutine parks only after it) and the connection's
// deadlines.
//
// The frame engine uses Reader and Write on the connections it owns;
// Wrap gives the same to a connection handed to crypto/tls, which reads
// and writes through its net.Conn.
package rawsock
