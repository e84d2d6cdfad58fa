package testkit

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	if !Poll(5*time.Second, 0, func() bool { return n.Add(1) == 5 }) {
		t.Fatal("Poll gave up on a condition that held at its fifth look")
	}
	start := time.Now()
	if Poll(50*time.Millisecond, 0, func() bool { return false }) {
		t.Fatal("Poll reported a condition that never held")
	}
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Errorf("Poll gave up after %v, before its 50ms timeout", el)
	}
	looks := 0
	Poll(95*time.Millisecond, 20*time.Millisecond, func() bool { looks++; return false })
	if looks > 6 {
		t.Errorf("%d looks in 95ms at a 20ms interval", looks)
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(30 * time.Millisecond)
	if took := WaitFor(t, 5*time.Second, "the clock", func() bool { return time.Now().After(at) }); took < 30*time.Millisecond {
		t.Errorf("WaitFor returned after %v, before the condition held", took)
	}
}
