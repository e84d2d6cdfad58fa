package config_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/config"
)

func TestFaultKeys(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(resDoc(`    fault:
      delay: {fixed: 100ms, percent: 5}
      abort: {code: UNAVAILABLE, percent: 0.5}
      header: x-fault-drill`, "", ""), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Routes[0].Fault
	if f.Delay.Fixed.D() != 100*time.Millisecond || f.Delay.Percent != 5 || f.Abort.Code.C() != codes.Unavailable ||
		f.Abort.Percent != 0.5 || f.Header != "x-fault-drill" {
		t.Errorf("fault %+v %+v %+v", *f, *f.Delay, *f.Abort)
	}
	if cfg, err = config.Parse(resDoc("", "", ""), "test.yaml"); err != nil || cfg.Routes[0].Fault != nil {
		t.Fatalf("no fault by default: %v %v", cfg.Routes[0].Fault, err)
	}
}

func TestMirrorKeys(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(resDoc(`    mirror: {cluster: c, percent: 10}`, "", ""), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if m := cfg.Routes[0].Mirror; m.Cluster != "c" || m.Percent != 10 {
		t.Errorf("mirror %+v", *m)
	}
	for _, tc := range []struct{ name, route, field string }{
		{"no cluster", "    mirror: {percent: 10}", "routes[0].mirror.cluster"},
		{"unknown cluster", "    mirror: {cluster: ghost, percent: 10}", "routes[0].mirror.cluster"},
		{"percent over 100", "    mirror: {cluster: c, percent: 100.5}", "routes[0].mirror.percent"},
		{"unknown key", "    mirror: {cluster: c, percent: 1, sample: 2}", ""},
	} {
		_, err := config.Parse(resDoc(tc.route, "", ""), "test.yaml")
		var es config.Errors
		if !errors.As(err, &es) {
			t.Fatalf("%s: err = %v, want config.Errors", tc.name, err)
		}
		found := false
		for _, e := range es {
			found = found || ((tc.field == "" || e.Field == tc.field) && e.Line > 0)
		}
		if !found {
			t.Errorf("%s: no error on %q with a line among:\n%v", tc.name, tc.field, err)
		}
	}
}

func TestFaultInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, route, field string }{
		{"empty", "    fault: {header: x-a}", "routes[0].fault"},
		{"delay without fixed", "    fault: {delay: {percent: 5}}", "routes[0].fault.delay.fixed"},
		{"delay negative", "    fault: {delay: {fixed: -1s, percent: 5}}", "routes[0].fault.delay.fixed"},
		{"delay percent over 100", "    fault: {delay: {fixed: 1s, percent: 101}}", "routes[0].fault.delay.percent"},
		{"abort percent negative", "    fault: {abort: {code: UNAVAILABLE, percent: -1}}", "routes[0].fault.abort.percent"},
		{"abort without code", "    fault: {abort: {percent: 1}}", "routes[0].fault.abort.code"},
		{"abort OK", "    fault: {abort: {code: OK, percent: 1}}", "routes[0].fault.abort.code"},
		{"abort unknown code", "    fault: {abort: {code: BROKEN, percent: 1}}", ""},
		{"header uppercase", "    fault: {abort: {code: UNAVAILABLE, percent: 1}, header: X-Drill}", "routes[0].fault.header"},
		{"unknown key", "    fault: {abort: {code: UNAVAILABLE, percent: 1}, chance: 3}", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse(resDoc(tc.route, "", ""), "test.yaml")
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("err = %v, want config.Errors", err)
			}
			for _, e := range es {
				if (tc.field == "" || e.Field == tc.field) && e.Line > 0 {
					return
				}
			}
			t.Fatalf("no error on %q with a line among:\n%v", tc.field, err)
		})
	}
}

func TestHedgeKeys(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse(resDoc(`    hedge: {delay: 50ms, max_attempts: 2}`, "", ""), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if h := cfg.Routes[0].Hedge; h.Delay.D() != 50*time.Millisecond || h.MaxAttempts != 2 {
		t.Errorf("hedge %+v", *h)
	}
	if cfg.Routes[0].Retry != nil {
		t.Errorf("hedge alone filled in retry %+v; the implicit retry is the policy's, not the config's", *cfg.Routes[0].Retry)
	}
	if _, err := config.Parse(resDoc("    retry: {attempts: 3}\n    hedge: {delay: 20ms, max_attempts: 3}", "", ""), "test.yaml"); err != nil {
		t.Errorf("hedge with retry: %v", err)
	}
	for _, tc := range []struct{ name, route, field string }{
		{"no delay", "    hedge: {max_attempts: 2}", "routes[0].hedge.delay"},
		{"negative delay", "    hedge: {delay: -1ms, max_attempts: 2}", "routes[0].hedge.delay"},
		{"one attempt", "    hedge: {delay: 10ms, max_attempts: 1}", "routes[0].hedge.max_attempts"},
		{"too many attempts", "    hedge: {delay: 10ms, max_attempts: 6}", "routes[0].hedge.max_attempts"},
		{"more than retry.attempts", "    retry: {attempts: 2}\n    hedge: {delay: 10ms, max_attempts: 3}", "routes[0].hedge.max_attempts"},
		{"per_try_timeout", "    retry: {attempts: 3, per_try_timeout: 1s}\n    hedge: {delay: 10ms, max_attempts: 2}", "routes[0].retry.per_try_timeout"},
		{"unknown key", "    hedge: {delay: 10ms, max_attempts: 2, on: [UNAVAILABLE]}", ""},
	} {
		_, err := config.Parse(resDoc(tc.route, "", ""), "test.yaml")
		var es config.Errors
		if !errors.As(err, &es) {
			t.Fatalf("%s: err = %v, want config.Errors", tc.name, err)
		}
		found := false
		for _, e := range es {
			found = found || ((tc.field == "" || e.Field == tc.field) && e.Line > 0)
		}
		if !found {
			t.Errorf("%s: no error on %q with a line among:\n%v", tc.name, tc.field, err)
		}
	}
}
