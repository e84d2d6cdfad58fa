//go:build !linux

package workers

import (
	"fmt"
	"syscall"
	"time"
)

// ReadSample reads this process's CPU time; the machine's idle time is not
// read here, so Auto adds a worker on saturation alone.
func ReadSample() (Sample, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return Sample{}, fmt.Errorf("workers: getrusage: %w", err)
	}
	return Sample{At: time.Now(), Process: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}, nil
}
