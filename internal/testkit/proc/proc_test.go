package proc

import (
	"os"
	"strings"
	"testing"
)

// TestParseStat covers command names with spaces and parentheses, which
// break naive field splitting.
func TestParseStat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		ppid     int
		ticks    int64
		wantErr  bool
	}{
		{"plain", "42 (meshd) S 7 42 42 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 9 0 1000 1 1", 7, 175, false},
		{"spaces and parens", "43 (nginx: (worker) x) S 42 42 42 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 1 1", 42, 7, false},
		{"truncated", "44 (x) S 1 2 3", 0, 0, true},
		{"no comm", "garbage", 0, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseStat([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err == nil && (got.PPID != tc.ppid || got.Ticks != tc.ticks) {
				t.Errorf("got %+v, want ppid %d ticks %d", got, tc.ppid, tc.ticks)
			}
		})
	}
}

// TestOwnProcess reads this process's real /proc entries.
func TestOwnProcess(t *testing.T) {
	t.Parallel()
	pid := os.Getpid()
	s, err := ReadStat(pid)
	if err != nil || s.PPID != os.Getppid() {
		t.Fatalf("ReadStat = %+v, %v; want ppid %d", s, err, os.Getppid())
	}
	rss, err := RSSMiB(pid)
	if err != nil || rss <= 0 {
		t.Fatalf("RSSMiB = %v, %v", rss, err)
	}
	hwm, err := StatusKiB(pid, "VmHWM")
	if err != nil || float64(hwm)/1024 < rss*0.99 {
		t.Fatalf("VmHWM = %d KiB, %v; below VmRSS %.1f MiB", hwm, err, rss)
	}
	if _, err := StatusKiB(pid, "NoSuchKey"); err == nil {
		t.Error("StatusKiB found a key that does not exist")
	}
	if _, err := CPU(pid); err != nil {
		t.Error(err)
	}
	if n, err := OpenFiles(); err != nil || n < 3 {
		t.Errorf("OpenFiles = %d, %v; want stdin, stdout and stderr at least", n, err)
	}
	if cmd, err := Cmdline(pid); err != nil || !strings.HasPrefix(cmd, os.Args[0]) {
		t.Errorf("Cmdline = %q, %v; want it to start with %q", cmd, err, os.Args[0])
	}
}
