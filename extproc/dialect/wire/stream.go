package wire

import "bytes"

// StreamState is the dialect-independent half of a StreamParser: the SSE
// decoder, the reported model, the output byte count, the first mid-stream
// error and the count of unusable events. A dialect embeds it, feeds chunks
// through Feed and records what its events say; the promoted Model,
// OutputTextBytes, Error and Dropped complete StreamParser.
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

// Lookup reads event data as the package Lookup does; data that is not valid
// JSON is counted as dropped. The values alias data, valid only during the
// event.
func (s *StreamState) Lookup(data []byte, keys []string, vals []Value) bool {
	if !Lookup(data, keys, vals) {
		s.invalid++
		return false
	}
	return true
}

// RecordModel keeps the model v names when it is a string, copying it only
// when it changes, so a model repeated on every chunk costs nothing.
func (s *StreamState) RecordModel(v Value) {
	if v.Kind != KindString {
		return
	}
	raw := v.Raw[1 : len(v.Raw)-1]
	if bytes.IndexByte(raw, '\\') < 0 {
		if View(raw) != s.model {
			s.model = string(raw)
		}
		return
	}
	var buf [128]byte
	if m := v.AppendText(buf[:0]); View(m) != s.model {
		s.model = string(m)
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

// responseKeys are the members of a complete JSON response the dialects
// read.
var responseKeys = [...]string{"usage", "model"}

// ResponseUsage locates the usage object and model of a complete JSON
// response, in one pass that validates it; ok is false when the body is not
// valid JSON (truncated) or has no usage object (an error body). The model
// is Value.Text of the "model" member, whatever its type.
func ResponseUsage(body []byte) (usage Value, model string, ok bool) {
	var v [len(responseKeys)]Value
	if !Lookup(body, responseKeys[:], v[:]) || !v[0].IsObject() {
		return Value{}, "", false
	}
	return v[0], v[1].Text(), true
}
