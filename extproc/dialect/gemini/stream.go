package gemini

import (
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// StreamParser reads usage from a streamGenerateContent?alt=sse stream
// (https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent):
// data-only events, each a GenerateContentResponse, ended by the end of the
// body (there is no [DONE]). Chunks carry usageMetadata that is cumulative,
// so the last one seen is kept, never summed; the usage is final once the
// stream has given both a usageMetadata and a candidate's finishReason,
// which the last chunk carries. A data object with an "error" member is an
// error. It implements wire.StreamParser and allocates nothing per event in
// steady state.
type StreamParser struct {
	wire.StreamState
	usage     accounting.Usage
	haveUsage bool
	finished  bool
}

var _ wire.StreamParser = (*StreamParser)(nil)

// NewStreamParser returns a parser for one response stream.
func NewStreamParser() *StreamParser { return &StreamParser{} }

type sink StreamParser

// Write feeds one chunk of the response body.
func (p *StreamParser) Write(chunk []byte) { p.Feed(chunk, (*sink)(p)) }

// Usage returns the last usageMetadata seen; final is true once a
// finishReason has been seen too.
func (p *StreamParser) Usage() (accounting.Usage, bool) {
	return p.usage, p.haveUsage && p.finished
}

// The members of a chunk read, in the order of the values Event looks up,
// and those of a candidate, its content and an error.
var (
	chunkKeys     = [...]string{"usageMetadata", "modelVersion", "candidates", "error"}
	candidateKeys = [...]string{"content", "finishReason"}
	contentKeys   = [...]string{"parts"}
	errorKeys     = [...]string{"status", "code", "message"}
)

// Event handles one data event.
func (s *sink) Event(_, data []byte) {
	p := (*StreamParser)(s)
	var v [len(chunkKeys)]wire.Value
	if !p.Lookup(data, chunkKeys[:], v[:]) {
		return
	}
	if v[3].Present() {
		var e [len(errorKeys)]wire.Value
		v[3].Lookup(errorKeys[:], e[:])
		kind := e[0].Text()
		if kind == "" {
			kind = e[1].Text()
		}
		p.RecordError(kind, e[2].Text())
		return
	}
	p.RecordModel(v[1])
	if v[0].IsObject() {
		// A chunk that names no traffic type keeps the last one named.
		p.usage = fromUsageMetadata(v[0], p.usage.ServiceTier)
		p.haveUsage = true
	}
	eachElement(v[2], func(cand wire.Value) {
		var cv [len(candidateKeys)]wire.Value
		cand.Lookup(candidateKeys[:], cv[:])
		if cv[1].Present() {
			p.finished = true
		}
		var parts [len(contentKeys)]wire.Value
		cv[0].Lookup(contentKeys[:], parts[:])
		eachElement(parts[0], func(part wire.Value) {
			if part.IsObject() {
				p.AddOutput(wire.StringFieldsLen(part.Raw, "text"))
			}
		})
	})
}

// eachElement calls fn with each element of an array; anything else has
// none.
func eachElement(v wire.Value, fn func(wire.Value)) {
	if v.Kind != wire.KindArray {
		return
	}
	var r wire.Reader
	r.Reset(v.Raw)
	it := r.Array()
	for r.NextElem(&it) {
		k := r.Peek()
		start, end := r.Skip()
		fn(wire.Value{Kind: k, Raw: v.Raw[start:end]})
	}
}
