package validate

import (
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const processorCluster = "outbound|50051||tokenwarden.tokenwarden.svc.cluster.local"

// istioEnvoyFilters returns every EnvoyFilter document under deploy/istio, by file name.
func istioEnvoyFilters(t *testing.T) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("../../deploy/istio/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/istio/*.yaml (err %v)", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		for _, doc := range SplitDocuments(readFile(t, f)) {
			var head struct{ Kind string }
			if err := yaml.Unmarshal(doc, &head); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if head.Kind == "EnvoyFilter" {
				out[filepath.Base(f)] = doc
			}
		}
	}
	return out
}

func TestRepositoryEnvoyFilters(t *testing.T) {
	docs := istioEnvoyFilters(t)
	want := map[string][]PatchSummary{
		"ext-proc-gateway.yaml": {{ApplyTo: "HTTP_FILTER", Context: "GATEWAY", Operation: "INSERT_BEFORE", ExtProcCluster: processorCluster}},
		"ext-proc-sidecar.yaml": {{ApplyTo: "HTTP_FILTER", Context: "SIDECAR_OUTBOUND", Operation: "INSERT_BEFORE", ExtProcCluster: processorCluster}},
		"route-policy.yaml": {
			{ApplyTo: "HTTP_ROUTE", Context: "SIDECAR_OUTBOUND", Operation: "MERGE", Policy: "batch"},
			{ApplyTo: "HTTP_ROUTE", Context: "SIDECAR_OUTBOUND", Operation: "MERGE", Policy: "default"},
			{ApplyTo: "HTTP_ROUTE", Context: "SIDECAR_OUTBOUND", Operation: "MERGE", Disabled: true},
		},
	}
	if len(docs) != len(want) {
		t.Errorf("EnvoyFilters in %v, want in %v", keys(docs), keys(want))
	}
	for name, doc := range docs {
		t.Run(name, func(t *testing.T) {
			s, err := ValidateEnvoyFilter(doc)
			if err != nil {
				t.Fatal(err)
			}
			w := want[name]
			if len(s.Patches) != len(w) {
				t.Fatalf("patches %+v, want %+v", s.Patches, w)
			}
			for i := range w {
				if s.Patches[i] != w[i] {
					t.Errorf("patch %d: %+v, want %+v", i, s.Patches[i], w[i])
				}
			}
		})
	}
}

func TestEnvoyFilterMutations(t *testing.T) {
	docs := istioEnvoyFilters(t)
	cases := []struct {
		file, name, old, new, want string
	}{
		{"ext-proc-gateway.yaml", "unknown context", "context: GATEWAY", "context: GATEWAYS", `unknown "GATEWAYS"`},
		{"ext-proc-gateway.yaml", "inserted after the router", "operation: INSERT_BEFORE", "operation: INSERT_AFTER", "INSERT_BEFORE the router"},
		{"ext-proc-gateway.yaml", "wrong sub-filter", "name: envoy.filters.http.router", "name: envoy.filters.http.cors", "with subFilter envoy.filters.http.router"},
		{"ext-proc-gateway.yaml", "bad cluster name", "outbound|50051||", "outbound|grpc||", "not an Istio cluster name"},
		{"ext-proc-gateway.yaml", "timeout out of range", "message_timeout: 2s", "message_timeout: 7200s", "value must be inside range"},
		{"ext-proc-gateway.yaml", "lower-case enum", "request_body_mode: BUFFERED", "request_body_mode: buffered", "invalid value for enum"},
		{"ext-proc-gateway.yaml", "typo in EnvoyFilter", "workloadSelector:", "workloadSelecter:", "unknown field"},
		{"ext-proc-gateway.yaml", "typo in patch value", "allow_mode_override: true", "allow_mode_overide: true", `unknown field "allow_mode_overide"`},
		{"ext-proc-gateway.yaml", "namespace missing", `untyped: ["tokenwarden"]`, `untyped: ["llm.extproc"]`, `must contain "tokenwarden"`},
		{"ext-proc-sidecar.yaml", "sidecar not port-scoped", "portNumber: 80\n", "\n", "must be port-scoped"},
		{"route-policy.yaml", "per-route disabled false", "    disabled: true", "    disabled: false", "value must equal true"},
		{"route-policy.yaml", "policy not a string", "policy: batch", "policy: [batch]", "must be a non-empty policy name"},
		{"route-policy.yaml", "unknown applyTo", "applyTo: HTTP_ROUTE", "applyTo: HTTP_ROUTES", `unsupported "HTTP_ROUTES"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc, ok := docs[tc.file]
			if !ok || !strings.Contains(string(doc), tc.old) {
				t.Fatalf("%s does not contain %q", tc.file, tc.old)
			}
			_, err := ValidateEnvoyFilter([]byte(strings.Replace(string(doc), tc.old, tc.new, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	t.Run("two documents", func(t *testing.T) {
		doc := docs["ext-proc-gateway.yaml"]
		_, err := ValidateEnvoyFilter(append(append(append([]byte{}, doc...), "\n---\n"...), doc...))
		if err == nil || !strings.Contains(err.Error(), "exactly one YAML document") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestSplitDocuments(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"a: 1\n", []string{"a: 1\n"}},
		{"---\na: 1\n---\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"# only a comment\n---\na: 1\n--- # next\nb: 2", []string{"a: 1\n", "b: 2"}},
		{"a: |\n  ---x\n----\n", []string{"a: |\n  ---x\n----\n"}},
		{"a: 1\n---\n\n# c\n---\n", []string{"a: 1\n"}},
		{"a: 1\r\n---\r\nb: 2\r\n", []string{"a: 1\r\n", "b: 2\r\n"}},
	}
	for _, tc := range cases {
		got := SplitDocuments([]byte(tc.in))
		if len(got) != len(tc.want) {
			t.Errorf("SplitDocuments(%q) = %q, want %q", tc.in, got, tc.want)
			continue
		}
		for i := range got {
			if string(got[i]) != tc.want[i] {
				t.Errorf("SplitDocuments(%q)[%d] = %q, want %q", tc.in, i, got[i], tc.want[i])
			}
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
