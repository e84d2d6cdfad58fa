package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The -syscalls instrument: while a -rates phase runs, `perf stat` counts
// the proxy processes' system calls and context switches from the kernel's
// tracepoints, which cost the proxy next to nothing (unlike strace, whose
// ptrace stop per syscall changes the batching it is meant to observe).
// Divided by the calls that succeeded, they are the per-call budget the
// README quotes: at moderate rates a proxy's CPU per call is mostly its
// syscalls and wake-ups, not its own logic.

// sysCounter is one line of the per-call budget: the perf events summed
// into it, with an optional tracepoint filter per event.
type sysCounter struct {
	key    string // result key: rateKey(key, rate)
	head   string // column heading
	events []perfEvent
}

type perfEvent struct {
	name   string
	filter string
}

// sysCounters covers Go's and nginx's system calls for the same work:
// Go reads and writes with read/write, nginx with recvfrom/readv and
// writev/sendmsg; Go waits in epoll_pwait, nginx in epoll_wait.
var sysCounters = []sysCounter{
	{"sys_per_call", "syscalls", []perfEvent{{name: "raw_syscalls:sys_enter"}}},
	{"reads_per_call", "reads", []perfEvent{{name: "syscalls:sys_enter_read"}, {name: "syscalls:sys_enter_readv"}, {name: "syscalls:sys_enter_recvfrom"}}},
	{"eagain_per_call", "EAGAIN", []perfEvent{{"syscalls:sys_exit_read", "ret == -11"}, {"syscalls:sys_exit_readv", "ret == -11"}, {"syscalls:sys_exit_recvfrom", "ret == -11"}}},
	{"writes_per_call", "writes", []perfEvent{{name: "syscalls:sys_enter_write"}, {name: "syscalls:sys_enter_writev"}, {name: "syscalls:sys_enter_sendto"}, {name: "syscalls:sys_enter_sendmsg"}}},
	{"polls_per_call", "polls", []perfEvent{{name: "syscalls:sys_enter_epoll_pwait"}, {name: "syscalls:sys_enter_epoll_wait"}, {name: "syscalls:sys_enter_epoll_pwait2"}}},
	{"futex_per_call", "futex", []perfEvent{{name: "syscalls:sys_enter_futex"}}},
	{"sleeps_per_call", "nanosleep", []perfEvent{{name: "syscalls:sys_enter_nanosleep"}, {name: "syscalls:sys_enter_clock_nanosleep"}}},
	{"cswitch_per_call", "ctx-switches", []perfEvent{{name: "context-switches"}}},
}

// perfStat is a running `perf stat` attached to a target's processes.
type perfStat struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
	// index maps perf's output order to sysCounters: perf prints one
	// line per -e, in order.
	index []int
}

// checkPerf reports whether `perf stat` can count the tracepoints here.
func checkPerf(ctx context.Context) error {
	if _, err := exec.LookPath("perf"); err != nil {
		return fmt.Errorf("meshbench: -syscalls needs perf (apt-get install -y linux-perf): %w", err)
	}
	out, err := exec.CommandContext(ctx, "perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "raw_syscalls:sys_enter") || strings.Contains(string(out), "<not supported>") {
		return fmt.Errorf("meshbench: -syscalls: perf cannot count syscall tracepoints here (root, tracefs and perf_event_paranoid): %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startPerfStat attaches `perf stat` to pids until stop.
func startPerfStat(pids []int) (*perfStat, error) {
	if len(pids) == 0 {
		return nil, errors.New("meshbench: -syscalls: the target has no process of its own")
	}
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	args := []string{"stat", "-x,", "-p", strings.Join(ps, ",")}
	p := &perfStat{done: make(chan error, 1)}
	for i, c := range sysCounters {
		for _, e := range c.events {
			args = append(args, "-e", e.name)
			if e.filter != "" {
				args = append(args, "--filter", e.filter)
			}
			p.index = append(p.index, i)
		}
	}
	p.cmd = exec.Command("perf", args...)
	p.cmd.Stderr = &p.out // perf stat prints its counts on stderr
	p.cmd.Stdout = io.Discard
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("meshbench: perf stat: %w", err)
	}
	go func() { p.done <- p.cmd.Wait() }() // ends when perf exits (stop)
	return p, nil
}

// stop ends the count and returns each counter's total, by sysCounters
// index. perf prints its counts when interrupted.
func (p *perfStat) stop() ([]float64, error) {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return nil, errors.New("meshbench: perf stat did not stop within 10s")
	}
	return parsePerfCSV(p.out.String(), p.index, len(sysCounters))
}

// parsePerfCSV sums perf stat -x, lines into n counters: line i (of the
// lines that are counts) belongs to counter index[i].
func parsePerfCSV(out string, index []int, n int) ([]float64, error) {
	sums := make([]float64, n)
	i := 0
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || !strings.Contains(f[2], ":") && f[2] != "context-switches" {
			continue // a blank line or a message
		}
		if i >= len(index) {
			return nil, fmt.Errorf("meshbench: perf stat printed more counts than asked for: %q", out)
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil { // "<not counted>" stays 0
			sums[index[i]] += v
		}
		i++
	}
	if i != len(index) {
		return nil, fmt.Errorf("meshbench: perf stat printed %d counts, want %d: %q", i, len(index), out)
	}
	return sums, nil
}
