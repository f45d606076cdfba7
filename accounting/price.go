package accounting

import (
	"errors"
	"fmt"
	"math"
)

// MaxNanoUSD is the largest representable amount (about $9.2 billion). Cost
// saturates at it instead of wrapping around, so an absurd usage record is
// over-charged, never charged negative.
const MaxNanoUSD = NanoUSD(math.MaxInt64)

// nanoPerUSDPerMTok converts "USD per million tokens" into "nano-USD per
// token": 1 USD/MTok = 1e9 nano-USD / 1e6 tokens = 1000 nano-USD per token.
const nanoPerUSDPerMTok = 1000

// maxPricePerToken bounds a configured price at $1,000,000 per token
// (1e15 nano-USD). Far above any real price, it keeps every accepted price an
// integer that float64 represents exactly, so the exactness check below is sound.
const maxPricePerToken = 1e15

// Price is what one token of each class costs, in nano-USD per token. The
// classes match Usage: uncached input, output, the two cache-write TTLs, and
// cache reads.
type Price struct {
	Input        NanoUSD
	Output       NanoUSD
	CacheWrite5m NanoUSD
	CacheWrite1h NanoUSD
	CacheRead    NanoUSD
}

// Anthropic's documented cache multipliers of the base input price (5-minute
// write 1.25×, 1-hour write 2×, read 0.1×:
// https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching, "Pricing"),
// as exact fractions so they stay integer arithmetic.
// They apply only when a price omits its cache classes; the embedded table
// spells every class out because the official figures are not always exactly
// these multiples.
const (
	write5mNum, write5mDen = 5, 4 // 1.25×
	write1hNum, write1hDen = 2, 1 // 2×
	readNum, readDen       = 1, 10
)

// PriceFromUSDPerMTok converts a price given in USD per million tokens (the
// form of tokenwarden.yaml and of every published price list) into a Price.
//
// in and out are required. A cache price given as NaN means "omitted" and is
// derived from in by Anthropic's documented multipliers: 5-minute write 1.25×,
// 1-hour write 2×, read 0.1×. A derived price that falls between two nano-USD
// is rounded up, so omitting a cache price never under-charges (for $0.25/MTok
// input the 5m write is 313 nano-USD per token, not 312.5). Omitted prices are
// only defaults: models whose official cache prices differ must state them.
//
// Each given value must be finite, non-negative, at most $1e12/MTok, and a
// whole number of nano-USD per token, i.e. have at most three decimals of a
// dollar per MTok: 0.3 and 3.75 are accepted, 0.0005 and 1/3 are rejected
// rather than silently rounded.
func PriceFromUSDPerMTok(in, out, cacheWrite5m, cacheWrite1h, cacheRead float64) (Price, error) {
	var p Price
	var err error
	if p.Input, err = usdPerMTokToNano("input", in); err != nil {
		return Price{}, err
	}
	if p.Output, err = usdPerMTokToNano("output", out); err != nil {
		return Price{}, err
	}
	cache := []struct {
		name     string
		v        float64
		dst      *NanoUSD
		num, den NanoUSD
	}{
		{"cache_write_5m", cacheWrite5m, &p.CacheWrite5m, write5mNum, write5mDen},
		{"cache_write_1h", cacheWrite1h, &p.CacheWrite1h, write1hNum, write1hDen},
		{"cache_read", cacheRead, &p.CacheRead, readNum, readDen},
	}
	for _, c := range cache {
		if math.IsNaN(c.v) {
			*c.dst = ceilMulDiv(p.Input, c.num, c.den)
			continue
		}
		if *c.dst, err = usdPerMTokToNano(c.name, c.v); err != nil {
			return Price{}, err
		}
	}
	return p, nil
}

// USDPerMTok is a price as configuration writes it, in USD per million
// tokens, with JSON (and so sigs.k8s.io/yaml) field names matching the
// `prices:` section of tokenwarden.yaml. Input and Output are required; a nil
// cache class is derived as PriceFromUSDPerMTok describes.
type USDPerMTok struct {
	Input        *float64 `json:"input"`
	Output       *float64 `json:"output"`
	CacheWrite5m *float64 `json:"cache_write_5m,omitempty"`
	CacheWrite1h *float64 `json:"cache_write_1h,omitempty"`
	CacheRead    *float64 `json:"cache_read,omitempty"`
}

// Price converts u with PriceFromUSDPerMTok.
func (u USDPerMTok) Price() (Price, error) {
	if u.Input == nil || u.Output == nil {
		return Price{}, errors.New("price: input and output (USD per million tokens) are required")
	}
	opt := func(v *float64) float64 {
		if v == nil {
			return math.NaN()
		}
		return *v
	}
	return PriceFromUSDPerMTok(*u.Input, *u.Output, opt(u.CacheWrite5m), opt(u.CacheWrite1h), opt(u.CacheRead))
}

// usdPerMTokToNano converts one USD/MTok figure to nano-USD per token exactly.
// The test float64(r)/1000 == v is exact because IEEE division is correctly
// rounded: it holds precisely when v is the float64 nearest to the decimal
// r/1000, which is what a config parser produces for a decimal with at most
// three fractional digits.
func usdPerMTokToNano(name string, v float64) (NanoUSD, error) {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return 0, fmt.Errorf("price %s: %v is not a number of USD per million tokens", name, v)
	case v < 0:
		return 0, fmt.Errorf("price %s: %v USD/MTok is negative", name, v)
	}
	r := math.Round(v * nanoPerUSDPerMTok)
	if r > maxPricePerToken {
		return 0, fmt.Errorf("price %s: %v USD/MTok exceeds the maximum of %v", name, v, maxPricePerToken/nanoPerUSDPerMTok)
	}
	if r/nanoPerUSDPerMTok != v {
		return 0, fmt.Errorf("price %s: %v USD/MTok is not a whole number of nano-USD per token (at most 3 decimals): %w", name, v, ErrInexactPrice)
	}
	return NanoUSD(r), nil
}

// ErrInexactPrice is wrapped by PriceFromUSDPerMTok when a price has more
// precision than nano-USD per token can hold.
var ErrInexactPrice = errors.New("inexact price")

// ceilMulDiv returns ⌈x·num/den⌉ for small non-negative num and den; x is a
// validated price (≤ maxPricePerToken), so x·num cannot overflow.
func ceilMulDiv(x, num, den NanoUSD) NanoUSD {
	return (x*num + den - 1) / den
}

// validate reports whether every class is a non-negative price within range;
// tables built from Go values (overrides, fallbacks) go through it.
func (p Price) validate() error {
	for _, c := range [...]struct {
		name string
		v    NanoUSD
	}{
		{"input", p.Input}, {"output", p.Output}, {"cache_write_5m", p.CacheWrite5m},
		{"cache_write_1h", p.CacheWrite1h}, {"cache_read", p.CacheRead},
	} {
		if c.v < 0 || c.v > maxPricePerToken {
			return fmt.Errorf("price %s: %d nano-USD per token is outside [0, %d]", c.name, c.v, NanoUSD(maxPricePerToken))
		}
	}
	return nil
}

// Cost is the price of one usage record, per class, in nano-USD. CacheWrite
// covers both TTLs. Total is the sum of the four classes.
type Cost struct {
	Input, Output, CacheRead, CacheWrite, Total NanoUSD
}

// Cost prices u with integer arithmetic only. Each token class is charged at
// its own rate exactly once: Anthropic's usage.input_tokens counts only the
// tokens after the last cache breakpoint, with cache_creation_input_tokens and
// cache_read_input_tokens reported separately
// (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching, "Tracking cache performance";
// https://docs.anthropic.com/en/api/messages). Usage.InputTokens
// likewise excludes cached tokens, so cache writes are not also charged as input and
// cache reads are never charged at the full input rate. OpenAI usage arrives
// already split into the same classes by its dialect.
//
// Negative token counts or prices (malformed input) count as zero, so cost is
// never negative. Every product and sum saturates at MaxNanoUSD instead of
// overflowing: a saturated class or Total reads exactly MaxNanoUSD, and cost
// stays monotone in every token count.
func (p Price) Cost(u Usage) Cost {
	var c Cost
	c.Input = mulSat(u.InputTokens, p.Input)
	c.Output = mulSat(u.OutputTokens, p.Output)
	c.CacheRead = mulSat(u.CacheReadTokens, p.CacheRead)
	c.CacheWrite = addSat(mulSat(u.CacheWrite5mTokens, p.CacheWrite5m), mulSat(u.CacheWrite1hTokens, p.CacheWrite1h))
	c.Total = addSat(addSat(c.Input, c.Output), addSat(c.CacheRead, c.CacheWrite))
	return c
}

// mulSat multiplies a token count by a per-token price, clamping negative
// operands to zero and the result to MaxNanoUSD.
func mulSat(tokens int64, price NanoUSD) NanoUSD {
	if tokens <= 0 || price <= 0 {
		return 0
	}
	if tokens > int64(MaxNanoUSD/price) {
		return MaxNanoUSD
	}
	return NanoUSD(tokens) * price
}

// addSat adds two non-negative amounts, clamping at MaxNanoUSD.
func addSat(a, b NanoUSD) NanoUSD {
	if a > MaxNanoUSD-b {
		return MaxNanoUSD
	}
	return a + b
}
