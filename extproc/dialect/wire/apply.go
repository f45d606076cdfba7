package wire

import (
	"errors"
	"slices"
)

// Span is a half-open byte range [Start, End) of a body. The zero Span is
// "absent": no JSON value is empty, so End > Start for every value found.
type Span struct{ Start, End int }

// Found reports whether the span locates a value.
func (s Span) Found() bool { return s.End > s.Start }

// Edit replaces Body[Start:End] with Text; Start == End inserts.
type Edit struct {
	Start, End int
	Text       string
}

// MaxEdits bounds the edits of one request: a model rewrite, a
// stream_options change, and two insertions per prompt-cache breakpoint.
const MaxEdits = 16

// Edits is a fixed-capacity edit list that lives on the caller's stack.
type Edits struct {
	list [MaxEdits]Edit
	n    int
}

// Add appends an edit; it reports false (and drops the edit) when full,
// which only a dialect bug can cause.
func (e *Edits) Add(start, end int, text string) bool {
	if e.n == len(e.list) {
		return false
	}
	e.list[e.n] = Edit{Start: start, End: end, Text: text}
	e.n++
	return true
}

// Len returns how many edits were added.
func (e *Edits) Len() int { return e.n }

// List returns the edits in the order they were added.
func (e *Edits) List() []Edit { return e.list[:e.n] }

// ErrOverlap is returned by Apply for edits whose spans overlap: each edit
// must replace its own bytes of the original body.
var ErrOverlap = errors.New("wire: overlapping edits")

// Apply returns body with every edit carried out, in one allocation of the
// result's exact size. Edits refer to offsets of the original body, in any
// order; insertions at the same offset keep the order they were added in.
// Every byte outside the edited spans is preserved, so the provider and any
// prompt cache see the client's own bytes. With no edits body itself is
// returned.
func Apply(body []byte, e *Edits) ([]byte, error) {
	es := e.list[:e.n]
	if len(es) == 0 {
		return body, nil
	}
	slices.SortStableFunc(es, func(a, b Edit) int {
		if a.Start != b.Start {
			return a.Start - b.Start
		}
		// An insertion at an offset goes before a replacement starting there.
		return (a.End - a.Start) - (b.End - b.Start)
	})
	size, prev := len(body), 0
	for _, ed := range es {
		if ed.Start < prev || ed.End < ed.Start || ed.End > len(body) {
			return nil, ErrOverlap
		}
		size += len(ed.Text) - (ed.End - ed.Start)
		prev = ed.End
	}
	out := make([]byte, 0, size)
	prev = 0
	for _, ed := range es {
		out = append(out, body[prev:ed.Start]...)
		out = append(out, ed.Text...)
		prev = ed.End
	}
	return append(out, body[prev:]...), nil
}

// EditRequest is what the gate decided to change in a request body; each
// dialect turns it into Edits from the Index its parse recorded, without
// reading the body again.
type EditRequest struct {
	// Model, when not empty, replaces the request's model.
	Model string
	// Cache, when set, asks for prompt-cache breakpoints where the dialect
	// has them.
	Cache *CacheRequest
	// OutputLimit, when above zero, bounds the request's output at that many
	// tokens: the value of every output-bound member the request has is
	// replaced, or the dialect's member is added when it has none. The gate
	// sets it when a budget admits less output than the request may produce
	// (budget_reservation: full).
	OutputLimit int64
}

// CacheRequest configures prompt-cache breakpoint injection.
type CacheRequest struct {
	// TTL of the breakpoints added: "5m" ("" means 5m) or "1h".
	TTL string
	// MinTokens is the model's minimum cacheable prefix; a breakpoint whose
	// estimated prefix is shorter is not placed. 0 places them all.
	MinTokens int64
}

// EditReport says what a dialect's edits do, for logs and metrics.
type EditReport struct {
	// StreamUsageForced reports that the edits ask a stream to report usage
	// the client did not ask for.
	StreamUsageForced bool
	// CacheExisting counts the client's own breakpoints; CacheAdded those the
	// edits add; CacheSkipped says why each other candidate was not used.
	CacheExisting int
	CacheAdded    int
	CacheSkipped  []string
	// Path, when not empty, is the request's new :path (query included):
	// an API that names the model in the path (Gemini) rewrites the model
	// there, and the gate sets the header, which Envoy accepts while it
	// still holds the request headers, as it does for a buffered body
	// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/common/mutation_rules/v3/mutation_rules.proto).
	Path string
}
