package accounting

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
}

// CacheWriteTokens is the total written to the prompt cache, whatever the TTL.
func (u Usage) CacheWriteTokens() int64 { return u.CacheWrite5mTokens + u.CacheWrite1hTokens }

// TotalInputTokens is every input token the provider processed, cached or not.
func (u Usage) TotalInputTokens() int64 {
	return u.InputTokens + u.CacheReadTokens + u.CacheWriteTokens()
}

// RateLimitedTokens is what counts against a tokens-per-minute limit. It follows
// Anthropic's rule that cache reads do not count towards input-token limits,
// while uncached input, cache writes and output do.
func (u Usage) RateLimitedTokens() int64 {
	return u.InputTokens + u.CacheWriteTokens() + u.OutputTokens
}
