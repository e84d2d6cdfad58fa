package engine

import (
	"container/heap"
	"sync"
	"time"
)

// deadlineQueue fires the deadlines of a Server's calls from one runtime
// timer.
//
// Why not a time.AfterFunc per call: arming a runtime timer that becomes
// the earliest of its P wakes another thread to wait in the netpoller for
// it (the runtime's wakeNetPoller and wakep), and at moderate rates, where
// a call is often the only one in flight, every call's timer was the
// earliest: a futex wake and a spinning thread per call, about a fifth of
// meshd's system calls at 500 calls/s (perf record, meshbench -syscalls).
// A client's calls mostly carry the same timeout, so their deadlines
// arrive in order: the queue's timer stays armed for the earliest and is
// moved only for a deadline earlier than that. An ended call leaves the
// queue at once, but the timer is not moved for it: when it fires early it
// re-arms for the earliest deadline left, so an idle server's timer runs
// down without rearming.
type deadlineQueue struct {
	mu    sync.Mutex
	h     deadlineHeap
	t     *time.Timer
	armed time.Time // when t fires; zero: t is stopped or has fired
}

// add queues cl's deadline cl.deadline. cl must not be queued.
func (q *deadlineQueue) add(cl *call) {
	q.mu.Lock()
	heap.Push(&q.h, cl)
	if q.armed.IsZero() || cl.deadline.Before(q.armed) {
		q.armLocked(cl.deadline)
	}
	q.mu.Unlock()
}

// remove takes cl out of the queue, if it is there.
func (q *deadlineQueue) remove(cl *call) {
	q.mu.Lock()
	if cl.dlIndex >= 0 {
		heap.Remove(&q.h, cl.dlIndex)
	}
	q.mu.Unlock()
}

// stop stops the timer; the queue's calls have ended.
func (q *deadlineQueue) stop() {
	q.mu.Lock()
	if q.t != nil {
		q.t.Stop()
	}
	q.armed = time.Time{}
	q.mu.Unlock()
}

func (q *deadlineQueue) armLocked(when time.Time) {
	q.armed = when
	d := time.Until(when)
	if q.t == nil {
		q.t = time.AfterFunc(d, q.fire)
		return
	}
	q.t.Reset(d)
}

// fire runs on the timer's goroutine: it takes the calls whose deadline
// passed out of the queue, re-arms for the earliest left and ends those
// calls outside the queue's lock (a call's end takes the call's lock,
// which is held while removing it).
func (q *deadlineQueue) fire() {
	var due []*call
	q.mu.Lock()
	q.armed = time.Time{}
	now := time.Now()
	for len(q.h) > 0 && !q.h[0].deadline.After(now) {
		due = append(due, heap.Pop(&q.h).(*call))
	}
	if len(q.h) > 0 {
		q.armLocked(q.h[0].deadline)
	}
	q.mu.Unlock()
	for _, cl := range due {
		cl.onDeadline()
	}
}

// deadlineHeap is a min-heap of calls by deadline; each call knows its
// index (dlIndex, -1 when not queued) so an ended call leaves in O(log n).
// Guarded by deadlineQueue.mu.
type deadlineHeap []*call

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].dlIndex, h[j].dlIndex = i, j
}

func (h *deadlineHeap) Push(x any) {
	cl := x.(*call)
	cl.dlIndex = len(*h)
	*h = append(*h, cl)
}

func (h *deadlineHeap) Pop() any {
	old := *h
	n := len(old) - 1
	cl := old[n]
	old[n] = nil
	cl.dlIndex = -1
	*h = old[:n]
	return cl
}
