package accounting

import (
	"encoding/json"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
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

// usdPrice builds the expected Price from a row of a pricing table in USD per
// MTok, in the column order of Anthropic's page: input, 5m cache write, 1h
// cache write, cache hit, output.
func usdPrice(t *testing.T, in, w5, w1, rd, out float64) Price {
	t.Helper()
	p, err := PriceFromUSDPerMTok(in, out, w5, w1, rd)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// oai is an OpenAI or Gemini row: input, cached input, output; no separate
// cache-write price, so both write classes cost input.
func oai(t *testing.T, in, cached, out float64) Price {
	t.Helper()
	return usdPrice(t, in, in, in, cached, out)
}

func withLong(p Price, above int64, l Price) Price {
	p.LongContext = LongContext{Above: above, Rates: l.base()}
	return p
}

func withTiers(p Price, tiers Tiers) Price {
	p.Tiers = tiers
	return p
}

var (
	half             = Multiplier{1, 2}
	anthropicTiers   = Tiers{Batch: half}
	openaiTiers      = Tiers{Batch: half, Flex: half}
	googleTiers      = Tiers{Batch: half, Flex: half, Priority: Multiplier{9, 5}}
	beforeEverything = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
)

func date(s string) time.Time {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic(err)
	}
	return t
}

// TestEmbeddedTableMatchesReference checks every embedded model against its
// provider's figures, written out here independently of prices.yaml:
// Anthropic (https://platform.claude.com/docs/en/about-claude/pricing),
// OpenAI (https://platform.openai.com/docs/pricing) and Google
// (https://ai.google.dev/gemini-api/docs/pricing), at an instant in each
// period of a dated model.
func TestEmbeddedTableMatchesReference(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{})
	a := func(p Price) Price { return withTiers(p, anthropicTiers) }
	o := func(p Price) Price { return withTiers(p, openaiTiers) }
	g := func(p Price) Price { return withTiers(p, googleTiers) }
	opus45 := a(usdPrice(t, 5, 6.25, 10, 0.50, 25))
	opus15 := a(usdPrice(t, 15, 18.75, 30, 1.50, 75))
	sonnet3 := a(usdPrice(t, 3, 3.75, 6, 0.30, 15))
	sonnetLong := usdPrice(t, 6, 7.50, 12, 0.60, 22.50)
	sonnet5Intro := a(usdPrice(t, 2, 2.50, 4, 0.20, 10))
	fable5 := a(usdPrice(t, 10, 12.50, 20, 1, 50))
	fable51 := a(usdPrice(t, 10, 12.50, 20, 0.25, 50))
	gpt5 := o(oai(t, 1.25, 0.125, 10))
	gpt52 := o(oai(t, 1.75, 0.175, 14))
	gemini3Pro := g(withLong(oai(t, 2, 0.20, 12), 200_000, oai(t, 4, 0.40, 18)))
	flashIntro := g(oai(t, 0.75, 0.075, 3.75))
	flash2027 := g(oai(t, 1.50, 0.15, 7.50))
	type at struct {
		when time.Time
		want Price
	}
	always := func(p Price) []at { return []at{{beforeEverything, p}, {aug2026, p}, {date("2030-01-01"), p}} }
	want := map[string][]at{
		// Anthropic
		"claude-3-haiku":    always(a(usdPrice(t, 0.25, 0.30, 0.50, 0.03, 1.25))),
		"claude-3-5-haiku":  always(a(usdPrice(t, 0.80, 1, 1.6, 0.08, 4))),
		"claude-3-5-sonnet": always(sonnet3),
		"claude-3-7-sonnet": always(sonnet3),
		"claude-sonnet-4-0": always(withLong(sonnet3, 200_000, sonnetLong)),
		"claude-sonnet-4-5": always(withLong(sonnet3, 200_000, sonnetLong)),
		// The 4.6 models' long-context surcharge ended on 2026-03-13.
		"claude-sonnet-4-6": {{date("2026-03-12"), withLong(sonnet3, 200_000, sonnetLong)}, {date("2026-03-13"), sonnet3}},
		"claude-opus-4-6": {{date("2026-03-12"), withLong(opus45, 200_000, usdPrice(t, 10, 12.50, 20, 1, 37.50))},
			{date("2026-03-13"), opus45}},
		"claude-3-opus":    always(opus15),
		"claude-opus-4-0":  always(opus15),
		"claude-opus-4-1":  always(opus15),
		"claude-haiku-4-5": always(a(usdPrice(t, 1, 1.25, 2, 0.10, 5))),
		"claude-opus-4-5":  always(opus45),
		"claude-opus-4-7":  always(opus45),
		"claude-opus-4-8":  always(opus45),
		"claude-opus-5":    always(opus45),
		// Introductory through 2026-08-31, then $3 / $15.
		"claude-sonnet-5":   {{date("2026-08-31").Add(24*time.Hour - time.Nanosecond), sonnet5Intro}, {date("2026-09-01"), sonnet3}},
		"claude-sonnet-5-5": always(sonnet5Intro),
		"claude-fable-5":    always(fable5),
		"claude-mythos-5":   always(fable5),
		"claude-fable-5-1":  always(fable51),
		"claude-mythos-5-1": always(fable51),
		// OpenAI
		"gpt-4o":        always(o(oai(t, 2.50, 1.25, 10))),
		"gpt-4o-mini":   always(o(oai(t, 0.15, 0.075, 0.60))),
		"gpt-4.1":       always(o(oai(t, 2, 0.50, 8))),
		"gpt-4.1-mini":  always(o(oai(t, 0.40, 0.10, 1.60))),
		"gpt-4.1-nano":  always(o(oai(t, 0.10, 0.025, 0.40))),
		"o3":            {{date("2025-06-09"), o(oai(t, 10, 0.50, 40))}, {date("2025-06-10"), o(oai(t, 2, 0.50, 8))}},
		"o4-mini":       always(o(oai(t, 1.10, 0.275, 4.40))),
		"gpt-5":         always(gpt5),
		"gpt-5.1":       always(gpt5),
		"gpt-5-mini":    always(o(oai(t, 0.25, 0.025, 2))),
		"gpt-5-nano":    always(o(oai(t, 0.05, 0.005, 0.40))),
		"gpt-5-pro":     always(o(oai(t, 15, 15, 120))),
		"gpt-5.2":       always(gpt52),
		"gpt-5.2-pro":   always(o(oai(t, 21, 21, 168))),
		"gpt-5.3":       always(gpt52),
		"gpt-5.3-codex": always(gpt52),
		"gpt-5.4":       always(o(withLong(oai(t, 2.50, 0.25, 15), 272_000, oai(t, 5, 0.50, 22.50)))),
		"gpt-5.4-mini":  always(o(oai(t, 0.75, 0.075, 4.50))),
		"gpt-5.4-nano":  always(o(oai(t, 0.20, 0.02, 1.25))),
		"gpt-5.4-pro":   always(o(withLong(oai(t, 30, 30, 180), 272_000, oai(t, 60, 60, 270)))),
		"gpt-5.5":       always(o(oai(t, 5, 0.50, 30))),
		"gpt-5.5-pro":   always(o(oai(t, 30, 30, 180))),
		"gpt-5.6-sol": always(o(withLong(usdPrice(t, 5, 6.25, 6.25, 0.50, 30), 272_000,
			usdPrice(t, 10, 12.50, 12.50, 1, 45)))),
		// Terra and Luna were cut on 2026-07-30.
		"gpt-5.6-terra": {
			{date("2026-07-29"), o(withLong(usdPrice(t, 2.50, 3.125, 3.125, 0.25, 15), 272_000, usdPrice(t, 5, 6.25, 6.25, 0.50, 22.50)))},
			{date("2026-07-30"), o(withLong(usdPrice(t, 2, 2.50, 2.50, 0.20, 12), 272_000, usdPrice(t, 4, 5, 5, 0.40, 18)))}},
		"gpt-5.6-luna": {
			{date("2026-07-29"), o(withLong(usdPrice(t, 1, 1.25, 1.25, 0.10, 6), 272_000, usdPrice(t, 2, 2.50, 2.50, 0.20, 9)))},
			{date("2026-07-30"), o(withLong(usdPrice(t, 0.20, 0.25, 0.25, 0.02, 1.20), 272_000, usdPrice(t, 0.40, 0.50, 0.50, 0.04, 1.80)))}},
		"text-embedding-3-small": always(o(usdPrice(t, 0.02, 0.02, 0.02, 0.02, 0))),
		"text-embedding-3-large": always(o(usdPrice(t, 0.13, 0.13, 0.13, 0.13, 0))),
		// Google
		"gemini-2.5-pro":         always(g(withLong(oai(t, 1.25, 0.125, 10), 200_000, oai(t, 2.50, 0.25, 15)))),
		"gemini-2.5-flash":       always(g(oai(t, 0.30, 0.03, 2.50))),
		"gemini-2.5-flash-lite":  always(g(oai(t, 0.10, 0.01, 0.40))),
		"gemini-3-pro-preview":   always(gemini3Pro),
		"gemini-3.1-pro-preview": always(gemini3Pro),
		"gemini-3-flash-preview": always(g(oai(t, 0.50, 0.05, 3))),
		"gemini-3.1-flash-lite":  always(g(oai(t, 0.25, 0.025, 1.50))),
		"gemini-3.5-flash":       always(g(oai(t, 1.50, 0.15, 9))),
		"gemini-3.5-flash-lite":  always(g(oai(t, 0.30, 0.03, 2.50))),
		// Introductory through 2026-12-31, then $1.50 from 2027-01-01.
		"gemini-3.6-flash": {{date("2026-12-31"), flashIntro}, {date("2027-01-01"), flash2027}},
		"gemini-3.7-flash": {{date("2026-12-31"), flashIntro}, {date("2027-01-01"), flash2027}},
	}
	if got := table.Models(); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
		t.Fatalf("Models() = %v, want %v", got, slices.Sorted(maps.Keys(want)))
	}
	for name, ats := range want {
		for _, w := range ats {
			got, canonical, known := table.Lookup(name, w.when)
			if !known || canonical != name || got != w.want {
				t.Errorf("Lookup(%s, %s) = %+v, %s, %v; want %+v", name, w.when.Format(time.RFC3339), got, canonical, known, w.want)
			}
		}
	}
	// Third-party-only, unpriced and differently priced models stay out.
	for _, name := range []string{"claude-opus-5-5", "claude-haiku-5-5", "claude-mythos-preview", "claude-3-sonnet-20240229",
		"gpt-4o-2024-05-13", "gemini-embedding-001"} {
		if _, _, known := table.Lookup(name, aug2026); known {
			t.Errorf("%s is in the embedded table", name)
		}
	}
}

// TestEmbeddedEntriesDatedAndSourced checks what parseTable enforces, on the
// parsed table itself: every model names its provider, cites an https page
// on that provider's own site and the date it was checked there (not in the
// future of the table), its effective dates increase, and every name is
// unique across the table.
func TestEmbeddedEntriesDatedAndSourced(t *testing.T) {
	if embedded.asOf.IsZero() || embedded.asOf.After(time.Now()) {
		t.Fatalf("as_of %v", embedded.asOf)
	}
	perProvider := map[string]int{}
	names := map[string]string{}
	for _, m := range embedded.models {
		perProvider[m.provider]++
		u, err := url.Parse(m.source)
		if err != nil || u.Scheme != "https" || !slices.Contains(providerHosts[m.provider], u.Host) {
			t.Errorf("%s: source %q is not %s's own page", m.name, m.source, m.provider)
		}
		if m.checked.IsZero() || m.checked.After(embedded.asOf) {
			t.Errorf("%s: checked %v", m.name, m.checked)
		}
		if len(m.schedule) == 0 || len(m.schedule) > 1 && m.schedule[1].From.IsZero() {
			t.Errorf("%s: schedule %+v", m.name, m.schedule)
		}
		for i := 1; i < len(m.schedule); i++ {
			if !m.schedule[i].From.After(m.schedule[i-1].From) {
				t.Errorf("%s: price %d does not follow price %d", m.name, i+1, i)
			}
		}
		for _, n := range append([]string{m.name}, m.ids...) {
			if other, dup := names[n]; dup {
				t.Errorf("name %s belongs to %s and %s", n, other, m.name)
			}
			names[n] = m.name
		}
	}
	want := map[string]int{"anthropic": 22, "openai": 27, "google": 11}
	if !maps.Equal(perProvider, want) {
		t.Errorf("models per provider %v, want %v", perProvider, want)
	}
}

// TestEmbeddedPricesExact re-reads prices.yaml's figures as decimals and
// checks each is a whole number of nano-USD per token, with no float64
// rounding between the file and the table.
func TestEmbeddedPricesExact(t *testing.T) {
	j, err := yaml.YAMLToJSON(pricesYAML)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Models []struct {
			Name   string                       `json:"name"`
			Prices []map[string]json.RawMessage `json:"prices"`
		} `json:"models"`
	}
	if err := json.Unmarshal(j, &f); err != nil {
		t.Fatal(err)
	}
	exact := regexp.MustCompile(`^\d+(\.\d{1,3})?$`)
	n := 0
	var check func(model string, m map[string]json.RawMessage)
	check = func(model string, m map[string]json.RawMessage) {
		for _, class := range []string{"input", "output", "cache_write_5m", "cache_write_1h", "cache_read"} {
			v, ok := m[class]
			if !ok || !exact.Match(v) {
				t.Errorf("%s: %s = %s is not a decimal with at most 3 places", model, class, v)
			}
			n++
		}
		if lc, ok := m["long_context"]; ok {
			var l map[string]json.RawMessage
			if err := json.Unmarshal(lc, &l); err != nil {
				t.Fatal(err)
			}
			check(model+" long_context", l)
		}
	}
	for _, m := range f.Models {
		for _, p := range m.Prices {
			check(m.Name, p)
		}
	}
	if n < 5*len(embedded.models) {
		t.Fatalf("only %d figures checked", n)
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
		{"claude-sonnet-4-5-20250929x", OtherModel, false},
		{"gpt-4o", "gpt-4o", true},
		{"gpt-4o-2024-08-06", "gpt-4o", true},    // a listed snapshot
		{"gpt-4o-2024-05-13", OtherModel, false}, // priced apart from gpt-4o: not listed
		{"gpt-4o-2099-01-01", OtherModel, false}, // OpenAI snapshots are not reduced to the family
		{"gpt-4o-mini-2024-07-18", "gpt-4o-mini", true},
		{"gpt-5.6", "gpt-5.6-sol", true},
		{"gemini-2.5-pro", "gemini-2.5-pro", true},
		{"", OtherModel, false},
		{"other", OtherModel, false},
	}
	for _, tc := range tests {
		t.Run(tc.model, func(t *testing.T) {
			p, canonical, known := table.Lookup(tc.model, aug2026)
			if canonical != tc.canonical || known != tc.known {
				t.Fatalf("Lookup(%q) = %s, %v; want %s, %v", tc.model, canonical, known, tc.canonical, tc.known)
			}
			if !known && p != DefaultFallback() {
				t.Fatalf("unknown model priced %+v, want the fallback", p)
			}
			if p.Input == 0 {
				t.Fatalf("Lookup(%q) price %+v has a zero input", tc.model, p)
			}
		})
	}
}

// TestPricedAtAdmission prices one usage of a dated model at instants
// around its effective date: a request is priced by the entry in force when
// it was admitted, to the nanosecond.
func TestPricedAtAdmission(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{})
	u := Usage{InputTokens: 1_000_000, OutputTokens: 1_000_000}
	change := date("2026-09-01")
	tests := []struct {
		name string
		at   time.Time
		want NanoUSD
	}{
		{"long before", beforeEverything, 12_000_000_000},
		{"the last nanosecond of the introductory price", change.Add(-time.Nanosecond), 12_000_000_000},
		{"the first instant of the new price", change, 18_000_000_000},
		{"after", change.Add(90 * 24 * time.Hour), 18_000_000_000},
		{"the same instant in another zone", change.In(time.FixedZone("PDT", -7*3600)), 18_000_000_000},
		{"midnight in Tokyo is still August in UTC", time.Date(2026, 9, 1, 8, 59, 0, 0, time.FixedZone("JST", 9*3600)), 12_000_000_000},
	}
	for _, tc := range tests {
		p, _, _ := table.Lookup("claude-sonnet-5", tc.at)
		if got := p.Cost(u).Total; got != tc.want {
			t.Errorf("%s: %d nano-USD, want %d", tc.name, got, tc.want)
		}
	}
}

func TestScheduleAt(t *testing.T) {
	p1, p2, p3 := Price{Input: 1}, Price{Input: 2}, Price{Input: 3}
	s := Schedule{{Price: p1}, {From: date("2026-01-01"), Price: p2}, {From: date("2026-06-01"), Price: p3}}
	for _, tc := range []struct {
		at   time.Time
		want Price
	}{
		{time.Time{}, p1}, {date("2025-12-31"), p1}, {date("2026-01-01"), p2}, {date("2026-05-31"), p2},
		{date("2026-06-01"), p3}, {date("2099-01-01"), p3},
	} {
		if got := s.At(tc.at); got != tc.want {
			t.Errorf("At(%v) = %+v, want %+v", tc.at, got, tc.want)
		}
	}
	// A schedule whose first price is dated prices earlier instants by it.
	dated := Schedule{{From: date("2026-01-01"), Price: p1}, {From: date("2026-06-01"), Price: p2}}
	if got := dated.At(date("2020-01-01")); got != p1 {
		t.Errorf("before the first from: %+v", got)
	}
	if n := testing.AllocsPerRun(100, func() { s.At(date("2026-03-01")) }); n != 0 {
		t.Errorf("At allocates %v times", n)
	}
}

func TestPricingModel(t *testing.T) {
	snap := Price{Input: 5000, Output: 15000, CacheWrite5m: 5000, CacheWrite1h: 5000, CacheRead: 5000}
	table := newTestTable(t, PriceTableOptions{Overrides: map[string]Price{"gpt-4o-2024-05-13": snap}})
	tests := []struct{ requested, served, want string }{
		// A snapshot with its own entry prices the response.
		{"gpt-4o", "gpt-4o-2024-05-13", "gpt-4o-2024-05-13"},
		// A snapshot listed as an id of the family: the same model, by its served name.
		{"gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06"},
		{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"},
		// A snapshot the table does not list: the requested model's price.
		{"gpt-4o", "gpt-4o-2099-01-01", "gpt-4o"},
		{"claude-sonnet-4-5", "claude-sonnet-4-5-20991231", "claude-sonnet-4-5"},
		// Not a snapshot of the request: never chooses the price.
		{"gpt-4o-mini", "gpt-4o-2024-05-13", "gpt-4o-mini"},
		{"gpt-4o", "gpt-4o-mini-2024-07-18", "gpt-4o"},
		{"gpt-4o", "gpt-4o-2024-05-1", "gpt-4o"},
		{"gpt-4o", "gpt-4o-2024-0513", "gpt-4o"},
		{"gpt-4o", "gpt-4o-20240513x", "gpt-4o"},
		{"gpt-4o", "gpt-4o_2024-05-13", "gpt-4o"},
		{"gpt-4o", "", "gpt-4o"},
		{"gpt-4o", "gpt-4o", "gpt-4o"},
		{"", "-2024-05-13", ""},
		{"claude-sonnet-4-5", "claude-opus-4-5-20251101", "claude-sonnet-4-5"},
	}
	for _, tc := range tests {
		if got := table.PricingModel(tc.requested, tc.served); got != tc.want {
			t.Errorf("PricingModel(%q, %q) = %q, want %q", tc.requested, tc.served, got, tc.want)
		}
	}
	if p, c, _ := table.Lookup(table.PricingModel("gpt-4o", "gpt-4o-2024-05-13"), aug2026); p != snap || c != "gpt-4o-2024-05-13" {
		t.Errorf("the snapshot's own price: %+v %s", p, c)
	}
	if n := testing.AllocsPerRun(100, func() { table.PricingModel("gpt-4o", "gpt-4o-2024-05-13") }); n != 0 {
		t.Errorf("PricingModel allocates %v times", n)
	}
}

func TestDefaultFallbackIsTheMostExpensive(t *testing.T) {
	fb := DefaultFallback()
	if fb.Input == 0 || fb.Output == 0 || fb.CacheWrite5m == 0 || fb.CacheWrite1h == 0 || fb.CacheRead == 0 {
		t.Fatalf("DefaultFallback %+v has a zero class", fb)
	}
	if fb.LongContext != (LongContext{}) || fb.Tiers != (Tiers{}) {
		t.Fatalf("DefaultFallback %+v is not flat", fb)
	}
	dearer := func(r Rates) bool {
		return r.Input > fb.Input || r.Output > fb.Output || r.CacheWrite5m > fb.CacheWrite5m ||
			r.CacheWrite1h > fb.CacheWrite1h || r.CacheRead > fb.CacheRead
	}
	for _, m := range embedded.models {
		for _, d := range m.schedule {
			if dearer(d.Price.base()) || d.Price.LongContext.Above > 0 && dearer(d.Price.LongContext.Rates) {
				t.Errorf("%s %+v is dearer than the fallback %+v in some class", m.name, d.Price, fb)
			}
		}
	}
	// Today that is GPT-5.4 Pro's long-context price, $60 / $270, and $60 for its cache
	// classes (no separate charge: they cost its input) — not Opus 4.1's $15 / $75.
	if want := usdPrice(t, 60, 60, 60, 60, 270); fb != want {
		t.Fatalf("DefaultFallback = %+v, want %+v", fb, want)
	}
	table := newTestTable(t, PriceTableOptions{})
	unknown, _, _ := table.Lookup("claude-unreleased-9", aug2026)
	for _, u := range []Usage{
		{InputTokens: 1, OutputTokens: 1, CacheReadTokens: 1, CacheWrite5mTokens: 1, CacheWrite1hTokens: 1},
		{InputTokens: 300_000, OutputTokens: 1000, CacheReadTokens: 1000},
		{InputTokens: 1000, OutputTokens: 1000, ServiceTier: "priority"},
	} {
		for _, m := range table.Models() {
			for _, at := range []time.Time{beforeEverything, aug2026, date("2030-01-01")} {
				p, _, _ := table.Lookup(m, at)
				if p.Cost(u).Total > unknown.Cost(u).Total {
					t.Errorf("an unknown model costs less than %s for %+v at %v", m, u, at)
				}
			}
		}
	}
}

func TestNewPriceTable(t *testing.T) {
	fb := DefaultFallback()
	cheap := Price{Input: 100, Output: 400, CacheWrite5m: 125, CacheWrite1h: 200, CacheRead: 10}
	dear := Price{Input: 200, Output: 800, CacheWrite5m: 250, CacheWrite1h: 400, CacheRead: 20}
	dated := Schedule{{Price: cheap}, {From: date("2026-09-01"), Price: dear}}
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
		{name: "a model both flat and dated",
			opts:    PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"m": cheap}, Schedules: map[string]Schedule{"m": dated}},
			wantErr: "both"},
		{name: "a schedule out of order",
			opts:    PriceTableOptions{Fallback: fb, Schedules: map[string]Schedule{"m": {{From: date("2026-09-01"), Price: cheap}, {From: date("2026-01-01"), Price: dear}}}},
			wantErr: "not after"},
		{name: "an empty schedule", opts: PriceTableOptions{Fallback: fb, Schedules: map[string]Schedule{"m": {}}}, wantErr: "no prices"},
		{name: "two names of one model, one price",
			opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"claude-sonnet-4-5": cheap, "claude-sonnet-4-5-20250929": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				if p, _, _ := table.Lookup("claude-sonnet-4-5", aug2026); p != cheap {
					t.Fatalf("price %+v", p)
				}
			}},
		{name: "override beats the table under every name and at every time",
			opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"claude-sonnet-5": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				for _, name := range []string{"claude-sonnet-5", "claude-sonnet-5-20260101", "anthropic/claude-sonnet-5"} {
					for _, at := range []time.Time{beforeEverything, date("2026-09-01"), date("2030-01-01")} {
						if p, c, known := table.Lookup(name, at); p != cheap || c != "claude-sonnet-5" || !known {
							t.Errorf("Lookup(%s, %v) = %+v, %s, %v", name, at, p, c, known)
						}
					}
				}
				if p, _, _ := table.Lookup("claude-sonnet-4-6", aug2026); p == cheap {
					t.Errorf("the override leaked to another model")
				}
			}},
		{name: "override through an alias reprices the model",
			opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"claude-3-7-sonnet-latest": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				if p, c, _ := table.Lookup("claude-3-7-sonnet-20250219", aug2026); p != cheap || c != "claude-3-7-sonnet" {
					t.Fatalf("Lookup = %+v, %s", p, c)
				}
			}},
		{name: "dated override of an embedded model",
			opts: PriceTableOptions{Fallback: fb, Schedules: map[string]Schedule{"gpt-4o": dated}},
			check: func(t *testing.T, table *PriceTable) {
				if p, _, _ := table.Lookup("gpt-4o-2024-08-06", date("2026-08-31")); p != cheap {
					t.Errorf("before: %+v", p)
				}
				if p, _, _ := table.Lookup("gpt-4o", date("2026-09-01")); p != dear {
					t.Errorf("after: %+v", p)
				}
			}},
		{name: "new model from config",
			opts: PriceTableOptions{Fallback: fb, Overrides: map[string]Price{"my-llama": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				if p, c, known := table.Lookup("my-llama", aug2026); p != cheap || c != "my-llama" || !known {
					t.Fatalf("Lookup = %+v, %s, %v", p, c, known)
				}
				if _, _, known := table.Lookup("my-llama-2024-05-13", aug2026); known {
					t.Fatalf("a dated name resolved to its family")
				}
				if !slices.Contains(table.Models(), "my-llama") {
					t.Fatalf("Models() lacks my-llama")
				}
			}},
		{name: "custom fallback",
			opts: PriceTableOptions{Fallback: cheap},
			check: func(t *testing.T, table *PriceTable) {
				if p, c, known := table.Lookup("mistral-large", aug2026); p != cheap || c != OtherModel || known || table.Fallback() != cheap {
					t.Fatalf("Lookup = %+v, %s, %v", p, c, known)
				}
			}},
		{name: "without the embedded table",
			opts: PriceTableOptions{Fallback: fb, WithoutEmbedded: true, Overrides: map[string]Price{"b-model": cheap, "a-model": cheap}},
			check: func(t *testing.T, table *PriceTable) {
				if got := table.Models(); !slices.Equal(got, []string{"a-model", "b-model"}) {
					t.Fatalf("Models() = %v", got)
				}
				if _, _, known := table.Lookup("claude-sonnet-4-5", aug2026); known {
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
	if p, _, _ := plain.Lookup("claude-sonnet-5", aug2026); p == cheap {
		t.Fatal("an override leaked into a later table")
	}
	if p, _, _ := plain.Lookup("gpt-4o", date("2026-09-01")); p == dear {
		t.Fatal("a dated override leaked into a later table")
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
	head := "as_of: \"2026-11-21\"\nmodels:\n"
	cls := "input: 1, output: 1, cache_write_5m: 1, cache_write_1h: 1, cache_read: 1"
	model := func(name, extra, prices string) string {
		return "  - {name: " + name + ", provider: openai, source: \"https://platform.openai.com/docs/pricing\", checked: \"2026-01-02\"" +
			extra + ", prices: [" + prices + "]}\n"
	}
	row := func(name, in string) string {
		return model(name, "", "{input: "+in+", output: 1, cache_write_5m: 1, cache_write_1h: 1, cache_read: 1}")
	}
	long := "long_context: {above: 10, input: 2, output: 2, cache_write_5m: 2, cache_write_1h: 2, cache_read: 2}"
	tests := []struct{ name, yaml, wantErr string }{
		{"valid", head + row("a", "1") + row("b", "2"), ""},
		{"dated and tiered", head + model("a", ", tiers: {batch: 0.5, priority: \"9/5\"}", "{"+cls+", "+long+"}, {from: \"2026-09-01\", "+cls+"}"), ""},
		{"no header", "models:\n" + row("a", "1"), "required"},
		{"bad as_of", "as_of: soon\nmodels:\n" + row("a", "1"), "as_of"},
		{"inexact", head + row("a", "0.0001"), "inexact"},
		{"missing class", head + model("a", "", "{input: 1, output: 1, cache_write_5m: 1, cache_write_1h: 1}"), "all five"},
		{"missing long-context class", head + model("a", "", "{"+cls+", long_context: {above: 10, input: 2, output: 2}}"), "long_context: all five"},
		{"long context below base", head + model("a", "", "{"+cls+", long_context: {above: 10, input: 0.5, output: 2, cache_write_5m: 2, cache_write_1h: 2, cache_read: 2}}"), "surcharge"},
		{"long context without a threshold", head + model("a", "", "{"+cls+", long_context: {input: 2, output: 2, cache_write_5m: 2, cache_write_1h: 2, cache_read: 2}}"), "above"},
		{"no prices", head + model("a", "", ""), "no prices"},
		{"second price undated", head + model("a", "", "{"+cls+"}, {"+cls+"}"), "only the first"},
		{"dates out of order", head + model("a", "", "{from: \"2026-09-01\", "+cls+"}, {from: \"2026-08-01\", "+cls+"}"), "not after"},
		{"bad from", head + model("a", "", "{from: \"September\", "+cls+"}"), "from"},
		{"tiers on one price", head + model("a", "", "{"+cls+", tiers: {batch: 0.5}}"), "tiers are set on the model"},
		{"bad multiplier", head + model("a", ", tiers: {batch: 0}", "{"+cls+"}"), "multiplier"},
		{"repeated name", head + row("a", "1") + row("a", "2"), "repeated"},
		{"alias repeats a name", head + row("a", "1") + model("b", ", ids: [a]", "{"+cls+"}"), "repeated"},
		{"reserved name", head + row("other", "1"), "reserved"},
		{"unknown field", head + "  - {name: a, inptu: 1}\n", "unknown field"},
		{"unknown provider", head + strings.Replace(row("a", "1"), "provider: openai", "provider: acme", 1), "provider"},
		{"no source", head + strings.Replace(row("a", "1"), `source: "https://platform.openai.com/docs/pricing"`, `source: ""`, 1), "source"},
		{"http source", head + strings.Replace(row("a", "1"), "https://platform.openai.com", "http://platform.openai.com", 1), "source"},
		{"another provider's page", head + strings.Replace(row("a", "1"), "platform.openai.com", "docs.anthropic.com", 1), "source"},
		{"a reseller's page", head + strings.Replace(row("a", "1"), "platform.openai.com", "openrouter.ai", 1), "source"},
		{"a local file", head + strings.Replace(row("a", "1"), "https://platform.openai.com/docs/pricing", "file:///work/shared/reference/prices.md", 1), "source"},
		{"not checked", head + strings.Replace(row("a", "1"), `checked: "2026-01-02"`, `checked: ""`, 1), "checked"},
		{"checked after as_of", head + strings.Replace(row("a", "1"), "2026-01-02", "2026-12-01", 1), "after the table"},
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

func TestModelPrice(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	tests := []struct {
		name    string
		json    string
		want    Schedule
		wantErr string
	}{
		{name: "flat, as before effective dates", json: `{"input": 0.2, "output": 0.6}`,
			want: Flat(Price{Input: 200, Output: 600, CacheWrite5m: 250, CacheWrite1h: 400, CacheRead: 20})},
		{name: "tiers and long context", json: `{"input": 1, "output": 2, "tiers": {"batch": 0.5, "priority": "5/2"},
			"long_context": {"above": 100000, "input": 2, "output": 4}}`,
			want: Flat(Price{Input: 1000, Output: 2000, CacheWrite5m: 1250, CacheWrite1h: 2000, CacheRead: 100,
				LongContext: LongContext{Above: 100000, Rates: Rates{Input: 2000, Output: 4000, CacheWrite5m: 2500, CacheWrite1h: 4000, CacheRead: 200}},
				Tiers:       Tiers{Batch: Multiplier{1, 2}, Priority: Multiplier{5, 2}}})},
		{name: "dated", json: `[{"input": 1, "output": 2}, {"from": "2026-09-01", "input": 2, "output": 4}]`,
			want: Schedule{{Price: Price{Input: 1000, Output: 2000, CacheWrite5m: 1250, CacheWrite1h: 2000, CacheRead: 100}},
				{From: date("2026-09-01"), Price: Price{Input: 2000, Output: 4000, CacheWrite5m: 2500, CacheWrite1h: 4000, CacheRead: 200}}}},
		{name: "an RFC 3339 instant", json: `[{"from": "2026-09-01T09:00:00+02:00", "input": 1, "output": 2}]`,
			want: Schedule{{From: time.Date(2026, 9, 1, 7, 0, 0, 0, time.UTC), Price: Price{Input: 1000, Output: 2000, CacheWrite5m: 1250, CacheWrite1h: 2000, CacheRead: 100}}}},
		{name: "unknown field", json: `{"input": 1, "output": 2, "cached": 1}`, wantErr: "unknown field"},
		{name: "unknown field in a list", json: `[{"input": 1, "output": 2, "form": "2026-01-01"}]`, wantErr: "unknown field"},
		{name: "output missing", json: `{"input": 1}`, wantErr: "required"},
		{name: "second undated", json: `[{"input": 1, "output": 2}, {"input": 2, "output": 4}]`, wantErr: "only the first"},
		{name: "bad date", json: `[{"from": "1 Sept", "input": 1, "output": 2}]`, wantErr: "from"},
		{name: "long context cheaper", json: `{"input": 1, "output": 2, "long_context": {"above": 10, "input": 0.5, "output": 2}}`, wantErr: "surcharge"},
		{name: "long context without threshold", json: `{"input": 1, "output": 2, "long_context": {"input": 2, "output": 4}}`, wantErr: "above"},
		{name: "bad tier", json: `{"input": 1, "output": 2, "tiers": {"flex": -1}}`, wantErr: "multiplier"},
		{name: "empty list", json: `[]`, wantErr: "no prices"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o ModelPrice
			err := json.Unmarshal([]byte(tc.json), &o)
			var s Schedule
			if err == nil {
				s, err = o.Schedule()
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !s.equal(tc.want) {
				t.Fatalf("schedule %+v, want %+v", s, tc.want)
			}
		})
	}
	// The Go form of a flat override, as policy compiles it.
	if p, err := (USDPerMTok{Input: f(3), Output: f(15)}).Price(); err != nil || p.CacheRead != 300 {
		t.Fatalf("USDPerMTok.Price = %+v, %v", p, err)
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{Overrides: map[string]Price{"my-llama": DefaultFallback()}})
	for _, model := range []string{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20991231",
		"anthropic/claude-opus-4-7", "claude-sonnet-5", "gpt-5.6-terra", "my-llama", "unknown-model"} {
		if n := testing.AllocsPerRun(100, func() { table.Lookup(model, aug2026) }); n != 0 {
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
			if _, canonical, known := table.Lookup(string(m[1]), aug2026); !known {
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
	at := time.Now()
	for _, model := range []string{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20991231",
		"anthropic/claude-opus-4-7", "claude-sonnet-5", "gpt-5.6-terra", "unknown-model"} {
		b.Run(model, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				table.Lookup(model, at)
			}
		})
	}
}

// FuzzParseTable feeds arbitrary price files to the loader: it never
// panics, and a table it accepts holds only valid, dated, sourced models.
func FuzzParseTable(f *testing.F) {
	f.Add(pricesYAML)
	f.Add([]byte("as_of: \"2026-11-21\"\nmodels:\n  - {name: a, provider: google, source: \"https://ai.google.dev/gemini-api/docs/pricing\", checked: \"2026-01-02\", " +
		"tiers: {flex: 0.5}, prices: [{input: 1, output: 1, cache_write_5m: 1, cache_write_1h: 1, cache_read: 1, " +
		"long_context: {above: 5, input: 2, output: 2, cache_write_5m: 2, cache_write_1h: 2, cache_read: 2}}, " +
		"{from: \"2026-09-01\", input: 1, output: 1, cache_write_5m: 1, cache_write_1h: 1, cache_read: 1}]}\n"))
	f.Add([]byte("as_of: x\nmodels: [{name: other}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tb, err := parseTable(data)
		if err != nil {
			return
		}
		for _, m := range tb.models {
			if m.source == "" || m.checked.IsZero() || m.checked.After(tb.asOf) {
				t.Fatalf("%s: accepted without a source or date", m.name)
			}
			if err := m.schedule.validate(); err != nil {
				t.Fatalf("%s: accepted an invalid schedule: %v", m.name, err)
			}
		}
	})
}
