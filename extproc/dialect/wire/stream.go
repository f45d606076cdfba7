package wire

import (
	"strings"

	"github.com/tidwall/gjson"
)

// StreamState is the dialect-independent half of a StreamParser: the SSE
// decoder, the reported model, the output byte count, the first mid-stream
// error and the count of unusable events. A dialect embeds it, feeds chunks
// through Feed and records what its events say; the promoted Model,
// OutputTextBytes, Error and Dropped complete llm.StreamParser.
type StreamState struct {
	dec      SSEDecoder
	model    string
	outBytes int64
	errKind  string
	errMsg   string
	hasErr   bool
	invalid  int
}

// Feed decodes one chunk, calling h for every complete event.
func (s *StreamState) Feed(chunk []byte, h SSEHandler) { s.dec.Write(chunk, h) }

// Model returns the model the provider reported, or "".
func (s *StreamState) Model() string { return s.model }

// OutputTextBytes returns the decoded bytes of generated output so far.
func (s *StreamState) OutputTextBytes() int64 { return s.outBytes }

// Error returns the first mid-stream error recorded.
func (s *StreamState) Error() (kind, message string, ok bool) {
	return s.errKind, s.errMsg, s.hasErr
}

// Dropped returns how many events were unusable: over MaxSSELine, or data
// that is not JSON.
func (s *StreamState) Dropped() int { return s.dec.Dropped() + s.invalid }

// EventJSON returns the event data as a string view for gjson, and whether
// it is valid JSON; invalid data is counted as dropped. The view is valid
// only during the event.
func (s *StreamState) EventJSON(data []byte) (string, bool) {
	js := View(data)
	if !gjson.Valid(js) {
		s.invalid++
		return "", false
	}
	return js, true
}

// RecordModel keeps m, copying it (it may be a view of event data) only
// when it changes, so a model repeated on every chunk costs nothing.
func (s *StreamState) RecordModel(m gjson.Result) {
	if m.Type == gjson.String && m.Str != s.model {
		s.model = strings.Clone(m.Str)
	}
}

// RecordError keeps the first error (type, message) of a stream.
func (s *StreamState) RecordError(kind, message string) {
	if !s.hasErr {
		s.errKind, s.errMsg, s.hasErr = kind, message, true
	}
}

// AddOutput adds n decoded bytes of generated output.
func (s *StreamState) AddOutput(n int64) { s.outBytes += n }

// ResponseUsage locates the usage object and model of a complete JSON
// response; ok is false when the body is not valid JSON (truncated) or has
// no usage object (an error body).
func ResponseUsage(body []byte) (usage gjson.Result, model string, ok bool) {
	js := View(body)
	if !gjson.Valid(js) {
		return usage, "", false
	}
	usage = gjson.Get(js, "usage")
	if !usage.IsObject() {
		return usage, "", false
	}
	return usage, strings.Clone(gjson.Get(js, "model").String()), true
}
