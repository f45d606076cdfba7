package accounting

import (
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// newTestTable builds a table with DefaultFallback unless opts sets another.
func newTestTable(t testing.TB, opts PriceTableOptions) *PriceTable {
	t.Helper()
	if opts.Fallback == (Price{}) {
		opts.Fallback = DefaultFallback()
	}
	table, err := NewPriceTable(opts)
	if err != nil {
		t.Fatalf("NewPriceTable: %v", err)
	}
	return table
}

// usdPrice builds the expected Price from a row of Anthropic's pricing table
// (https://docs.anthropic.com/en/docs/about-claude/pricing; USD per MTok: input,
// 5m cache write, 1h cache write, cache hit, output — the page's column order).
func usdPrice(t *testing.T, in, w5, w1, rd, out float64) Price {
	t.Helper()
	p, err := PriceFromUSDPerMTok(in, out, w5, w1, rd)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEmbeddedTableMatchesReference(t *testing.T) {
	if embedded.asOf != "2026-11-21" || !strings.Contains(embedded.source, "docs.anthropic.com/en/docs/about-claude/pricing") {
		t.Fatalf("header: as_of %q, source %q", embedded.asOf, embedded.source)
	}
	table := newTestTable(t, PriceTableOptions{})
	opus45 := usdPrice(t, 5, 6.25, 10, 0.50, 25)
	opus15 := usdPrice(t, 15, 18.75, 30, 1.50, 75)
	sonnet3 := usdPrice(t, 3, 3.75, 6, 0.30, 15)
	sonnet5 := usdPrice(t, 2, 2.50, 4, 0.20, 10)
	fable5 := usdPrice(t, 10, 12.50, 20, 1, 50)
	fable51 := usdPrice(t, 10, 12.50, 20, 0.25, 50)
	want := map[string]Price{
		"claude-3-haiku":    usdPrice(t, 0.25, 0.30, 0.50, 0.03, 1.25),
		"claude-3-5-haiku":  usdPrice(t, 0.80, 1, 1.6, 0.08, 4),
		"claude-3-5-sonnet": sonnet3,
		"claude-3-7-sonnet": sonnet3,
		"claude-sonnet-4-0": sonnet3,
		"claude-sonnet-4-5": sonnet3,
		"claude-sonnet-4-6": sonnet3,
		"claude-3-opus":     opus15,
		"claude-opus-4-0":   opus15,
		"claude-opus-4-1":   opus15,
		"claude-haiku-4-5":  usdPrice(t, 1, 1.25, 2, 0.10, 5),
		"claude-opus-4-5":   opus45,
		"claude-opus-4-6":   opus45,
		"claude-opus-4-7":   opus45,
		"claude-opus-4-8":   opus45,
		"claude-opus-5":     opus45,
		"claude-sonnet-5":   sonnet5,
		"claude-sonnet-5-5": sonnet5,
		"claude-fable-5":    fable5,
		"claude-mythos-5":   fable5,
		"claude-fable-5-1":  fable51,
		"claude-mythos-5-1": fable51,
	}
	if got := table.Models(); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
		t.Fatalf("Models() = %v, want %v", got, slices.Sorted(maps.Keys(want)))
	}
	for name, p := range want {
		got, canonical, known := table.Lookup(name)
		if !known || canonical != name || got != p {
			t.Errorf("Lookup(%s) = %+v, %s, %v; want %+v", name, got, canonical, known, p)
		}
	}
	// Third-party-only and unpriced models stay out.
	for _, name := range []string{"claude-opus-5-5", "claude-haiku-5-5", "claude-mythos-preview", "claude-3-sonnet-20240229", "gpt-4o"} {
		if _, _, known := table.Lookup(name); known {
			t.Errorf("%s is in the embedded table", name)
		}
	}
}

func TestLookup(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{})
	tests := []struct {
		model, canonical string
		known            bool
	}{
		{"claude-sonnet-4-5", "claude-sonnet-4-5", true},
		{"claude-sonnet-4-5-20250929", "claude-sonnet-4-5", true},
		{"claude-sonnet-4-5-20991231", "claude-sonnet-4-5", true}, // future snapshot: stripped
		{"claude-3-7-sonnet-latest", "claude-3-7-sonnet", true},
		{"claude-3-7-sonnet-20250219", "claude-3-7-sonnet", true},
		{"claude-3-5-sonnet-20240620", "claude-3-5-sonnet", true},
		{"claude-3-opus-latest", "claude-3-opus", true},
		{"claude-3-haiku-20240307", "claude-3-haiku", true},
		{"claude-sonnet-4-20250514", "claude-sonnet-4-0", true},
		{"claude-4-sonnet-20250514", "claude-sonnet-4-0", true},
		{"claude-opus-4-20250514", "claude-opus-4-0", true},
		{"claude-opus-4-1-20250805", "claude-opus-4-1", true},
		{"claude-opus-4-6-20260205", "claude-opus-4-6", true},
		{"claude-haiku-4-5-20251001", "claude-haiku-4-5", true},
		{"anthropic/claude-opus-4-7", "claude-opus-4-7", true},
		{"anthropic/claude-opus-4-1-20250805", "claude-opus-4-1", true},
		{"anthropic/claude-opus-4-1-29990101", "claude-opus-4-1", true},
		{"us.anthropic.claude-sonnet-4-5-20250929-v1:0", OtherModel, false}, // Bedrock: priced differently
		{"claude-sonnet-4-5@20250929", OtherModel, false},                   // Vertex
		{"anthropic/anthropic/claude-opus-4-7", OtherModel, false},
		{"Claude-Sonnet-4-5", OtherModel, false}, // IDs are case-sensitive
		{"claude-sonnet-4-5-2025092", OtherModel, false},
		{"claude-sonnet-4-5-2025092x", OtherModel, false},
		{"-20250929", OtherModel, false},
		{"claude-sonnet-4-520250929", OtherModel, false},
		{"gpt-4o", OtherModel, false},
		{"gpt-4o-2024-08-06", OtherModel, false},
		{"", OtherModel, false},
		{"other", OtherModel, false},
	}
	for _, tc := range tests {
		t.Run(tc.model, func(t *testing.T) {
			p, canonical, known := table.Lookup(tc.model)
			if canonical != tc.canonical || known != tc.known {
				t.Fatalf("Lookup(%q) = %s, %v; want %s, %v", tc.model, canonical, known, tc.canonical, tc.known)
			}
			if !known && p != DefaultFallback() {
				t.Fatalf("unknown model priced %+v, want the fallback", p)
			}
			if p.Input == 0 || p.Output == 0 {
				t.Fatalf("Lookup(%q) price %+v has a zero class", tc.model, p)
			}
		})
	}
}

func TestDefaultFallbackIsTheMostExpensive(t *testing.T) {
	fb := DefaultFallback()
	if fb.Input == 0 || fb.Output == 0 || fb.CacheWrite5m == 0 || fb.CacheWrite1h == 0 || fb.CacheRead == 0 {
		t.Fatalf("DefaultFallback %+v has a zero class", fb)
	}
	for _, m := range embedded.models {
		p := m.price
		if p.Input > fb.Input || p.Output > fb.Output || p.CacheWrite5m > fb.CacheWrite5m ||
			p.CacheWrite1h > fb.CacheWrite1h || p.CacheRead > fb.CacheRead {
			t.Errorf("%s %+v is dearer than the fallback %+v in some class", m.name, p, fb)
		}
	}
	// Today that is Opus 3/4/4.1 at $15/$75 — not Fable 5 at $10/$50.
	if want := usdPrice(t, 15, 18.75, 30, 1.50, 75); fb != want {
		t.Fatalf("DefaultFallback = %+v, want Opus 4.1's %+v", fb, want)
	}
	u := Usage{InputTokens: 1, OutputTokens: 1, CacheReadTokens: 1, CacheWrite5mTokens: 1, CacheWrite1hTokens: 1}
	table := newTestTable(t, PriceTableOptions{})
	unknown, _, _ := table.Lookup("claude-unreleased-9")
	for _, m := range table.Models() {
		p, _, _ := table.Lookup(m)
		if p.Cost(u).Total > unknown.Cost(u).Total {
			t.Errorf("an unknown model costs less than %s", m)
		}
	}
}

func TestNewPriceTable(t *testing.T) {
	fb := DefaultFallback()
	cheap := Price{Input: 100, Output: 400, CacheWrite5m: 125, CacheWrite1h: 200, CacheRead: 10}
	tests := []struct {
		name    string
		opts    PriceTableOptions
		wantErr string
		check   func(t *testing.T, table *PriceTable)
	}{
		{name: "zero fallback", opts: PriceTableOptions{}, wantErr: "zero class"},
		{name: "fallback with a zero class", opts: PriceTableOptions{Fallback: Price{Input: 1, Output: 1, CacheWrite5m: 1, CacheWrite1h: 1}}, wantErr: "zero class"},
		{name: "negative fallback", opts: PriceTableOptions{Fallback: Price{Input: -1, Output: 1, CacheWrite5m: 1, CacheWrite1h: 1, CacheRead: 1}}, wantErr: "outside"},
		{name: "negative override", opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"gpt-4o": {Input: -1}}}, wantErr: "outside"},
		{name: "override named other", opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"other": cheap}}, wantErr: "reserved"},
		{name: "override with an empty name", opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"": cheap}}, wantErr: "reserved"},
		{name: "two names of one model, two prices",
			opts:    PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"claude-sonnet-4-5": cheap, "claude-sonnet-4-5-20250929": fb}},
			wantErr: "same model"},
		{name: "two names of one model, one price",
			opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"claude-sonnet-4-5": cheap, "claude-sonnet-4-5-20250929": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				if p, _, _ := table.Lookup("claude-sonnet-4-5"); p != cheap {
					t.Fatalf("price %+v", p)
				}
			}},
		{name: "override beats the table under every name",
			opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"claude-sonnet-4-5": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				for _, name := range []string{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20991231", "anthropic/claude-sonnet-4-5"} {
					if p, c, known := table.Lookup(name); p != cheap || c != "claude-sonnet-4-5" || !known {
						t.Errorf("Lookup(%s) = %+v, %s, %v", name, p, c, known)
					}
				}
				if p, _, _ := table.Lookup("claude-sonnet-4-6"); p == cheap {
					t.Errorf("the override leaked to another model")
				}
			}},
		{name: "override through an alias reprices the model",
			opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"claude-3-7-sonnet-latest": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				if p, c, _ := table.Lookup("claude-3-7-sonnet-20250219"); p != cheap || c != "claude-3-7-sonnet" {
					t.Fatalf("Lookup = %+v, %s", p, c)
				}
			}},
		{name: "new model from config",
			opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"gpt-4o": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				if p, c, known := table.Lookup("gpt-4o"); p != cheap || c != "gpt-4o" || !known {
					t.Fatalf("Lookup = %+v, %s, %v", p, c, known)
				}
				if _, _, known := table.Lookup("gpt-4o-2024-05-13"); known {
					t.Fatalf("an OpenAI snapshot resolved to its family")
				}
				if !slices.Contains(table.Models(), "gpt-4o") {
					t.Fatalf("Models() lacks gpt-4o")
				}
			}},
		{name: "custom fallback",
			opts: PriceTableOptions{Fallback: cheap},
			check: func(t *testing.T, table *PriceTable) {
				if p, c, known := table.Lookup("mistral-large"); p != cheap || c != OtherModel || known || table.Fallback() != cheap {
					t.Fatalf("Lookup = %+v, %s, %v", p, c, known)
				}
			}},
		{name: "without the embedded table",
			opts: PriceTableOptions{Fallback: fb, WithoutEmbedded: true, Overrides: map[string]Price{"b-model": cheap, "a-model": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				if got := table.Models(); !slices.Equal(got, []string{"a-model", "b-model"}) {
					t.Fatalf("Models() = %v", got)
				}
				if _, _, known := table.Lookup("claude-sonnet-4-5"); known {
					t.Fatalf("embedded model known")
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			table, err := NewPriceTable(tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, table)
		})
	}
	// Overrides in one table never reach the embedded data or other tables.
	plain := newTestTable(t, PriceTableOptions{})
	if p, _, _ := plain.Lookup("claude-sonnet-4-5"); p == cheap {
		t.Fatal("an override leaked into a later table")
	}
}

func TestModelsIsACopy(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{})
	m := table.Models()
	m[0] = "mutated"
	if table.Models()[0] == "mutated" {
		t.Fatal("Models exposes the table's slice")
	}
}

func TestParseTableErrors(t *testing.T) {
	head := "as_of: \"2026-11-21\"\nsource: test\nmodels:\n"
	row := func(name, in string) string {
		return "  - {name: " + name + ", input: " + in + ", output: 1, cache_write_5m: 1, cache_write_1h: 1, cache_read: 1}\n"
	}
	tests := []struct{ name, yaml, wantErr string }{
		{"valid", head + row("a", "1") + row("b", "2"), ""},
		{"no header", "models:\n" + row("a", "1"), "required"},
		{"inexact", head + row("a", "0.0001"), "inexact"},
		{"missing class", head + "  - {name: a, input: 1, output: 1, cache_write_5m: 1, cache_write_1h: 1}\n", "all five"},
		{"repeated name", head + row("a", "1") + row("a", "2"), "repeated"},
		{"alias repeats a name", head + row("a", "1") + "  - {name: b, ids: [a], input: 1, output: 1, cache_write_5m: 1, cache_write_1h: 1, cache_read: 1}\n", "repeated"},
		{"reserved name", head + row("other", "1"), "reserved"},
		{"unknown field", head + "  - {name: a, inptu: 1}\n", "unknown field"},
		{"not yaml", "{[", "parse"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseTable([]byte(tc.yaml))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{Overrides: map[string]Price{"gpt-4o": DefaultFallback()}})
	for _, model := range []string{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20991231", "anthropic/claude-opus-4-7", "gpt-4o", "unknown-model"} {
		if n := testing.AllocsPerRun(100, func() { table.Lookup(model) }); n != 0 {
			t.Errorf("Lookup(%s) allocates %v times", model, n)
		}
	}
}

// TestRecordedModelsAreKnown resolves every model named in the recorded
// Anthropic traffic (requests and responses).
func TestRecordedModelsAreKnown(t *testing.T) {
	dir := fixturesDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "anthropic-recorded", "cassettes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cassettes in %s (err %v)", dir, err)
	}
	table := newTestTable(t, PriceTableOptions{})
	modelRE := regexp.MustCompile(`\\?"model\\?"\s*:\s*\\?"([^"\\]+)`)
	seen := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range modelRE.FindAllSubmatch(data, -1) {
			seen++
			if _, canonical, known := table.Lookup(string(m[1])); !known {
				t.Errorf("%s: recorded model %q unknown", filepath.Base(f), m[1])
			} else if canonical != "claude-3-7-sonnet" {
				t.Errorf("%s: recorded model %q resolved to %s", filepath.Base(f), m[1], canonical)
			}
		}
	}
	if seen == 0 {
		t.Fatal("no model names found in the cassettes")
	}
}

// fixturesDir finds shared/fixtures next to the repository by walking up from
// the test's working directory, and skips the test when there is none (a
// plain clone of the project has no ../shared).
func fixturesDir(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		candidate := filepath.Join(dir, "shared", "fixtures")
		if st, err := os.Stat(candidate); err == nil && st.IsDir() {
			return candidate
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("no shared/fixtures directory above the working directory; recorded-traffic tests need ../shared/fixtures next to the repository")
		}
		dir = parent
	}
}

func BenchmarkLookup(b *testing.B) {
	table := newTestTable(b, PriceTableOptions{})
	for _, model := range []string{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20991231", "anthropic/claude-opus-4-7", "unknown-model"} {
		b.Run(model, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				table.Lookup(model)
			}
		})
	}
}
