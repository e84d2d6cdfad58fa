package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/authz"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/router"
)

// headerFlags collects repeated -H key=value flags.
type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ",") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

func cmdExplain(args []string, stdout io.Writer) error {
	fs := newFlags("route explain", stdout)
	file := fs.String("config", "", "config file")
	adminAddr := fs.String("admin", "", "admin address of a running meshd, for live endpoint health")
	authority := fs.String("authority", "", "the call's :authority (host[:port]), for routes with match.authority")
	listener := fs.String("listener", "", "the listener the call arrives on, for routes limited to listeners (default: any)")
	source := fs.String("source", "", "calling mesh service (as its certificate names it; \"-\" for an unauthenticated caller): say whether the intentions allow the call")
	var hdrs headerFlags
	fs.Var(&hdrs, "H", "request metadata key=value (repeatable)")
	// Flags may come before or after the method.
	var method string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			return errUsage
		}
		if fs.NArg() == 0 {
			break
		}
		if method != "" {
			return fmt.Errorf("meshd route explain: one method only: %w", errUsage)
		}
		method, rest = fs.Arg(0), fs.Args()[1:]
	}
	if *file == "" || method == "" {
		return fmt.Errorf("meshd route explain -config FILE /pkg.Service/Method [-H key=value] [-authority HOST] [-listener NAME] [-source SERVICE] [-admin ADDR]: %w", errUsage)
	}
	cfg, err := config.Load(*file)
	if err != nil {
		return err
	}
	md := metadata.MD{}
	for _, h := range hdrs {
		k, v, ok := strings.Cut(h, "=")
		if !ok {
			return fmt.Errorf("meshd route explain: -H %q: want key=value: %w", h, errUsage)
		}
		md.Append(strings.ToLower(k), v)
	}
	if *listener != "" && !slices.ContainsFunc(cfg.Listeners, func(l config.Listener) bool { return l.Name == *listener }) {
		return fmt.Errorf("meshd route explain: -listener %q: no such listener in %s", *listener, *file)
	}
	table, err := router.New(cfg.Routes, router.WithJWTProviders(cfg.JWTProviders))
	if err != nil {
		return err
	}
	if *source != "" {
		allowed, err := explainAuthz(stdout, cfg, *source, method, md)
		if err != nil {
			return err
		}
		if !allowed {
			return nil
		}
	}
	return explain(stdout, cfg, table, router.Call{Method: method, Authority: *authority, Listener: *listener, Header: md}, *adminAddr)
}

// explainAuthz says whether the mesh's intentions let source make the
// call, as the running meshd would decide it: from the config's own
// intentions (identity files) or from Consul's, fetched once.
func explainAuthz(w io.Writer, cfg *config.Config, source, method string, md metadata.MD) (bool, error) {
	m := cfg.Mesh
	if m == nil {
		fmt.Fprintln(w, "authorization: none (no mesh section: calls are not authorized by intentions)")
		return true, nil
	}
	var rules []authz.Rule
	from := "the config's mesh.intentions"
	if m.Identity == config.IdentityConsulConnect {
		client, err := discovery.NewConsulClient(cfg.Consul.Address, cfg.Consul.Token)
		if err != nil {
			return false, fmt.Errorf("meshd route explain: consul: %w", err)
		}
		got, _, err := client.Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{m.Service}}, nil)
		if err != nil {
			return false, fmt.Errorf("meshd route explain: consul intentions for %s: %w", m.Service, err)
		}
		rules = authz.FromConsul(got[m.Service])
		from = "consul's intentions"
	} else {
		rules = authz.FromConfig(m.Intentions)
	}
	t, err := authz.Compile(m.Service, rules, authz.ActionOf(m.DefaultAction))
	if err != nil {
		return false, fmt.Errorf("meshd route explain: intentions: %w", err)
	}
	caller := source
	if source == "-" {
		source, caller = "", "an unauthenticated caller"
	}
	d := t.Decide(source, method, md)
	why := map[string]string{
		authz.ReasonIntention:  "its L4 action",
		authz.ReasonPermission: fmt.Sprintf("permission %d", d.Permission),
		authz.ReasonDefault:    "mesh.default_action " + m.DefaultAction,
	}[d.Reason]
	if d.Reason == authz.ReasonDefault && d.Rule != authz.DefaultRule {
		why = "no permission matched, so mesh.default_action " + m.DefaultAction
	}
	verdict := "allowed"
	if !d.Allow {
		verdict = "denied"
	}
	fmt.Fprintf(w, "authorization: %s → %s %s by %s: %s (from %s)\n", caller, m.Service, verdict, d.Rule, why, from)
	if !d.Allow {
		fmt.Fprintln(w, "result: meshd answers PERMISSION_DENIED before routing")
	}
	return d.Allow, nil
}

func explain(w io.Writer, cfg *config.Config, table *router.Table, call router.Call, adminAddr string) error {
	method := call.Method
	fmt.Fprintf(w, "call %s", method)
	if call.Authority != "" {
		fmt.Fprintf(w, " to %s", call.Authority)
	}
	if call.Listener != "" {
		fmt.Fprintf(w, " on listener %s", call.Listener)
	}
	if md, _ := call.Header.(metadata.MD); len(md) > 0 {
		fmt.Fprintf(w, " with metadata %v", map[string][]string(md))
	}
	fmt.Fprintln(w)
	if !config.ValidMethod(method) {
		fmt.Fprintf(w, "  note: %q is not a full method name (/package.Service/Method)\n", method)
	}
	var chosen *router.Route
	for _, v := range table.ExplainCall(call) {
		mark := "  -"
		if v.Matched && chosen == nil {
			chosen = v.Route
			mark = "  ✔"
		} else if v.Matched {
			mark = "  ·"
			v.Reason = "would match, but an earlier route won"
		}
		fmt.Fprintf(w, "%s route %d %q: %s\n", mark, v.Route.Index, v.Route.Name, v.Reason)
	}
	if chosen == nil {
		fmt.Fprintln(w, "result: no route matches: meshd answers UNIMPLEMENTED")
		return nil
	}
	source := chosen.Source
	if source == "" {
		source = "file"
	}
	fmt.Fprintf(w, "result: route %q (source %s)\n", chosen.Name, source)
	if len(chosen.Listeners) > 0 {
		fmt.Fprintf(w, "  listeners: only %s\n", strings.Join(chosen.Listeners, ", "))
	} else {
		fmt.Fprintln(w, "  listeners: all")
	}
	if p := cfg.JWTProvider(chosen.JWT); p != nil {
		src := p.JWKSFile
		if src == "" {
			src = p.JWKSURL
		}
		fmt.Fprintf(w, "  jwt: provider %q (issuer %s, audiences %s, keys from %s): a call without a valid bearer token gets UNAUTHENTICATED\n",
			p.Name, p.Issuer, strings.Join(p.Audiences, ","), src)
		for _, c := range slices.Sorted(maps.Keys(p.ClaimsToHeaders)) {
			fmt.Fprintf(w, "  jwt: claim %s forwarded as %s\n", c, p.ClaimsToHeaders[c])
		}
	}
	for _, e := range chosen.DescribeEdits() {
		fmt.Fprintf(w, "  header: %s\n", e)
	}
	var total uint32
	for _, c := range chosen.Clusters {
		total += c.Weight
	}
	for _, c := range chosen.Clusters {
		cl := cfg.Cluster(c.Name)
		if cl == nil { // the built-in original_dst cluster
			fmt.Fprintf(w, "  cluster %q (%d%%): the call's original destination (original_dst listeners only)\n", c.Name, c.Weight*100/total)
			continue
		}
		src := "static"
		if cl.Consul != nil {
			src = "consul service " + cl.Consul.Service
		}
		if k := cl.Kubernetes; k != nil {
			src = fmt.Sprintf("kubernetes Service %s/%s port %s (EndpointSlices)", k.KubernetesNamespace(), k.Service, k.Port)
		}
		fmt.Fprintf(w, "  cluster %q (%d%%): lb %s, endpoints from %s\n", c.Name, c.Weight*100/total, cl.LB, src)
		if cl.Authority != "" {
			fmt.Fprintf(w, "  cluster %q: :authority sent upstream is %s\n", c.Name, cl.Authority)
		}
	}
	if chosen.Timeout > 0 {
		fmt.Fprintf(w, "  timeout: %s (the tighter of this and the client's deadline)\n", chosen.Timeout)
	} else {
		fmt.Fprintln(w, "  timeout: none at meshd (the client's deadline applies)")
	}
	if chosen.MaxGRPCTimeout > 0 {
		fmt.Fprintf(w, "  max_grpc_timeout: %s\n", chosen.MaxGRPCTimeout)
	}
	if r := chosen.Retry; r != nil {
		names := make([]string, len(r.RetryOn))
		for i, c := range r.RetryOn {
			names[i] = config.CodeName(c.C())
		}
		fmt.Fprintf(w, "  retry: %d attempts on %s, per try %s\n", r.Attempts, strings.Join(names, ","), r.PerTryTimeout.D())
		hold, why := engine.HeaderHoldLimit, "built-in limit"
		if d := r.PerTryTimeout.D(); d > 0 {
			hold, why = d, "per_try_timeout"
		}
		fmt.Fprintf(w, "  retry: response headers held until the first message or the status, at most %s (%s)\n", hold, why)
	} else if h := hedgeOf(cfg, chosen.Name); h != nil {
		fmt.Fprintf(w, "  retry: none configured; hedge implies %d attempts on UNAVAILABLE (hedged attempts included)\n", h.MaxAttempts)
	} else {
		fmt.Fprintln(w, "  retry: none (calls that never reached a backend are still retried transparently)")
	}
	for i := range cfg.Routes {
		if cfg.Routes[i].Name == chosen.Name {
			explainTraffic(w, &cfg.Routes[i])
		}
	}
	if adminAddr != "" {
		return liveEndpoints(w, adminAddr, chosen)
	}
	return nil
}

// hedgeOf is the hedge section of the route named name, nil if none.
func hedgeOf(cfg *config.Config, name string) *config.Hedge {
	for i := range cfg.Routes {
		if cfg.Routes[i].Name == name {
			return cfg.Routes[i].Hedge
		}
	}
	return nil
}

// explainTraffic prints the route's traffic policies: hedging, mirror,
// fault injection.
func explainTraffic(w io.Writer, r *config.Route) {
	if h := r.Hedge; h != nil {
		fatal := "UNAVAILABLE"
		if rt := r.Retry; rt != nil {
			names := make([]string, len(rt.RetryOn))
			for i, c := range rt.RetryOn {
				names[i] = config.CodeName(c.C())
			}
			fatal = strings.Join(names, ",")
		}
		fmt.Fprintf(w, "  hedge: another attempt on another endpoint after %s without response headers, at most %d in flight (the first included); first to commit wins, the others cancelled\n", h.Delay.D(), h.MaxAttempts)
		fmt.Fprintf(w, "  hedge: a status other than %s from any attempt ends the call (for idempotent methods only)\n", fatal)
	}
	if m := r.Mirror; m != nil {
		fmt.Fprintf(w, "  mirror: %v%% of calls copied to cluster %q (:authority with -shadow; responses discarded, never retried or waited for)\n", m.Percent, m.Cluster)
	}
	f := r.Fault
	if f == nil {
		return
	}
	who := "every call"
	if f.Header != "" {
		who = fmt.Sprintf("calls carrying metadata %q", f.Header)
	}
	if d := f.Delay; d != nil {
		fmt.Fprintf(w, "  fault: delay %s for %v%% of %s (before the first attempt; counts against the deadline)\n", d.Fixed.D(), d.Percent, who)
	}
	if a := f.Abort; a != nil {
		fmt.Fprintf(w, "  fault: abort with %s for %v%% of %s (\"meshd: fault injected by route %s\"; never reaches a backend)\n",
			config.CodeName(a.Code.C()), a.Percent, who, r.Name)
	}
}

// liveEndpoints prints the endpoints of the chosen clusters as the running
// meshd at adminAddr sees them.
func liveEndpoints(w io.Writer, adminAddr string, r *router.Route) error {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + adminAddr + "/clusters")
	if err != nil {
		return fmt.Errorf("meshd route explain: admin: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("meshd route explain: admin /clusters: %s", resp.Status)
	}
	var clusters map[string]struct {
		Status struct {
			Endpoints []struct {
				Address     string `json:"Address"`
				State       string `json:"State"`
				Source      string `json:"Source"`
				Reason      string `json:"Reason"`
				Outstanding int64  `json:"Outstanding"`
				Weight      uint32 `json:"Weight"`
				Ejections   int    `json:"Ejections"`
				Zone        string `json:"Zone"`
			} `json:"Endpoints"`
			LocalZone string `json:"LocalZone"`
			PickZone  string `json:"PickZone"`
		} `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&clusters); err != nil {
		return fmt.Errorf("meshd route explain: admin /clusters: %w", err)
	}
	for _, c := range r.Clusters {
		cl, ok := clusters[c.Name]
		if !ok {
			fmt.Fprintf(w, "  live %q: not loaded in the running meshd\n", c.Name)
			continue
		}
		fmt.Fprintf(w, "  live %q: %d endpoint(s)\n", c.Name, len(cl.Status.Endpoints))
		switch {
		case cl.Status.LocalZone == "":
		case cl.Status.PickZone != "":
			fmt.Fprintf(w, "    picks in zone %s (local, healthy enough)\n", cl.Status.PickZone)
		default:
			fmt.Fprintf(w, "    picks in every zone (local zone %s below its healthy share)\n", cl.Status.LocalZone)
		}
		for _, e := range cl.Status.Endpoints {
			zone := e.Zone
			if zone == "" {
				zone = "-"
			}
			fmt.Fprintf(w, "    %-22s zone %-12s %-9s weight %d, in flight %d, ejections %d, health from %s", e.Address, zone, e.State, e.Weight, e.Outstanding, e.Ejections, e.Source)
			if e.Reason != "" {
				fmt.Fprintf(w, ": %s", e.Reason)
			}
			fmt.Fprintln(w)
		}
	}
	return nil
}
