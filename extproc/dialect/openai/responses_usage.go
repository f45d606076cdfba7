package openai

import (
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// The members of a Responses API usage object
// (https://platform.openai.com/docs/api-reference/responses/object#responses/object-usage),
// in the order fromResponsesUsage reads them, and of its input details.
var (
	responsesUsageKeys = [...]string{"input_tokens", "input_tokens_details", "output_tokens"}
	inputDetailsKeys   = [...]string{"cached_tokens", "cache_write_tokens"}
)

// fromResponsesUsage converts a Responses API usage object. input_tokens
// includes the tokens read from and written to the prompt cache, and
// output_tokens the reasoning tokens, so cached and written tokens are
// moved out of InputTokens into their own classes and output is taken
// whole. OpenAI has one cache-write rate, carried in the 5-minute class
// (the price table gives OpenAI models their write price there). Negative
// or inconsistent counts are clamped so a usage never refunds: the cache
// counts never exceed input_tokens.
func fromResponsesUsage(u wire.Value) accounting.Usage {
	var f [len(responsesUsageKeys)]wire.Value
	u.Lookup(responsesUsageKeys[:], f[:])
	var d [len(inputDetailsKeys)]wire.Value
	f[1].Lookup(inputDetailsKeys[:], d[:])
	in := max(f[0].Int(), 0)
	cached := min(max(d[0].Int(), 0), in)
	written := min(max(d[1].Int(), 0), in-cached)
	return accounting.Usage{
		InputTokens:        in - cached - written,
		CacheReadTokens:    cached,
		CacheWrite5mTokens: written,
		OutputTokens:       max(f[2].Int(), 0),
	}
}

// ResponsesUsageFromJSON extracts the usage of a complete Responses API
// JSON answer: a response object, or the compaction object of
// /v1/responses/compact, both with a top-level usage, with the service tier
// the response reports having served it on (its "service_tier", which
// prices it:
// https://platform.openai.com/docs/api-reference/responses/object#responses/object-service_tier).
// ok is false when the body is not valid JSON or its usage is absent or
// null — an error body, or a background response still queued or in
// progress, whose usage arrives only later.
func ResponsesUsageFromJSON(body []byte) (usage accounting.Usage, model string, ok bool) {
	return usageOf(body, fromResponsesUsage)
}
