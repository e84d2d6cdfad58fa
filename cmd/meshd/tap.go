package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/meshd/meshd/tap"
)

// cmdTap runs `meshd tap`: it streams GET /tap from a running meshd's
// admin port and prints each call as a table row until ctx ends (Ctrl-C),
// -limit rows were printed, or meshd stops.
func cmdTap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tap", stderr)
	adminAddr := fs.String("admin", "", "admin address of a running meshd (host:port)")
	route := fs.String("route", "", "only calls of this route")
	method := fs.String("method", "", "only calls of this full method (/pkg.Service/Method) or service (pkg.Service)")
	code := fs.String("code", "", "only calls that ended with this gRPC code (UNAVAILABLE, or a number)")
	limit := fs.Int("limit", 0, "stop after this many calls (0: until interrupted)")
	rate := fs.Int("rate", 0, fmt.Sprintf("at most this many calls per second (0: meshd's default, %d; at most %d)", tap.DefaultRate, tap.MaxRate))
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *adminAddr == "" || fs.NArg() > 0 {
		return fmt.Errorf("meshd tap -admin ADDR [-route R] [-method M] [-code C] [-limit N] [-rate N]: %w", errUsage)
	}
	if *code != "" {
		if _, err := tap.ParseCode(*code); err != nil {
			return fmt.Errorf("meshd tap: %w: %w", err, errUsage)
		}
	}
	q := url.Values{}
	for k, v := range map[string]string{"route": *route, "method": *method, "code": *code} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *limit > 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	if *rate > 0 {
		q.Set("rate", strconv.Itoa(*rate))
	}
	u := "http://" + *adminAddr + "/tap"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("meshd tap: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("meshd tap: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("meshd tap: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	err = printTap(resp.Body, stdout)
	if ctx.Err() != nil {
		return nil // interrupted: the normal way to stop
	}
	if err != nil {
		return fmt.Errorf("meshd tap: %w", err)
	}
	return nil
}

// tapRow is the table's layout: fixed widths, since rows are printed as
// they arrive rather than aligned afterwards.
const tapRow = "%-12s  %-12s  %-44s  %-19s  %9s  %-21s  %3s  %13s  %-8s  %s"

// printTap prints the stream of tap lines in r as a table on w.
func printTap(r io.Reader, w io.Writer) error {
	row(w, "TIME", "ROUTE", "METHOD", "STATUS", "LATENCY", "ENDPOINT", "TRY", "BYTES IN/OUT", "PROTO", "PEER")
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			tap.Event
			Dropped *uint64 `json:"dropped"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return fmt.Errorf("bad line %q: %w", sc.Text(), err)
		}
		if line.Dropped != nil {
			fmt.Fprintf(w, "# %d calls dropped so far: this terminal reads slower than calls end (narrow with -route/-method/-code)\n", *line.Dropped)
			continue
		}
		e := line.Event
		row(w, e.Time.Local().Format("15:04:05.000"), clip(e.Route, 12), clip(e.Method, 44), e.Status,
			shortDuration(e.Latency), clip(e.Endpoint, 21), strconv.Itoa(e.Attempts), fmt.Sprintf("%d/%d", e.BytesIn, e.BytesOut), e.Protocol, e.Peer)
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func row(w io.Writer, cols ...any) {
	fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf(tapRow, cols...), " "))
}

// clip shortens s to n characters, keeping its end (a method's name, an
// address's port), which tells rows apart.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n+1:]
}

// shortDuration rounds to three significant figures or so: 1.23ms, 45.6µs.
func shortDuration(d tap.Duration) string {
	v := int64(d)
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2fs", float64(v)/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.2fms", float64(v)/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fµs", float64(v)/1e3)
	}
	return fmt.Sprintf("%dns", v)
}
