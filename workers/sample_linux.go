package workers

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of /proc/stat's counters (USER_HZ, 100 on every
// Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// ReadSample reads this process's CPU time (getrusage) and the machine's
// idle time (/proc/stat: idle plus iowait, over all CPUs).
func ReadSample() (Sample, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return Sample{}, fmt.Errorf("workers: getrusage: %w", err)
	}
	s := Sample{
		At:      time.Now(),
		Process: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
	}
	if idle, err := machineIdle("/proc/stat"); err == nil {
		s.Idle, s.HasIdle = idle, true
	}
	return s, nil
}

// machineIdle parses the first line of a /proc/stat file:
// "cpu  user nice system idle iowait irq softirq ...".
func machineIdle(path string) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return 0, err
	}
	return parseIdle(line)
}

func parseIdle(line string) (time.Duration, error) {
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, errors.New("workers: /proc/stat does not start with the cpu line")
	}
	var ticks uint64
	for _, v := range f[4:6] { // idle, iowait
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("workers: /proc/stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}
