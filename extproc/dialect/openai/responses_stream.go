package openai

import (
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// ResponsesStreamParser reads usage from a Responses API SSE stream
// (https://platform.openai.com/docs/api-reference/responses-streaming):
// named events whose data carries the same "type" and a sequence_number,
// and no [DONE]. The lifecycle events carry the whole response: created and
// in_progress (usage null) name the model; the terminal response.completed,
// response.incomplete (the output bound or a content filter cut it short:
// usage present) and response.failed (usage null or partial, with the
// response's error) carry the usage of the whole request, and the service
// tier it was served on (response.service_tier). An "error" event
// has no usage. Output text is counted from the deltas, for a stream cut
// before its end. It implements wire.StreamParser and allocates nothing per
// event in steady state.
type ResponsesStreamParser struct {
	wire.StreamState
	usage    accounting.Usage
	final    bool
	terminal bool
}

var _ wire.StreamParser = (*ResponsesStreamParser)(nil)

// NewResponsesStreamParser returns a parser for one response stream.
func NewResponsesStreamParser() *ResponsesStreamParser { return &ResponsesStreamParser{} }

type responsesSink ResponsesStreamParser

// Write feeds one chunk of the response body.
func (p *ResponsesStreamParser) Write(chunk []byte) { p.Feed(chunk, (*responsesSink)(p)) }

// Usage returns the usage of the terminal event; final is true once a
// terminal event carrying a usage object has been seen.
func (p *ResponsesStreamParser) Usage() (accounting.Usage, bool) { return p.usage, p.final }

// Done reports that a terminal event (completed, incomplete or failed) has
// been seen.
func (p *ResponsesStreamParser) Done() bool { return p.terminal }

// The members of event data read, in the order of the values Event looks
// up, and those of the response object and of an error.
var (
	responsesEventKeys = [...]string{"type", "response", "delta", "error", "code", "message"}
	responseObjectKeys = [...]string{"model", "usage", "error", "service_tier"}
	responseErrorKeys  = [...]string{"code", "message", "type"}
)

// Event handles one SSE event. The JSON "type" is authoritative; the event
// name is the fallback.
func (s *responsesSink) Event(name, data []byte) {
	p := (*ResponsesStreamParser)(s)
	var v [len(responsesEventKeys)]wire.Value
	if !p.Lookup(data, responsesEventKeys[:], v[:]) {
		return
	}
	var buf [64]byte
	typ := name
	if v[0].Kind == wire.KindString {
		if t := v[0].AppendText(buf[:0]); len(t) > 0 {
			typ = t
		}
	}
	switch string(typ) {
	case "response.created", "response.in_progress", "response.queued":
		var m [len(responseObjectKeys)]wire.Value
		v[1].Lookup(responseObjectKeys[:], m[:])
		p.RecordModel(m[0])
	case "response.completed", "response.incomplete", "response.failed":
		var m [len(responseObjectKeys)]wire.Value
		v[1].Lookup(responseObjectKeys[:], m[:])
		p.RecordModel(m[0])
		p.terminal = true
		if m[1].IsObject() {
			p.usage = fromResponsesUsage(m[1])
			p.usage.ServiceTier = wire.ServiceTier(m[3], "")
			p.final = true
		}
		if string(typ) == "response.failed" {
			var e [len(responseErrorKeys)]wire.Value
			m[2].Lookup(responseErrorKeys[:], e[:])
			kind := e[0].Text()
			if kind == "" {
				kind = "response.failed"
			}
			p.RecordError(kind, e[1].Text())
		}
	case "error":
		// {"type":"error","code":..,"message":..,"param":..}; some servers
		// nest the fields in an "error" object instead.
		code, msg := v[4], v[5]
		if v[3].IsObject() {
			var e [len(responseErrorKeys)]wire.Value
			v[3].Lookup(responseErrorKeys[:], e[:])
			code, msg = e[0], e[1]
			if !code.Present() {
				code = e[2]
			}
		}
		kind := code.Text()
		if kind == "" {
			kind = "error"
		}
		p.RecordError(kind, msg.Text())
	case "response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
		"response.custom_tool_call_input.delta", "response.reasoning_text.delta", "response.reasoning_summary_text.delta",
		"response.code_interpreter_call_code.delta", "response.mcp_call_arguments.delta":
		if d := v[2]; d.Kind == wire.KindString {
			p.AddOutput(wire.DecodedLen(d.Raw[1 : len(d.Raw)-1]))
		}
	}
}
