package k8s

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/kuberoutes"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The UID meshd runs as: the Dockerfile's USER, the manifests' runAsUser
// and the iptables rules' -proxy-uid must all agree, or the sidecar's own
// upstream connections loop back into it.
const proxyUID = 1337

// adminPort is meshd's admin port: HTTP /live and grpc.health.v1, probed by
// the kubelet.
const adminPort = 15000

// manifests is every object under deploy/k8s, decoded strictly.
type manifests struct {
	deployments []*appsv1.Deployment
	daemonSets  []*appsv1.DaemonSet
	services    []*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	pdbs        []*policyv1.PodDisruptionBudget
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	roles       []*rbacv1.ClusterRole
	nsRoles     []*rbacv1.Role
	bindings    []*rbacv1.ClusterRoleBinding
	nsBindings  []*rbacv1.RoleBinding
	accounts    []*corev1.ServiceAccount
	grpcRoutes  []*gwv1.GRPCRoute
}

// load decodes every YAML document under dir into its k8s.io/api type with
// sigs.k8s.io/yaml's strict mode: an unknown or misspelt field fails, as
// `kubectl apply --validate=strict` would.
func load(t *testing.T, dir string) *manifests {
	t.Helper()
	m, n, err := loadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("no manifests under %s", dir)
	}
	t.Logf("%d objects decoded strictly", n)
	return m
}

func loadDir(dir string) (*manifests, int, error) {
	m := &manifests{configMaps: map[string]*corev1.ConfigMap{}}
	n := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, doc := range splitDocs(data) {
			var tm struct{ Kind, APIVersion string }
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				return fmt.Errorf("%s doc %d: %w", path, i, err)
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				d := &appsv1.Deployment{}
				m.deployments, obj = append(m.deployments, d), d
			case "apps/v1 DaemonSet":
				d := &appsv1.DaemonSet{}
				m.daemonSets, obj = append(m.daemonSets, d), d
			case "v1 Service":
				s := &corev1.Service{}
				m.services, obj = append(m.services, s), s
			case "v1 ConfigMap":
				obj = &corev1.ConfigMap{}
			case "policy/v1 PodDisruptionBudget":
				p := &policyv1.PodDisruptionBudget{}
				m.pdbs, obj = append(m.pdbs, p), p
			case "autoscaling/v2 HorizontalPodAutoscaler":
				h := &autoscalingv2.HorizontalPodAutoscaler{}
				m.hpas, obj = append(m.hpas, h), h
			case "v1 ServiceAccount":
				a := &corev1.ServiceAccount{}
				m.accounts, obj = append(m.accounts, a), a
			case "rbac.authorization.k8s.io/v1 ClusterRole":
				r := &rbacv1.ClusterRole{}
				m.roles, obj = append(m.roles, r), r
			case "rbac.authorization.k8s.io/v1 Role":
				r := &rbacv1.Role{}
				m.nsRoles, obj = append(m.nsRoles, r), r
			case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
				b := &rbacv1.ClusterRoleBinding{}
				m.bindings, obj = append(m.bindings, b), b
			case "rbac.authorization.k8s.io/v1 RoleBinding":
				b := &rbacv1.RoleBinding{}
				m.nsBindings, obj = append(m.nsBindings, b), b
			case "gateway.networking.k8s.io/v1 GRPCRoute":
				r := &gwv1.GRPCRoute{}
				m.grpcRoutes, obj = append(m.grpcRoutes, r), r
			default:
				return fmt.Errorf("%s doc %d: no check for %s %s: add one to this test", path, i, tm.APIVersion, tm.Kind)
			}
			if err := decodeStrict(doc, obj); err != nil {
				return fmt.Errorf("%s doc %d (%s): %w", path, i, tm.Kind, err)
			}
			if cm, ok := obj.(*corev1.ConfigMap); ok {
				m.configMaps[cm.Name] = cm
			}
			n++
		}
		return nil
	})
	return m, n, err
}

// The strictness the manifests rely on: a misspelt field is an error, not
// silently dropped (a dropped securityContext key would pass every check).
func TestStrictDecoding(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, doc, want string }{
		{"misspelt field", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selectr: {a: b}}\n", `unknown field "spec.selectr"`},
		{"misspelt security key", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      containers: [{name: c, securityContext: {runAsNonroot: true}}]\n", `unknown field "spec.template.spec.containers[0].securityContext.runAsNonroot"`},
		{"unchecked kind", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n", "no check for v1 Secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "x.yaml"), []byte("# comment\n---\n"+tc.doc), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := loadDir(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("loadDir = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// decodeStrict decodes one YAML document as the API server does in strict
// mode: sigs.k8s.io/yaml turns it into JSON (refusing duplicate keys), and
// sigs.k8s.io/json decodes that case-sensitively, refusing unknown and
// duplicate fields. encoding/json (what yaml.UnmarshalStrict ends in)
// matches field names case-insensitively, so "runAsNonroot" would slip
// through as runAsNonRoot there; kubectl would reject it.
func decodeStrict(doc []byte, obj any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// splitDocs splits a multi-document YAML file on "---" lines.
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if len(bytes.TrimSpace(stripComments(cur.Bytes()))) > 0 {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if strings.TrimRight(sc.Text(), " ") == "---" {
			flush()
			continue
		}
		cur.Write(sc.Bytes())
		cur.WriteByte('\n')
	}
	flush()
	return docs
}

func stripComments(b []byte) []byte {
	var out bytes.Buffer
	for _, l := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out.Write(l)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

func TestManifests(t *testing.T) {
	t.Parallel()
	m := load(t, ".")
	if len(m.deployments) < 2 {
		t.Fatalf("want the sidecar and the edge Deployments, found %d", len(m.deployments))
	}
	var sawSidecar, sawEdge bool
	for _, d := range m.deployments {
		t.Run("Deployment/"+d.Name, func(t *testing.T) {
			checkDeployment(t, m, d)
		})
		if containerNamed(d.Spec.Template.Spec.InitContainers, "meshd") != nil {
			sawSidecar = true
		}
		if containerNamed(d.Spec.Template.Spec.Containers, "meshd") != nil {
			sawEdge = true
		}
	}
	if !sawSidecar || !sawEdge {
		t.Errorf("want a sidecar Deployment (meshd as an init container) and an edge one; sidecar %v, edge %v", sawSidecar, sawEdge)
	}
	for _, d := range m.daemonSets {
		t.Run("DaemonSet/"+d.Name, func(t *testing.T) {
			if d.Spec.Selector == nil || len(d.Spec.Selector.MatchLabels) == 0 || !subset(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("selector %v does not match the pod template's labels %v", d.Spec.Selector, d.Spec.Template.Labels)
			}
			checkContainers(t, d.Spec.Template.Spec)
		})
	}
	for _, s := range m.services {
		if d := m.selecting(s.Spec.Selector); d == nil {
			t.Errorf("Service %s selects %v: no Deployment's pods carry those labels", s.Name, s.Spec.Selector)
		} else {
			for _, p := range s.Spec.Ports {
				if p.TargetPort.StrVal != "" && !hasPort(d, p.TargetPort.StrVal) {
					t.Errorf("Service %s port %s targets %q, not a container port of %s", s.Name, p.Name, p.TargetPort.StrVal, d.Name)
				}
			}
		}
	}
	for _, p := range m.pdbs {
		if p.Spec.Selector == nil || m.selecting(p.Spec.Selector.MatchLabels) == nil {
			t.Errorf("PodDisruptionBudget %s selects no Deployment's pods", p.Name)
		}
		if p.Spec.MinAvailable == nil && p.Spec.MaxUnavailable == nil {
			t.Errorf("PodDisruptionBudget %s sets neither minAvailable nor maxUnavailable", p.Name)
		}
	}
	for _, h := range m.hpas {
		ref := h.Spec.ScaleTargetRef
		d := m.deployment(ref.Name)
		if ref.Kind != "Deployment" || d == nil {
			t.Errorf("HorizontalPodAutoscaler %s scales %s %s, not a Deployment here", h.Name, ref.Kind, ref.Name)
			continue
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
			t.Errorf("HorizontalPodAutoscaler %s: minReplicas below 2 leaves the edge a single point of failure", h.Name)
		}
		// CPU utilization is relative to requests: without them the HPA
		// cannot compute it.
		for _, c := range d.Spec.Template.Spec.Containers {
			if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
				t.Errorf("HorizontalPodAutoscaler %s: container %s of %s has no CPU request", h.Name, c.Name, d.Name)
			}
		}
		if m.pdbFor(d) == nil {
			t.Errorf("Deployment %s is autoscaled but has no PodDisruptionBudget", d.Name)
		}
		if a := d.Spec.Template.Spec.Affinity; a == nil || a.PodAntiAffinity == nil {
			t.Errorf("Deployment %s (edge) has no pod anti-affinity", d.Name)
		}
	}
}

func checkDeployment(t *testing.T, m *manifests, d *appsv1.Deployment) {
	spec := d.Spec.Template.Spec
	if d.Spec.Selector == nil || !subset(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) || len(d.Spec.Selector.MatchLabels) == 0 {
		t.Errorf("selector %v does not match the pod template's labels %v", d.Spec.Selector, d.Spec.Template.Labels)
	}
	meshd := containerNamed(spec.Containers, "meshd")
	sidecar := containerNamed(spec.InitContainers, "meshd")
	if sidecar != nil {
		meshd = sidecar
		if sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("sidecar meshd must be a native sidecar (init container with restartPolicy: Always)")
		}
		if sidecar.StartupProbe == nil || sidecar.StartupProbe.GRPC == nil {
			t.Errorf("sidecar meshd needs a gRPC startupProbe, so the app starts after meshd listens")
		}
	}
	if meshd == nil {
		t.Fatalf("no meshd container")
	}
	checkProbes(t, meshd)
	checkContainers(t, spec)
	if meshd.SecurityContext != nil && (meshd.SecurityContext.RunAsUser == nil || *meshd.SecurityContext.RunAsUser != proxyUID) {
		t.Errorf("meshd must run as UID %d (the Dockerfile's USER and iptables' -proxy-uid)", proxyUID)
	}

	cfg, cfgMount := meshdConfig(t, m, d, meshd)
	checkConfigFiles(t, cfg, meshd)
	ipt := iptablesContainer(spec.InitContainers)
	if sidecar != nil {
		if ipt == nil {
			t.Fatalf("sidecar Deployment without an iptables init container")
		}
		iptIdx := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == ipt.Name })
		if iptIdx > slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == "meshd" }) {
			t.Errorf("the iptables init container must run before meshd starts")
		}
		checkIptablesArgs(t, ipt, cfg)
		checkConsulBeforeIptables(t, spec.InitContainers, iptIdx)
	} else if ipt != nil {
		t.Errorf("edge Deployment has an iptables container %s: only sidecars intercept", ipt.Name)
	}
	if cfg.MeshNeedsConsul() {
		checkNodeAgent(t, m, meshd)
	}
	if !cfgMount.ReadOnly {
		t.Errorf("meshd's config volume %s must be mounted read-only", cfgMount.Name)
	}
	if gp := spec.TerminationGracePeriodSeconds; gp == nil || int64(cfg.DrainTimeout.D().Seconds()) >= *gp {
		t.Errorf("terminationGracePeriodSeconds %v must exceed meshd's drain_timeout %s", gp, cfg.DrainTimeout.D())
	}
}

// checkContainers: every container has requests and limits and the
// locked-down security context; only the iptables init container adds
// capabilities (and runs as root).
func checkContainers(t *testing.T, spec corev1.PodSpec) {
	for _, c := range allContainers(spec) {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("container %s: no securityContext", c.Name)
			continue
		}
		if c.Resources.Requests == nil || c.Resources.Limits == nil {
			t.Errorf("container %s: resources need requests and limits", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: allowPrivilegeEscalation must be false", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: readOnlyRootFilesystem must be true", c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s: privileged", c.Name)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("container %s: capabilities.drop must be [ALL]", c.Name)
		}
		added := []corev1.Capability(nil)
		if sc.Capabilities != nil {
			added = sc.Capabilities.Add
		}
		if isIptables(c) {
			// The one exception: iptables needs root and NET_ADMIN/NET_RAW.
			slices.Sort(added)
			if !slices.Equal(added, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
				t.Errorf("iptables container %s adds %v, want exactly NET_ADMIN and NET_RAW", c.Name, added)
			}
			continue
		}
		if len(added) > 0 {
			t.Errorf("container %s adds capabilities %v: only the iptables init container may", c.Name, added)
		}
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Errorf("container %s: runAsNonRoot must be true", c.Name)
		}
		if sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Errorf("container %s: needs a fixed non-zero runAsUser", c.Name)
		}
	}
}

// checkNodeAgent: a mesh sidecar with identity consul_connect takes its
// certificates from the node's Consul client agent, at the node's address
// (CONSUL_HTTP_ADDR=$(HOST_IP):8500 with HOST_IP from status.hostIP), and
// the manifests ship that agent: a DaemonSet serving 8500 as a hostPort.
func checkNodeAgent(t *testing.T, m *manifests, meshd *corev1.Container) {
	env := map[string]corev1.EnvVar{}
	for _, e := range meshd.Env {
		env[e.Name] = e
	}
	if e := env["HOST_IP"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("meshd (mesh, consul_connect) needs HOST_IP from the downward API's status.hostIP")
	}
	if e := env["CONSUL_HTTP_ADDR"]; e.Value != "$(HOST_IP):8500" {
		t.Errorf("meshd (mesh, consul_connect): CONSUL_HTTP_ADDR = %q, want $(HOST_IP):8500, the node's agent", e.Value)
	}
	for _, d := range m.daemonSets {
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, p := range c.Ports {
				if p.HostPort == 8500 && p.ContainerPort == 8500 {
					return
				}
			}
		}
	}
	t.Errorf("meshd (mesh, consul_connect) needs a Consul client agent on the node: no DaemonSet serves hostPort 8500")
}

// checkConsulBeforeIptables: an init step that calls the Consul agent
// (the pod's service registration) runs before the iptables rules, which
// would send its connection to a meshd that is not running yet.
func checkConsulBeforeIptables(t *testing.T, inits []corev1.Container, iptIdx int) {
	for i, c := range inits {
		if c.Name == "meshd" || isIptables(c) {
			continue
		}
		for _, e := range c.Env {
			if e.Name == "CONSUL_HTTP_ADDR" && i > iptIdx {
				t.Errorf("init container %s calls Consul after the iptables step: its connection would be redirected to meshd before meshd runs", c.Name)
			}
		}
	}
}

// TestMeshConfigIsTheExample: the mesh sidecar's ConfigMap carries
// configs/sidecar-mesh.yaml verbatim, so the example that `meshd validate`
// and configs' test check is the one deployed.
func TestMeshConfigIsTheExample(t *testing.T) {
	t.Parallel()
	m := load(t, "mesh")
	cm := m.configMaps["web-meshd"]
	if cm == nil {
		t.Fatal("no ConfigMap web-meshd under mesh/")
	}
	want, err := os.ReadFile("../../configs/sidecar-mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["meshd.yaml"]; got != string(want) {
		t.Errorf("ConfigMap web-meshd's meshd.yaml differs from configs/sidecar-mesh.yaml; regenerate it:\n  sed 's/^/    /' configs/sidecar-mesh.yaml")
	}
}

// TestEdgeConfigUsesEdgeFeatures: the edge ConfigMap's meshd.yaml (which
// TestManifests validates with config.Parse) shows the edge features the
// way configs/edge.yaml does: gRPC-Web on the TLS listener, merged
// reflection, JWT, routes per listener, host and header rules, a
// cluster authority.
func TestEdgeConfigUsesEdgeFeatures(t *testing.T) {
	t.Parallel()
	m := load(t, "edge")
	cm := m.configMaps["meshd-edge"]
	if cm == nil {
		t.Fatal("no ConfigMap meshd-edge under edge/")
	}
	cfg, err := config.Parse([]byte(cm.Data["meshd.yaml"]), "ConfigMap/meshd-edge/meshd.yaml")
	if err != nil {
		t.Fatalf("edge config does not validate:\n%v", err)
	}
	var webTLS, reflection, scoped, authority, headers, clusterAuthority bool
	for _, l := range cfg.Listeners {
		webTLS = webTLS || (l.GRPCWeb != nil && l.TLS != nil)
		reflection = reflection || l.Reflection
	}
	for _, r := range cfg.Routes {
		scoped = scoped || len(r.Listeners) > 0
		authority = authority || r.Match.Authority != ""
		headers = headers || r.RequestHeaders != nil || r.ResponseHeaders != nil
	}
	for _, c := range cfg.Clusters {
		clusterAuthority = clusterAuthority || c.Authority != ""
	}
	for what, ok := range map[string]bool{
		"grpc_web on a TLS listener": webTLS, "a reflection listener": reflection,
		"jwt_providers": len(cfg.JWTProviders) > 0, "a route limited to listeners": scoped,
		"a match.authority rule": authority, "request or response header rules": headers,
		"a cluster authority": clusterAuthority,
	} {
		if !ok {
			t.Errorf("edge config lacks %s (configs/edge.yaml has it)", what)
		}
	}
}

// checkProbes: readiness by grpc.health.v1 on the admin port, liveness by
// /live.
func checkProbes(t *testing.T, c *corev1.Container) {
	if p := c.ReadinessProbe; p == nil || p.GRPC == nil || p.GRPC.Port != adminPort {
		t.Errorf("meshd needs readinessProbe.grpc.port %d (meshd's health service)", adminPort)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/live" {
		t.Errorf("meshd needs a livenessProbe on /live")
	} else if pp := p.HTTPGet.Port; pp.IntValue() != adminPort && portNumber(c, pp.StrVal) != adminPort {
		t.Errorf("livenessProbe port %s is not the admin port %d", pp.String(), adminPort)
	}
}

// meshdConfig finds the ConfigMap mounted for meshd's -config file and
// parses it with meshd's own config package (meshd validate, less the
// check that certificate files exist on this machine: they live in
// Secrets).
func meshdConfig(t *testing.T, m *manifests, d *appsv1.Deployment, c *corev1.Container) (*config.Config, corev1.VolumeMount) {
	t.Helper()
	var file string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "-config="); ok {
			file = v
		}
	}
	if i := slices.Index(c.Args, "-config"); i >= 0 && i+1 < len(c.Args) {
		file = c.Args[i+1]
	}
	if file == "" {
		t.Fatalf("meshd args %v: no -config", c.Args)
	}
	mount, ok := mountFor(c, file)
	if !ok {
		t.Fatalf("config file %s is on no volume mount of meshd", file)
	}
	var cmName string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == mount.Name && v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
		}
	}
	cm := m.configMaps[cmName]
	if cm == nil {
		t.Fatalf("config volume %s: ConfigMap %q not among the manifests", mount.Name, cmName)
	}
	key := strings.TrimPrefix(strings.TrimPrefix(file, mount.MountPath), "/")
	data, ok := cm.Data[key]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q for %s", cm.Name, key, file)
	}
	cfg, err := config.Parse([]byte(data), "ConfigMap/"+cm.Name+"/"+key)
	if err != nil {
		t.Fatalf("meshd config in ConfigMap %s does not validate:\n%v", cm.Name, err)
	}
	if cfg.Admin.Address != fmt.Sprintf("0.0.0.0:%d", adminPort) {
		t.Errorf("admin.address %q: the kubelet probes 0.0.0.0:%d", cfg.Admin.Address, adminPort)
	}
	return cfg, mount
}

// checkConfigFiles: every certificate or key the config names is on one of
// meshd's read-only volume mounts.
func checkConfigFiles(t *testing.T, cfg *config.Config, c *corev1.Container) {
	var files []string
	for _, l := range cfg.Listeners {
		if l.TLS != nil {
			files = append(files, l.TLS.CertFile, l.TLS.KeyFile, l.TLS.ClientCAFile)
		}
	}
	for _, cl := range cfg.Clusters {
		if cl.TLS != nil {
			files = append(files, cl.TLS.CAFile, cl.TLS.CertFile, cl.TLS.KeyFile)
		}
	}
	for _, f := range files {
		if f == "" {
			continue
		}
		if mnt, ok := mountFor(c, f); !ok || !mnt.ReadOnly {
			t.Errorf("%s, named in meshd's config, is on no read-only volume mount", f)
		}
	}
}

// checkIptablesArgs: the iptables step redirects to the config's original_dst
// listeners, exempts meshd's UID and keeps the admin port (probes) out.
func checkIptablesArgs(t *testing.T, c *corev1.Container, cfg *config.Config) {
	args := map[string]string{}
	for _, a := range c.Args[1:] {
		k, v, ok := strings.Cut(strings.TrimPrefix(a, "-"), "=")
		if !ok {
			t.Fatalf("iptables args: write flags as -name=value, got %q", a)
		}
		args[k] = v
	}
	if args["proxy-uid"] != strconv.Itoa(proxyUID) {
		t.Errorf("-proxy-uid=%s, want %d (meshd's runAsUser)", args["proxy-uid"], proxyUID)
	}
	if !slices.Contains(strings.Split(args["exclude-inbound-ports"], ","), strconv.Itoa(adminPort)) {
		t.Errorf("-exclude-inbound-ports=%s must hold the admin port %d, or the kubelet's probes go to the inbound listener", args["exclude-inbound-ports"], adminPort)
	}
	for _, dir := range []string{config.DirectionInbound, config.DirectionOutbound} {
		var port string
		for _, l := range cfg.Listeners {
			if l.OriginalDst != nil && l.OriginalDst.Direction == dir {
				_, port, _ = strings.Cut(l.Address, ":")
			}
		}
		if port == "" {
			t.Errorf("sidecar config has no original_dst %s listener", dir)
		} else if args[dir+"-port"] != port {
			t.Errorf("-%s-port=%s, but the %s listener is on %s", dir, args[dir+"-port"], dir, port)
		}
	}
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// The last stage is what `docker build .` produces: meshd itself.
	stages := strings.Split(string(data), "\nFROM ")
	last := stages[len(stages)-1]
	base, _, _ := strings.Cut(last, "\n")
	if !strings.Contains(base, "distroless/static") && !strings.HasPrefix(base, "scratch") {
		t.Errorf("final stage FROM %s: want distroless/static or scratch", base)
	}
	if !strings.Contains(last, fmt.Sprintf("\nUSER %d:%d", proxyUID, proxyUID)) {
		t.Errorf("final stage must run as USER %d:%d, the manifests' runAsUser", proxyUID, proxyUID)
	}
	if !strings.Contains(string(data), "CGO_ENABLED=0") {
		t.Errorf("the build must be static (CGO_ENABLED=0)")
	}
	if !strings.Contains(string(data), "AS meshd-init") {
		t.Errorf("no meshd-init stage (the image the manifests' iptables step uses)")
	}
}

func allContainers(s corev1.PodSpec) []corev1.Container {
	return append(slices.Clone(s.InitContainers), s.Containers...)
}

func containerNamed(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func isIptables(c corev1.Container) bool { return len(c.Args) > 0 && c.Args[0] == "iptables" }

func iptablesContainer(cs []corev1.Container) *corev1.Container {
	for i := range cs {
		if isIptables(cs[i]) {
			return &cs[i]
		}
	}
	return nil
}

func mountFor(c *corev1.Container, file string) (corev1.VolumeMount, bool) {
	var best corev1.VolumeMount
	for _, vm := range c.VolumeMounts {
		if strings.HasPrefix(file, strings.TrimSuffix(vm.MountPath, "/")+"/") && len(vm.MountPath) > len(best.MountPath) {
			best = vm
		}
	}
	return best, best.Name != ""
}

func portNumber(c *corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return -1
}

func hasPort(d *appsv1.Deployment, name string) bool {
	for _, c := range allContainers(d.Spec.Template.Spec) {
		if portNumber(&c, name) > 0 {
			return true
		}
	}
	return false
}

func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (m *manifests) selecting(sel map[string]string) *appsv1.Deployment {
	if len(sel) == 0 {
		return nil
	}
	for _, d := range m.deployments {
		if subset(sel, d.Spec.Template.Labels) {
			return d
		}
	}
	return nil
}

func (m *manifests) deployment(name string) *appsv1.Deployment {
	for _, d := range m.deployments {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func (m *manifests) pdbFor(d *appsv1.Deployment) *policyv1.PodDisruptionBudget {
	for _, p := range m.pdbs {
		if p.Spec.Selector != nil && subset(p.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
			return p
		}
	}
	return nil
}

// meshd's RBAC grants the verbs it uses and no others: read GRPCRoutes,
// Services and EndpointSlices, update GRPCRoute status, and its one Lease.
func TestRBACLeastVerbs(t *testing.T) {
	t.Parallel()
	m := load(t, "gateway-api")
	grants := map[string]string{}
	add := func(rules []rbacv1.PolicyRule) {
		for _, r := range rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					key := g + "/" + res
					if len(r.ResourceNames) > 0 {
						key += "[" + strings.Join(r.ResourceNames, ",") + "]"
					}
					grants[key] = strings.Join(append([]string{grants[key]}, r.Verbs...), " ")
				}
			}
		}
	}
	for _, r := range m.roles {
		add(r.Rules)
	}
	for _, r := range m.nsRoles {
		add(r.Rules)
	}
	want := map[string]string{
		"gateway.networking.k8s.io/grpcroutes":        " get list watch",
		"gateway.networking.k8s.io/grpcroutes/status": " update",
		"/services":                                          " get list watch",
		"discovery.k8s.io/endpointslices":                    " get list watch",
		"coordination.k8s.io/leases":                         " create",
		"coordination.k8s.io/leases[meshd-grpcroute-status]": " get update",
	}
	if !reflect.DeepEqual(grants, want) {
		t.Errorf("RBAC grants\n got %v\nwant %v", grants, want)
	}
	for _, b := range m.bindings {
		if b.RoleRef.Kind != "ClusterRole" || !slices.ContainsFunc(m.roles, func(r *rbacv1.ClusterRole) bool { return r.Name == b.RoleRef.Name }) {
			t.Errorf("ClusterRoleBinding %s binds %s %s, not a ClusterRole here", b.Name, b.RoleRef.Kind, b.RoleRef.Name)
		}
	}
	for _, b := range m.nsBindings {
		if !slices.ContainsFunc(m.nsRoles, func(r *rbacv1.Role) bool { return r.Name == b.RoleRef.Name && r.Namespace == b.Namespace }) {
			t.Errorf("RoleBinding %s/%s binds %s, not a Role of its namespace here", b.Namespace, b.Name, b.RoleRef.Name)
		}
	}
	if len(m.grpcRoutes) < 2 {
		t.Errorf("want the edge and mesh GRPCRoute examples, found %d", len(m.grpcRoutes))
	}
}

// A Deployment that names a ServiceAccount has it among the manifests in
// its namespace (else the API server refuses its pods), and the meshd
// ServiceAccount is what gateway-api/rbac.yaml binds: the GRPCRoute
// ClusterRole and the status Lease Role of that namespace.
func TestServiceAccounts(t *testing.T) {
	t.Parallel()
	m := load(t, ".")
	named := 0
	for _, d := range m.deployments {
		sa := d.Spec.Template.Spec.ServiceAccountName
		if sa == "" {
			continue
		}
		named++
		if !slices.ContainsFunc(m.accounts, func(a *corev1.ServiceAccount) bool { return a.Name == sa && a.Namespace == d.Namespace }) {
			t.Errorf("Deployment %s/%s runs as ServiceAccount %q, not among the manifests in namespace %q", d.Namespace, d.Name, sa, d.Namespace)
		}
		if sa != "meshd" {
			continue
		}
		subject := func(ss []rbacv1.Subject) bool {
			return slices.ContainsFunc(ss, func(s rbacv1.Subject) bool {
				return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == d.Namespace
			})
		}
		if !slices.ContainsFunc(m.bindings, func(b *rbacv1.ClusterRoleBinding) bool {
			return b.RoleRef.Name == "meshd-grpcroutes" && subject(b.Subjects)
		}) {
			t.Errorf("Deployment %s/%s: ServiceAccount %s/%s is not bound to the ClusterRole meshd-grpcroutes", d.Namespace, d.Name, d.Namespace, sa)
		}
		if !slices.ContainsFunc(m.nsBindings, func(b *rbacv1.RoleBinding) bool {
			return b.Namespace == d.Namespace && b.RoleRef.Name == "meshd-status-lease" && subject(b.Subjects)
		}) {
			t.Errorf("Deployment %s/%s: no RoleBinding meshd-status-lease in %s for its ServiceAccount (the status Lease)", d.Namespace, d.Name, d.Namespace)
		}
	}
	if named == 0 {
		t.Error("no Deployment names a ServiceAccount: the edge runs as meshd, the one gateway-api/rbac.yaml binds")
	}
}

// The GRPCRoute examples are routes meshd accepts (filters included),
// each in the mode its comment names.
func TestGRPCRouteExamplesAccepted(t *testing.T) {
	t.Parallel()
	m := load(t, "gateway-api")
	anyService := func(ns, name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Port: 9000}}}}
	}
	modes := []kuberoutes.Mode{{Gateway: &config.GatewayRef{Name: "meshd-edge", Namespace: "edge"}}, {Mesh: true}}
	for _, gr := range m.grpcRoutes {
		served := false
		for _, mode := range modes {
			_, verdicts := kuberoutes.Translate(mode, []*gwv1.GRPCRoute{gr}, anyService)
			for _, v := range verdicts {
				if v.Unsupported != "" || v.RefsReason != "" {
					t.Errorf("GRPCRoute %s/%s: refused (%s) or unresolved (%s %s)", gr.Namespace, gr.Name, v.Unsupported, v.RefsReason, v.RefsMessage)
				}
				for _, p := range v.Parents {
					served = served || p.NotAccepted == ""
				}
			}
		}
		if !served {
			t.Errorf("GRPCRoute %s/%s attaches to neither the meshd-edge Gateway nor a Service", gr.Namespace, gr.Name)
		}
	}
}
