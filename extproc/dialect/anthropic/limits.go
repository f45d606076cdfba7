package anthropic

import (
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// ProviderLimits reads Anthropic's rate-limit headers,
// anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset},
// whose resets are RFC 3339 instants, and the response's retry-after
// (https://docs.anthropic.com/en/api/rate-limits#response-headers).
func (Messages) ProviderLimits(get wire.HeaderGetter, now time.Time) wire.ProviderLimits {
	return Limits(get, now)
}

// Limits is ProviderLimits as a function, for callers without a Messages.
func Limits(get wire.HeaderGetter, now time.Time) wire.ProviderLimits {
	window := func(h *wire.LimitHeaders) wire.LimitWindow {
		limit, ok1 := get(h.Limit)
		left, ok2 := get(h.Remaining)
		if !ok1 || !ok2 {
			return wire.LimitWindow{}
		}
		reset := now
		if v, ok := get(h.Reset); ok {
			if t, err := time.Parse(time.RFC3339, strings.TrimSpace(v)); err == nil {
				reset = t
			}
		}
		return wire.Window(limit, left, reset, now)
	}
	return wire.ProviderLimits{
		Requests:     window(&requestLimits),
		Tokens:       window(&tokenLimits),
		InputTokens:  window(&inputTokenLimits),
		OutputTokens: window(&outputTokenLimits),
		RetryAfter:   wire.RetryAfter(get, now),
	}
}

var (
	requestLimits     = limitHeaders("requests")
	tokenLimits       = limitHeaders("tokens")
	inputTokenLimits  = limitHeaders("input-tokens")
	outputTokenLimits = limitHeaders("output-tokens")
)

func limitHeaders(name string) wire.LimitHeaders {
	p := "anthropic-ratelimit-" + name + "-"
	return wire.LimitHeaders{Limit: p + "limit", Remaining: p + "remaining", Reset: p + "reset"}
}
