package wire

import (
	"fmt"

	"github.com/tidwall/gjson"
)

// Body edits splice bytes at offsets the Reader reports, so every byte of the
// client's JSON outside the edited value is preserved: field order, number
// spellings, escapes and whitespace. Prompt-cache prefixes are byte-exact, so
// re-serialising a body would silently defeat the client's caching.

// Member is where a key sits in a JSON object.
type Member struct {
	Found      bool
	Start, End int // the value's span, when Found
	// InsertAt is where a new member can be spliced in: just after the last
	// member's value, or just after '{' when the object is empty.
	InsertAt int
	Members  int // how many members the object has
}

// FindMember validates obj (a whole JSON document that must be an object)
// and locates the value of key among its top-level members. A key present
// twice is an error: providers keep the last occurrence, byte-level editors
// the first, and a client must not be able to show the gateway one model and
// the provider another. Keys are compared decoded, so an escaped spelling of
// key is found too.
func FindMember(obj []byte, key string) (Member, error) {
	var r Reader
	r.Reset(obj)
	var m Member
	if r.Peek() != KindObject {
		if r.Peek() == KindInvalid {
			return m, Invalid("request body is not valid JSON")
		}
		return m, Invalid("request body must be a JSON object")
	}
	it := r.Object()
	m.InsertAt = r.Pos()
	for k, ok := r.NextKey(&it); ok; k, ok = r.NextKey(&it) {
		m.Members++
		start, end := r.Skip()
		if string(k) == key {
			if m.Found {
				return m, Invalid(fmt.Sprintf("%s: duplicate key", key))
			}
			m.Found, m.Start, m.End = true, start, end
		}
		m.InsertAt = end
	}
	if !r.End() {
		return m, Invalid("request body is not valid JSON: " + r.Err().Error())
	}
	return m, nil
}

// Splice returns a new body with b[start:end] replaced by the concatenation
// of parts.
func Splice(b []byte, start, end int, parts ...string) []byte {
	n := len(b) - (end - start)
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	out = append(out, b[:start]...)
	for _, p := range parts {
		out = append(out, p...)
	}
	return append(out, b[end:]...)
}

// SetModel rewrites the top-level "model" string, byte-preserving. The model
// must already be present (a request without one is rejected upstream of any
// rewrite).
func SetModel(body []byte, model string) ([]byte, error) {
	m, err := FindMember(body, "model")
	if err != nil {
		return nil, err
	}
	if !m.Found {
		return nil, Invalid("model: field required")
	}
	enc := gjson.AppendJSONString(make([]byte, 0, len(model)+2), model)
	return Splice(body, m.Start, m.End, View(enc)), nil
}
