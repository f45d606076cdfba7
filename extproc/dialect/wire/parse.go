package wire

import (
	"bytes"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Helpers the dialects' request parsers share. Each consumes exactly one
// value from the Reader and returns a client-facing *RequestError when the
// value has the wrong type; syntax errors are left in the Reader for Finish.

// governed are the top-level keys whose value the gateway acts on: the
// model, the output bound, streaming, and everything it estimates. The
// processor must read them exactly as the provider will, so a body in which
// one could be read two ways is refused:
//   - a second occurrence: most JSON decoders keep the last, byte editors and
//     a first-match reader the first;
//   - a spelling that differs only in case or by Unicode simple folding
//     ("Model", "max_to\u212Aens" with a Kelvin sign): Go's encoding/json,
//     which many OpenAI-compatible servers use, matches keys that way
//     (https://pkg.go.dev/encoding/json#Unmarshal), while others do not.
//
// Escaped spellings of the exact key ("\u006dodel") are decoded by the
// Reader before they get here, so they count as the key itself.
var governed = [...]string{
	"model", "max_tokens", "max_completion_tokens", "max_output_tokens", "stream", "stream_options",
	"messages", "input", "system", "instructions", "tools", "functions", "contents",
	"systemInstruction", "generationConfig", "background",
}

var governedBytes = func() (b [len(governed)][]byte) {
	for i, g := range governed {
		b[i] = []byte(g)
	}
	return b
}()

// KeySet records which governed top-level keys were seen. The zero value is
// empty.
type KeySet uint32

// Add records key and fails if it is governed and already present, or is a
// case-folded spelling of a governed key.
func (s *KeySet) Add(key []byte) error {
	for i, g := range governedBytes {
		if !bytes.EqualFold(key, g) {
			continue
		}
		if !bytes.Equal(key, g) {
			return Invalid(governed[i] + ": the key " + strconv.Quote(string(key)) + " differs from it only in case; spell it " + governed[i])
		}
		if *s&(1<<i) != 0 {
			return Invalid(governed[i] + ": duplicate key")
		}
		*s |= 1 << i
		return nil
	}
	return nil
}

// MaxModelLength bounds a model name. The longest published IDs (a Bedrock
// ARN of an inference profile) are under 200 bytes.
const MaxModelLength = 256

// ValidModel reports whether a model name can be used as it is: in the
// x-tokenwarden-model header, in dynamic metadata, in logs and metric
// labels. It must be printable UTF-8 of bounded length; anything else is
// refused before the provider reads it.
func ValidModel(m string) error {
	switch {
	case len(m) > MaxModelLength:
		return Invalid(fmt.Sprintf("model: longer than %d bytes", MaxModelLength))
	case !utf8.ValidString(m):
		return Invalid("model: not valid UTF-8")
	}
	for _, r := range m {
		if !unicode.IsPrint(r) {
			return Invalid("model: holds a control or non-printing character")
		}
	}
	return nil
}

// ExpectObject checks that the body starts with a JSON object.
func ExpectObject(r *Reader) error {
	switch r.Peek() {
	case KindObject:
		return nil
	case KindInvalid:
		return Invalid("request body is not valid JSON")
	}
	return Invalid("request body must be a JSON object")
}

// ReadModel reads the required, non-empty model string and returns it with
// its span, for the model rewrite.
func ReadModel(r *Reader) (string, Span, error) {
	if r.Peek() != KindString {
		return "", Span{}, Invalid("model: must be a string")
	}
	start := r.Pos()
	m, _ := r.String()
	if r.Err() != nil {
		return "", Span{}, nil // reported by Finish
	}
	if m == "" {
		return "", Span{}, Invalid("model: must not be empty")
	}
	if err := ValidModel(m); err != nil {
		return "", Span{}, err
	}
	return m, Span{start, r.Pos()}, nil
}

// SkipModel consumes a model value of any type and returns its span, and the
// model when it is a string: for the convenience editors, which replace the
// value without judging it.
func SkipModel(r *Reader) (string, Span) {
	if r.Peek() == KindString {
		start := r.Pos()
		m, _ := r.String()
		return m, Span{start, r.Pos()}
	}
	start, end := r.Skip()
	return "", Span{start, end}
}

// ReadMaxTokens reads an optional non-negative integer; null reads as 0.
func ReadMaxTokens(r *Reader, field string) (int64, error) {
	if r.Null() {
		return 0, nil
	}
	if r.Peek() != KindNumber {
		return 0, Invalid(field + ": must be an integer")
	}
	v, isInt := r.Int()
	if r.Err() != nil {
		return 0, nil
	}
	if !isInt || v < 0 {
		return 0, Invalid(field + ": must be a non-negative integer")
	}
	return v, nil
}

// ReadOutputLimit is ReadMaxTokens for the member that bounds a request's
// output, recording its value's span in idx for a clamp.
func ReadOutputLimit(r *Reader, field string, idx *OutputLimitIndex) (int64, error) {
	r.Peek()
	start := r.Pos()
	v, err := ReadMaxTokens(r, field)
	if err == nil && r.Err() == nil {
		idx.Add(Span{start, r.Pos()})
	}
	return v, err
}

// ReadOptionalBool reads a boolean; null reads as false.
func ReadOptionalBool(r *Reader, field string) (bool, error) {
	if r.Null() {
		return false, nil
	}
	if r.Peek() != KindBool {
		return false, Invalid(field + ": must be a boolean")
	}
	v, _ := r.Bool()
	return v, nil
}

// EstimateTools consumes a tool list (null reads as empty), counting each
// definition as its JSON text, as the model reads a schema much as it is
// written, and adds the per-tool and tool-prompt overheads. It returns the
// number of tools. A dialect that reads its definitions member by member
// walks the list itself, with the same errors and overheads.
func EstimateTools(r *Reader, c *TokenCounter) (int, error) {
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
		r.EstimateValue(c)
		c.AddTokens(ToolOverheadTokens)
		n++
	}
	if n > 0 {
		c.AddTokens(ToolPromptTokens)
	}
	return n, nil
}

// Finish checks that the document ended cleanly and that the required
// fields were present.
func Finish(r *Reader, haveModel, haveMessages bool) error {
	if err := End(r); err != nil {
		return err
	}
	if !haveModel {
		return Invalid("model: field required")
	}
	if !haveMessages {
		return Invalid("messages: field required")
	}
	return nil
}

// End checks that the document ended cleanly.
func End(r *Reader) error {
	if !r.End() {
		return Invalid("request body is not valid JSON: " + r.Err().Error())
	}
	return nil
}

// Fail returns err, or the Reader's syntax error if there is one: a type
// complaint about a value that is not even JSON would mislead the client.
func Fail(r *Reader, err error) error {
	if r.Err() != nil {
		return Invalid("request body is not valid JSON: " + r.Err().Error())
	}
	return err
}

// Slice returns a span of the buffer being read, as returned by Skip.
func (r *Reader) Slice(start, end int) []byte { return r.buf[start:end] }
