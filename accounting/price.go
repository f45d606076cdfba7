package accounting

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
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

// Price is what one token of each class costs, in nano-USD per token, for
// one model in one period. The classes match Usage: uncached input, output,
// the two cache-write TTLs, and cache reads. A price may also carry a
// long-context tier and service-tier multipliers; the zero values of both
// mean "none" (every request at the base rates, every tier at ×1), so a
// price written as Price{Input: …, Output: …} is the flat price it looks like.
type Price struct {
	Input        NanoUSD
	Output       NanoUSD
	CacheWrite5m NanoUSD
	CacheWrite1h NanoUSD
	CacheRead    NanoUSD

	// LongContext, when its Above is positive, prices every class of a
	// request whose total input (uncached, cache reads and cache writes)
	// exceeds Above at its rates instead: a cliff, not a blend, as
	// Anthropic, OpenAI and Google bill prompts past 200K or 272K tokens.
	LongContext LongContext
	// Tiers are the multipliers of the service tiers the provider reports
	// having served a request on (Usage.ServiceTier).
	Tiers Tiers
}

// Rates are the five per-token class prices: a price's base, or its
// long-context tier's.
type Rates struct {
	Input        NanoUSD
	Output       NanoUSD
	CacheWrite5m NanoUSD
	CacheWrite1h NanoUSD
	CacheRead    NanoUSD
}

// LongContext is a long-context tier: Rates for requests whose total input
// exceeds Above tokens. Above 0 means the price has no such tier.
type LongContext struct {
	Above int64
	Rates
}

// Tiers holds the multiplier of each non-standard service tier. A zero
// Multiplier is ×1: the tier costs what standard costs.
type Tiers struct {
	Batch    Multiplier `json:"batch"`
	Flex     Multiplier `json:"flex"`
	Priority Multiplier `json:"priority"`
}

// of returns the multiplier for a tier; standard (and any tier without a
// multiplier) is ×1.
func (t Tiers) of(tier ServiceTier) Multiplier {
	switch tier {
	case TierBatch:
		return t.Batch
	case TierFlex:
		return t.Flex
	case TierPriority:
		return t.Priority
	}
	return Multiplier{}
}

// base returns the price's base rates.
func (p Price) base() Rates {
	return Rates{Input: p.Input, Output: p.Output, CacheWrite5m: p.CacheWrite5m, CacheWrite1h: p.CacheWrite1h, CacheRead: p.CacheRead}
}

// Rates returns the per-token rates a usage is priced at: the long-context
// tier's when the usage's total input exceeds its threshold, else the base
// rates. Service-tier multipliers are not applied here (they apply to each
// class's total, see Cost).
func (p Price) Rates(u Usage) Rates {
	if lc := p.LongContext; lc.Above > 0 && u.TotalInputTokens() > lc.Above {
		return lc.Rates
	}
	return p.base()
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

// validate reports whether every class is a non-negative price within range,
// a long-context tier is a surcharge (no class cheaper than its base: the
// cliff must never make more tokens cost less) and every multiplier is
// valid; tables built from Go values (overrides, fallbacks) go through it.
func (p Price) validate() error {
	if err := p.base().validate(""); err != nil {
		return err
	}
	lc := p.LongContext
	switch {
	case lc.Above < 0:
		return fmt.Errorf("price long_context: threshold %d tokens is negative", lc.Above)
	case lc.Above == 0 && lc.Rates != (Rates{}):
		return errors.New("price long_context: rates without a threshold (above)")
	case lc.Above > 0:
		if err := lc.Rates.validate("long_context "); err != nil {
			return err
		}
		b := p.base()
		for _, c := range [...]struct {
			name       string
			base, long NanoUSD
		}{
			{"input", b.Input, lc.Input}, {"output", b.Output, lc.Output}, {"cache_write_5m", b.CacheWrite5m, lc.CacheWrite5m},
			{"cache_write_1h", b.CacheWrite1h, lc.CacheWrite1h}, {"cache_read", b.CacheRead, lc.CacheRead},
		} {
			if c.long < c.base {
				return fmt.Errorf("price long_context %s: %d nano-USD per token is below the base %d: a tier past %d tokens is a surcharge", c.name, c.long, c.base, lc.Above)
			}
		}
	}
	for _, m := range [...]struct {
		name string
		m    Multiplier
	}{{"batch", p.Tiers.Batch}, {"flex", p.Tiers.Flex}, {"priority", p.Tiers.Priority}} {
		if err := m.m.validate(); err != nil {
			return fmt.Errorf("price tiers %s: %w", m.name, err)
		}
	}
	return nil
}

func (r Rates) validate(prefix string) error {
	for _, c := range [...]struct {
		name string
		v    NanoUSD
	}{
		{"input", r.Input}, {"output", r.Output}, {"cache_write_5m", r.CacheWrite5m},
		{"cache_write_1h", r.CacheWrite1h}, {"cache_read", r.CacheRead},
	} {
		if c.v < 0 || c.v > maxPricePerToken {
			return fmt.Errorf("price %s%s: %d nano-USD per token is outside [0, %d]", prefix, c.name, c.v, NanoUSD(maxPricePerToken))
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
// The rates are the long-context tier's when the request's total input
// exceeds its threshold (Rates), and each class's total is multiplied by the
// multiplier of the service tier the provider reports (u.ServiceTier, read
// by ParseServiceTier; unknown tiers price as standard). A multiplied total
// that falls between two nano-USD is rounded up, per class, so a tier never
// under-charges and is over by less than one nano-USD per class.
//
// Negative token counts or prices (malformed input) count as zero, so cost is
// never negative. Every product and sum saturates at MaxNanoUSD instead of
// overflowing: a saturated class or Total reads exactly MaxNanoUSD, and cost
// stays monotone in every token count (a long-context tier is never cheaper
// than the base, which validate enforces for every table).
func (p Price) Cost(u Usage) Cost {
	r := p.Rates(u)
	var c Cost
	if m := p.Tiers.of(ParseServiceTier(u.ServiceTier)); !m.unit() {
		c.Input = mulRatioSat(u.InputTokens, r.Input, m)
		c.Output = mulRatioSat(u.OutputTokens, r.Output, m)
		c.CacheRead = mulRatioSat(u.CacheReadTokens, r.CacheRead, m)
		c.CacheWrite = addSat(mulRatioSat(u.CacheWrite5mTokens, r.CacheWrite5m, m), mulRatioSat(u.CacheWrite1hTokens, r.CacheWrite1h, m))
	} else {
		c.Input = mulSat(u.InputTokens, r.Input)
		c.Output = mulSat(u.OutputTokens, r.Output)
		c.CacheRead = mulSat(u.CacheReadTokens, r.CacheRead)
		c.CacheWrite = addSat(mulSat(u.CacheWrite5mTokens, r.CacheWrite5m), mulSat(u.CacheWrite1hTokens, r.CacheWrite1h))
	}
	c.Total = addSat(addSat(c.Input, c.Output), addSat(c.CacheRead, c.CacheWrite))
	return c
}

// mulRatioSat is ⌈tokens·price·num/den⌉ for the multiplier num/den, with
// mulSat's clamping. Multipliers are bounded (maxMultiplierTerm) and prices
// validated, but Cost also takes hand-built prices, so the product is formed
// in 128 bits and any result past MaxNanoUSD saturates.
func mulRatioSat(tokens int64, price NanoUSD, m Multiplier) NanoUSD {
	if tokens <= 0 || price <= 0 {
		return 0
	}
	num, den := uint64(m.Num), uint64(m.Den)
	hi, lo := bits.Mul64(uint64(tokens), uint64(price)) // the 128-bit hi:lo
	// (hi:lo)·num = top:mid:low; a non-zero top word is beyond any amount,
	// whatever den then divides it by.
	hiTop, hiMid := bits.Mul64(hi, num)
	loMid, low := bits.Mul64(lo, num)
	mid, carry := bits.Add64(hiMid, loMid, 0)
	if hiTop != 0 || carry != 0 || mid >= den { // mid ≥ den: the quotient needs more than 64 bits
		return MaxNanoUSD
	}
	q, rem := bits.Div64(mid, low, den)
	if q > uint64(MaxNanoUSD) || q == uint64(MaxNanoUSD) && rem != 0 {
		return MaxNanoUSD
	}
	if rem != 0 {
		q++ // round up: a fraction of a nano-USD is charged, never dropped
	}
	return NanoUSD(q)
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
