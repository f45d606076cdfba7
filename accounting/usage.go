package accounting

import "math"

// NanoUSD is an amount of money in units of 1e-9 US dollars. Every price and
// every cost in tokenwarden is an integer NanoUSD, so sums never drift: $3 per
// million tokens is exactly 3000 NanoUSD per token.
type NanoUSD int64

// USD converts to dollars for display and for Prometheus counters; never use
// the result for further arithmetic.
func (n NanoUSD) USD() float64 { return float64(n) / 1e9 }

// Usage is what one request consumed, split by the token classes providers
// bill differently. Anthropic reports the classes directly; OpenAI's
// prompt_tokens includes cached tokens, so its dialect subtracts them into
// CacheReadTokens before filling InputTokens.
type Usage struct {
	InputTokens        int64 // input neither read from nor written to the prompt cache
	OutputTokens       int64 // everything generated, thinking/reasoning included
	CacheReadTokens    int64 // input served from the prompt cache
	CacheWrite5mTokens int64 // input written to the cache with the 5-minute TTL
	CacheWrite1hTokens int64 // input written to the cache with the 1-hour TTL

	// ServiceTier is the service tier the provider reports having served
	// the request on, verbatim (OpenAI's "service_tier": "default", "flex",
	// "priority", "scale"; Anthropic's usage.service_tier: "standard",
	// "priority", "batch"); "" when it says none. Cost reads it with
	// ParseServiceTier; an unknown value prices as standard.
	ServiceTier string
}

// CacheWriteTokens is the total written to the prompt cache, whatever the TTL.
func (u Usage) CacheWriteTokens() int64 { return addTokens(u.CacheWrite5mTokens, u.CacheWrite1hTokens) }

// TotalInputTokens is every input token the provider processed, cached or not.
func (u Usage) TotalInputTokens() int64 {
	return addTokens(addTokens(u.InputTokens, u.CacheReadTokens), u.CacheWriteTokens())
}

// RateLimitedTokens is what counts against a tokens-per-minute limit. It follows
// Anthropic's rule that cache reads do not count towards input-token limits,
// while uncached input, cache writes and output do.
func (u Usage) RateLimitedTokens() int64 {
	return addTokens(addTokens(u.InputTokens, u.CacheWriteTokens()), u.OutputTokens)
}

// MaxPlausibleTokens bounds any token count a provider can really report
// for one request: five times the largest context window offered today
// (2M tokens). Usage beyond it is a provider or parser fault, not spend.
const MaxPlausibleTokens = 10_000_000

// Zero reports a usage with no tokens at all: a provider that says nothing
// (an empty usage object) has not measured anything, whatever service tier
// it names.
func (u Usage) Zero() bool { return u == Usage{ServiceTier: u.ServiceTier} }

// Plausible reports whether every class is a count a provider can report
// for one request: not negative, and at most MaxPlausibleTokens in total.
func (u Usage) Plausible() bool {
	for _, n := range [...]int64{u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWrite5mTokens, u.CacheWrite1hTokens} {
		if n < 0 || n > MaxPlausibleTokens {
			return false
		}
	}
	return addTokens(u.TotalInputTokens(), u.OutputTokens) <= MaxPlausibleTokens
}

// addTokens adds two token counts, saturating at math.MaxInt64 (and treating
// negative counts, which are never valid, as zero), so a hostile usage
// record cannot wrap a sum around.
func addTokens(a, b int64) int64 {
	a, b = max(a, 0), max(b, 0)
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
