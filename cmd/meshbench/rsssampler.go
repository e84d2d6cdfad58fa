package main

import (
	"context"
	"sync"
	"time"
)

// rssSampler records the largest value of a target's memory function (its
// memMiB over a fixed set of processes), sampled on a ticker, for processes
// whose VmHWM cannot stand for the whole set (nginx's master and workers).
type rssSampler struct {
	mem    func() (float64, error)
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	max    float64
}

func startRSSSampler(ctx context.Context, mem func() (float64, error), every time.Duration) *rssSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &rssSampler{mem: mem, cancel: cancel}
	s.sample()
	s.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.sample()
			}
		}
	})
	return s
}

func (s *rssSampler) sample() {
	v, err := s.mem()
	if err != nil {
		return // a process exiting mid-run shows up as a failed call instead
	}
	s.mu.Lock()
	s.max = max(s.max, v)
	s.mu.Unlock()
}

// stop takes a last sample, stops the sampler and returns the peak in MiB.
func (s *rssSampler) stop() float64 {
	s.cancel()
	s.wg.Wait()
	s.sample()
	return s.max
}
