package wire

import (
	"bytes"
	"errors"
	"testing"
)

// refUnits is the estimate's definition: one table lookup per byte.
func refUnits(text []byte) uint64 {
	var u uint64
	for _, c := range text {
		u += uint64(weight[c])
	}
	return u
}

// refEstimateString is EstimateString's definition, one byte at a time: the
// string starting at b[start] (a quote) is validated and weighed, escapes by
// what they decode to. It returns the units, the offset EstimateString
// leaves the reader at, and the error message, empty when valid.
func refEstimateString(b []byte, start int) (units uint64, pos int, msg string) {
	for i := start + 1; ; {
		if i >= len(b) {
			return 0, i, "unterminated string"
		}
		switch c := b[i]; {
		case c == '"':
			return units, i + 1, ""
		case c == '\\':
			n := escapeLen(b, i)
			if n == 0 {
				return 0, i, "invalid escape in string"
			}
			units += uint64(escapeWeight(b[i:]))
			i += n
		case c < 0x20:
			return 0, i, "control character in string"
		default:
			units += uint64(weight[c])
			i++
		}
	}
}

// quoteMinimal escapes only what JSON requires, so non-ASCII, DEL and
// invalid UTF-8 reach the string scanner raw.
func quoteMinimal(s []byte) []byte {
	out := []byte{'"'}
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c == '\n':
			out = append(out, `\n`...)
		case c < 0x20:
			out = append(out, '\\', 'u', '0', '0', "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
		default:
			out = append(out, c)
		}
	}
	return append(out, '"')
}

// checkFastPath compares Add, AddString and EstimateString with their
// byte-at-a-time definitions on s, at every alignment of the buffer and with
// and without bytes after the string (the word loads read past its end).
func checkFastPath(t *testing.T, s []byte) {
	t.Helper()
	var c TokenCounter
	c.Add(s)
	c.AddString(string(s))
	if want := 2 * refUnits(s); uint64(c.units) != want {
		t.Fatalf("Add+AddString(%q) = %d units, want %d", s, c.units, want)
	}
	for _, doc := range [][]byte{s, quoteMinimal(s), append([]byte{'"'}, s...)} {
		for pad := range 8 {
			for _, tail := range []string{"", `,"k":1}`} {
				b := append(append(bytes.Repeat([]byte(" "), pad), doc...), tail...)
				if len(b) <= pad || b[pad] != '"' {
					continue
				}
				wantU, wantPos, wantMsg := refEstimateString(b, pad)
				var r Reader
				r.Reset(b)
				var c TokenCounter
				ok := r.EstimateString(&c)
				var msg string
				var se *SyntaxError
				if errors.As(r.Err(), &se) {
					msg = se.Msg
				}
				if ok != (wantMsg == "") || msg != wantMsg || r.Pos() != wantPos || (ok && uint64(c.units) != wantU) {
					t.Fatalf("EstimateString(%q) = ok %v, %d units, pos %d, err %q; want %d units, pos %d, err %q",
						b, ok, c.units, r.Pos(), msg, wantU, wantPos, wantMsg)
				}
				// scanString shares the structure of the fast scan; the
				// span it returns must end where the estimate did.
				r.Reset(b)
				raw, rawOK := r.RawString()
				if rawOK != ok || (ok && pad+1+len(raw)+1 != wantPos) {
					t.Fatalf("RawString(%q) = %q, %v; EstimateString ended at %d, ok %v", b, raw, rawOK, wantPos, ok)
				}
			}
		}
	}
}

var fastPathSeeds = []string{
	"", "a", "hello world", "The quick brown fox jumps over the lazy dog 0123456789",
	"AZaz@[`{ ~\x7f09/:!", "tab\there\nnew \"quoted\" back\\slash", `\u00e9\ud83d\ude00\x`,
	"你好世界 привет 😀 mixed ascii and ünïcödé text of some length", "\xff\xfe\x80\xc0\xe0\xf0\xf8",
	"\x00\x01\x1f control", "0123456789012345678901234567890123456789",
	`{"a": [1, 2, {"b": "c\"d"}], "e": "f\\\\g"}`, "\\\\\\\\\\\\\\\"\"",
	// \u00XX escapes: ASCII ones, taken in the word loop, next to their
	// non-ASCII, malformed and truncated neighbours.
	`if a \u003c b \u0026\u0026 c \u003E d {\u0009\u007f\u0000}`, `\u0080\u00ff\u00g0\u008`, `\u00`, `\u0`,
	`x\u0041\u00zz`, `\u00\u0041\u1041\U0041`,
}

func TestFastPathMatchesReference(t *testing.T) {
	for _, s := range fastPathSeeds {
		checkFastPath(t, []byte(s))
	}
	// Every byte value in every lane of a word, next to every class.
	for c := range 256 {
		for lane := range 9 {
			s := []byte("aZ0 .~\x7f\xc3abcdefgh")
			s[lane] = byte(c)
			checkFastPath(t, s)
		}
	}
}

// FuzzEstimateFastPath checks the word-at-a-time estimate and string scan
// against the byte-at-a-time definitions on arbitrary bytes.
func FuzzEstimateFastPath(f *testing.F) {
	for _, s := range fastPathSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, s []byte) { checkFastPath(t, s) })
}
