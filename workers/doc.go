// Package workers decides how many threads run meshd's goroutines at once
// (the Go runtime's GOMAXPROCS): a fixed count, or, by default, as few as
// the load needs.
//
// Why adapt: a proxy's cost per call at the rates sidecars live at is
// mostly waking up, and with more than one P every wake-up can hand work
// between threads (a spinning thread looking for work, futex wake-ups,
// extra netpoller calls). With one P meshd used 0.8x nginx's CPU per call
// at 2,000 calls/s on two cores, against 1.0x with two (meshbench -rates
// -syscalls, one interleaved run). A single worker is what Linkerd's
// sidecars run by default for the same reason. But one worker caps an edge
// proxy at one core, so the controller adds a worker when the ones it has
// are saturated and the machine has an idle core to run another, and
// gives it back when the load fits in one fewer.
package workers
