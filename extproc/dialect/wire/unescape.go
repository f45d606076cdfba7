package wire

import "bytes"

// RawEqual reports whether raw, the still-escaped body of a JSON string (as
// RawString returns it), decodes to s. Without escapes it is a plain
// comparison; with them it decodes on the stack, so a client spelling a
// keyword with \u escapes is read as the provider reads it.
func RawEqual(raw []byte, s string) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw) == s
	}
	var buf [64]byte
	d, ok := unescapeInto(buf[:0], raw)
	return ok && string(d) == s
}
