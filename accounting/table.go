package accounting

import (
	_ "embed"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// OtherModel is the canonical name Lookup returns for a model the table does
// not know. Together with Models it is the complete, bounded set of model
// label values.
const OtherModel = "other"

//go:embed prices.yaml
var pricesYAML []byte

// priceFile is the shape of prices.yaml.
type priceFile struct {
	AsOf string `json:"as_of"`
	// XTiers holds the shared tier multipliers the models refer to by YAML
	// anchor; it is read (so a malformed one fails the load) but not used.
	XTiers map[string]Tiers `json:"x-tiers"`
	Models []priceEntry     `json:"models"`
}

// priceEntry is one model of prices.yaml: who sells it, the page its prices
// come from and when they were last checked there, the names it answers
// to, and its prices in effect order.
type priceEntry struct {
	Name     string       `json:"name"`
	Provider string       `json:"provider"`
	IDs      []string     `json:"ids"`
	Source   string       `json:"source"`
	Checked  string       `json:"checked"`
	Tiers    *Tiers       `json:"tiers"`
	Prices   []USDPerMTok `json:"prices"`
}

// providerHosts are the providers of the embedded table and the hosts their
// own price pages are served from: an entry's source must be one of them, so
// every embedded figure cites its vendor, never a reseller or a copy.
var providerHosts = map[string][]string{
	"anthropic": {"docs.anthropic.com", "platform.claude.com", "www.anthropic.com", "claude.com"},
	"openai":    {"openai.com", "platform.openai.com", "developers.openai.com"},
	"google":    {"ai.google.dev"},
}

// tableModel is one model of a table: its canonical name, the other names
// it answers to, where its prices come from, and its prices over time.
type tableModel struct {
	name     string
	provider string // "" for a model added by configuration
	ids      []string
	source   string
	checked  time.Time
	schedule Schedule
}

// embedded is the parsed prices.yaml. The file is compiled in and parsed by
// every test run, so a defect is a build error caught before release; failing
// at package initialisation, like regexp.MustCompile, is the honest response.
var embedded = mustParseTable(pricesYAML)

func mustParseTable(data []byte) embeddedTable {
	t, err := parseTable(data)
	if err != nil {
		panic(fmt.Sprintf("accounting: embedded prices.yaml: %v", err))
	}
	return t
}

type embeddedTable struct {
	asOf     time.Time
	models   []tableModel
	fallback Price
}

// parseTable reads a price file. Every model must name its provider, cite
// that provider's own page (https) and the date its figures were checked
// there (not after the table's as_of); every price must state all five
// classes exactly, long-context tiers included; effective dates must
// increase; and every name must be unique across the whole table.
func parseTable(data []byte) (embeddedTable, error) {
	var f priceFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return embeddedTable{}, fmt.Errorf("parse: %w", err)
	}
	if f.AsOf == "" || len(f.Models) == 0 {
		return embeddedTable{}, fmt.Errorf("as_of and models are required")
	}
	asOf, err := time.Parse(time.DateOnly, f.AsOf)
	if err != nil {
		return embeddedTable{}, fmt.Errorf("as_of %q: want a date (2006-01-02)", f.AsOf)
	}
	t := embeddedTable{asOf: asOf}
	seen := make(map[string]bool)
	for _, e := range f.Models {
		for _, n := range append([]string{e.Name}, e.IDs...) {
			if n == "" || n == OtherModel || seen[n] {
				return embeddedTable{}, fmt.Errorf("model name %q is empty, reserved or repeated", n)
			}
			seen[n] = true
		}
		m, err := parseEntry(e, asOf)
		if err != nil {
			return embeddedTable{}, fmt.Errorf("model %s: %w", e.Name, err)
		}
		t.models = append(t.models, m)
		for _, d := range m.schedule {
			t.fallback = maxRates(t.fallback, d.Price.base())
			if d.Price.LongContext.Above > 0 {
				t.fallback = maxRates(t.fallback, d.Price.LongContext.Rates)
			}
		}
	}
	return t, nil
}

func parseEntry(e priceEntry, asOf time.Time) (tableModel, error) {
	m := tableModel{name: e.Name, provider: e.Provider, ids: e.IDs, source: e.Source}
	hosts, ok := providerHosts[e.Provider]
	if !ok {
		return m, fmt.Errorf("provider %q: want one of %v", e.Provider, slices.Sorted(maps.Keys(providerHosts)))
	}
	u, err := url.Parse(e.Source)
	if err != nil || u.Scheme != "https" || !slices.Contains(hosts, u.Host) {
		return m, fmt.Errorf("source %q: want an https URL on %s's own site (%s)", e.Source, e.Provider, strings.Join(hosts, ", "))
	}
	if m.checked, err = time.Parse(time.DateOnly, e.Checked); err != nil {
		return m, fmt.Errorf("checked %q: want the date (2006-01-02) the prices were checked at the source", e.Checked)
	}
	if m.checked.After(asOf) {
		return m, fmt.Errorf("checked %s is after the table's as_of", e.Checked)
	}
	if len(e.Prices) == 0 {
		return m, fmt.Errorf("no prices")
	}
	for i, p := range e.Prices {
		// The table states every class: derived cache prices are for
		// configuration, and official figures are not always the multiples.
		if p.CacheWrite5m == nil || p.CacheWrite1h == nil || p.CacheRead == nil {
			return m, fmt.Errorf("price %d: all five prices are required", i+1)
		}
		if lc := p.LongContext; lc != nil && (lc.CacheWrite5m == nil || lc.CacheWrite1h == nil || lc.CacheRead == nil) {
			return m, fmt.Errorf("price %d: long_context: all five prices are required", i+1)
		}
		// Tiers belong to the model: a tier discount that changes with a
		// price change is a new model entry's business, not a silent one.
		if p.Tiers != nil {
			return m, fmt.Errorf("price %d: tiers are set on the model, not on one price", i+1)
		}
		if e.Tiers != nil {
			p.Tiers = e.Tiers
		}
		d, err := p.Dated()
		if err != nil {
			return m, fmt.Errorf("price %d: %w", i+1, err)
		}
		m.schedule = append(m.schedule, d)
	}
	if err := m.schedule.validate(); err != nil {
		return m, err
	}
	return m, nil
}

// maxRates raises each class of a to b's where b's is higher; the result
// is a flat price (no long-context tier, no tier multipliers).
func maxRates(a Price, b Rates) Price {
	return Price{
		Input:        max(a.Input, b.Input),
		Output:       max(a.Output, b.Output),
		CacheWrite5m: max(a.CacheWrite5m, b.CacheWrite5m),
		CacheWrite1h: max(a.CacheWrite1h, b.CacheWrite1h),
		CacheRead:    max(a.CacheRead, b.CacheRead),
	}
}

// DefaultFallback is the price for models the table does not know: the
// class-by-class maximum over every rate of the embedded table, base and
// long-context, in force now or ever (today GPT-5.4 Pro's long-context
// $60 in / $270 out, and $60 for every cache class, since its "no separate
// charge" cache classes cost what its input costs). An unknown model is so
// never charged less than any known one could be, whatever its prompt size.
// It is flat: no long-context tier and no tier multipliers.
func DefaultFallback() Price { return embedded.fallback }

// PriceTableOptions configures NewPriceTable.
type PriceTableOptions struct {
	// Overrides, keyed by model name, beat the embedded table with one
	// price for all time. A key that is a canonical name or alias of an
	// embedded model reprices that model under all of its names (aliases
	// name the same model) and replaces all of its dated prices; any other
	// key adds a model whose canonical name is the key.
	Overrides map[string]Price
	// Schedules are overrides with effective dates, with the same rules; a
	// model may not be named both here and in Overrides.
	Schedules map[string]Schedule
	// Fallback prices unknown models. It is required and every class must be
	// positive: a zero class would let unknown traffic through unbilled. Use
	// DefaultFallback unless the configuration says otherwise.
	Fallback Price
	// WithoutEmbedded leaves the embedded table out, so only the overrides
	// are known.
	WithoutEmbedded bool
}

// PriceTable resolves model names to prices. It is immutable after
// NewPriceTable and safe for concurrent use; a configuration reload builds a
// new one.
type PriceTable struct {
	byName   map[string]*tableModel // canonical names and aliases
	models   []string               // sorted canonical names
	fallback Price
}

// NewPriceTable builds a table from the embedded prices (unless
// WithoutEmbedded) and the overrides. It fails on an invalid price or
// schedule, on a zero fallback class, on the reserved name "other", and on
// two overrides that name the same model with different prices.
func NewPriceTable(opts PriceTableOptions) (*PriceTable, error) {
	if err := opts.Fallback.validate(); err != nil {
		return nil, fmt.Errorf("fallback: %w", err)
	}
	f := opts.Fallback
	if f.Input == 0 || f.Output == 0 || f.CacheWrite5m == 0 || f.CacheWrite1h == 0 || f.CacheRead == 0 {
		return nil, fmt.Errorf("fallback price %+v has a zero class: unknown models would go unbilled", f)
	}
	t := &PriceTable{byName: make(map[string]*tableModel), fallback: f}
	if !opts.WithoutEmbedded {
		// range copies each model, so an override never reaches the embedded
		// data (a schedule is replaced, never written into).
		for _, m := range embedded.models {
			t.add(&m)
		}
	}
	overrides := make(map[string]Schedule, len(opts.Overrides)+len(opts.Schedules))
	for name, p := range opts.Overrides {
		overrides[name] = Flat(p)
	}
	for name, s := range opts.Schedules {
		if _, dup := opts.Overrides[name]; dup {
			return nil, fmt.Errorf("price override %s is given both with and without effective dates", name)
		}
		overrides[name] = s
	}
	overridden := make(map[*tableModel]string)
	for _, name := range slices.Sorted(maps.Keys(overrides)) {
		s := overrides[name]
		if name == "" || name == OtherModel {
			return nil, fmt.Errorf("price override: model name %q is empty or reserved", name)
		}
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("price override %s: %w", name, err)
		}
		m, ok := t.byName[name]
		if !ok {
			t.add(&tableModel{name: name, schedule: s})
			continue
		}
		if prev, dup := overridden[m]; dup && !m.schedule.equal(s) {
			return nil, fmt.Errorf("price overrides %s and %s name the same model %s with different prices", prev, name, m.name)
		}
		overridden[m] = name
		m.schedule = s
		m.source, m.checked = "", time.Time{} // the configuration's now, not the vendor page's
	}
	slices.Sort(t.models)
	return t, nil
}

func (t *PriceTable) add(m *tableModel) {
	t.byName[m.name] = m
	for _, id := range m.ids {
		t.byName[id] = m
	}
	t.models = append(t.models, m.name)
}

// Lookup resolves a model name as sent by a client or provider and returns
// the price in force at at — the instant the request was admitted, so a
// request that straddles a price change is priced by one entry from its
// estimate to its settlement. The name is matched exactly (a canonical
// name or alias), else by its family as ModelFamily reads it (a dated
// snapshot or "-latest" alias, with or without a leading "anthropic/"
// routing prefix), since Anthropic prices a snapshot as its family.
//
// Cloud-platform forms (Bedrock "us.anthropic.…-v1:0", Vertex "…@date") are
// not resolved: those platforms price differently, so they take the fallback
// unless configured. OpenAI's "-YYYY-MM-DD" snapshots are not reduced either,
// because OpenAI snapshots of one family have had different prices (the
// table lists the snapshots that share their family's price as its ids).
//
// An unknown model gets the fallback price, canonical OtherModel and
// known=false. Lookup does not allocate.
func (t *PriceTable) Lookup(model string, at time.Time) (price Price, canonical string, known bool) {
	if m, ok := t.byName[model]; ok {
		return m.schedule.At(at), m.name, true
	}
	if family, platform := ModelFamily(model); !platform {
		if m, ok := t.byName[family]; ok {
			return m.schedule.At(at), m.name, true
		}
	}
	return t.fallback, OtherModel, false
}

// PricingModel returns the model a response is priced by, given the model
// the request asked for (after tokenwarden's own rewrites) and the one the
// response says served it: the served one when it is a dated snapshot of the
// requested one — OpenAI's "gpt-4o" answered by "gpt-4o-2024-08-06",
// Anthropic's "claude-sonnet-4-5" by "claude-sonnet-4-5-20250929" — and the
// table has an entry under that exact name, since a snapshot can be priced
// apart from its family; otherwise the requested one. A served name that is
// not a snapshot of the request (a provider that routes elsewhere, an empty
// or hostile value) never chooses the price. It does not allocate.
func (t *PriceTable) PricingModel(requested, served string) string {
	if served == requested || !isSnapshotOf(served, requested) {
		return requested
	}
	if _, ok := t.byName[served]; ok {
		return served
	}
	return requested
}

// isSnapshotOf reports whether s is base followed by a snapshot date:
// OpenAI's "-YYYY-MM-DD" or Anthropic's "-YYYYMMDD".
func isSnapshotOf(s, base string) bool {
	if base == "" || len(s) <= len(base) || s[:len(base)] != base || s[len(base)] != '-' {
		return false
	}
	date := s[len(base)+1:]
	switch len(date) {
	case 8:
		return allDigits(date)
	case 10:
		return date[4] == '-' && date[7] == '-' && allDigits(date[:4]) && allDigits(date[5:7]) && allDigits(date[8:])
	}
	return false
}

// Models returns the sorted canonical names of every known model, embedded
// and overridden. With OtherModel they are the bounded set of values Lookup
// can return as canonical, fit for a metrics label.
func (t *PriceTable) Models() []string { return slices.Clone(t.models) }

// Fallback returns the price charged for unknown models.
func (t *PriceTable) Fallback() Price { return t.fallback }
