package openai

import (
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Limits reads OpenAI's rate-limit headers,
// x-ratelimit-{limit,remaining,reset}-{requests,tokens}, whose resets are
// durations in Go's notation ("6m0s", "1s", "20ms"), and the response's
// retry-after (https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers).
// Every OpenAI surface (Chat Completions, Responses, embeddings) sends the
// same headers.
func Limits(get wire.HeaderGetter, now time.Time) wire.ProviderLimits {
	window := func(h *wire.LimitHeaders) wire.LimitWindow {
		limit, ok1 := get(h.Limit)
		left, ok2 := get(h.Remaining)
		if !ok1 || !ok2 {
			return wire.LimitWindow{}
		}
		reset := now
		if v, ok := get(h.Reset); ok {
			if d, err := time.ParseDuration(strings.TrimSpace(v)); err == nil && d > 0 {
				reset = now.Add(d)
			}
		}
		return wire.Window(limit, left, reset, now)
	}
	return wire.ProviderLimits{
		Requests:   window(&requestLimits),
		Tokens:     window(&tokenLimits),
		RetryAfter: wire.RetryAfter(get, now),
	}
}

var requestLimits, tokenLimits = limitHeaders("requests"), limitHeaders("tokens")

func limitHeaders(name string) wire.LimitHeaders {
	return wire.LimitHeaders{Limit: "x-ratelimit-limit-" + name, Remaining: "x-ratelimit-remaining-" + name, Reset: "x-ratelimit-reset-" + name}
}

// ProviderLimits implements the dialect's provider-limit reading.
func (ChatCompletions) ProviderLimits(get wire.HeaderGetter, now time.Time) wire.ProviderLimits {
	return Limits(get, now)
}

// ProviderLimits implements the dialect's provider-limit reading.
func (Responses) ProviderLimits(get wire.HeaderGetter, now time.Time) wire.ProviderLimits {
	return Limits(get, now)
}

// ProviderLimits implements the dialect's provider-limit reading.
func (Embeddings) ProviderLimits(get wire.HeaderGetter, now time.Time) wire.ProviderLimits {
	return Limits(get, now)
}
