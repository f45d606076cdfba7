package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The house rules: which package may import which. They are the layout of
// the design (README "Layout"): the Envoy adapter on top, the Envoy-free
// request lifecycle below it, the wire formats, policy and observation
// beside it, and the shared-state and money packages at the bottom, with no
// arrow pointing back up. Tests are not held to them (a test may import
// anything); only the packages the binary is built from are.

const module = "github.com/tokenwarden/tokenwarden"

// houseRule says what one part of the house may import from the module:
// packages at or below the listed paths. Standard-library imports are always
// allowed; external allows third-party module prefixes (nil: any).
type houseRule struct {
	part     string   // a package path relative to the module, and everything below it
	internal []string // module paths it may import ("" is the module root)
	external []string // third-party import prefixes it may use; nil means any
}

var houseRules = []houseRule{
	{part: "accounting", internal: nil, external: []string{"sigs.k8s.io/yaml"}},
	{part: "limiter", internal: []string{"limiter"}, external: []string{"github.com/redis/go-redis/", "github.com/klauspost/compress/"}}, // zstd: the response cache's values
	{part: "extproc/contract", internal: nil, external: []string{}},
	{part: "extproc/dialect/wire", internal: []string{"accounting"}},
	{part: "extproc/dialect", internal: []string{"extproc/dialect", "accounting"}},
	{part: "extproc/policy", internal: []string{"limiter", "accounting"}, external: []string{"sigs.k8s.io/yaml"}},
	{part: "extproc/gate", internal: []string{"extproc/dialect", "extproc/policy", "extproc/contract", "limiter", "accounting"}, external: []string{}},
	{part: "extproc/observe", internal: []string{"extproc/gate", "extproc/policy", "limiter", "accounting"},
		external: []string{"github.com/prometheus/"}},
	{part: "extproc", internal: []string{"extproc"},
		external: []string{"github.com/envoyproxy/go-control-plane/", "google.golang.org/grpc", "google.golang.org/protobuf/"}},
	{part: "envoy", internal: []string{"envoy", "extproc/contract"}},
	{part: "deploy", internal: nil},
	{part: "test", internal: []string{""}},
	{part: "", internal: []string{""}}, // main: everything
}

// Packages only the binary itself may import: the offline provider and the
// stand-in for Envoy are tools, never libraries of the processor.
var mainOnly = []string{"test/mockprovider", "envoy/gateway"}

type listedPackage struct {
	ImportPath string
	Name       string
	Imports    []string
	Deps       []string
	Standard   bool
}

// within reports whether rel is part or below it ("" contains everything).
func within(rel, part string) bool {
	return part == "" || rel == part || strings.HasPrefix(rel, part+"/")
}

// ruleFor returns the most specific rule for a package.
func ruleFor(rel string) houseRule {
	best := houseRule{part: "", internal: []string{""}}
	for _, r := range houseRules {
		if within(rel, r.part) && len(r.part) >= len(best.part) {
			best = r
		}
	}
	return best
}

// houseViolations checks a package graph against the rules.
func houseViolations(pkgs []listedPackage, std func(string) bool) []string {
	var out []string
	for _, p := range pkgs {
		rel, ok := strings.CutPrefix(p.ImportPath, module)
		if !ok {
			continue
		}
		rel = strings.TrimPrefix(rel, "/")
		r := ruleFor(rel)
		for _, imp := range p.Imports {
			if std(imp) {
				continue
			}
			irel, internal := strings.CutPrefix(imp, module)
			if !internal {
				if r.external != nil && !slices.ContainsFunc(r.external, func(pre string) bool { return strings.HasPrefix(imp, pre) }) {
					out = append(out, fmt.Sprintf("%s imports %s: %s may use only %v outside the module", rel, imp, r.part, r.external))
				}
				continue
			}
			irel = strings.TrimPrefix(irel, "/")
			if !slices.ContainsFunc(r.internal, func(part string) bool { return within(irel, part) }) {
				out = append(out, fmt.Sprintf("%s imports %s: %s may import only %v", displayRel(rel), displayRel(irel), displayRel(r.part), r.internal))
			}
			if slices.Contains(mainOnly, irel) && rel != "" && !within(rel, "test") {
				out = append(out, fmt.Sprintf("%s imports %s: only main.go may", displayRel(rel), irel))
			}
		}
		// Transitively: nothing below extproc/ reaches the adapter, envoy/
		// or test/; limiter and accounting reach no extproc package.
		for _, dep := range p.Deps {
			drel, internal := strings.CutPrefix(dep, module)
			if !internal {
				continue
			}
			drel = strings.TrimPrefix(drel, "/")
			switch {
			case strings.HasPrefix(rel, "extproc/") && (drel == "extproc" || within(drel, "envoy") || within(drel, "test")):
				out = append(out, fmt.Sprintf("%s depends on %s: nothing below extproc/ may", rel, drel))
			case (within(rel, "limiter") || within(rel, "accounting")) && within(drel, "extproc"):
				out = append(out, fmt.Sprintf("%s depends on %s: limiter and accounting import no extproc package", rel, drel))
			case within(rel, "extproc/dialect") && within(drel, "extproc/policy"):
				out = append(out, fmt.Sprintf("%s depends on %s: the dialects never see policy", rel, drel))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func displayRel(rel string) string {
	if rel == "" {
		return "main"
	}
	return rel
}

func listPackages(t *testing.T) ([]listedPackage, func(string) bool) {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json", "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps -json ./...: %v\n%s", err, stderr.String())
	}
	var pkgs []listedPackage
	standard := map[string]bool{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Standard {
			standard[p.ImportPath] = true
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, func(imp string) bool { return standard[imp] || imp == "C" }
}

func TestHouseRules(t *testing.T) {
	pkgs, std := listPackages(t)
	ours := 0
	for _, p := range pkgs {
		if strings.HasPrefix(p.ImportPath, module) {
			ours++
		}
	}
	if ours < 10 {
		t.Fatalf("go list found only %d of the module's packages", ours)
	}
	for _, v := range houseViolations(pkgs, std) {
		t.Error(v)
	}
}

// The rules catch what they are meant to: each forbidden arrow below is
// reported, and the allowed ones are not.
func TestHouseRulesCatchForbiddenImports(t *testing.T) {
	std := func(imp string) bool { return !strings.Contains(imp, ".") }
	m := func(rel string) string {
		if rel == "" {
			return module
		}
		return module + "/" + rel
	}
	cases := []struct {
		name   string
		pkg    listedPackage
		wantIn string // "" means no violation
	}{
		{"gate imports the adapter", listedPackage{ImportPath: m("extproc/gate"), Imports: []string{m("extproc")}, Deps: []string{m("extproc")}}, "extproc/gate imports extproc"},
		{"gate uses Envoy protos", listedPackage{ImportPath: m("extproc/gate"), Imports: []string{"github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"}}, "outside the module"},
		{"limiter imports policy", listedPackage{ImportPath: m("limiter"), Imports: []string{m("extproc/policy")}, Deps: []string{m("extproc/policy")}}, "limiter and accounting import no extproc package"},
		{"dialect imports policy", listedPackage{ImportPath: m("extproc/dialect/openai"), Imports: []string{m("extproc/policy")}, Deps: []string{m("extproc/policy")}}, "the dialects never see policy"},
		{"observe imports the mock", listedPackage{ImportPath: m("extproc/observe"), Imports: []string{m("test/mockprovider")}}, "only main.go may"},
		{"accounting imports limiter", listedPackage{ImportPath: m("accounting"), Imports: []string{m("limiter")}}, "accounting may import only"},
		{"envoy imports the gate", listedPackage{ImportPath: m("envoy/sim"), Imports: []string{m("extproc/gate")}}, "envoy may import only"},
		{"main imports the gateway", listedPackage{ImportPath: m(""), Imports: []string{m("envoy/gateway"), m("test/mockprovider")}}, ""},
		{"gate imports policy and wire", listedPackage{ImportPath: m("extproc/gate"), Imports: []string{m("extproc/policy"), m("extproc/dialect/wire"), "fmt"}}, ""},
		{"a test helper imports anything", listedPackage{ImportPath: m("test/internal/procs"), Imports: []string{m("extproc"), m("envoy/gateway")}}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := houseViolations([]listedPackage{tc.pkg}, std)
			if tc.wantIn == "" {
				if len(got) != 0 {
					t.Fatalf("allowed, but reported: %v", got)
				}
				return
			}
			if !slices.ContainsFunc(got, func(v string) bool { return strings.Contains(v, tc.wantIn) }) {
				t.Fatalf("want a violation containing %q, got %v", tc.wantIn, got)
			}
		})
	}
}
