package deploy

import (
	"os"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"
)

// The manifests that decide who may call the processor are read strictly
// (a misspelt field would silently weaken them) and checked for what they
// must say.

type labelSelector struct {
	MatchLabels      map[string]string `json:"matchLabels,omitempty"`
	MatchExpressions []struct {
		Key      string   `json:"key"`
		Operator string   `json:"operator"`
		Values   []string `json:"values,omitempty"`
	} `json:"matchExpressions,omitempty"`
}

type meta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

type peerAuthentication struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   meta   `json:"metadata"`
	Spec       struct {
		Selector labelSelector `json:"selector"`
		MTLS     struct {
			Mode string `json:"mode"`
		} `json:"mtls"`
	} `json:"spec"`
}

type authorizationPolicy struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   meta   `json:"metadata"`
	Spec       struct {
		Selector labelSelector `json:"selector"`
		Action   string        `json:"action"`
		Rules    []struct {
			From []struct {
				Source struct {
					Principals []string `json:"principals,omitempty"`
					Namespaces []string `json:"namespaces,omitempty"`
				} `json:"source"`
			} `json:"from,omitempty"`
			To []struct {
				Operation struct {
					Ports   []string `json:"ports,omitempty"`
					Methods []string `json:"methods,omitempty"`
					Paths   []string `json:"paths,omitempty"`
				} `json:"operation"`
			} `json:"to,omitempty"`
		} `json:"rules"`
	} `json:"spec"`
}

type networkPolicy struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   meta   `json:"metadata"`
	Spec       struct {
		PodSelector labelSelector `json:"podSelector"`
		PolicyTypes []string      `json:"policyTypes"`
		Ingress     []struct {
			From []struct {
				NamespaceSelector *labelSelector `json:"namespaceSelector,omitempty"`
				PodSelector       *labelSelector `json:"podSelector,omitempty"`
			} `json:"from"`
			Ports []struct {
				Protocol string `json:"protocol"`
				Port     int    `json:"port"`
			} `json:"ports"`
		} `json:"ingress"`
	} `json:"spec"`
}

func readStrict(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

var processorPods = map[string]string{"app.kubernetes.io/name": "tokenwarden"}

func TestProcessorAcceptsOnlyTheMesh(t *testing.T) {
	var pa peerAuthentication
	readStrict(t, "istio/peer-authentication.yaml", &pa)
	if pa.APIVersion != "security.istio.io/v1" || pa.Kind != "PeerAuthentication" || pa.Spec.MTLS.Mode != "STRICT" ||
		!selects(pa.Spec.Selector.MatchLabels, processorPods) || pa.Metadata.Namespace != "tokenwarden" {
		t.Errorf("PeerAuthentication must make mTLS STRICT on the processor pods: %+v", pa)
	}

	var ap authorizationPolicy
	readStrict(t, "istio/authorization-policy.yaml", &ap)
	if ap.APIVersion != "security.istio.io/v1" || ap.Kind != "AuthorizationPolicy" || ap.Spec.Action != "ALLOW" ||
		!selects(ap.Spec.Selector.MatchLabels, processorPods) || ap.Metadata.Namespace != "tokenwarden" {
		t.Fatalf("AuthorizationPolicy header: %+v", ap)
	}
	for i, r := range ap.Spec.Rules {
		if len(r.From) == 0 {
			t.Errorf("rule %d admits any caller", i)
		}
		for _, f := range r.From {
			if len(f.Source.Principals) == 0 && len(f.Source.Namespaces) == 0 {
				t.Errorf("rule %d has a source without principals or namespaces", i)
			}
		}
		for _, to := range r.To {
			op := to.Operation
			if !slices.Equal(op.Ports, []string{"50051"}) || !slices.Equal(op.Paths, []string{"/envoy.service.ext_proc.v3.ExternalProcessor/Process"}) {
				t.Errorf("rule %d opens %v %v, want only the ext_proc method on 50051", i, op.Ports, op.Paths)
			}
		}
		if len(r.To) == 0 {
			t.Errorf("rule %d admits every port and path", i)
		}
	}
	if len(ap.Spec.Rules) == 0 {
		t.Error("no rules: an empty ALLOW policy denies everything, Envoy included")
	}

	var np networkPolicy
	readStrict(t, "k8s/networkpolicy.yaml", &np)
	if np.Kind != "NetworkPolicy" || !selects(np.Spec.PodSelector.MatchLabels, processorPods) || !slices.Equal(np.Spec.PolicyTypes, []string{"Ingress"}) {
		t.Fatalf("NetworkPolicy header: %+v", np)
	}
	open := map[int]bool{}
	for i, in := range np.Spec.Ingress {
		if len(in.From) == 0 {
			t.Errorf("ingress rule %d admits every source", i)
		}
		for _, p := range in.Ports {
			open[p.Port] = true
		}
	}
	if len(open) != 2 || !open[50051] || !open[9090] {
		t.Errorf("NetworkPolicy opens ports %v, want 50051 (ext_proc) and 9090 (scrape) only", open)
	}
}
