package accounting

import (
	"errors"
	"math"
	"math/big"
	"testing"
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
		{name: "empty usage", model: "claude-sonnet-4-5", u: Usage{}, want: Cost{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _, known := table.Lookup(tc.model)
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
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.Cost(tc.u); got != tc.want {
				t.Fatalf("Cost = %+v, want %+v", got, tc.want)
			}
		})
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

// FuzzCost checks Cost against exact big-integer arithmetic (classes clamp
// at MaxNanoUSD, Total is their saturating sum) and that adding tokens to any
// class never lowers that class's cost or the total.
func FuzzCost(f *testing.F) {
	f.Add(int64(3000), int64(15000), int64(3750), int64(6000), int64(300),
		int64(1000), int64(500), int64(2000), int64(3000), int64(0), uint8(0), int64(10))
	f.Add(int64(1), int64(1), int64(1), int64(1), int64(1),
		int64(math.MaxInt64), int64(math.MaxInt64), int64(1), int64(1), int64(1), uint8(3), int64(math.MaxInt64))
	f.Add(int64(-5), int64(7), int64(0), int64(1e15), int64(2),
		int64(-9), int64(3), int64(0), int64(1e9), int64(1e4), uint8(4), int64(-3))
	f.Fuzz(func(t *testing.T, pin, pout, pw5, pw1, prd, in, out, rd, w5, w1 int64, class uint8, delta int64) {
		p := Price{Input: NanoUSD(pin), Output: NanoUSD(pout), CacheWrite5m: NanoUSD(pw5), CacheWrite1h: NanoUSD(pw1), CacheRead: NanoUSD(prd)}
		u := Usage{InputTokens: in, OutputTokens: out, CacheReadTokens: rd, CacheWrite5mTokens: w5, CacheWrite1hTokens: w1}
		c := p.Cost(u)

		maxBig := big.NewInt(math.MaxInt64)
		clamp := func(x *big.Int) NanoUSD {
			if x.Cmp(maxBig) > 0 {
				return MaxNanoUSD
			}
			return NanoUSD(x.Int64())
		}
		term := func(tokens int64, price NanoUSD) *big.Int {
			return new(big.Int).Mul(big.NewInt(max(tokens, 0)), big.NewInt(int64(max(price, 0))))
		}
		w5c, w1c := term(w5, p.CacheWrite5m), term(w1, p.CacheWrite1h)
		want := Cost{
			Input:      clamp(term(in, p.Input)),
			Output:     clamp(term(out, p.Output)),
			CacheRead:  clamp(term(rd, p.CacheRead)),
			CacheWrite: clamp(new(big.Int).Add(big.NewInt(int64(clamp(w5c))), big.NewInt(int64(clamp(w1c))))),
		}
		sum := new(big.Int)
		for _, v := range []NanoUSD{want.Input, want.Output, want.CacheRead, want.CacheWrite} {
			sum.Add(sum, big.NewInt(int64(v)))
		}
		want.Total = clamp(sum)
		if c != want {
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
