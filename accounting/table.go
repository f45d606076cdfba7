package accounting

import (
	_ "embed"
	"fmt"
	"maps"
	"slices"

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
	AsOf   string       `json:"as_of"`
	Source string       `json:"source"`
	Models []priceEntry `json:"models"`
}

type priceEntry struct {
	Name string   `json:"name"`
	IDs  []string `json:"ids"`
	USDPerMTok
}

// tableModel is one model of the embedded table: its canonical name, the
// other names it answers to, and its price.
type tableModel struct {
	name  string
	ids   []string
	price Price
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
	asOf, source string
	models       []tableModel
	fallback     Price
}

// parseTable reads a price file: every price must be present and exact, and
// every name unique across the whole table.
func parseTable(data []byte) (embeddedTable, error) {
	var f priceFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return embeddedTable{}, fmt.Errorf("parse: %w", err)
	}
	if f.AsOf == "" || f.Source == "" || len(f.Models) == 0 {
		return embeddedTable{}, fmt.Errorf("as_of, source and models are required")
	}
	t := embeddedTable{asOf: f.AsOf, source: f.Source}
	seen := make(map[string]bool)
	for _, e := range f.Models {
		for _, n := range append([]string{e.Name}, e.IDs...) {
			if n == "" || n == OtherModel || seen[n] {
				return embeddedTable{}, fmt.Errorf("model name %q is empty, reserved or repeated", n)
			}
			seen[n] = true
		}
		// The table states every class: derived cache prices are for
		// configuration, and official figures are not always the multiples.
		if e.CacheWrite5m == nil || e.CacheWrite1h == nil || e.CacheRead == nil {
			return embeddedTable{}, fmt.Errorf("model %s: all five prices are required", e.Name)
		}
		p, err := e.Price()
		if err != nil {
			return embeddedTable{}, fmt.Errorf("model %s: %w", e.Name, err)
		}
		t.models = append(t.models, tableModel{name: e.Name, ids: e.IDs, price: p})
		t.fallback = maxPrice(t.fallback, p)
	}
	return t, nil
}

// maxPrice is the class-by-class maximum of two prices.
func maxPrice(a, b Price) Price {
	return Price{
		Input:        max(a.Input, b.Input),
		Output:       max(a.Output, b.Output),
		CacheWrite5m: max(a.CacheWrite5m, b.CacheWrite5m),
		CacheWrite1h: max(a.CacheWrite1h, b.CacheWrite1h),
		CacheRead:    max(a.CacheRead, b.CacheRead),
	}
}

// DefaultFallback is the price for models the table does not know: the
// class-by-class maximum over the embedded table (today exactly Claude Opus
// 4.1's $15/$75), so an unknown model is never charged less than any known one.
func DefaultFallback() Price { return embedded.fallback }

// PriceTableOptions configures NewPriceTable.
type PriceTableOptions struct {
	// Overrides, keyed by model name, beat the embedded table. A key that is a
	// canonical name or alias of an embedded model reprices that model under
	// all of its names (aliases name the same model); any other key adds a
	// model whose canonical name is the key.
	Overrides map[string]Price
	// Fallback prices unknown models. It is required and every class must be
	// positive: a zero class would let unknown traffic through unbilled. Use
	// DefaultFallback unless the configuration says otherwise.
	Fallback Price
	// WithoutEmbedded leaves the embedded Anthropic table out, so only
	// Overrides are known.
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
// WithoutEmbedded) and the overrides. It fails on an invalid price, on a zero
// fallback class, on the reserved name "other", and on two overrides that name
// the same model with different prices.
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
		// range copies each model, so an override never reaches the embedded data.
		for _, m := range embedded.models {
			t.add(&m)
		}
	}
	overridden := make(map[*tableModel]string)
	for _, name := range slices.Sorted(maps.Keys(opts.Overrides)) {
		p := opts.Overrides[name]
		if name == "" || name == OtherModel {
			return nil, fmt.Errorf("price override: model name %q is empty or reserved", name)
		}
		if err := p.validate(); err != nil {
			return nil, fmt.Errorf("price override %s: %w", name, err)
		}
		m, ok := t.byName[name]
		if !ok {
			t.add(&tableModel{name: name, price: p})
			continue
		}
		if prev, dup := overridden[m]; dup && m.price != p {
			return nil, fmt.Errorf("price overrides %s and %s name the same model %s with different prices", prev, name, m.name)
		}
		overridden[m] = name
		m.price = p
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

// Lookup resolves a model name as sent by a client or provider: an exact
// canonical name or alias, else its family as ModelFamily reads it (a dated
// snapshot or "-latest" alias, with or without a leading "anthropic/"
// routing prefix), since Anthropic prices a snapshot as its family.
//
// Cloud-platform forms (Bedrock "us.anthropic.…-v1:0", Vertex "…@date") are
// not resolved: those platforms price differently, so they take the fallback
// unless configured. OpenAI's "-YYYY-MM-DD" snapshots are not reduced either,
// because OpenAI snapshots of one family have had different prices.
//
// An unknown model gets the fallback price, canonical OtherModel and
// known=false. Lookup does not allocate.
func (t *PriceTable) Lookup(model string) (price Price, canonical string, known bool) {
	if m, ok := t.byName[model]; ok {
		return m.price, m.name, true
	}
	if family, platform := ModelFamily(model); !platform {
		if m, ok := t.byName[family]; ok {
			return m.price, m.name, true
		}
	}
	return t.fallback, OtherModel, false
}

// Models returns the sorted canonical names of every known model, embedded
// and overridden. With OtherModel they are the bounded set of values Lookup
// can return as canonical, fit for a metrics label.
func (t *PriceTable) Models() []string { return slices.Clone(t.models) }

// Fallback returns the price charged for unknown models.
func (t *PriceTable) Fallback() Price { return t.fallback }
