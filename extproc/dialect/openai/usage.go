package openai

import (
	"strings"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// fromUsage converts a Chat Completions usage object
// (https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage).
// prompt_tokens includes the tokens read from and written to the prompt
// cache (prompt_tokens_details.cached_tokens and .cache_write_tokens, the
// latter on models with explicit prompt-cache breakpoints), so they are
// moved out of InputTokens into their own classes; completion_tokens
// already includes reasoning tokens. OpenAI has one cache-write rate (its
// writes live 30 minutes, a TTL the Anthropic-named classes do not have):
// they are carried in CacheWrite5mTokens, as for the Responses API (see
// fromResponsesUsage), and the price table gives every OpenAI model its one
// write price in cache_write_5m (and the same in cache_write_1h). Negative or inconsistent counts are clamped so a
// usage never refunds: the cache counts never exceed prompt_tokens, the
// cached tokens taking precedence over the written ones.
//
// Each detail is the first one found in a prompt_tokens_details object,
// trying each such member in turn, as the gjson paths
// "prompt_tokens_details.cached_tokens" and
// "prompt_tokens_details.cache_write_tokens" read them.
func fromUsage(u wire.Value) accounting.Usage {
	var (
		r                  wire.Reader
		prompt, completion wire.Value
		details            [len(promptDetailsKeys)]wire.Value
	)
	r.Reset(u.Raw)
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		k := r.Peek()
		start, end := r.Skip()
		v := wire.Value{Kind: k, Raw: u.Raw[start:end]}
		switch string(key) {
		case "prompt_tokens":
			if !prompt.Exists() {
				prompt = v
			}
		case "completion_tokens":
			if !completion.Exists() {
				completion = v
			}
		case "prompt_tokens_details":
			if !details[0].Exists() || !details[1].Exists() {
				var d [len(promptDetailsKeys)]wire.Value
				v.Lookup(promptDetailsKeys[:], d[:])
				for i := range details {
					if !details[i].Exists() {
						details[i] = d[i]
					}
				}
			}
		}
	}
	p := max(prompt.Int(), 0)
	c := min(max(details[0].Int(), 0), p)
	w := min(max(details[1].Int(), 0), p-c)
	return accounting.Usage{
		InputTokens:        p - c - w,
		OutputTokens:       max(completion.Int(), 0),
		CacheReadTokens:    c,
		CacheWrite5mTokens: w,
	}
}

// The members of prompt_tokens_details read, in the order of the values
// fromUsage keeps.
var promptDetailsKeys = [...]string{"cached_tokens", "cache_write_tokens"}

// UsageFromJSON extracts the usage of a non-streaming response, with the
// service tier it reports having served the request on (the top-level
// "service_tier", which is what the request is billed at:
// https://platform.openai.com/docs/api-reference/chat/object#chat/object-service_tier).
// ok is false when the body is not valid JSON or has no usage object.
func UsageFromJSON(body []byte) (usage accounting.Usage, model string, ok bool) {
	return usageOf(body, fromUsage)
}

// The members of a complete JSON response read: those wire.ResponseUsage
// reads, and the service tier.
var responseKeys = [...]string{"usage", "model", "service_tier"}

// usageOf reads a complete JSON response of either OpenAI API, as
// wire.ResponseUsage does, converting its usage object with from and adding
// the response's service_tier.
func usageOf(body []byte, from func(wire.Value) accounting.Usage) (usage accounting.Usage, model string, ok bool) {
	var v [len(responseKeys)]wire.Value
	if !wire.Lookup(body, responseKeys[:], v[:]) || !v[0].IsObject() {
		return usage, "", false
	}
	usage = from(v[0])
	usage.ServiceTier = wire.ServiceTier(v[2], "")
	return usage, v[1].Text(), true
}

// StreamParser reads usage from a Chat Completions SSE stream
// (https://platform.openai.com/docs/api-reference/chat/streaming): data-only
// events, a "[DONE]" terminator, and (with include_usage) a usage chunk
// before it. The last non-null usage seen wins, wherever it appears —
// llama.cpp puts it on a chunk with non-empty choices — and so does the last
// non-empty service_tier, which every chunk carries
// (https://platform.openai.com/docs/api-reference/chat-streaming/streaming#chat-streaming/streaming-service_tier).
// A data object with an
// "error" key is a mid-stream error. It implements wire.StreamParser and
// allocates nothing per event in steady state.
type StreamParser struct {
	wire.StreamState
	usage accounting.Usage
	tier  string
	final bool
	done  bool
}

var _ wire.StreamParser = (*StreamParser)(nil)

// NewStreamParser returns a parser for one response stream.
func NewStreamParser() *StreamParser { return &StreamParser{} }

type sink StreamParser

// Write feeds one chunk of the response body.
func (p *StreamParser) Write(chunk []byte) { p.Feed(chunk, (*sink)(p)) }

// Usage returns the last usage seen, with the last service tier seen; final
// is true once any non-null usage has been seen.
func (p *StreamParser) Usage() (accounting.Usage, bool) {
	u := p.usage
	u.ServiceTier = p.tier
	return u, p.final
}

// Done reports that the "[DONE]" terminator has been seen.
func (p *StreamParser) Done() bool { return p.done }

// The members of a chunk read, in the order of the values Event looks up,
// and those of an error, a choice and a tool call.
var (
	chunkKeys  = [...]string{"error", "model", "usage", "choices", "service_tier"}
	errorKeys  = [...]string{"type", "code", "message"}
	choiceKeys = [...]string{"delta"}
	deltaKeys  = [...]string{"tool_calls"}
	callKeys   = [...]string{"function"}
)

// Event handles one data event.
func (s *sink) Event(_, data []byte) {
	p := (*StreamParser)(s)
	if strings.HasPrefix(wire.View(data), "[DONE]") {
		p.done = true
		return
	}
	var v [len(chunkKeys)]wire.Value
	if !p.Lookup(data, chunkKeys[:], v[:]) {
		return
	}
	if v[0].Present() {
		var e [len(errorKeys)]wire.Value
		v[0].Lookup(errorKeys[:], e[:])
		kind := e[0].Text()
		if kind == "" {
			kind = e[1].Text()
		}
		p.RecordError(kind, e[2].Text())
		return
	}
	p.RecordModel(v[1])
	p.tier = wire.ServiceTier(v[4], p.tier)
	if v[2].IsObject() {
		p.usage = fromUsage(v[2])
		p.final = true
	}
	eachElement(v[3], func(choice wire.Value) {
		var d [len(choiceKeys)]wire.Value
		choice.Lookup(choiceKeys[:], d[:])
		if !d[0].IsObject() {
			return
		}
		p.AddOutput(wire.StringFieldsLen(d[0].Raw, "content", "refusal", "reasoning", "reasoning_content"))
		var tc [len(deltaKeys)]wire.Value
		d[0].Lookup(deltaKeys[:], tc[:])
		eachElement(tc[0], func(call wire.Value) {
			var f [len(callKeys)]wire.Value
			call.Lookup(callKeys[:], f[:])
			if f[0].IsObject() {
				p.AddOutput(wire.StringFieldsLen(f[0].Raw, "arguments"))
			}
		})
	})
}

// eachElement calls fn with each element of an array, or each member value
// of an object; anything else has none that fn could read.
func eachElement(v wire.Value, fn func(wire.Value)) {
	if v.Kind != wire.KindArray && v.Kind != wire.KindObject {
		return
	}
	var r wire.Reader
	r.Reset(v.Raw)
	one := func() {
		k := r.Peek()
		start, end := r.Skip()
		fn(wire.Value{Kind: k, Raw: v.Raw[start:end]})
	}
	if v.Kind == wire.KindArray {
		it := r.Array()
		for r.NextElem(&it) {
			one()
		}
		return
	}
	it := r.Object()
	for _, ok := r.NextKey(&it); ok; _, ok = r.NextKey(&it) {
		one()
	}
}
