package anthropic

import (
	"github.com/tidwall/gjson"
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// rawUsage is the Messages API usage object as reported, before the cache
// write is split by TTL.
type rawUsage struct {
	input, output, cacheRead int64
	cacheWrite               int64 // cache_creation_input_tokens
	split5m, split1h         int64 // cache_creation.ephemeral_{5m,1h}_input_tokens
	hasSplit                 bool  // cache_creation was an object
}

// usage splits the cache write by TTL. Without a cache_creation object every
// write is a 5-minute write (the only TTL before 1h existed); when
// cache_creation_input_tokens exceeds the split's total — a message_delta
// raised the cumulative count after message_start reported the split — the
// remainder is attributed to 5m, the default TTL and the cheaper rate, so the
// extra is charged rather than lost.
func (u rawUsage) usage() accounting.Usage {
	w5, w1 := u.cacheWrite, int64(0)
	if u.hasSplit {
		w5, w1 = u.split5m, u.split1h
		if rest := u.cacheWrite - (w5 + w1); rest > 0 {
			w5 += rest
		}
	}
	return accounting.Usage{
		InputTokens:        u.input,
		OutputTokens:       u.output,
		CacheReadTokens:    u.cacheRead,
		CacheWrite5mTokens: w5,
		CacheWrite1hTokens: w1,
	}
}

// present reports a field that exists and is not null, the SDKs' test for
// overlaying a message_delta usage field.
func present(r gjson.Result) bool { return r.Exists() && r.Type != gjson.Null }

// overlay copies every present field of a usage object onto u. Negative
// counts are clamped to 0: they are never valid and must not refund.
func (u *rawUsage) overlay(obj gjson.Result) {
	set := func(dst *int64, key string) {
		if v := obj.Get(key); present(v) {
			*dst = max(v.Int(), 0)
		}
	}
	set(&u.input, "input_tokens")
	set(&u.cacheRead, "cache_read_input_tokens")
	set(&u.cacheWrite, "cache_creation_input_tokens")
}

// fromMessage reads the usage object of a complete message (a non-streaming
// response or message_start): every field is taken as is.
func fromMessage(obj gjson.Result) rawUsage {
	var u rawUsage
	u.overlay(obj)
	u.output = max(obj.Get("output_tokens").Int(), 0)
	if cc := obj.Get("cache_creation"); cc.IsObject() {
		u.hasSplit = true
		u.split5m = max(cc.Get("ephemeral_5m_input_tokens").Int(), 0)
		u.split1h = max(cc.Get("ephemeral_1h_input_tokens").Int(), 0)
	}
	return u
}

// UsageFromJSON extracts the usage of a non-streaming Messages response.
// ok is false when the body is not valid JSON (truncated) or has no usage
// object (error bodies).
func UsageFromJSON(body []byte) (usage accounting.Usage, model string, ok bool) {
	u, model, ok := wire.ResponseUsage(body)
	if !ok {
		return usage, "", false
	}
	return fromMessage(u).usage(), model, true
}
