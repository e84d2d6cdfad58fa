package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// userHZ is the unit of utime and stime in /proc/PID/stat. Linux fixes
// USER_HZ at 100 in its user-space ABI whatever the kernel's HZ, and reading
// sysconf(_SC_CLK_TCK) would need cgo.
const userHZ = 100

// procStat is the part of /proc/PID/stat the harness needs.
type procStat struct {
	ppid  int
	ticks int64 // utime + stime, in 1/userHZ seconds
}

// readStat parses /proc/PID/stat. The command name (field 2) may contain
// spaces and parentheses, so fields are counted from the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, fmt.Errorf("meshbench: %w", err)
	}
	return parseStat(b)
}

func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return procStat{}, errors.New("meshbench: malformed /proc stat")
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, errors.New("meshbench: short /proc stat")
	}
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseInt(f[11], 10, 64)
	st, err3 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procStat{}, fmt.Errorf("meshbench: /proc stat: %w", err)
	}
	return procStat{ppid: ppid, ticks: ut + st}, nil
}

// cpuSeconds is the CPU time (user + system) pids have used so far.
func cpuSeconds(pids []int) (float64, error) {
	var t int64
	for _, p := range pids {
		s, err := readStat(p)
		if err != nil {
			return 0, err
		}
		t += s.ticks
	}
	return float64(t) / userHZ, nil
}

// statusKiB reads one "Key:   N kB" line of /proc/PID/status.
func statusKiB(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("meshbench: %w", err)
	}
	return parseStatusKiB(b, key)
}

func parseStatusKiB(b []byte, key string) (int64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, key+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meshbench: %s: %w", key, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("meshbench: no %s in /proc status", key)
}

// rssMiB is the summed resident set size of pids.
func rssMiB(pids []int) (float64, error) {
	var kib int64
	for _, p := range pids {
		n, err := statusKiB(p, "VmRSS")
		if err != nil {
			return 0, err
		}
		kib += n
	}
	return float64(kib) / 1024, nil
}

// memMiB is the memory a target's processes hold: VmRSS for one process;
// for several (nginx's master and workers, which share pages after fork) the
// sum of their PSS, which counts each shared page once instead of once per
// process. Kernels without smaps_rollup (before 4.14) fall back to summed RSS.
func memMiB(pids []int) (float64, error) {
	if len(pids) <= 1 {
		return rssMiB(pids)
	}
	var kib int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(fmt.Sprintf("/proc/%d", p)); serr == nil {
				return rssMiB(pids)
			}
		}
		if err != nil {
			return 0, fmt.Errorf("meshbench: %w", err)
		}
		n, err := parseStatusKiB(b, "Pss")
		if err != nil {
			return 0, err
		}
		kib += n
	}
	return float64(kib) / 1024, nil
}

// resetPeakRSS resets VmHWM to the current RSS (clear_refs "5", Linux 4.0+),
// so a later VmHWM is the peak of one measurement, not of the process's life.
func resetPeakRSS(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("meshbench: reset peak RSS: %w", err)
	}
	return nil
}

// children lists the live processes whose parent is ppid (nginx's workers).
func children(ppid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, err := readStat(pid); err == nil && s.ppid == ppid {
			out = append(out, pid)
		}
	}
	return out
}

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
	v, err := memMiB(pids)
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

// loadAvg is the 1-minute load average, to show how busy the shared machine
// was during the run.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
