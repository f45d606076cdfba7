package anthropic

import (
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
	// tier is usage.service_tier, the tier the request was served on
	// ("standard", "priority", "batch"), which prices it.
	tier string
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
		ServiceTier:        u.tier,
	}
}

// The members of a usage object
// (https://docs.anthropic.com/en/api/messages), in the order
// of usageFields.
var (
	usageKeys = [...]string{"input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens", "cache_creation", "service_tier"}
	splitKeys = [...]string{"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}
)

// usageFields are the members of one usage object, by usageKeys.
type usageFields [len(usageKeys)]wire.Value

func readUsage(obj wire.Value) (f usageFields) {
	obj.Lookup(usageKeys[:], f[:])
	return f
}

// overlay copies every present field of a usage object onto u, the SDKs'
// rule for a message_delta (present: there and not null). Negative counts
// are clamped to 0: they are never valid and must not refund. A service
// tier is taken when it is a non-empty string (wire.ServiceTier), so a
// message_delta that names none keeps message_start's.
func (u *rawUsage) overlay(f *usageFields) {
	for i, dst := range [...]*int64{&u.input, &u.cacheRead, &u.cacheWrite} {
		if f[i].Present() {
			*dst = max(f[i].Int(), 0)
		}
	}
	u.tier = wire.ServiceTier(f[5], u.tier)
}

// fromMessage reads the usage object of a complete message (a non-streaming
// response or message_start): every field is taken as is.
func fromMessage(obj wire.Value) rawUsage {
	var u rawUsage
	f := readUsage(obj)
	u.overlay(&f)
	u.output = max(f[3].Int(), 0)
	if cc := f[4]; cc.IsObject() {
		var s [len(splitKeys)]wire.Value
		cc.Lookup(splitKeys[:], s[:])
		u.hasSplit = true
		u.split5m = max(s[0].Int(), 0)
		u.split1h = max(s[1].Int(), 0)
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
