package workers

import (
	"testing"
	"time"
)

func TestParseIdle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		line    string
		want    time.Duration
		wantErr bool
	}{
		{"cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0\n", (46828483 + 16683) * clockTick, false},
		{"cpu 1 2 3 4 5", 9 * clockTick, false},
		{"cpu0 1 2 3 4 5 6", 0, true},
		{"cpu 1 2 3", 0, true},
		{"cpu 1 2 3 x 5", 0, true},
		{"", 0, true},
	}
	for _, tc := range tests {
		got, err := parseIdle(tc.line)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseIdle(%q) = %v, %v; want %v, error %v", tc.line, got, err, tc.want, tc.wantErr)
		}
	}
	if _, err := machineIdle("/proc/stat"); err != nil {
		t.Errorf("this machine's /proc/stat: %v", err)
	}
}
