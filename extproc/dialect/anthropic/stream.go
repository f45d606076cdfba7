package anthropic

import (
	"strings"

	"github.com/tidwall/gjson"
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// StreamParser reads usage from a Messages API SSE stream as it passes, the
// way the official SDKs accumulate it: message_start sets the snapshot; each
// message_delta (whose usage is cumulative) overwrites output_tokens
// unconditionally and input_tokens, cache_read_input_tokens and
// cache_creation_input_tokens only where present and non-null. The TTL split
// of cache writes exists only in message_start; see rawUsage.usage for how a
// later, larger cache_creation_input_tokens is attributed.
//
// It implements wire.StreamParser. Steady-state parsing allocates nothing per
// event: event data is read in place with gjson over a view of the decoder's
// buffer; only the model name and an error message are copied, once.
type StreamParser struct {
	wire.StreamState
	u     rawUsage
	final bool
}

var _ wire.StreamParser = (*StreamParser)(nil)

// NewStreamParser returns a parser for one response stream.
func NewStreamParser() *StreamParser { return &StreamParser{} }

// sink receives decoded events; a distinct type keeps Event out of
// StreamParser's API.
type sink StreamParser

// Write feeds one chunk of the response body.
func (p *StreamParser) Write(chunk []byte) { p.Feed(chunk, (*sink)(p)) }

// Usage returns the usage known so far; final is true once a message_delta
// carrying usage, or message_stop, has been seen.
func (p *StreamParser) Usage() (accounting.Usage, bool) { return p.u.usage(), p.final }

// Event handles one SSE event. The JSON "type" is authoritative (it always
// equals the event name on the real API); the name is the fallback.
func (s *sink) Event(name, data []byte) {
	p := (*StreamParser)(s)
	js, ok := p.EventJSON(data)
	if !ok {
		return
	}
	typ := gjson.Get(js, "type").Str
	if typ == "" {
		typ = wire.View(name)
	}
	switch typ {
	case "message_start":
		msg := gjson.Get(js, "message")
		p.RecordModel(msg.Get("model"))
		p.u = fromMessage(msg.Get("usage"))
	case "message_delta":
		if u := gjson.Get(js, "usage"); u.IsObject() {
			p.u.output = max(u.Get("output_tokens").Int(), 0)
			p.u.overlay(u)
			p.final = true
		}
	case "content_block_start":
		p.AddOutput(textLen(gjson.Get(js, "content_block")))
	case "content_block_delta":
		p.AddOutput(textLen(gjson.Get(js, "delta")))
	case "error":
		e := gjson.Get(js, "error")
		p.RecordError(strings.Clone(e.Get("type").String()), strings.Clone(e.Get("message").String()))
	}
}

// textLen sums the decoded lengths of the generated-text fields of a delta
// or content block.
func textLen(obj gjson.Result) int64 {
	return wire.StringFieldsLen(obj.Raw, "text", "partial_json", "thinking")
}
