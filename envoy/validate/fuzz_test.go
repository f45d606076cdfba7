package validate

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzValidateBootstrap feeds arbitrary documents, seeded with the repository's bootstraps and
// edits of them, to the validator. It must never panic, and whatever it accepts must satisfy
// what acceptance promises: at least one listener and one ext_proc filter, and a re-validation
// giving the same summary.
func FuzzValidateBootstrap(f *testing.F) {
	files, _ := filepath.Glob("../*.yaml")
	for _, file := range files {
		b := readFile(f, file)
		f.Add(b)
		f.Add([]byte(strings.Replace(string(b), "disabled: true", "disabled: false", 1)))
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte("{}"))
	f.Add([]byte("static_resources: {clusters: [{name: a}]}"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		s, err := ValidateBootstrap(doc)
		if err != nil {
			return
		}
		if s.Listeners < 1 || s.ExtProcFilters < 1 {
			t.Fatalf("accepted a bootstrap with summary %v", s)
		}
		again, err := ValidateBootstrap(doc)
		if err != nil || again.String() != s.String() {
			t.Fatalf("re-validation differs: %v / %v, %v", s, again, err)
		}
	})
}

// FuzzValidateEnvoyFilter does the same for Istio EnvoyFilters: an accepted filter has at least
// one patch, and every ext_proc patch names an Istio cluster.
func FuzzValidateEnvoyFilter(f *testing.F) {
	files, _ := filepath.Glob("../../deploy/istio/*.yaml")
	for _, file := range files {
		for _, doc := range SplitDocuments(readFile(f, file)) {
			f.Add(doc)
		}
	}
	f.Add([]byte("kind: EnvoyFilter\napiVersion: networking.istio.io/v1alpha3\nspec: {configPatches: [{applyTo: CLUSTER, patch: {operation: REMOVE}}]}"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		s, err := ValidateEnvoyFilter(doc)
		if err != nil {
			return
		}
		if len(s.Patches) == 0 {
			t.Fatal("accepted an EnvoyFilter without patches")
		}
		for _, p := range s.Patches {
			if p.ExtProcCluster != "" && !istioClusterName.MatchString(p.ExtProcCluster) {
				t.Fatalf("accepted ext_proc cluster %q", p.ExtProcCluster)
			}
		}
	})
}

// FuzzSplitDocuments checks that splitting loses no content line and never returns a separator
// or a content-free document.
func FuzzSplitDocuments(f *testing.F) {
	f.Add([]byte("a: 1\n---\nb: 2\n"))
	f.Add([]byte("--- # c\n\n---\r\nx\n---x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs := SplitDocuments(data)
		var content int
		for _, d := range docs {
			if !hasContent(d) {
				t.Fatalf("content-free document %q", d)
			}
			for _, line := range bytes.SplitAfter(d, []byte("\n")) {
				if isSeparator(line) {
					t.Fatalf("separator %q inside document %q", line, d)
				}
			}
			content += len(d)
		}
		if content > len(data) {
			t.Fatalf("documents hold %d bytes, input only %d", content, len(data))
		}
		var kept []byte
		for _, line := range bytes.SplitAfter(data, []byte("\n")) {
			if !isSeparator(line) {
				kept = append(kept, line...)
			}
		}
		if hasContent(kept) && len(docs) == 0 {
			t.Fatalf("lost all content of %q", data)
		}
	})
}
