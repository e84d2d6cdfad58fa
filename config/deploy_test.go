package config_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/config"
)

// deployBase is a valid config whose first listener the cases extend.
const deployBase = `
listeners:
  - name: main
    address: 127.0.0.1:15001
%s
routes: [{name: all, match: {prefix: /}, cluster: c}]
clusters:
  - {name: c, endpoints: [127.0.0.1:9001]}
`

func TestListenerLimitsParse(t *testing.T) {
	t.Parallel()
	d := func(s string) config.Duration { v, _ := time.ParseDuration(s); return config.Duration(v) }
	dp := func(s string) *config.Duration { v := d(s); return &v }
	no := false
	yes := true
	fp := config.FloodProtection{RapidResetMinStreams: 500, MaxConsecutiveEmptyFrames: 10, SettingsBurst: 100, SettingsPerSecond: 10,
		PingBurst: 100, PingsPerSecond: 1, WindowUpdatesPerDataFrame: 10, ExtraFramesPerStream: 100}
	fpSet := fp
	fpSet.RapidResetMinStreams, fpSet.PingsPerSecond = 200, 5
	for _, tc := range []struct {
		name   string
		yaml   string
		limits config.ListenerLimits
		odst   *config.OriginalDst
	}{
		{
			name: "defaults",
			limits: config.ListenerLimits{IdleTimeout: dp("1h"), Keepalive: config.Keepalive{Time: d("2h"), Timeout: d("20s"), MinTime: d("10s"), PermitWithoutStream: &yes},
				MaxHeaderListSize: 65536, HandshakeTimeout: d("10s"), FloodProtection: fp},
		},
		{
			name: "everything set",
			yaml: `    max_connections: 5000
    idle_timeout: 5m
    max_connection_age: 30m
    max_connection_age_grace: 1m
    keepalive: {time: 1m, timeout: 5s, min_time: 30s, permit_without_stream: false}
    max_header_list_size: 16384
    handshake_timeout: 3s
    flood_protection: {rapid_reset_min_streams: 200, pings_per_second: 5}`,
			limits: config.ListenerLimits{MaxConnections: 5000, IdleTimeout: dp("5m"), MaxConnectionAge: d("30m"), MaxConnectionAgeGrace: d("1m"),
				Keepalive: config.Keepalive{Time: d("1m"), Timeout: d("5s"), MinTime: d("30s"), PermitWithoutStream: &no}, MaxHeaderListSize: 16384, HandshakeTimeout: d("3s"), FloodProtection: fpSet},
		},
		{
			name: "idle timeout 0s disables",
			yaml: "    idle_timeout: 0s",
			limits: config.ListenerLimits{IdleTimeout: dp("0s"), Keepalive: config.Keepalive{Time: d("2h"), Timeout: d("20s"), MinTime: d("10s"), PermitWithoutStream: &yes},
				MaxHeaderListSize: 65536, HandshakeTimeout: d("10s"), FloodProtection: fp},
		},
		{
			name:   "original_dst defaults to outbound",
			yaml:   "    original_dst: {}",
			limits: config.DefaultListenerLimits(),
			odst:   &config.OriginalDst{Direction: "outbound", DetectTimeout: d("1s")},
		},
		{
			name:   "original_dst inbound",
			yaml:   "    original_dst: {direction: inbound, detect_timeout: 250ms}",
			limits: config.DefaultListenerLimits(),
			odst:   &config.OriginalDst{Direction: "inbound", DetectTimeout: d("250ms")},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Parse([]byte(strings.Replace(deployBase, "%s", tc.yaml, 1)), "l.yaml")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			l := cfg.Listeners[0]
			if !reflect.DeepEqual(l.ListenerLimits, tc.limits) {
				t.Errorf("limits:\n got %+v\nwant %+v", l.ListenerLimits, tc.limits)
			}
			if !reflect.DeepEqual(l.OriginalDst, tc.odst) {
				t.Errorf("original_dst = %+v, want %+v", l.OriginalDst, tc.odst)
			}
		})
	}
}

func TestListenerLimitsInvalid(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		extra      string // appended after the base (clusters, routes)
		want       []string
	}{
		{name: "negative max_connections", yaml: "    max_connections: -1", want: []string{"l.yaml:5: listeners[0].max_connections: must not be negative"}},
		{name: "grace without age", yaml: "    max_connection_age_grace: 5s", want: []string{"l.yaml:5: listeners[0].max_connection_age_grace: needs max_connection_age"}},
		{name: "keepalive timeout over time", yaml: "    keepalive: {time: 10s, timeout: 1m}", want: []string{"listeners[0].keepalive.timeout: longer than keepalive.time (1m0s > 10s)"}},
		{name: "bad direction", yaml: "    original_dst: {direction: sideways}", want: []string{`listeners[0].original_dst.direction: want outbound or inbound, got "sideways"`}},
		{name: "original_dst with tls", yaml: "    original_dst: {}\n    tls: {cert_file: a, key_file: b}", want: []string{"listeners[0].original_dst: cannot be combined with tls"}},
		{name: "unknown key", yaml: "    original_dst: {direction: inbound, port: 1}", want: []string{`unknown field "port"`}},
		{name: "negative duration", yaml: "    idle_timeout: -1s", want: []string{`listeners[0].idle_timeout: negative duration "-1s"`}},
		{name: "tiny header list", yaml: "    max_header_list_size: 100", want: []string{"l.yaml:5: listeners[0].max_header_list_size: must be at least 1024"}},
		{
			name:  "user cluster named original_dst",
			extra: "  - {name: original_dst, endpoints: [127.0.0.1:9002]}\n",
			want:  []string{`clusters[1].name: "original_dst" is the built-in cluster of original destinations`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse([]byte(strings.Replace(deployBase, "%s", tc.yaml, 1)+tc.extra), "l.yaml")
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("Parse() = %v, want config.Errors", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("errors lack %q:\n%v", w, err)
				}
			}
		})
	}
}

// A route may send calls to the built-in original_dst cluster and test the
// original destination with the ":original-dst" pseudo header.
func TestOriginalDstRoute(t *testing.T) {
	t.Parallel()
	_, err := config.Parse([]byte(`
listeners:
  - {name: out, address: 127.0.0.1:15001, original_dst: {direction: outbound}}
  - {name: in, address: 127.0.0.1:15006, original_dst: {direction: inbound}}
routes:
  - name: payments
    match: {prefix: /, headers: [{name: ":original-dst", regex: ".*:9443"}]}
    cluster: original_dst
  - {name: rest, match: {prefix: /}, cluster: c}
clusters: [{name: c, endpoints: [127.0.0.1:9001]}]
`), "r.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
}

// The routes meshd makes up for transparent calls own their names: a
// configured route of that name would lend them its policies.
func TestBuiltinRouteNamesReserved(t *testing.T) {
	t.Parallel()
	for _, name := range []string{config.RouteInbound, config.RouteOriginalDst} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse([]byte(`
listeners: [{name: main, address: 127.0.0.1:15001}]
routes:
  - {name: ok, match: {prefix: /a.}, cluster: c}
  - {name: `+name+`, match: {prefix: /}, cluster: c}
clusters: [{name: c, endpoints: [127.0.0.1:9001]}]
`), "r.yaml")
			want := `r.yaml:5: routes[1].name: "` + name + `" is the name of meshd's built-in route`
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Parse() = %v, want an error containing %q", err, want)
			}
		})
	}
}
