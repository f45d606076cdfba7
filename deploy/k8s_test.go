package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/tokenwarden/tokenwarden/envoy/validate"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// The parts of Kubernetes objects the checks read (no k8s.io/api dependency for a test).
type (
	object struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
		Spec struct {
			// Deployment
			Replicas *int `json:"replicas"`
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			Template struct {
				Metadata struct {
					Labels map[string]string `json:"labels"`
				} `json:"metadata"`
				Spec podSpec `json:"spec"`
			} `json:"template"`
			// Service (spec.selector is a plain map there; read separately)
			Ports []struct {
				Name        string `json:"name"`
				Port        int    `json:"port"`
				TargetPort  any    `json:"targetPort"`
				AppProtocol string `json:"appProtocol"`
			} `json:"ports"`
			// PodDisruptionBudget
			MinAvailable any `json:"minAvailable"`
			// ServiceMonitor
			Endpoints []struct {
				Port string `json:"port"`
				Path string `json:"path"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	podSpec struct {
		TerminationGracePeriodSeconds int `json:"terminationGracePeriodSeconds"`
		SecurityContext               struct {
			RunAsNonRoot bool `json:"runAsNonRoot"`
		} `json:"securityContext"`
		Affinity struct {
			PodAntiAffinity map[string]any `json:"podAntiAffinity"`
		} `json:"affinity"`
		Containers []container `json:"containers"`
		Volumes    []struct {
			Name      string `json:"name"`
			ConfigMap *struct {
				Name string `json:"name"`
			} `json:"configMap"`
		} `json:"volumes"`
	}
	container struct {
		Name  string   `json:"name"`
		Args  []string `json:"args"`
		Ports []struct {
			Name          string `json:"name"`
			ContainerPort int    `json:"containerPort"`
		} `json:"ports"`
		LivenessProbe  *probe `json:"livenessProbe"`
		ReadinessProbe *probe `json:"readinessProbe"`
		Lifecycle      struct {
			PreStop map[string]any `json:"preStop"`
		} `json:"lifecycle"`
		Resources struct {
			Requests map[string]string `json:"requests"`
			Limits   map[string]string `json:"limits"`
		} `json:"resources"`
		SecurityContext struct {
			AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
			ReadOnlyRootFilesystem   bool  `json:"readOnlyRootFilesystem"`
			Capabilities             struct {
				Drop []string `json:"drop"`
			} `json:"capabilities"`
		} `json:"securityContext"`
		VolumeMounts []struct {
			Name      string `json:"name"`
			MountPath string `json:"mountPath"`
			SubPath   string `json:"subPath"`
		} `json:"volumeMounts"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `json:"path"`
			Port any    `json:"port"`
		} `json:"httpGet"`
	}
)

// render runs `kubectl kustomize k8s` and decodes every object, keyed "Kind/name".
func render(t *testing.T) map[string]object {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test: deploy/install-tools.sh installs what it needs")
		}
		t.Skip("kubectl not installed: cannot render the kustomize base")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, kubectl, "kustomize", "k8s").Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("kubectl kustomize k8s: %v\n%s", err, stderr)
	}
	objs := map[string]object{}
	for _, doc := range validate.SplitDocuments(out) {
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("rendered object: %v\n%s", err, doc)
		}
		objs[o.Kind+"/"+o.Metadata.Name] = o
	}
	return objs
}

func get(t *testing.T, objs map[string]object, key string) object {
	t.Helper()
	o, ok := objs[key]
	if !ok {
		t.Fatalf("rendered objects lack %s (have %v)", key, keys(objs))
	}
	return o
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestKustomize(t *testing.T) {
	objs := render(t)
	want := []string{"Namespace/tokenwarden", "ConfigMap/tokenwarden", "Deployment/tokenwarden", "Service/tokenwarden",
		"PodDisruptionBudget/tokenwarden", "ServiceMonitor/tokenwarden", "NetworkPolicy/tokenwarden", "Deployment/redis", "Service/redis"}
	if got := keys(objs); !slices.Equal(got, func() []string { w := slices.Clone(want); slices.Sort(w); return w }()) {
		t.Errorf("rendered %v, want %v", got, want)
	}
	for k, o := range objs {
		if o.Kind != "Namespace" && o.Metadata.Namespace != "tokenwarden" {
			t.Errorf("%s: namespace %q, want tokenwarden", k, o.Metadata.Namespace)
		}
	}

	dep := get(t, objs, "Deployment/tokenwarden")
	pod := dep.Spec.Template.Spec
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("replicas %v, want at least 2", dep.Spec.Replicas)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["grpc"] != 50051 || ports["metrics"] != 9090 || len(ports) != 2 {
		t.Errorf("container ports %v, want grpc 50051 and metrics 9090 only", ports)
	}
	wantArgs := []string{"serve", "--config", "/etc/tokenwarden/tokenwarden.yaml", "--grpc-addr", "0.0.0.0:50051", "--insecure-listen",
		"--admin-addr", "127.0.0.1:9091", "--metrics-addr", "0.0.0.0:9090",
		"--shutdown-grace", "315s", "--drain-timeout", "305s", "--journal-dir", "/var/lib/tokenwarden"}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args %q, want %q", c.Args, wantArgs)
	}
	// The shutdown fits the pod's grace period: preStop, then --shutdown-grace, which holds the
	// drain plus 10s to settle the streams it cut and flush the journal.
	arg := func(name string) time.Duration {
		i := slices.Index(c.Args, name)
		if i < 0 || i+1 >= len(c.Args) {
			t.Fatalf("no %s", name)
		}
		d, err := time.ParseDuration(c.Args[i+1])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return d
	}
	preStop := 10 * time.Second
	if sl, ok := c.Lifecycle.PreStop["sleep"].(map[string]any); !ok || sl["seconds"] != float64(10) {
		t.Errorf("preStop %v, want sleep 10s", c.Lifecycle.PreStop)
	}
	grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second
	if g, d := arg("--shutdown-grace"), arg("--drain-timeout"); preStop+g > grace || d+10*time.Second > g {
		t.Errorf("preStop %s + --shutdown-grace %s must fit terminationGracePeriodSeconds %s, and --drain-timeout %s + 10s the grace", preStop, g, grace, d)
	}
	// The journal lives on a volume (the root filesystem is read-only).
	journal := false
	for _, m := range c.VolumeMounts {
		journal = journal || m.MountPath == "/var/lib/tokenwarden"
	}
	if !journal {
		t.Error("--journal-dir /var/lib/tokenwarden is not a mounted volume")
	}
	// Plaintext on the pod IP is only acceptable behind the Istio sidecar that enforces mTLS.
	if slices.Contains(c.Args, "--insecure-listen") && dep.Spec.Template.Metadata.Labels["sidecar.istio.io/inject"] != "true" {
		t.Error("--insecure-listen without the Istio sidecar: the ext_proc port would take anyone")
	}
	for name, p := range map[string]struct {
		probe *probe
		path  string
	}{"liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != "metrics" {
			t.Errorf("%s probe %+v, want GET %s on port metrics", name, p.probe, p.path)
		}
	}
	if pod.TerminationGracePeriodSeconds < 60 || len(c.Lifecycle.PreStop) == 0 {
		t.Errorf("graceful shutdown: grace %ds, preStop %v", pod.TerminationGracePeriodSeconds, c.Lifecycle.PreStop)
	}
	sc := c.SecurityContext
	if !pod.SecurityContext.RunAsNonRoot || !sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("security context: pod %+v container %+v", pod.SecurityContext, sc)
	}
	if len(pod.Affinity.PodAntiAffinity) == 0 {
		t.Error("no pod anti-affinity")
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources %+v", c.Resources)
	}
	// Hot reload needs the ConfigMap mounted as a directory: subPath mounts never update.
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == "tokenwarden" {
				mounted = m.MountPath == "/etc/tokenwarden" && m.SubPath == ""
			}
		}
	}
	if !mounted {
		t.Error("ConfigMap tokenwarden is not mounted at /etc/tokenwarden without subPath")
	}

	// Service: its selector must pick the pods, its ports must name container ports, gRPC must be
	// declared so meshes speak HTTP/2.
	svc := get(t, objs, "Service/tokenwarden")
	var svcSel struct {
		Spec struct {
			Selector map[string]string `json:"selector"`
		} `json:"spec"`
	}
	b, _ := yaml.Marshal(svc)
	_ = yaml.Unmarshal(b, &svcSel)
	if !selects(svcSel.Spec.Selector, dep.Spec.Template.Metadata.Labels) || !selects(dep.Spec.Selector.MatchLabels, dep.Spec.Template.Metadata.Labels) {
		t.Errorf("selectors do not pick the pods: service %v, deployment %v, pod labels %v", svcSel.Spec.Selector, dep.Spec.Selector.MatchLabels, dep.Spec.Template.Metadata.Labels)
	}
	svcPorts := map[string]int{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p.Port
		if _, ok := ports[fmt.Sprint(p.TargetPort)]; !ok {
			t.Errorf("service port %s targets %v, not a container port name", p.Name, p.TargetPort)
		}
		if p.Name == "grpc" && p.AppProtocol != "grpc" {
			t.Errorf("grpc port appProtocol %q, want grpc", p.AppProtocol)
		}
	}
	if svcPorts["grpc"] != 50051 || svcPorts["http-metrics"] != 9090 {
		t.Errorf("service ports %v", svcPorts)
	}

	pdb := get(t, objs, "PodDisruptionBudget/tokenwarden")
	if !selects(pdb.Spec.Selector.MatchLabels, dep.Spec.Template.Metadata.Labels) || pdb.Spec.MinAvailable == nil {
		t.Errorf("PDB selector %v minAvailable %v", pdb.Spec.Selector.MatchLabels, pdb.Spec.MinAvailable)
	}
	sm := get(t, objs, "ServiceMonitor/tokenwarden")
	if sm.APIVersion != "monitoring.coreos.com/v1" || !selects(sm.Spec.Selector.MatchLabels, svc.Metadata.Labels) ||
		len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "http-metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor %+v does not scrape the service's http-metrics /metrics", sm.Spec)
	}
	if redis := get(t, objs, "Service/redis"); selects(sm.Spec.Selector.MatchLabels, redis.Metadata.Labels) {
		t.Error("ServiceMonitor also selects the redis Service")
	}

	// The ConfigMap holds a tokenwarden.yaml the processor accepts, with the policies the
	// Envoy and Istio configs select.
	cm := get(t, objs, "ConfigMap/tokenwarden")
	if _, err := policy.Parse([]byte(cm.Data["tokenwarden.yaml"])); err != nil {
		t.Fatalf("ConfigMap tokenwarden.yaml: %v", err)
	}
	for _, policy := range []string{"default", "batch"} {
		if !strings.Contains(cm.Data["tokenwarden.yaml"], "\n  "+policy+":\n") {
			t.Errorf("ConfigMap lacks policy %q that envoy.yaml and deploy/istio select", policy)
		}
	}
	if !strings.Contains(cm.Data["tokenwarden.yaml"], "redis.tokenwarden.svc.cluster.local:6379") {
		t.Error("ConfigMap store does not point at the bundled redis Service")
	}

	// Istio's processor cluster names this Service.
	cluster := fmt.Sprintf("outbound|%d||%s.%s.svc.cluster.local", svcPorts["grpc"], svc.Metadata.Name, svc.Metadata.Namespace)
	files, _ := filepath.Glob("istio/ext-proc-*.yaml")
	if len(files) == 0 {
		t.Fatal("no istio/ext-proc-*.yaml")
	}
	for _, f := range files {
		doc, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s, err := validate.ValidateEnvoyFilter(doc)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range s.Patches {
			if p.ExtProcCluster != "" && p.ExtProcCluster != cluster {
				t.Errorf("%s: ext_proc cluster %q, the Service gives %q", f, p.ExtProcCluster, cluster)
			}
		}
	}
}

// selects reports whether every selector label is on the object.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestIstioTLSOrigination checks the sidecar prerequisite (a sidecar only runs HTTP filters on
// plain-HTTP traffic, so Istio must originate TLS: https://istio.io/latest/docs/tasks/traffic-management/egress/egress-tls-origination/): plain HTTP
// port 80 mapped to 443, TLS originated by a DestinationRule on that port, and the named routes
// the HTTP_ROUTE patches refer to.
func TestIstioTLSOrigination(t *testing.T) {
	b, err := os.ReadFile("istio/tls-origination.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type sePort struct {
		Number     int    `json:"number"`
		Protocol   string `json:"protocol"`
		TargetPort int    `json:"targetPort"`
	}
	type vsRoute struct {
		Name string `json:"name"`
	}
	type doc struct {
		Kind string `json:"kind"`
		Spec struct {
			Hosts         []string `json:"hosts"`
			Host          string   `json:"host"`
			Ports         []sePort `json:"ports"`
			TrafficPolicy struct {
				PortLevelSettings []struct {
					Port struct {
						Number int `json:"number"`
					} `json:"port"`
					TLS struct {
						Mode string `json:"mode"`
						Sni  string `json:"sni"`
					} `json:"tls"`
				} `json:"portLevelSettings"`
			} `json:"trafficPolicy"`
			HTTP []vsRoute `json:"http"`
		} `json:"spec"`
	}
	var se, dr, vs *doc
	for _, d := range validate.SplitDocuments(b) {
		var x doc
		if err := yaml.Unmarshal(d, &x); err != nil {
			t.Fatal(err)
		}
		switch x.Kind {
		case "ServiceEntry":
			se = &x
		case "DestinationRule":
			dr = &x
		case "VirtualService":
			vs = &x
		}
	}
	if se == nil || dr == nil || vs == nil {
		t.Fatalf("want a ServiceEntry, DestinationRule and VirtualService; got %v %v %v", se != nil, dr != nil, vs != nil)
	}
	const host = "api.anthropic.com"
	httpPort := slices.IndexFunc(se.Spec.Ports, func(p sePort) bool {
		return p.Number == 80 && p.Protocol == "HTTP" && p.TargetPort == 443
	})
	if !slices.Contains(se.Spec.Hosts, host) || httpPort < 0 {
		t.Errorf("ServiceEntry hosts %v ports %+v: want %s with HTTP 80 → 443", se.Spec.Hosts, se.Spec.Ports, host)
	}
	originates := false
	for _, s := range dr.Spec.TrafficPolicy.PortLevelSettings {
		originates = originates || (s.Port.Number == 80 && s.TLS.Mode == "SIMPLE" && s.TLS.Sni == host)
	}
	if dr.Spec.Host != host || !originates {
		t.Errorf("DestinationRule %+v does not originate TLS to %s on port 80", dr.Spec, host)
	}

	ef, err := os.ReadFile("istio/route-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var filter validate.EnvoyFilter
	if err := yaml.UnmarshalStrict(ef, &filter); err != nil {
		t.Fatal(err)
	}
	for i, p := range filter.Spec.ConfigPatches {
		rc := p.Match.RouteConfiguration
		if rc == nil || rc.Vhost == nil || rc.Vhost.Route == nil {
			t.Errorf("route patch %d does not name a route", i)
			continue
		}
		if rc.Vhost.Name != host+":80" || !slices.ContainsFunc(vs.Spec.HTTP, func(h vsRoute) bool {
			return h.Name == rc.Vhost.Route.Name
		}) {
			t.Errorf("route patch %d targets %s/%s, which the VirtualService does not define", i, rc.Vhost.Name, rc.Vhost.Route.Name)
		}
	}
}
