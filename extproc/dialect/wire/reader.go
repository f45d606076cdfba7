package wire

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"unicode/utf8"
	"unsafe"
)

// Why a JSON reader of our own next to gjson: gjson unescapes every string
// value it hands out (ForEach, Get), which allocates once per string that
// contains an escape — once per message for any prompt with a newline — and
// it does not validate. Reader walks a body once, validating as it goes,
// hands out raw spans of the caller's buffer, and allocates nothing; so
// parsing a request costs O(1) allocations whatever the message count.

// MaxDepth bounds nesting, so a hostile body cannot exhaust the stack.
const MaxDepth = 512

// Kind is the type of the next JSON value.
type Kind uint8

// Kinds of JSON values; KindInvalid means no value starts here.
const (
	KindInvalid Kind = iota
	KindObject
	KindArray
	KindString
	KindNumber
	KindBool
	KindNull
)

// SyntaxError is malformed JSON at a byte offset.
type SyntaxError struct {
	Msg    string
	Offset int
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("%s at byte %d", e.Msg, e.Offset) }

// Reader is a validating pull reader over one JSON document held in memory.
// Methods consume one value each; after the first syntax error every method
// is a no-op and Err reports it. Spans it returns alias the buffer given to
// Reset. The zero value reads an empty document; declare it on the stack.
type Reader struct {
	buf   []byte
	pos   int
	depth int
	err   error
	key   [64]byte // escaped keys are decoded here, never on the heap
}

// Iter is the state of one object or array being iterated.
type Iter struct {
	n    int
	done bool
}

// Reset starts reading b from its beginning.
func (r *Reader) Reset(b []byte) {
	r.buf, r.pos, r.depth, r.err = b, 0, 0, nil
}

// Err returns the first syntax error, or nil.
func (r *Reader) Err() error { return r.err }

// Pos returns the offset of the next unread byte.
func (r *Reader) Pos() int { return r.pos }

func (r *Reader) fail(msg string) {
	if r.err == nil {
		r.err = &SyntaxError{Msg: msg, Offset: r.pos}
	}
}

// ws skips whitespace. Most bodies have none between tokens, or a single
// space, so the test for a non-space byte is inlined and the loop is not.
func (r *Reader) ws() {
	if r.pos < len(r.buf) && r.buf[r.pos] > ' ' {
		return
	}
	r.pos = skipWS(r.buf, r.pos)
}

// skipWS returns the offset of the first byte at or after i that is not
// JSON whitespace, or len(b).
func skipWS(b []byte, i int) int {
	for ; i < len(b); i++ {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
		default:
			return i
		}
	}
	return i
}

// kindOf is the Kind of the value each byte can start.
var kindOf = func() (k [256]Kind) {
	k['{'], k['['], k['"'], k['-'] = KindObject, KindArray, KindString, KindNumber
	for c := '0'; c <= '9'; c++ {
		k[c] = KindNumber
	}
	k['t'], k['f'], k['n'] = KindBool, KindBool, KindNull
	return k
}()

// Peek returns the kind of the next value without consuming it. The common
// case, no error and a value starting right here, is small enough to inline.
func (r *Reader) Peek() Kind {
	if r.err == nil && r.pos < len(r.buf) {
		if k := kindOf[r.buf[r.pos]]; k != KindInvalid {
			return k
		}
	}
	return r.peekSlow()
}

func (r *Reader) peekSlow() Kind {
	if r.err != nil {
		return KindInvalid
	}
	r.ws()
	if r.pos >= len(r.buf) {
		r.fail("unexpected end of input")
		return KindInvalid
	}
	if k := kindOf[r.buf[r.pos]]; k != KindInvalid {
		return k
	}
	// A value is expected wherever Peek is called, so nothing valid starts here.
	r.fail("expected a value")
	return KindInvalid
}

func (r *Reader) enter(open byte) Iter {
	if r.Peek() == KindInvalid || r.buf[r.pos] != open {
		r.fail("expected " + string(open))
		return Iter{done: true}
	}
	r.depth++
	if r.depth > MaxDepth {
		r.fail("nesting too deep")
		return Iter{done: true}
	}
	r.pos++
	return Iter{}
}

// next advances an iteration: it consumes the separator or the closing
// bracket and reports whether another member follows.
func (r *Reader) next(it *Iter, closing byte) bool {
	if r.err != nil || it.done {
		return false
	}
	b := r.buf
	i := r.pos
	if i >= len(b) || b[i] <= ' ' {
		i = skipWS(b, i)
		if i >= len(b) {
			r.pos = i
			r.fail("unexpected end of input")
			return false
		}
	}
	c := b[i]
	if c == closing {
		r.pos = i + 1
		r.depth--
		it.done = true
		return false
	}
	if it.n > 0 {
		if c != ',' {
			r.pos = i
			r.fail(expectedSep(closing))
			return false
		}
		i++
		if i < len(b) && b[i] <= ' ' {
			i = skipWS(b, i)
		}
	}
	r.pos = i
	it.n++
	return true
}

// expectedSep is the error for a member not followed by a separator; the
// messages are constants so that reporting them allocates nothing more.
func expectedSep(closing byte) string {
	if closing == '}' {
		return "expected ',' or '}'"
	}
	return "expected ',' or ']'"
}

// Object consumes '{' and returns the iteration state for NextKey.
func (r *Reader) Object() Iter { return r.enter('{') }

// Array consumes '[' and returns the iteration state for NextElem.
func (r *Reader) Array() Iter { return r.enter('[') }

// NextElem reports whether another array element follows; the caller must
// then consume exactly one value.
func (r *Reader) NextElem(it *Iter) bool { return r.next(it, ']') }

// NextKey returns the next member's key, decoded, and consumes the ':'; the
// caller must then consume exactly one value. ok is false at the closing
// brace or on error. The key is valid until the next call. Escaped keys
// longer than the internal buffer are returned raw: they cannot equal any
// key a dialect looks for.
func (r *Reader) NextKey(it *Iter) (key []byte, ok bool) {
	if !r.next(it, '}') {
		return nil, false
	}
	b := r.buf
	i := r.pos
	if i >= len(b) || b[i] != '"' {
		r.fail("expected object key")
		return nil, false
	}
	var (
		end int
		esc bool
	)
	// Most keys are plain and shorter than a word: one load finds the
	// closing quote without the call to the general scan.
	if i+9 <= len(b) {
		x := binary.LittleEndian.Uint64(b[i+1:])
		if m := specialMask(x); m != 0 {
			if n := bits.TrailingZeros64(m) >> 3; uint8(x>>(8*n)) == '"' {
				end = i + 1 + n
			}
		}
	}
	if end == 0 {
		var msg string
		if end, esc, msg = scanStr(b, i); msg != "" {
			r.pos = end
			r.fail(msg)
			return nil, false
		}
	}
	key = b[i+1 : end]
	if esc {
		if d, ok := unescapeInto(r.key[:0], key); ok {
			key = d
		}
	}
	i = end + 1
	if i < len(b) && b[i] <= ' ' {
		i = skipWS(b, i)
	}
	r.pos = i
	if i >= len(b) || b[i] != ':' {
		r.fail("expected ':'")
		return nil, false
	}
	r.pos = i + 1
	return key, true
}

// specialMask is nonzero when a byte of x is '"', '\\' or a control
// character, the bytes that end a run of plain string content. Its lowest
// set bit is the high bit of the first such byte: a lane borrows only from
// a lane that matched, so only the lanes above the first match may be
// spurious.
func specialMask(x uint64) uint64 {
	q := x ^ (lsb * '"')
	s := x ^ (lsb * '\\')
	return ((x-lsb*0x20)&^x | (q-lsb)&^q | (s-lsb)&^s) & msb
}

// scanString consumes a string, validating escapes and rejecting raw control
// characters, and returns the span of its content (without quotes).
func (r *Reader) scanString() (start, end int, esc bool) {
	start = r.pos + 1
	end, esc, msg := scanStr(r.buf, r.pos)
	if msg != "" {
		r.pos = end
		r.fail(msg)
		return start, end, esc
	}
	r.pos = end + 1
	return start, end, esc
}

// scanStr validates the string whose opening quote is b[i]. It returns the
// offset of the closing quote and whether the string has escapes, or, with
// a non-empty msg, the offset of the error.
func scanStr(b []byte, i int) (end int, esc bool, msg string) {
	i++
	for {
		for i+8 <= len(b) {
			x := binary.LittleEndian.Uint64(b[i:])
			if m := specialMask(x); m != 0 {
				n := bits.TrailingZeros64(m) >> 3
				i += n
				if uint8(x>>(8*n)) == '\\' && i+1 < len(b) && shortEscapeWeight[b[i+1]] != 0 {
					esc = true
					i += 2
					continue
				}
				break
			}
			i += 8
		}
		if i >= len(b) {
			return i, esc, "unterminated string"
		}
		switch c := b[i]; {
		case c == '"':
			return i, esc, ""
		case c == '\\':
			esc = true
			n := escapeLen(b, i)
			if n == 0 {
				return i, esc, "invalid escape in string"
			}
			i += n
		case c < 0x20:
			return i, esc, "control character in string"
		default:
			i++
		}
	}
}

// escapeLen returns the length of the valid escape sequence at b[i] (a
// backslash), or 0.
func escapeLen(b []byte, i int) int {
	if i+1 >= len(b) {
		return 0
	}
	switch b[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2
	case 'u':
		if i+6 > len(b) {
			return 0
		}
		for _, h := range b[i+2 : i+6] {
			if hexVal(h) < 0 {
				return 0
			}
		}
		return 6
	}
	return 0
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func hex4(b []byte) rune {
	return rune(hexVal(b[0])<<12 | hexVal(b[1])<<8 | hexVal(b[2])<<4 | hexVal(b[3]))
}

// unescapeInto appends the decoded form of a valid escaped string body to
// dst without growing it; ok is false if it does not fit.
func unescapeInto(dst, s []byte) ([]byte, bool) {
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			if len(dst) == cap(dst) {
				return dst, false
			}
			dst = append(dst, c)
			i++
			continue
		}
		var r rune
		switch s[i+1] {
		case 'b':
			r = '\b'
		case 'f':
			r = '\f'
		case 'n':
			r = '\n'
		case 'r':
			r = '\r'
		case 't':
			r = '\t'
		case 'u':
			r = hex4(s[i+2:])
			i += 4
			if utf16IsHigh(r) && i+8 <= len(s) && s[i+2] == '\\' && s[i+3] == 'u' {
				if lo := hex4(s[i+4:]); utf16IsLow(lo) {
					r = (r-0xD800)<<10 + (lo - 0xDC00) + 0x10000
					i += 6
				}
			}
		default:
			r = rune(s[i+1])
		}
		i += 2
		if cap(dst)-len(dst) < utf8.UTFMax {
			return dst, false
		}
		dst = utf8.AppendRune(dst, r)
	}
	return dst, true
}

func utf16IsHigh(r rune) bool { return r >= 0xD800 && r < 0xDC00 }
func utf16IsLow(r rune) bool  { return r >= 0xDC00 && r < 0xE000 }

// RawString consumes a string and returns its content, still escaped.
func (r *Reader) RawString() (raw []byte, ok bool) {
	if r.Peek() != KindString {
		r.fail("expected string")
		return nil, false
	}
	start, end, _ := r.scanString()
	return r.buf[start:end], r.err == nil
}

// String consumes a string and returns it decoded. It allocates the result;
// use it only for values that are kept (the model name).
func (r *Reader) String() (string, bool) {
	if r.Peek() != KindString {
		r.fail("expected string")
		return "", false
	}
	start, end, esc := r.scanString()
	if r.err != nil {
		return "", false
	}
	if !esc {
		return string(r.buf[start:end]), true
	}
	// Decoding never lengthens a string; the slack covers unescapeInto's
	// worst-case check before each rune.
	d, _ := unescapeInto(make([]byte, 0, end-start+utf8.UTFMax), r.buf[start:end])
	return string(d), true
}

// EstimateString consumes a string and adds its decoded text to c (escapes
// weigh what they decode to), in the same pass that validates it. Plain
// runs are scanned and weighed eight bytes at a time, ASCII without a table;
// the bytes before the first special one of a word (see specialMask) are
// weighed as part of that word. Only the special bytes themselves and the
// last few bytes of the buffer are taken one at a time.
func (r *Reader) EstimateString(c *TokenCounter) bool {
	if r.Peek() != KindString {
		r.fail("expected string")
		return false
	}
	b := r.buf
	var u uint64
	i := r.pos + 1
	for {
		for i+8 <= len(b) {
			x := binary.LittleEndian.Uint64(b[i:])
			m := specialMask(x)
			if below7f(x) {
				if m == 0 {
					u += asciiUnits(x, msb, 8)
					i += 8
					continue
				}
				// Weigh the word in one go, escapes and all, when it has
				// no control character, each quote in it is escaped, and
				// each backslash but one in the last lane (left for the
				// next word) opens a \n, \t, \r or \" within it. i never
				// stops inside an escape, so the first lane opens
				// nothing; a backslash after a backslash fails the test,
				// as does any other escape, and goes the way below.
				bs := lanesEqual(x, '\\')
				if ^(x+lsb*(0x80-0x20))&msb|lanesEqual(x, '"')&^(bs<<8)|bs&^sameWeightEscapes(x>>8)&^(1<<63) == 0 {
					u += asciiUnits(x, msb, 8-bits.OnesCount64(bs))
					i += 8 - int(bs>>63)
					continue
				}
				// m&-m is the high bit of the first special lane; the
				// lanes below it are the plain prefix.
				n := bits.TrailingZeros64(m) >> 3
				u += asciiUnits(x, (m&-m-1)&msb, n)
				i += n
				// The common escapes are taken here, saving the way out
				// to the byte-at-a-time switch and back: the two-byte
				// ones, and the \u00XX that encoding/json writes for <, >
				// and & (any ASCII code point weighs as its own byte).
				if uint8(x>>(8*n)) == '\\' && i+1 < len(b) {
					if w := shortEscapeWeight[b[i+1]]; w != 0 {
						u += uint64(w)
						i += 2
						continue
					}
					if cp, ok := asciiUEscape(b, i); ok {
						u += uint64(weight[cp])
						i += 6
						continue
					}
				}
				break
			}
			if m == 0 {
				u += tableUnits(x)
				i += 8
				continue
			}
			for end := i + bits.TrailingZeros64(m)>>3; i < end; i++ {
				u += uint64(weight[b[i]])
			}
			break
		}
		if i >= len(b) {
			r.pos = i
			r.fail("unterminated string")
			return false
		}
		switch ch := b[i]; {
		case ch == '"':
			r.pos = i + 1
			c.units += int64(u)
			return true
		case ch == '\\':
			if i+1 < len(b) {
				if w := shortEscapeWeight[b[i+1]]; w != 0 {
					u += uint64(w)
					i += 2
					continue
				}
			}
			n := escapeLen(b, i)
			if n == 0 {
				r.pos = i
				r.fail("invalid escape in string")
				return false
			}
			u += uint64(escapeWeight(b[i:]))
			i += n
		case ch < 0x20:
			r.pos = i
			r.fail("control character in string")
			return false
		default:
			u += uint64(weight[ch])
			i++
		}
	}
}

// sameWeightEscapes marks the lanes of y, all below 0x80, that hold n, t, r
// or '"': escapes that weigh what the escaped byte itself weighs (3 for the
// whitespace n, t and r stand for, as for letters; 6 for the quote), so
// dropping their backslashes from a word leaves its decoded weight. \/ would
// qualify too, but encoding/json never writes it, and testing for it would
// keep this from being inlined.
func sameWeightEscapes(y uint64) uint64 {
	return lanesEqual(y, 'n') | lanesEqual(y, 't') | lanesEqual(y, 'r') | lanesEqual(y, '"')
}

// lanesEqual marks with its high bit each lane of x, all below 0x80, that
// holds c: such lanes are the ones where x^c plus 0x7f stays below 0x80, and
// as no lane overflows, no carry crosses into the next.
func lanesEqual(x uint64, c byte) uint64 { return ^(x ^ lsb*uint64(c) + lsb*0x7f) & msb }

// asciiUEscape decodes the escape at b[i] (a backslash) if it is a valid
// \u00XX naming an ASCII code point, with one load for the fixed "\u00"
// and a table lookup per hex digit.
func asciiUEscape(b []byte, i int) (cp byte, ok bool) {
	if i+6 > len(b) || binary.LittleEndian.Uint32(b[i:]) != '\\'|'u'<<8|'0'<<16|'0'<<24 {
		return 0, false
	}
	hi, lo := hexDigit[b[i+4]], hexDigit[b[i+5]]
	if hi > 7 || lo > 15 {
		return 0, false
	}
	return hi<<4 | lo, true
}

// hexDigit is the value of each hex digit byte, 0xff for the rest.
var hexDigit = func() (d [256]uint8) {
	for c := range d {
		d[c] = 0xff
		if v := hexVal(byte(c)); v >= 0 {
			d[c] = uint8(v)
		}
	}
	return d
}()

// shortEscapeWeight is escapeWeight of each two-byte escape by its second
// byte, 0 for the rest: the common escapes cost one lookup.
var shortEscapeWeight = func() (w [256]uint8) {
	for _, c := range []byte(`"\/bfnrt`) {
		w[c] = escapeWeight([]byte{'\\', c})
	}
	return w
}()

// escapeWeight is the weight of what a valid escape sequence decodes to.
func escapeWeight(esc []byte) uint8 {
	switch esc[1] {
	case 'n', 't', 'r':
		return weight[' ']
	case 'b', 'f':
		return weight['\b']
	case 'u':
		cp := hex4(esc[2:])
		switch {
		case cp < 0x80:
			return weight[cp]
		case cp < 0x800:
			return weight[0xC2]
		}
		return weight[0xE0] // BMP rune, or half of a surrogate pair
	}
	return weight[esc[1]]
}

// StringLen consumes a string and returns the length of its decoded UTF-8.
func (r *Reader) StringLen() int64 {
	raw, ok := r.RawString()
	if !ok {
		return 0
	}
	return DecodedLen(raw)
}

// DecodedLen is the UTF-8 length of a valid escaped JSON string body; each
// half of a surrogate pair counts 2, so a pair counts the 4 it decodes to.
func DecodedLen(raw []byte) int64 {
	var n int64
	for i := 0; i < len(raw); {
		if raw[i] != '\\' || i+1 >= len(raw) {
			n++
			i++
			continue
		}
		if raw[i+1] != 'u' || i+6 > len(raw) {
			n++
			i += 2
			continue
		}
		switch cp := hex4(raw[i+2:]); {
		case cp < 0x80:
			n++
		case cp < 0x800 || (cp >= 0xD800 && cp < 0xE000):
			n += 2
		default:
			n += 3
		}
		i += 6
	}
	return n
}

// Int consumes a number; isInt is false when it has a fraction, an exponent
// or does not fit in int64 (the value is still consumed).
func (r *Reader) Int() (v int64, isInt bool) {
	if r.Peek() != KindNumber {
		r.fail("expected number")
		return 0, false
	}
	start := r.pos
	r.number()
	if r.err != nil {
		return 0, false
	}
	s := r.buf[start:r.pos]
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if v > (1<<63-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	if neg {
		v = -v
	}
	return v, true
}

func (r *Reader) number() {
	i, ok := scanNumber(r.buf, r.pos)
	r.pos = i
	if !ok {
		r.fail("invalid number")
	}
}

func (r *Reader) literal(lit string) bool {
	if len(r.buf)-r.pos >= len(lit) && string(r.buf[r.pos:r.pos+len(lit)]) == lit {
		r.pos += len(lit)
		return true
	}
	r.fail("invalid literal")
	return false
}

// Bool consumes true or false.
func (r *Reader) Bool() (v, ok bool) {
	if r.Peek() != KindBool {
		r.fail("expected boolean")
		return false, false
	}
	if r.buf[r.pos] == 't' {
		return true, r.literal("true")
	}
	return false, r.literal("false")
}

// Null consumes a null if one is next and reports whether it did.
func (r *Reader) Null() bool {
	return r.Peek() == KindNull && r.literal("null")
}

// Skip consumes one value of any kind, validating it, and returns its span.
func (r *Reader) Skip() (start, end int) {
	if r.Peek() == KindInvalid {
		return r.pos, r.pos
	}
	start = r.pos
	if r.buf[start] == '"' {
		// Strings are most of what is skipped; they need no nesting state.
		r.scanString()
		return start, r.pos
	}
	r.skipValue()
	return start, r.pos
}

// skipValue consumes the value starting at r.pos, a non-space byte, as one
// loop over the bytes with a depth counter, where walking it with Object,
// NextKey and recursive calls would re-check the error, the iteration state
// and the bounds at every token. It accepts exactly what that walk accepts
// and fails with the same message at the same offset (FuzzSkip).
func (r *Reader) skipValue() {
	var (
		b    = r.buf
		i    = r.pos
		base = r.depth
		d    = base
		// Bit d-base-1 is set when the container at depth d is an object;
		// d-base never exceeds MaxDepth.
		objs [MaxDepth / 64]uint64
		msg  string
		c    byte
		ok   bool
	)
value:
	if i < len(b) && b[i] <= ' ' {
		i = skipWS(b, i)
	}
	if i >= len(b) {
		msg = "unexpected end of input"
		goto fail
	}
	switch c = b[i]; c {
	case '"':
		if i, _, msg = scanStr(b, i); msg != "" {
			goto fail
		}
		i++
	case '{', '[':
		if d++; d > MaxDepth {
			msg = "nesting too deep"
			goto fail
		}
		k := uint(d - base - 1)
		if c == '[' {
			objs[k/64] &^= 1 << (k % 64)
		} else {
			objs[k/64] |= 1 << (k % 64)
		}
		i++
		if i < len(b) && b[i] <= ' ' {
			i = skipWS(b, i)
		}
		if i >= len(b) {
			msg = "unexpected end of input"
			goto fail
		}
		if b[i] == c+2 { // ']' and '}' follow their openers two bytes on
			i++
			d--
			goto after
		}
		if c == '[' {
			goto value
		}
		goto key
	case 't', 'f', 'n':
		if i, ok = skipLiteral(b, i); !ok {
			msg = "invalid literal"
			goto fail
		}
	default:
		if kindOf[c] != KindNumber {
			msg = "expected a value"
			goto fail
		}
		if i, ok = scanNumber(b, i); !ok {
			msg = "invalid number"
			goto fail
		}
	}
after:
	if d == base {
		r.pos = i
		return
	}
	if i < len(b) && b[i] <= ' ' {
		i = skipWS(b, i)
	}
	if i >= len(b) {
		msg = "unexpected end of input"
		goto fail
	}
	if k := uint(d - base - 1); objs[k/64]&(1<<(k%64)) != 0 {
		switch b[i] {
		case '}':
			i++
			d--
			goto after
		case ',':
			i++
			if i < len(b) && b[i] <= ' ' {
				i = skipWS(b, i)
			}
			goto key
		}
		msg = "expected ',' or '}'"
		goto fail
	}
	switch b[i] {
	case ']':
		i++
		d--
		goto after
	case ',':
		i++
		goto value
	}
	msg = "expected ',' or ']'"
	goto fail
key:
	if i >= len(b) || b[i] != '"' {
		msg = "expected object key"
		goto fail
	}
	if i, _, msg = scanStr(b, i); msg != "" {
		goto fail
	}
	i++
	if i < len(b) && b[i] <= ' ' {
		i = skipWS(b, i)
	}
	if i >= len(b) || b[i] != ':' {
		msg = "expected ':'"
		goto fail
	}
	i++
	goto value
fail:
	r.pos = i
	r.depth = d
	r.fail(msg)
}

// skipLiteral consumes the literal that b[i] ('t', 'f' or 'n') starts,
// reporting false if it is not there.
func skipLiteral(b []byte, i int) (int, bool) {
	lit := "null"
	switch b[i] {
	case 't':
		lit = "true"
	case 'f':
		lit = "false"
	}
	if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
		return i + len(lit), true
	}
	return i, false
}

// scanNumber consumes the number starting at b[i] ('-' or a digit) and
// returns the offset after it, or the offset where a digit is missing and
// false.
func scanNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	if i < len(b) && b[i] == '0' {
		i++
	} else if j := skipDigits(b, i); j == i {
		return i, false
	} else {
		i = j
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return i, false
		}
		i = j
	}
	return i, true
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// EstimateValue consumes one value of any kind and adds its JSON text to c:
// tool schemas, tool-call arguments and unknown blocks are read by the model
// much as they are written.
func (r *Reader) EstimateValue(c *TokenCounter) {
	start, end := r.Skip()
	if r.err == nil {
		c.Add(r.buf[start:end])
	}
}

// End reports whether only whitespace remains; it records an error if not.
func (r *Reader) End() bool {
	if r.err != nil {
		return false
	}
	r.ws()
	if r.pos != len(r.buf) {
		r.fail("unexpected data after the JSON value")
		return false
	}
	return true
}

// View returns b as a string without copying, for read-only comparisons and
// conversions. The string must not outlive b's contents or be retained.
func View(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// StringFieldsLen sums the decoded lengths of the string members of the JSON
// object obj whose keys are listed; other members are skipped. It returns 0
// for anything that is not a valid object. obj is typically a Value's Raw,
// read in place without copying.
func StringFieldsLen(obj []byte, keys ...string) int64 {
	var r Reader
	r.Reset(obj)
	if r.Peek() != KindObject {
		return 0
	}
	var n int64
	it := r.Object()
	for k, ok := r.NextKey(&it); ok; k, ok = r.NextKey(&it) {
		if r.Peek() == KindString && contains(keys, k) {
			n += r.StringLen()
			continue
		}
		r.Skip()
	}
	if r.Err() != nil {
		return 0
	}
	return n
}

func contains(keys []string, k []byte) bool {
	for _, s := range keys {
		if s == string(k) {
			return true
		}
	}
	return false
}
