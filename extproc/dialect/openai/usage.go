package openai

import (
	"strings"

	"github.com/tidwall/gjson"
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// fromUsage converts a Chat Completions usage object. prompt_tokens includes
// the cached tokens, so they are subtracted into CacheReadTokens;
// completion_tokens already includes reasoning tokens. Negative or
// inconsistent counts are clamped so a usage never refunds.
func fromUsage(u gjson.Result) accounting.Usage {
	prompt := max(u.Get("prompt_tokens").Int(), 0)
	cached := min(max(u.Get("prompt_tokens_details.cached_tokens").Int(), 0), prompt)
	return accounting.Usage{
		InputTokens:     prompt - cached,
		OutputTokens:    max(u.Get("completion_tokens").Int(), 0),
		CacheReadTokens: cached,
	}
}

// UsageFromJSON extracts the usage of a non-streaming response. ok is false
// when the body is not valid JSON or has no usage object.
func UsageFromJSON(body []byte) (usage accounting.Usage, model string, ok bool) {
	u, model, ok := wire.ResponseUsage(body)
	if !ok {
		return usage, "", false
	}
	return fromUsage(u), model, true
}

// StreamParser reads usage from a Chat Completions SSE stream: data-only
// events, a "[DONE]" terminator, and (with include_usage) a usage chunk
// before it. The last non-null usage seen wins, wherever it appears —
// llama.cpp puts it on a chunk with non-empty choices. A data object with an
// "error" key is a mid-stream error. It implements wire.StreamParser and
// allocates nothing per event in steady state.
type StreamParser struct {
	wire.StreamState
	usage accounting.Usage
	final bool
	done  bool
}

var _ wire.StreamParser = (*StreamParser)(nil)

// NewStreamParser returns a parser for one response stream.
func NewStreamParser() *StreamParser { return &StreamParser{} }

type sink StreamParser

// Write feeds one chunk of the response body.
func (p *StreamParser) Write(chunk []byte) { p.Feed(chunk, (*sink)(p)) }

// Usage returns the last usage seen; final is true once any non-null usage
// has been seen.
func (p *StreamParser) Usage() (accounting.Usage, bool) { return p.usage, p.final }

// Done reports that the "[DONE]" terminator has been seen.
func (p *StreamParser) Done() bool { return p.done }

// Event handles one data event.
func (s *sink) Event(_, data []byte) {
	p := (*StreamParser)(s)
	if strings.HasPrefix(wire.View(data), "[DONE]") {
		p.done = true
		return
	}
	js, ok := p.EventJSON(data)
	if !ok {
		return
	}
	if e := gjson.Get(js, "error"); e.Exists() && e.Type != gjson.Null {
		kind := e.Get("type").String()
		if kind == "" {
			kind = e.Get("code").String()
		}
		p.RecordError(strings.Clone(kind), strings.Clone(e.Get("message").String()))
		return
	}
	p.RecordModel(gjson.Get(js, "model"))
	if u := gjson.Get(js, "usage"); u.IsObject() {
		p.usage = fromUsage(u)
		p.final = true
	}
	gjson.Get(js, "choices").ForEach(func(_, choice gjson.Result) bool {
		d := choice.Get("delta")
		if !d.IsObject() {
			return true
		}
		p.AddOutput(wire.StringFieldsLen(d.Raw, "content", "refusal", "reasoning", "reasoning_content"))
		d.Get("tool_calls").ForEach(func(_, call gjson.Result) bool {
			p.AddOutput(wire.StringFieldsLen(call.Get("function").Raw, "arguments"))
			return true
		})
		return true
	})
}
