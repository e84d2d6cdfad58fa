package testkit

import (
	"testing"
	"time"
)

// maxPollInterval bounds the pause between two looks at a condition when
// Poll backs off: a condition that holds soon is seen soon, and one that
// takes seconds (a gRPC call or a /metrics scrape per look) does not keep a
// shared 2-core machine busy.
const maxPollInterval = 10 * time.Millisecond

// WaitFor calls cond until it returns true and returns how long that took.
// If timeout passes first, it fails the test with "timed out after
// <timeout> waiting for <what>". It looks at cond after 1ms, then backing
// off to every 10ms.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	if !Poll(timeout, 0, cond) {
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
	return time.Since(start)
}

// Poll calls cond every interval until it returns true (Poll returns true)
// or timeout has passed (false); interval 0 backs off from 1ms to 10ms. It
// is WaitFor for a caller that reports a timeout with more than a message,
// that must not stop the test, or whose cond is costly enough to want a
// slower pace.
func Poll(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	backoff := interval == 0
	if backoff {
		interval = time.Millisecond
	}
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval) // the polling interval, not a wait for state
		if backoff {
			interval = min(2*interval, maxPollInterval)
		}
	}
	return true
}
