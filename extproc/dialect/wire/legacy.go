package wire

import (
	"fmt"

	"github.com/tidwall/gjson"
)

// The multi-pass editors the anthropic dialect still uses; they go once its
// parse records the Index.

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
// and locates the value of key among its top-level members.
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

// SetModel rewrites the top-level "model" string, byte-preserving.
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

// EstimateMessages consumes the messages array, adding the per-message
// overhead, and calls member for each member of each message.
func EstimateMessages(r *Reader, c *TokenCounter, member func(r *Reader, c *TokenCounter, key []byte) error) (int, error) {
	if r.Peek() != KindArray {
		return 0, Invalid("messages: must be an array")
	}
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != KindObject {
			return n, Invalid(fmt.Sprintf("messages.%d: must be an object", n))
		}
		c.AddTokens(MessageOverheadTokens)
		mit := r.Object()
		for key, ok := r.NextKey(&mit); ok; key, ok = r.NextKey(&mit) {
			if err := member(r, c, key); err != nil {
				return n, Within(fmt.Sprintf("messages.%d", n), err)
			}
		}
		n++
	}
	return n, nil
}

// EstimateToolsFunc is EstimateTools with each definition counted by each.
func EstimateToolsFunc(r *Reader, c *TokenCounter, each func(*Reader, *TokenCounter)) (int, error) {
	if r.Null() {
		return 0, nil
	}
	if r.Peek() != KindArray {
		return 0, Invalid("tools: must be an array")
	}
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != KindObject {
			return n, Invalid(fmt.Sprintf("tools.%d: must be an object", n))
		}
		each(r, c)
		c.AddTokens(ToolOverheadTokens)
		n++
	}
	if n > 0 {
		c.AddTokens(ToolPromptTokens)
	}
	return n, nil
}
