package wire

import (
	"errors"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// Body edits splice bytes at offsets the parse recorded in the Index, so
// every byte of the client's JSON outside the edited value is preserved:
// field order, number spellings, escapes and whitespace. Prompt-cache
// prefixes are byte-exact, so re-serialising a body would silently defeat the
// client's caching.

// ErrTooManyEdits is returned when an edit does not fit in Edits; only a
// dialect adding more than MaxEdits can cause it.
var ErrTooManyEdits = errors.New("wire: more than MaxEdits edits")

// EditModel adds to out the edit that replaces the top-level "model" value,
// as the parse located it in idx, with model as a JSON string. The model must
// be present: a request without one is rejected before any rewrite.
func EditModel(idx *Index, model string, out *Edits) error {
	if !idx.Model.Found() {
		return Invalid("model: field required")
	}
	enc := AppendJSONString(make([]byte, 0, len(model)+2), model)
	// enc is never written again, so the string may share its bytes.
	if !out.Add(idx.Model.Start, idx.Model.End, unsafe.String(unsafe.SliceData(enc), len(enc))) {
		return ErrTooManyEdits
	}
	return nil
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s to dst as a JSON string, escaped the way the
// editors have always escaped model names (gjson's AppendJSONString, whose
// output this reproduces byte for byte, FuzzAppendJSONString): control
// characters, '"' and '\\'; '<', '>' and '&' as \u00XX, so the body stays
// safe to embed in HTML; U+2028 and U+2029, which end lines in JavaScript;
// and each byte of invalid UTF-8 as U+FFFD.
func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < ' ':
			dst = append(dst, '\\')
			switch c {
			case '\b':
				dst = append(dst, 'b')
			case '\f':
				dst = append(dst, 'f')
			case '\n':
				dst = append(dst, 'n')
			case '\r':
				dst = append(dst, 'r')
			case '\t':
				dst = append(dst, 't')
			default:
				dst = append(dst, 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
		case c == '<' || c == '>' || c == '&':
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		case c == '\\' || c == '"':
			dst = append(dst, '\\', c)
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && n == 1:
				dst = append(dst, "\uFFFD"...)
			case r == '\u2028' || r == '\u2029':
				dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			default:
				dst = append(dst, s[i:i+n]...)
			}
			i += n - 1
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

// EditOutputLimit adds to out the edits that bound a request's output at n
// tokens: every output-bound value the parse located in idx is replaced by n
// and, when there is none, the top-level member name is added with n at
// append. A dialect whose bound is nested (Gemini) handles the absent case
// itself.
func EditOutputLimit(idx *OutputLimitIndex, append Insertion, name string, n int64, out *Edits) error {
	num := strconv.FormatInt(n, 10)
	if idx.Found() {
		for _, s := range idx.Values[:idx.n] {
			if !out.Add(s.Start, s.End, num) {
				return ErrTooManyEdits
			}
		}
		return nil
	}
	return InsertMember(append, name, num, out)
}

// InsertMember adds to out the insertion of the member name (a plain key,
// needing no escapes) with the raw JSON value at the insertion point.
func InsertMember(at Insertion, name, value string, out *Edits) error {
	text := `"` + name + `":` + value
	if at.Comma {
		text = "," + text
	}
	if !out.Add(at.At, at.At, text) {
		return ErrTooManyEdits
	}
	return nil
}
