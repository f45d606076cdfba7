package openai

import (
	"strings"

	"github.com/tidwall/gjson"
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/llm"
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
	s := llm.View(body)
	if !gjson.Valid(s) {
		return usage, "", false
	}
	u := gjson.Get(s, "usage")
	if !u.IsObject() {
		return usage, "", false
	}
	return fromUsage(u), gjson.Get(s, "model").String(), true
}

// StreamParser reads usage from a Chat Completions SSE stream: data-only
// events, a "[DONE]" terminator, and (with include_usage) a usage chunk
// before it. The last non-null usage seen wins, wherever it appears —
// llama.cpp puts it on a chunk with non-empty choices. A data object with an
// "error" key is a mid-stream error. It implements llm.StreamParser and
// allocates nothing per event in steady state.
type StreamParser struct {
	dec      llm.SSEDecoder
	usage    accounting.Usage
	final    bool
	done     bool
	model    string
	outBytes int64
	errKind  string
	errMsg   string
	hasErr   bool
	invalid  int
}

var _ llm.StreamParser = (*StreamParser)(nil)

// NewStreamParser returns a parser for one response stream.
func NewStreamParser() *StreamParser { return &StreamParser{} }

type sink StreamParser

// Write feeds one chunk of the response body.
func (p *StreamParser) Write(chunk []byte) { p.dec.Write(chunk, (*sink)(p)) }

// Usage returns the last usage seen; final is true once any non-null usage
// has been seen.
func (p *StreamParser) Usage() (accounting.Usage, bool) { return p.usage, p.final }

// Model returns the model named by the chunks.
func (p *StreamParser) Model() string { return p.model }

// OutputTextBytes returns the decoded bytes of content, refusal, reasoning
// and tool-call arguments streamed so far.
func (p *StreamParser) OutputTextBytes() int64 { return p.outBytes }

// Error returns the first error object seen in the stream.
func (p *StreamParser) Error() (kind, message string, ok bool) {
	return p.errKind, p.errMsg, p.hasErr
}

// Done reports that the "[DONE]" terminator has been seen.
func (p *StreamParser) Done() bool { return p.done }

// Dropped returns how many events were ignored: neither JSON nor [DONE], or
// over llm.MaxSSELine.
func (p *StreamParser) Dropped() int { return p.dec.Dropped() + p.invalid }

// Event handles one data event.
func (s *sink) Event(_, data []byte) {
	p := (*StreamParser)(s)
	js := llm.View(data)
	if strings.HasPrefix(js, "[DONE]") {
		p.done = true
		return
	}
	if !gjson.Valid(js) {
		p.invalid++
		return
	}
	if e := gjson.Get(js, "error"); e.Exists() && e.Type != gjson.Null {
		if !p.hasErr {
			p.hasErr = true
			p.errKind = e.Get("type").String()
			if p.errKind == "" {
				p.errKind = e.Get("code").String()
			}
			p.errMsg = e.Get("message").String()
		}
		return
	}
	if m := gjson.Get(js, "model"); m.Type == gjson.String && m.Str != p.model {
		p.model = strings.Clone(m.Str) // m.Str may be a view of data
	}
	if u := gjson.Get(js, "usage"); u.IsObject() {
		p.usage = fromUsage(u)
		p.final = true
	}
	gjson.Get(js, "choices").ForEach(func(_, choice gjson.Result) bool {
		d := choice.Get("delta")
		if !d.IsObject() {
			return true
		}
		p.outBytes += llm.StringFieldsLen(d.Raw, "content", "refusal", "reasoning", "reasoning_content")
		d.Get("tool_calls").ForEach(func(_, call gjson.Result) bool {
			p.outBytes += llm.StringFieldsLen(call.Get("function").Raw, "arguments")
			return true
		})
		return true
	})
}
