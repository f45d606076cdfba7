package wire

import (
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Reading responses: usage objects, SSE event data, error bodies. The
// response parsers look up a few members of small documents, so Lookup
// validates a document in one pass of the Reader and hands back the first
// member of each key asked for; nested objects are looked up the same way in
// their own, already validated, spans. Nothing is copied or allocated but the
// strings kept (a model name, an error message).
//
// Until this reader replaced it, gjson did this work, and tokenwarden's
// metering is defined by what gjson read: the first member of a duplicated
// key, numbers and strings converted by gjson's Result.Int and
// Result.String, strings decoded by its unescaping. Value reproduces those
// conversions exactly (FuzzResponseMatchesGJSON in each dialect holds the
// parsers to the gjson ones they replaced), so a provider's usage reads as it
// did. The one difference is depth: a document nested deeper than MaxDepth
// is invalid here, where gjson validated it with unbounded recursion.

// Value is a JSON value found by Lookup: its kind and its raw text, which
// aliases the document. The zero Value is "absent".
type Value struct {
	Kind Kind
	Raw  []byte
}

// Exists reports that the member was there.
func (v Value) Exists() bool { return v.Kind != KindInvalid }

// Present reports a member that exists and is not null, the SDKs' test for
// a usage field to count.
func (v Value) Present() bool { return v.Kind != KindInvalid && v.Kind != KindNull }

// IsObject reports an object.
func (v Value) IsObject() bool { return v.Kind == KindObject }

// Lookup validates doc, one JSON document, and when it is an object stores
// in vals[i] the first member whose key (decoded) is keys[i]; members not
// found are left absent. It reports false, leaving vals unspecified, when doc
// is not valid JSON.
func Lookup(doc []byte, keys []string, vals []Value) bool {
	var r Reader
	r.Reset(doc)
	clear(vals)
	if r.Peek() != KindObject {
		r.Skip()
		return r.End()
	}
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		i := indexOf(keys, key)
		if i < 0 || vals[i].Exists() {
			r.Skip()
			continue
		}
		k := r.Peek()
		start, end := r.Skip()
		vals[i] = Value{Kind: k, Raw: doc[start:end]}
	}
	return r.End()
}

func indexOf(keys []string, key []byte) int {
	for i, k := range keys {
		if k == string(key) {
			return i
		}
	}
	return -1
}

// Lookup looks up members of v, when it is an object (nothing is found in
// anything else), as the package function does.
func (v Value) Lookup(keys []string, vals []Value) {
	if v.Kind != KindObject || !Lookup(v.Raw, keys, vals) {
		clear(vals)
	}
}

// Int converts v as gjson's Result.Int does: a number by way of its float64
// value, or of its text when that is not an exactly representable integer;
// a string by parsing its text as an integer, else as a float; true as 1;
// anything else, or nothing, as 0.
func (v Value) Int() int64 {
	switch v.Kind {
	case KindBool:
		if v.Raw[0] == 't' {
			return 1
		}
	case KindNumber:
		if n, ok := smallInt(v.Raw); ok {
			return n
		}
		f, _ := strconv.ParseFloat(View(v.Raw), 64)
		if f >= -9007199254740991 && f <= 9007199254740991 {
			return int64(f)
		}
		if n, ok := parseInt(v.Raw); ok {
			return n
		}
		return f2i(f)
	case KindString:
		var buf [64]byte
		s := v.AppendText(buf[:0])
		n, ok := parseInt(s)
		if !ok {
			if f, err := strconv.ParseFloat(View(s), 64); err == nil {
				n = f2i(f)
			}
		}
		return n
	}
	return 0
}

// smallInt reads an integer literal of at most 15 digits, which a float64
// holds exactly, so that converting it by way of a float, as Int must, can be
// skipped.
func smallInt(raw []byte) (int64, bool) {
	digits := raw
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if raw[0] == '-' {
		n = -n
	}
	return n, true
}

// parseInt is gjson's: an optional '-' and digits, saturating at the int64
// bounds.
func parseInt(s []byte) (int64, bool) {
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 {
		return 0, false
	}
	var n uint64
	overflow := false
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		next := n*10 + uint64(c-'0')
		if next < n {
			overflow = true
		}
		n = next
	}
	if overflow {
		n = math.MaxUint64
	}
	switch {
	case neg && n > 1<<63:
		return math.MinInt64, true
	case neg:
		return -int64(n), true
	case n > math.MaxInt64:
		return math.MaxInt64, true
	}
	return int64(n), true
}

// f2i is gjson's saturating float64 to int64 conversion.
func f2i(f float64) int64 {
	switch {
	case f >= math.MaxInt64:
		return math.MaxInt64
	case f < math.MinInt64:
		return math.MinInt64
	}
	return int64(f)
}

// Text returns v as gjson's Result.String does: a string decoded, a number
// as written when it is an integer literal and else formatted from its
// float64 value, true and false, an object or array as its raw JSON, null
// and nothing as "". The result is a copy.
func (v Value) Text() string {
	switch v.Kind {
	case KindBool:
		if v.Raw[0] == 't' {
			return "true"
		}
		return "false"
	case KindNull, KindInvalid:
		return ""
	}
	var buf [64]byte // most texts fit: one allocation, the result's
	return string(v.AppendText(buf[:0]))
}

// AppendText appends Text to dst without the copy: a view into a buffer the
// caller owns, for comparing (a model name seen on every event) before
// keeping.
func (v Value) AppendText(dst []byte) []byte {
	switch v.Kind {
	case KindString:
		return appendUnescaped(dst, v.Raw[1:len(v.Raw)-1])
	case KindNumber:
		if intLiteral(v.Raw) {
			return append(dst, v.Raw...)
		}
		f, _ := strconv.ParseFloat(View(v.Raw), 64)
		return strconv.AppendFloat(dst, f, 'f', -1, 64)
	case KindObject, KindArray:
		return append(dst, v.Raw...)
	case KindBool:
		if v.Raw[0] == 't' {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	}
	return dst
}

func intLiteral(raw []byte) bool {
	if len(raw) > 0 && raw[0] == '-' {
		raw = raw[1:]
	}
	for _, c := range raw {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// appendUnescaped decodes a valid JSON string body as gjson does, which
// differs from unescapeInto (and encoding/json) only in a broken surrogate
// pair: a surrogate followed by another \u escape takes that escape with it
// into one U+FFFD, where the standard decoding keeps the second character.
func appendUnescaped(dst, s []byte) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		i++
		switch s[i] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(s[i+1:])
			i += 5
			if utf16.IsSurrogate(r) && len(s)-i >= 6 && s[i] == '\\' && s[i+1] == 'u' {
				r = utf16.DecodeRune(r, hex4(s[i+2:]))
				i += 6
			}
			dst = utf8.AppendRune(dst, r)
			i--
		default: // '"', '\\', '/'
			dst = append(dst, s[i])
		}
	}
	return dst
}
