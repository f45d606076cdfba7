package anthropic

import (
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// StreamParser reads usage from a Messages API SSE stream as it passes, the
// way the official SDKs accumulate it: message_start sets the snapshot; each
// message_delta (whose usage is cumulative) overwrites output_tokens
// unconditionally and input_tokens, cache_read_input_tokens and
// cache_creation_input_tokens only where present and non-null. The TTL split
// of cache writes exists only in message_start; see rawUsage.usage for how a
// later, larger cache_creation_input_tokens is attributed. Events are those
// of https://docs.anthropic.com/en/docs/build-with-claude/streaming.
//
// It implements wire.StreamParser. Steady-state parsing allocates nothing per
// event: event data is read in place with wire.Lookup over the decoder's
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
// carrying usage has been seen.
func (p *StreamParser) Usage() (accounting.Usage, bool) { return p.u.usage(), p.final }

// The members of event data read, in the order of the values Event looks
// up, and those of a message_start's message and of an error.
var (
	eventKeys   = [...]string{"type", "message", "usage", "content_block", "delta", "error"}
	messageKeys = [...]string{"model", "usage"}
	errorKeys   = [...]string{"type", "message"}
)

// Event handles one SSE event. The JSON "type" is authoritative (it always
// equals the event name on the real API); the name is the fallback.
func (s *sink) Event(name, data []byte) {
	p := (*StreamParser)(s)
	var v [len(eventKeys)]wire.Value
	if !p.Lookup(data, eventKeys[:], v[:]) {
		return
	}
	var buf [32]byte
	typ := name
	if v[0].Kind == wire.KindString {
		if t := v[0].AppendText(buf[:0]); len(t) > 0 {
			typ = t
		}
	}
	switch string(typ) {
	case "message_start":
		var m [len(messageKeys)]wire.Value
		v[1].Lookup(messageKeys[:], m[:])
		p.RecordModel(m[0])
		p.u = fromMessage(m[1])
	case "message_delta":
		if u := v[2]; u.IsObject() {
			f := readUsage(u)
			p.u.output = max(f[3].Int(), 0)
			p.u.overlay(&f)
			p.final = true
		}
	case "content_block_start":
		p.AddOutput(textLen(v[3]))
	case "content_block_delta":
		p.AddOutput(textLen(v[4]))
	case "error":
		var e [len(errorKeys)]wire.Value
		v[5].Lookup(errorKeys[:], e[:])
		p.RecordError(e[0].Text(), e[1].Text())
	}
}

// textLen sums the decoded lengths of the generated-text fields of a delta
// or content block.
func textLen(obj wire.Value) int64 {
	if !obj.IsObject() {
		return 0
	}
	return wire.StringFieldsLen(obj.Raw, "text", "partial_json", "thinking")
}
