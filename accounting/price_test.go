package accounting

import (
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"
)

var nan = math.NaN()

func TestPriceFromUSDPerMTok(t *testing.T) {
	tests := []struct {
		name                string
		in, out, w5, w1, rd float64
		want                Price
		wantErr             bool
		wantInexact         bool
	}{
		{name: "sonnet 4.5 explicit", in: 3, out: 15, w5: 3.75, w1: 6, rd: 0.30,
			want: Price{Input: 3000, Output: 15000, CacheWrite5m: 3750, CacheWrite1h: 6000, CacheRead: 300}},
		{name: "haiku 3 official cache prices differ from the multipliers", in: 0.25, out: 1.25, w5: 0.30, w1: 0.50, rd: 0.03,
			want: Price{Input: 250, Output: 1250, CacheWrite5m: 300, CacheWrite1h: 500, CacheRead: 30}},
		{name: "three decimals is exact", in: 0.001, out: 1234.567, w5: 0, w1: 0, rd: 0,
			want: Price{Input: 1, Output: 1234567}},
		{name: "zero prices are allowed", in: 0, out: 0, w5: nan, w1: nan, rd: nan, want: Price{}},
		{name: "omitted cache prices use 1.25x 2x 0.1x", in: 3, out: 15, w5: nan, w1: nan, rd: nan,
			want: Price{Input: 3000, Output: 15000, CacheWrite5m: 3750, CacheWrite1h: 6000, CacheRead: 300}},
		{name: "derived prices round up to whole nano-USD", in: 0.25, out: 1.25, w5: nan, w1: nan, rd: nan,
			want: Price{Input: 250, Output: 1250, CacheWrite5m: 313, CacheWrite1h: 500, CacheRead: 25}},
		{name: "smallest input derives non-zero cache prices", in: 0.001, out: 0.001, w5: nan, w1: nan, rd: nan,
			want: Price{Input: 1, Output: 1, CacheWrite5m: 2, CacheWrite1h: 2, CacheRead: 1}},
		{name: "only some cache prices omitted", in: 10, out: 50, w5: nan, w1: 20, rd: 0.25,
			want: Price{Input: 10000, Output: 50000, CacheWrite5m: 12500, CacheWrite1h: 20000, CacheRead: 250}},
		{name: "four decimals rejected", in: 0.0005, out: 1, w5: nan, w1: nan, rd: nan, wantErr: true, wantInexact: true},
		{name: "inexact cache read rejected", in: 3, out: 15, w5: nan, w1: nan, rd: 0.3001, wantErr: true, wantInexact: true},
		{name: "one third rejected", in: 1.0 / 3, out: 1, w5: nan, w1: nan, rd: nan, wantErr: true, wantInexact: true},
		{name: "negative input", in: -3, out: 15, w5: nan, w1: nan, rd: nan, wantErr: true},
		{name: "negative cache write", in: 3, out: 15, w5: -1, w1: nan, rd: nan, wantErr: true},
		{name: "NaN input is not 'omitted'", in: nan, out: 15, w5: nan, w1: nan, rd: nan, wantErr: true},
		{name: "NaN output", in: 3, out: nan, w5: nan, w1: nan, rd: nan, wantErr: true},
		{name: "infinite", in: math.Inf(1), out: 15, w5: nan, w1: nan, rd: nan, wantErr: true},
		{name: "absurdly large", in: 2e12, out: 15, w5: nan, w1: nan, rd: nan, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PriceFromUSDPerMTok(tc.in, tc.out, tc.w5, tc.w1, tc.rd)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if errors.Is(err, ErrInexactPrice) != tc.wantInexact {
				t.Fatalf("err = %v, want ErrInexactPrice %v", err, tc.wantInexact)
			}
			if err == nil && got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestCostAgainstReferencePrices(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{})
	const usd = 1e9 // nano-USD per dollar, for writing expectations in dollars
	tests := []struct {
		name  string
		model string
		u     Usage
		want  Cost
	}{
		{
			// $3/MTok in, $15 out, $3.75 5m write, $0.30 read:
			// 1000·3e-6 = $0.003; 500·15e-6 = $0.0075; 3000·3.75e-6 = $0.01125; 2000·0.3e-6 = $0.0006.
			name: "sonnet 4.5 every class", model: "claude-sonnet-4-5-20250929",
			u:    Usage{InputTokens: 1000, OutputTokens: 500, CacheWrite5mTokens: 3000, CacheReadTokens: 2000},
			want: Cost{Input: 0.003 * usd, Output: 0.0075 * usd, CacheWrite: 0.01125 * usd, CacheRead: 0.0006 * usd, Total: 0.02235 * usd},
		},
		{
			// Opus 4.6, 1h-write heavy: 100k·$10/MTok = $1 for the 1h write (not the $0.625 of a 5m write);
			// 10·$5/MTok = $0.00005; 200·$25/MTok = $0.005.
			name: "opus 4.6 one-hour writes", model: "claude-opus-4-6",
			u:    Usage{InputTokens: 10, OutputTokens: 200, CacheWrite1hTokens: 100_000},
			want: Cost{Input: 0.00005 * usd, Output: 0.005 * usd, CacheWrite: 1 * usd, Total: 1.00505 * usd},
		},
		{
			// Both TTLs in one request (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching, "Mixing different TTLs"):
			// 20k·$6.25 + 40k·$10 per MTok = $0.125 + $0.40.
			name: "opus 4.5 mixed TTL writes", model: "claude-opus-4-5",
			u:    Usage{CacheWrite5mTokens: 20_000, CacheWrite1hTokens: 40_000},
			want: Cost{CacheWrite: 0.525 * usd, Total: 0.525 * usd},
		},
		{
			// Haiku 4.5, cache-read heavy: 1M reads at $0.10 = $0.10, where full input would be $1.
			// 50·$1/MTok = $0.00005; 1000·$5/MTok = $0.005.
			name: "haiku 4.5 cache reads", model: "claude-haiku-4-5",
			u:    Usage{InputTokens: 50, OutputTokens: 1000, CacheReadTokens: 1_000_000},
			want: Cost{Input: 0.00005 * usd, Output: 0.005 * usd, CacheRead: 0.1 * usd, Total: 0.10505 * usd},
		},
		{
			// Haiku 3's official 5m write is $0.30, not 1.25 × $0.25 = $0.3125; read $0.03, not $0.025.
			name: "haiku 3 official cache prices", model: "claude-3-haiku-20240307",
			u:    Usage{CacheWrite5mTokens: 1_000_000, CacheReadTokens: 1_000_000},
			want: Cost{CacheWrite: 0.30 * usd, CacheRead: 0.03 * usd, Total: 0.33 * usd},
		},
		{
			// Fable 5.1 reads at $0.25/MTok (0.025×), Fable 5 at $1: 4M reads = $1 vs $4.
			name: "fable 5.1 cheap reads", model: "claude-fable-5-1",
			u:    Usage{CacheReadTokens: 4_000_000},
			want: Cost{CacheRead: 1 * usd, Total: 1 * usd},
		},
		{
			name: "fable 5 reads", model: "claude-fable-5",
			u:    Usage{CacheReadTokens: 4_000_000},
			want: Cost{CacheRead: 4 * usd, Total: 4 * usd},
		},
		{
			// Sonnet 5: $2/$10; 1M in + 1M out = $12.
			name: "sonnet 5", model: "claude-sonnet-5",
			u:    Usage{InputTokens: 1_000_000, OutputTokens: 1_000_000},
			want: Cost{Input: 2 * usd, Output: 10 * usd, Total: 12 * usd},
		},
		{
			// Opus 4.1 at the Claude 3 launch price $15/$75; thinking is part of output.
			name: "opus 4.1", model: "claude-opus-4-1",
			u:    Usage{InputTokens: 2_000, OutputTokens: 4_000},
			want: Cost{Input: 0.03 * usd, Output: 0.3 * usd, Total: 0.33 * usd},
		},
		{
			// Haiku 3.5 at $0.80/$4, not the $0.25/$1.25 of Haiku 3 that older price lists
			// still quote (https://docs.anthropic.com/en/docs/about-claude/pricing).
			name: "haiku 3.5", model: "claude-3-5-haiku-latest",
			u:    Usage{InputTokens: 1_000_000, OutputTokens: 1_000_000},
			want: Cost{Input: 0.8 * usd, Output: 4 * usd, Total: 4.8 * usd},
		},
		{
			// gpt-4o at $2.50 in, $1.25 cached, $10 out (https://platform.openai.com/docs/pricing):
			// 1000 uncached + 2048 cached + 300 out = $0.0025 + $0.00256 + $0.003.
			name: "gpt-4o with cached input", model: "gpt-4o",
			u:    Usage{InputTokens: 1000, CacheReadTokens: 2048, OutputTokens: 300},
			want: Cost{Input: 0.0025 * usd, CacheRead: 0.00256 * usd, Output: 0.003 * usd, Total: 0.00806 * usd},
		},
		{
			// gpt-4o-mini at $0.15 / $0.075 cached / $0.60: cached input at half the input rate.
			name: "gpt-4o-mini with cached input", model: "gpt-4o-mini-2024-07-18",
			u:    Usage{InputTokens: 100, CacheReadTokens: 1024, OutputTokens: 50},
			want: Cost{Input: 15_000, CacheRead: 76_800, Output: 30_000, Total: 121_800},
		},
		{
			// GPT-5.6 Sol writes to the cache at $6.25 (1.25× input).
			name: "gpt-5.6 cache writes", model: "gpt-5.6",
			u:    Usage{InputTokens: 10, CacheWrite5mTokens: 1000, OutputTokens: 10},
			want: Cost{Input: 50_000, CacheWrite: 6_250_000, Output: 300_000, Total: 6_600_000},
		},
		{
			// Gemini 2.5 Flash at $0.30 / $0.03 cached / $2.50 (https://ai.google.dev/gemini-api/docs/pricing).
			name: "gemini 2.5 flash", model: "gemini-2.5-flash",
			u:    Usage{InputTokens: 1_000_000, CacheReadTokens: 1_000_000, OutputTokens: 1_000_000},
			want: Cost{Input: 0.3 * usd, CacheRead: 0.03 * usd, Output: 2.5 * usd, Total: 2.83 * usd},
		},
		{name: "empty usage", model: "claude-sonnet-4-5", u: Usage{}, want: Cost{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _, known := table.Lookup(tc.model, aug2026)
			if !known {
				t.Fatalf("model %s unknown", tc.model)
			}
			if got := p.Cost(tc.u); got != tc.want {
				t.Fatalf("Cost = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestCostEdges(t *testing.T) {
	p := Price{Input: 3000, Output: 15000, CacheWrite5m: 3750, CacheWrite1h: 6000, CacheRead: 300}
	tests := []struct {
		name string
		p    Price
		u    Usage
		want Cost
	}{
		{name: "negative counts are zero", p: p,
			u:    Usage{InputTokens: -5, OutputTokens: 2, CacheReadTokens: -1, CacheWrite5mTokens: -7, CacheWrite1hTokens: 1},
			want: Cost{Output: 30000, CacheWrite: 6000, Total: 36000}},
		{name: "negative prices are zero", p: Price{Input: -1, Output: 2},
			u:    Usage{InputTokens: 10, OutputTokens: 10},
			want: Cost{Output: 20, Total: 20}},
		{name: "one class saturates", p: p,
			u:    Usage{OutputTokens: math.MaxInt64, InputTokens: 1},
			want: Cost{Input: 3000, Output: MaxNanoUSD, Total: MaxNanoUSD}},
		{name: "the sum saturates", p: Price{Input: 1, Output: 1},
			u:    Usage{InputTokens: math.MaxInt64 - 1, OutputTokens: 2},
			want: Cost{Input: MaxNanoUSD - 1, Output: 2, Total: MaxNanoUSD}},
		{name: "the two write TTLs saturate together", p: Price{CacheWrite5m: 1, CacheWrite1h: 1},
			u:    Usage{CacheWrite5mTokens: math.MaxInt64, CacheWrite1hTokens: math.MaxInt64},
			want: Cost{CacheWrite: MaxNanoUSD, Total: MaxNanoUSD}},
		{name: "largest exact product", p: Price{Input: 2},
			u:    Usage{InputTokens: math.MaxInt64 / 2},
			want: Cost{Input: MaxNanoUSD - 1, Total: MaxNanoUSD - 1}},
		{name: "a multiplied class saturates", p: Price{Output: 1e15, Tiers: Tiers{Priority: Multiplier{9, 5}}},
			u:    Usage{OutputTokens: math.MaxInt64, ServiceTier: "priority"},
			want: Cost{Output: MaxNanoUSD, Total: MaxNanoUSD}},
		{name: "a discount keeps the largest product exact", p: Price{Input: 2, Tiers: Tiers{Batch: Multiplier{1, 2}}},
			u:    Usage{InputTokens: math.MaxInt64, ServiceTier: "batch"},
			want: Cost{Input: MaxNanoUSD, Total: MaxNanoUSD}},
		{name: "a malformed multiplier is x1, never a division by zero", p: Price{Input: 3, Tiers: Tiers{Flex: Multiplier{2, 0}}},
			u:    Usage{InputTokens: 5, ServiceTier: "flex"},
			want: Cost{Input: 15, Total: 15}},
		{name: "just past the largest amount after rounding up", p: Price{Input: 1, Tiers: Tiers{Batch: Multiplier{1000, 999}}},
			u:    Usage{InputTokens: math.MaxInt64, ServiceTier: "batch"},
			want: Cost{Input: MaxNanoUSD, Total: MaxNanoUSD}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.Cost(tc.u); got != tc.want {
				t.Fatalf("Cost = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// aug2026 is an instant when every embedded model has one price in force
// that the reference cases below state.
var aug2026 = time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)

func TestServiceTiers(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{})
	cost := func(model string, u Usage) NanoUSD {
		t.Helper()
		p, _, known := table.Lookup(model, aug2026)
		if !known {
			t.Fatalf("%s unknown", model)
		}
		return p.Cost(u).Total
	}
	tests := []struct {
		name  string
		model string
		u     Usage
		want  NanoUSD
	}{
		// Anthropic's batch price is half of every class (https://docs.anthropic.com/en/docs/about-claude/pricing,
		// "Batch processing": Sonnet 4.5 $1.50 in / $7.50 out), cache classes included.
		{"anthropic standard", "claude-sonnet-4-5", Usage{InputTokens: 1000, OutputTokens: 1000, ServiceTier: "standard"}, 18_000_000},
		{"anthropic batch", "claude-sonnet-4-5", Usage{InputTokens: 1000, OutputTokens: 1000, ServiceTier: "batch"}, 9_000_000},
		{"anthropic batch cache read", "claude-sonnet-4-5", Usage{CacheReadTokens: 1000, ServiceTier: "batch"}, 150_000},
		// Priority Tier is not modelled: standard.
		{"anthropic priority", "claude-sonnet-4-5", Usage{InputTokens: 1000, OutputTokens: 1000, ServiceTier: "priority"}, 18_000_000},
		// OpenAI flex and batch are half; 3 cached tokens of gpt-4o-mini at 37.5 nano-USD is
		// 112.5, charged 113: a fraction rounds up.
		{"openai default", "gpt-4o-mini", Usage{CacheReadTokens: 3, ServiceTier: "default"}, 225},
		{"openai flex rounds up", "gpt-4o-mini", Usage{CacheReadTokens: 3, ServiceTier: "flex"}, 113},
		{"openai batch", "gpt-4o", Usage{InputTokens: 1_000_000, OutputTokens: 1_000_000, ServiceTier: "batch"}, 6_250_000_000},
		// OpenAI priority is not embedded (see prices.yaml): standard. "scale" is standard.
		{"openai priority", "gpt-4o", Usage{InputTokens: 1_000_000, ServiceTier: "priority"}, 2_500_000_000},
		{"openai scale", "gpt-4o", Usage{InputTokens: 1_000_000, ServiceTier: "scale"}, 2_500_000_000},
		// Gemini priority is 1.8×: 1M output of 2.5 Flash at $2.50 is $4.50.
		{"gemini priority", "gemini-2.5-flash", Usage{OutputTokens: 1_000_000, ServiceTier: "priority"}, 4_500_000_000},
		{"unknown tier is standard", "gpt-4o", Usage{InputTokens: 1_000_000, ServiceTier: "ultrafast"}, 2_500_000_000},
		{"tier names are exact", "gpt-4o", Usage{InputTokens: 1_000_000, ServiceTier: "Flex"}, 2_500_000_000},
	}
	for _, tc := range tests {
		if got := cost(tc.model, tc.u); got != tc.want {
			t.Errorf("%s: Cost = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestLongContextCliff(t *testing.T) {
	table := newTestTable(t, PriceTableOptions{})
	sonnet, _, _ := table.Lookup("claude-sonnet-4-5", aug2026)
	// $3 / $3.75 / $6 / $0.30 / $15 up to 200K total input tokens; above it, every class of the
	// request at $6 / $7.50 / $12 / $0.60 / $22.50.
	tests := []struct {
		name string
		u    Usage
		want Cost
	}{
		{"exactly 200K is not above", Usage{InputTokens: 200_000, OutputTokens: 1000},
			Cost{Input: 600_000_000, Output: 15_000_000, Total: 615_000_000}},
		{"one token past: every class at the tier", Usage{InputTokens: 200_001, OutputTokens: 1000},
			Cost{Input: 1_200_006_000, Output: 22_500_000, Total: 1_222_506_000}},
		// The threshold counts cache reads and writes too: 1000 uncached input alone is far below
		// it, but the prompt is 200,001 tokens.
		{"cache reads count towards the threshold", Usage{InputTokens: 1000, CacheReadTokens: 150_000, CacheWrite5mTokens: 40_000, CacheWrite1hTokens: 9_001, OutputTokens: 10},
			Cost{Input: 6_000_000, CacheRead: 90_000_000, CacheWrite: 300_000_000 + 108_012_000, Output: 225_000, Total: 504_237_000}},
		{"tier and batch", Usage{InputTokens: 200_001, ServiceTier: "batch"},
			Cost{Input: 600_003_000, Total: 600_003_000}},
	}
	for _, tc := range tests {
		if got := sonnet.Cost(tc.u); got != tc.want {
			t.Errorf("%s: Cost = %+v, want %+v", tc.name, got, tc.want)
		}
	}
	// OpenAI's threshold is 272K: gpt-5.4 at 272,001 input costs $5/MTok for all of it.
	gpt54, _, _ := table.Lookup("gpt-5.4", aug2026)
	if got := gpt54.Cost(Usage{InputTokens: 272_000}).Total; got != 680_000_000 {
		t.Errorf("gpt-5.4 at 272K: %d", got)
	}
	if got := gpt54.Cost(Usage{InputTokens: 272_001}).Total; got != 1_360_005_000 {
		t.Errorf("gpt-5.4 past 272K: %d", got)
	}
}

func TestPriceValidate(t *testing.T) {
	base := Price{Input: 3000, Output: 15000, CacheWrite5m: 3750, CacheWrite1h: 6000, CacheRead: 300}
	long := Rates{Input: 6000, Output: 22500, CacheWrite5m: 7500, CacheWrite1h: 12000, CacheRead: 600}
	with := func(f func(*Price)) Price { p := base; f(&p); return p }
	tests := []struct {
		name    string
		p       Price
		wantErr string
	}{
		{"flat", base, ""},
		{"long context", with(func(p *Price) { p.LongContext = LongContext{Above: 200_000, Rates: long} }), ""},
		{"long context cheaper than base", with(func(p *Price) {
			p.LongContext = LongContext{Above: 200_000, Rates: long}
			p.LongContext.CacheRead = 299
		}), "surcharge"},
		{"long context rates without a threshold", with(func(p *Price) { p.LongContext.Rates = long }), "threshold"},
		{"negative threshold", with(func(p *Price) { p.LongContext = LongContext{Above: -1, Rates: long} }), "negative"},
		{"negative long-context class", with(func(p *Price) { p.LongContext = LongContext{Above: 1, Rates: Rates{Input: -1}} }), "outside"},
		{"tiers", with(func(p *Price) { p.Tiers = Tiers{Batch: Multiplier{1, 2}, Priority: Multiplier{9, 5}} }), ""},
		{"zero numerator", with(func(p *Price) { p.Tiers.Flex = Multiplier{0, 2} }), "flex"},
		{"huge denominator", with(func(p *Price) { p.Tiers.Batch = Multiplier{1, 1001} }), "batch"},
	}
	for _, tc := range tests {
		err := tc.p.validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: validate = %v, want %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestParseMultiplier(t *testing.T) {
	tests := []struct {
		in   string
		want Multiplier
		ok   bool
	}{
		{"0.5", Multiplier{1, 2}, true},
		{"1.8", Multiplier{9, 5}, true},
		{"2", Multiplier{2, 1}, true},
		{"2.5", Multiplier{5, 2}, true},
		{".25", Multiplier{1, 4}, true},
		{"1/2", Multiplier{1, 2}, true},
		{" 9 / 5 ", Multiplier{9, 5}, true},
		{"2/4", Multiplier{1, 2}, true},
		{"1", Multiplier{1, 1}, true},
		{"0.001", Multiplier{1, 1000}, true},
		{"0.0001", Multiplier{}, false}, // 1/10000: a term past 1000
		{"0", Multiplier{}, false},
		{"-0.5", Multiplier{}, false},
		{"1e-1", Multiplier{}, false},
		{"1/0", Multiplier{}, false},
		{"a/b", Multiplier{}, false},
		{"", Multiplier{}, false},
		{".", Multiplier{}, false},
		{"1001/1000", Multiplier{}, false},
	}
	for _, tc := range tests {
		got, err := ParseMultiplier(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseMultiplier(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	var m Multiplier
	if err := json.Unmarshal([]byte(`0.5`), &m); err != nil || m != (Multiplier{1, 2}) {
		t.Errorf("JSON number: %v %v", m, err)
	}
	if err := json.Unmarshal([]byte(`"9/5"`), &m); err != nil || m != (Multiplier{9, 5}) {
		t.Errorf("JSON string: %v %v", m, err)
	}
	if b, _ := json.Marshal(Multiplier{9, 5}); string(b) != `"9/5"` {
		t.Errorf("MarshalJSON = %s", b)
	}
	if (Multiplier{}).String() != "1" {
		t.Errorf("the zero multiplier is ×1")
	}
}

func TestParseServiceTier(t *testing.T) {
	for in, want := range map[string]ServiceTier{
		"batch": TierBatch, "flex": TierFlex, "priority": TierPriority,
		"": TierStandard, "default": TierStandard, "standard": TierStandard, "auto": TierStandard, "scale": TierStandard,
		"fast": TierStandard, "BATCH": TierStandard, "priority ": TierStandard,
	} {
		if got := ParseServiceTier(in); got != want {
			t.Errorf("ParseServiceTier(%q) = %v, want %v", in, got, want)
		}
	}
	// A usage that names a tier and no tokens measured nothing.
	if !(Usage{ServiceTier: "default"}).Zero() || (Usage{OutputTokens: 1, ServiceTier: "default"}).Zero() {
		t.Error("Zero must ignore the service tier")
	}
	if TierStandard.String() != "standard" || TierFlex.String() != "flex" || TierBatch.String() != "batch" || TierPriority.String() != "priority" {
		t.Error("tier names")
	}
}

// FuzzPriceFromUSDPerMTok checks that accepted prices are exact and
// non-negative, and that omitted cache prices follow the multipliers.
func FuzzPriceFromUSDPerMTok(f *testing.F) {
	f.Add(3.0, 15.0, 3.75, 6.0, 0.3)
	f.Add(0.25, 1.25, nan, nan, nan)
	f.Add(0.001, 0.0005, 1.0, 2.0, 3.0)
	f.Add(-1.0, 2.0, nan, 0.1, nan)
	f.Add(1e12, 1e12, 1e12, 1e12, 1e12)
	f.Add(math.Inf(1), 0.0, 0.0, 0.0, 0.0)
	f.Fuzz(func(t *testing.T, in, out, w5, w1, rd float64) {
		p, err := PriceFromUSDPerMTok(in, out, w5, w1, rd)
		if err != nil {
			return
		}
		if err := p.validate(); err != nil {
			t.Fatalf("accepted price %+v is invalid: %v", p, err)
		}
		exact := func(name string, v float64, got NanoUSD) {
			if float64(got)/1000 != v {
				t.Fatalf("%s: %v USD/MTok became %d nano-USD per token", name, v, got)
			}
		}
		exact("input", in, p.Input)
		exact("output", out, p.Output)
		for _, c := range []struct {
			name     string
			v        float64
			got      NanoUSD
			num, den int64
		}{
			{"cache_write_5m", w5, p.CacheWrite5m, 5, 4},
			{"cache_write_1h", w1, p.CacheWrite1h, 2, 1},
			{"cache_read", rd, p.CacheRead, 1, 10},
		} {
			if !math.IsNaN(c.v) {
				exact(c.name, c.v, c.got)
				continue
			}
			// Derived: the least whole nano-USD not below input·num/den.
			lo, hi := int64(c.got-1)*c.den, int64(c.got)*c.den
			if want := int64(p.Input) * c.num; !(lo < want && want <= hi) && !(c.got == 0 && want == 0) {
				t.Fatalf("%s derived from input %d is %d", c.name, p.Input, c.got)
			}
		}
	})
}

// FuzzCost checks Cost against exact big-integer arithmetic — the rates of
// the long-context tier when the total input passes its threshold, each
// class's total multiplied by the service tier's fraction and rounded up,
// clamped at MaxNanoUSD, Total their saturating sum — and that adding tokens
// to any class never lowers any class's cost or the total, even across the
// long-context cliff.
func FuzzCost(f *testing.F) {
	f.Add(int64(3000), int64(15000), int64(3750), int64(6000), int64(300),
		int64(1000), int64(500), int64(2000), int64(3000), int64(0), uint8(0), int64(10), int64(0), int64(0), int64(0), uint8(0))
	f.Add(int64(1), int64(1), int64(1), int64(1), int64(1),
		int64(math.MaxInt64), int64(math.MaxInt64), int64(1), int64(1), int64(1), uint8(3), int64(math.MaxInt64), int64(5), int64(1), int64(2), uint8(1))
	f.Add(int64(-5), int64(7), int64(0), int64(1e15), int64(2),
		int64(-9), int64(3), int64(0), int64(1e9), int64(1e4), uint8(4), int64(-3), int64(200_000), int64(9), int64(5), uint8(3))
	f.Add(int64(3000), int64(15000), int64(3750), int64(6000), int64(300),
		int64(199_000), int64(10), int64(500), int64(500), int64(0), uint8(2), int64(1), int64(200_000), int64(1000), int64(999), uint8(2))
	f.Fuzz(func(t *testing.T, pin, pout, pw5, pw1, prd, in, out, rd, w5, w1 int64, class uint8, delta, above, num, den int64, tier uint8) {
		p := Price{Input: NanoUSD(pin), Output: NanoUSD(pout), CacheWrite5m: NanoUSD(pw5), CacheWrite1h: NanoUSD(pw1), CacheRead: NanoUSD(prd)}
		if above > 0 {
			// A valid tier: each class at least its base (here twice, plus one).
			dbl := func(v NanoUSD) NanoUSD { v = max(v, 0); return addSat(addSat(v, v), 1) }
			p.LongContext = LongContext{Above: above, Rates: Rates{Input: dbl(p.Input), Output: dbl(p.Output),
				CacheWrite5m: dbl(p.CacheWrite5m), CacheWrite1h: dbl(p.CacheWrite1h), CacheRead: dbl(p.CacheRead)}}
		}
		m := Multiplier{Num: 1 + abs(num)%maxMultiplierTerm, Den: 1 + abs(den)%maxMultiplierTerm}
		p.Tiers = Tiers{Batch: m, Flex: m, Priority: m}
		tierName := [...]string{"", "batch", "flex", "priority", "standard"}[tier%5]
		u := Usage{InputTokens: in, OutputTokens: out, CacheReadTokens: rd, CacheWrite5mTokens: w5, CacheWrite1hTokens: w1, ServiceTier: tierName}
		c := p.Cost(u)
		if want := bigCost(p, u); c != want {
			t.Fatalf("Cost(%+v, %+v) = %+v, want %+v", p, u, c, want)
		}

		u2 := u
		d := max(delta, 0)
		field := [...]*int64{&u2.InputTokens, &u2.OutputTokens, &u2.CacheReadTokens, &u2.CacheWrite5mTokens, &u2.CacheWrite1hTokens}[class%5]
		*field = int64(addSat(NanoUSD(max(*field, 0)), NanoUSD(d)))
		c2 := p.Cost(u2)
		if c2.Input < c.Input || c2.Output < c.Output || c2.CacheRead < c.CacheRead || c2.CacheWrite < c.CacheWrite || c2.Total < c.Total {
			t.Fatalf("adding %d tokens to class %d lowered the cost: %+v then %+v", d, class%5, c, c2)
		}
	})
}

func abs(x int64) int64 {
	if x < 0 {
		return -(x + 1) // never overflows
	}
	return x
}

// bigCost is Cost written with math/big, from the definition.
func bigCost(p Price, u Usage) Cost {
	maxBig := big.NewInt(math.MaxInt64)
	clamp := func(x *big.Int) NanoUSD {
		if x.Cmp(maxBig) > 0 {
			return MaxNanoUSD
		}
		return NanoUSD(x.Int64())
	}
	r := p.base()
	total := new(big.Int)
	for _, n := range []int64{u.InputTokens, u.CacheReadTokens, u.CacheWrite5mTokens, u.CacheWrite1hTokens} {
		total.Add(total, big.NewInt(max(n, 0)))
	}
	if total.Cmp(maxBig) > 0 { // the total saturates, as Usage.TotalInputTokens does
		total.Set(maxBig)
	}
	if p.LongContext.Above > 0 && total.Cmp(big.NewInt(p.LongContext.Above)) > 0 {
		r = p.LongContext.Rates
	}
	m := p.Tiers.of(ParseServiceTier(u.ServiceTier))
	num, den := big.NewInt(1), big.NewInt(1)
	if !m.unit() {
		num, den = big.NewInt(m.Num), big.NewInt(m.Den)
	}
	term := func(tokens int64, price NanoUSD) NanoUSD {
		x := new(big.Int).Mul(big.NewInt(max(tokens, 0)), big.NewInt(int64(max(price, 0))))
		x.Mul(x, num)
		q, rem := new(big.Int).QuoRem(x, den, new(big.Int))
		if rem.Sign() != 0 {
			q.Add(q, big.NewInt(1))
		}
		return clamp(q)
	}
	want := Cost{
		Input:     term(u.InputTokens, r.Input),
		Output:    term(u.OutputTokens, r.Output),
		CacheRead: term(u.CacheReadTokens, r.CacheRead),
		CacheWrite: clamp(new(big.Int).Add(big.NewInt(int64(term(u.CacheWrite5mTokens, r.CacheWrite5m))),
			big.NewInt(int64(term(u.CacheWrite1hTokens, r.CacheWrite1h))))),
	}
	sum := new(big.Int)
	for _, v := range []NanoUSD{want.Input, want.Output, want.CacheRead, want.CacheWrite} {
		sum.Add(sum, big.NewInt(int64(v)))
	}
	want.Total = clamp(sum)
	return want
}

func BenchmarkCost(b *testing.B) {
	p := Price{Input: 3000, Output: 15000, CacheWrite5m: 3750, CacheWrite1h: 6000, CacheRead: 300}
	u := Usage{InputTokens: 1234, OutputTokens: 567, CacheReadTokens: 89012, CacheWrite5mTokens: 3456, CacheWrite1hTokens: 78}
	b.ReportAllocs()
	var sink Cost
	for b.Loop() {
		sink = p.Cost(u)
	}
	_ = sink
}

func TestUSDPerMTok(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	tests := []struct {
		name    string
		in      USDPerMTok
		want    Price
		wantErr bool
	}{
		{name: "all given", in: USDPerMTok{Input: f(3), Output: f(15), CacheWrite5m: f(3.75), CacheWrite1h: f(6), CacheRead: f(0.3)},
			want: Price{Input: 3000, Output: 15000, CacheWrite5m: 3750, CacheWrite1h: 6000, CacheRead: 300}},
		{name: "cache omitted", in: USDPerMTok{Input: f(2.5), Output: f(10)},
			want: Price{Input: 2500, Output: 10000, CacheWrite5m: 3125, CacheWrite1h: 5000, CacheRead: 250}},
		{name: "cache read given only", in: USDPerMTok{Input: f(2.5), Output: f(10), CacheRead: f(1.25)},
			want: Price{Input: 2500, Output: 10000, CacheWrite5m: 3125, CacheWrite1h: 5000, CacheRead: 1250}},
		{name: "input missing", in: USDPerMTok{Output: f(10)}, wantErr: true},
		{name: "output missing", in: USDPerMTok{Input: f(10)}, wantErr: true},
		{name: "inexact", in: USDPerMTok{Input: f(2.5), Output: f(10.0001)}, wantErr: true},
	}
	for _, tc := range tests {
		got, err := tc.in.Price()
		if (err != nil) != tc.wantErr || (err == nil && got != tc.want) {
			t.Errorf("%s: Price() = %+v, %v; want %+v, error %v", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}
