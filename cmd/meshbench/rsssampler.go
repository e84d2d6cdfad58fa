package main

import (
	"context"
	"sync"
	"time"

	"github.com/meshd/meshd/internal/testkit/proc"
)

// rssSampler records the largest memMiB of a fixed set of processes,
// sampled on a ticker, for processes whose VmHWM cannot stand for the whole
// set (nginx's master and workers).
type rssSampler struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	max    float64
}

func startRSSSampler(ctx context.Context, pids []int, every time.Duration) *rssSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &rssSampler{cancel: cancel}
	s.sample(pids)
	s.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.sample(pids)
			}
		}
	})
	return s
}

func (s *rssSampler) sample(pids []int) {
	v, err := proc.MemMiB(pids...)
	if err != nil {
		return // a process exiting mid-run shows up as a failed call instead
	}
	s.mu.Lock()
	s.max = max(s.max, v)
	s.mu.Unlock()
}

// stop takes a last sample, stops the sampler and returns the peak in MiB.
func (s *rssSampler) stop(pids []int) float64 {
	s.cancel()
	s.wg.Wait()
	s.sample(pids)
	return s.max
}
