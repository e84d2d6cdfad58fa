package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// UserHZ is the unit of utime and stime in /proc/PID/stat. Linux fixes
// USER_HZ at 100 in its user-space ABI whatever the kernel's HZ, and reading
// sysconf(_SC_CLK_TCK) would need cgo.
const UserHZ = 100

// Stat is the part of /proc/PID/stat that tests and the harness need.
type Stat struct {
	PPID  int   // the parent's process id
	Ticks int64 // utime + stime, in 1/UserHZ seconds
}

// CPU is the CPU time (user + system) in s.
func (s Stat) CPU() time.Duration { return time.Duration(s.Ticks) * time.Second / UserHZ }

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, fmt.Errorf("proc: %w", err)
	}
	return ParseStat(b)
}

// ParseStat parses the text of /proc/PID/stat. The command name (field 2)
// may contain spaces and parentheses, so fields are counted from the last
// ')'.
func ParseStat(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return Stat{}, errors.New("proc: malformed stat")
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return Stat{}, errors.New("proc: short stat")
	}
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseInt(f[11], 10, 64)
	st, err3 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return Stat{}, fmt.Errorf("proc: stat: %w", err)
	}
	return Stat{PPID: ppid, Ticks: ut + st}, nil
}

// CPU is the CPU time (user + system) pids have used so far.
func CPU(pids ...int) (time.Duration, error) {
	var d time.Duration
	for _, p := range pids {
		s, err := ReadStat(p)
		if err != nil {
			return 0, err
		}
		d += s.CPU()
	}
	return d, nil
}

// StatusKiB reads one "Key:   N kB" line of /proc/PID/status (VmRSS,
// VmHWM, ...).
func StatusKiB(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("proc: %w", err)
	}
	return ParseStatusKiB(b, key)
}

// ParseStatusKiB finds one "Key:   N kB" line in the text of
// /proc/PID/status or /proc/PID/smaps_rollup.
func ParseStatusKiB(b []byte, key string) (int64, error) {
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
			return 0, fmt.Errorf("proc: %s: %w", key, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("proc: no %s in status", key)
}

// RSSMiB is the summed resident set size of pids.
func RSSMiB(pids ...int) (float64, error) {
	var kib int64
	for _, p := range pids {
		n, err := StatusKiB(p, "VmRSS")
		if err != nil {
			return 0, err
		}
		kib += n
	}
	return float64(kib) / 1024, nil
}

// MemMiB is the memory a group of processes holds: VmRSS for one process;
// for several (nginx's master and workers, which share pages after fork) the
// sum of their PSS, which counts each shared page once instead of once per
// process. Kernels without smaps_rollup (before 4.14) fall back to summed
// RSS.
func MemMiB(pids ...int) (float64, error) {
	if len(pids) <= 1 {
		return RSSMiB(pids...)
	}
	var kib int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(fmt.Sprintf("/proc/%d", p)); serr == nil {
				return RSSMiB(pids...)
			}
		}
		if err != nil {
			return 0, fmt.Errorf("proc: %w", err)
		}
		n, err := ParseStatusKiB(b, "Pss")
		if err != nil {
			return 0, err
		}
		kib += n
	}
	return float64(kib) / 1024, nil
}

// ResetPeakRSS resets VmHWM to the current RSS (clear_refs "5", Linux
// 4.0+), so that a later VmHWM is the peak of one measurement, not of the
// process's life.
func ResetPeakRSS(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("proc: reset peak RSS: %w", err)
	}
	return nil
}

// Children lists the live processes whose parent is ppid (nginx's
// workers).
func Children(ppid int) []int {
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
		if s, err := ReadStat(pid); err == nil && s.PPID == ppid {
			out = append(out, pid)
		}
	}
	return out
}

// Cmdline is the command line of pid, its arguments separated by NUL
// bytes as /proc/PID/cmdline holds them.
func Cmdline(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "", fmt.Errorf("proc: %w", err)
	}
	return string(b), nil
}

// OpenFiles is how many file descriptors this process has open.
func OpenFiles() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("proc: %w", err)
	}
	return len(ents), nil
}

// LoadAvg is the 1-, 5- and 15-minute load averages, to show how busy a
// shared machine was during a run; "?" if unknown.
func LoadAvg() string {
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
