package wire

import "math/bits"

// Token estimation without a tokenizer.
//
// A real BPE tokenizer costs ~20 ms per 100 KB of prompt, far over the hot
// path's budget, and no official offline tokenizer exists for current Claude
// models anyway. The estimate is a reservation that settlement corrects from
// the provider's usage, so it is built to err high, never wildly low:
//
//   - ASCII letters and whitespace: 4 bytes per token (English prose measures
//     ~4.3 on cl100k and ~3.6 on the newest Claude tokenizers).
//   - ASCII digits: 3 per token (tokenizers group digits in threes).
//   - ASCII punctuation: 2 per token, so JSON and code land near 3 bytes per
//     token overall, the density measured for them.
//   - Non-ASCII, by UTF-8 length: 2-byte runes (Latin accents, Greek,
//     Cyrillic, Hebrew, Arabic) ~0.6 token each; 3-byte runes (CJK, Hangul,
//     Thai, typographic punctuation) 1 token each; 4-byte runes (emoji, rare
//     ideographs) 2 tokens each.
//   - Media are not text: an image is a fixed ImageTokens (the size above
//     which the vision docs say images are scaled down), audio MediaTokens,
//     a document of unknown size DocumentTokens, a base64 document one token
//     per 8 decoded bytes but at least DocumentTokens.
//   - Framing: MessageOverheadTokens per message, ToolOverheadTokens per tool
//     definition, ToolPromptTokens once when tools are present (the hidden
//     tool-use system prompt), ToolCallOverheadTokens per tool call and per
//     tool result in the conversation, RequestOverheadTokens per request.
//     The tool figures are calibrated on real Anthropic exchanges (the
//     anthropic-sdk-go tool-runner cassettes, https://github.com/anthropics/anthropic-sdk-go/tree/main/toolrunner/testdata/cassettes,
//     which the recorded-traffic tests read from ../shared/fixtures): a tool
//     call with its result bills ~60 tokens beyond their visible text.
//
// Weights are kept in twelfths of a token, so the estimate is a sum of small
// integers per byte: the table below is its definition. Continuation bytes of
// a UTF-8 sequence weigh 0 and the lead byte carries the rune's weight. The
// hot paths sum eight bytes at a time (asciiUnits, tableUnits) and must agree
// with the table exactly; FuzzEstimateFastPath holds them to it.

// Fixed estimates, in tokens.
const (
	ImageTokens            = 1600
	MediaTokens            = 1600
	DocumentTokens         = 3200
	DocumentBytesPerToken  = 8
	MessageOverheadTokens  = 4
	ToolOverheadTokens     = 8
	ToolPromptTokens       = 350
	ToolCallOverheadTokens = 30
	RequestOverheadTokens  = 8
)

const unitsPerToken = 12

// weight is the cost of one byte in twelfths of a token.
var weight = func() (w [256]uint8) {
	for c := 0; c < 256; c++ {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == ' ', c == '\t', c == '\n', c == '\r':
			w[c] = 3
		case c >= '0' && c <= '9':
			w[c] = 4
		case c < 0x20 || c == 0x7f:
			w[c] = 12
		case c < 0x80:
			w[c] = 6
		case c < 0xC0: // UTF-8 continuation byte: carried by the lead byte
			w[c] = 0
		case c < 0xE0:
			w[c] = 7
		case c < 0xF0:
			w[c] = 12
		case c < 0xF8:
			w[c] = 24
		default:
			w[c] = 12
		}
	}
	return w
}()

// TokenCounter accumulates a token estimate over many pieces of text. The
// zero value is ready to use.
type TokenCounter struct {
	units int64
	fixed int64
}

// Add counts text (raw UTF-8, not JSON-escaped).
func (c *TokenCounter) Add(text []byte) { c.units += int64(textUnits(text)) }

// AddString is Add for a string.
func (c *TokenCounter) AddString(text string) { c.units += int64(textUnits(text)) }

// textUnits sums weight over text a word at a time; it is the whole of
// Add's work, written once for both string and []byte.
func textUnits[T ~string | ~[]byte](text T) uint64 {
	var u uint64
	i := 0
	for ; i+8 <= len(text); i += 8 {
		x := load64(text, i)
		if printableASCII(x) {
			u += asciiUnits(x, msb, 8)
		} else {
			u += tableUnits(x)
		}
	}
	for ; i < len(text); i++ {
		u += uint64(weight[text[i]])
	}
	return u
}

// load64 reads text[i:i+8] little-endian; the compiler merges the byte loads
// into one, for strings as for slices.
func load64[T ~string | ~[]byte](text T, i int) uint64 {
	_ = text[i+7]
	return uint64(text[i]) | uint64(text[i+1])<<8 | uint64(text[i+2])<<16 | uint64(text[i+3])<<24 |
		uint64(text[i+4])<<32 | uint64(text[i+5])<<40 | uint64(text[i+6])<<48 | uint64(text[i+7])<<56
}

// SWAR (SIMD within a register) constants: one in each byte lane, and the
// high bit of each lane.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// printableASCII reports whether every byte of x is in [0x20, 0x7f), the
// domain of asciiUnits. Subtracting 0x20 borrows out of the lowest lane below
// 0x20 and sets its high bit, adding one sets the high bit of a lane at 0x7f,
// and x itself shows the lanes at or above 0x80; a carry or borrow only
// starts in a lane that is out of range, so no lane needs testing alone.
func printableASCII(x uint64) bool { return ((x-lsb*0x20)|(x+lsb)|x)&msb == 0 }

// below7f reports whether every byte of x is below 0x7f (DEL): adding one
// sets the high bit of a lane exactly at 0x7f, and x itself shows the lanes
// already at or above 0x80.
func below7f(x uint64) bool { return (x+lsb|x)&msb == 0 }

// asciiClasses returns, as masks of lane high bits, the letters and spaces
// and the digits among the bytes of x, for lanes holding a byte in
// [0x20, 0x7f). No table: with a lane below 0x80, adding 0x80-k to it sets
// its high bit exactly when the byte is at least k and carries nothing into
// the lane above. Carries only travel upwards, so the lanes below the first
// lane out of range are right whatever lies above it.
func asciiClasses(x uint64) (letterOrSpace, digit uint64) {
	f := x | lsb*0x20 // folds 'A'-'Z' onto 'a'-'z'; nothing else lands there
	letterOrSpace = ((f+lsb*(0x80-'a'))&^(f+lsb*(0x80-'z'-1)) | ^(x + lsb*(0x80-' '-1))) & msb
	digit = (x + lsb*(0x80-'0')) &^ (x + lsb*(0x80-'9'-1)) & msb
	return letterOrSpace, digit
}

// asciiUnits is the weight of the bytes of x in the lanes marked in keep
// (high bits; n of them), all in [0x20, 0x7f): the table gives them 6
// (punctuation) less 3 for letters and space, less 2 for digits.
func asciiUnits(x, keep uint64, n int) uint64 {
	ls, d := asciiClasses(x)
	return uint64(6*n - 3*bits.OnesCount64(ls&keep) - 2*bits.OnesCount64(d&keep))
}

// tableUnits is the weight of the eight bytes of x by table lookup, for
// words asciiUnits does not cover.
func tableUnits(x uint64) uint64 {
	return uint64(weight[uint8(x)]) + uint64(weight[uint8(x>>8)]) + uint64(weight[uint8(x>>16)]) +
		uint64(weight[uint8(x>>24)]) + uint64(weight[uint8(x>>32)]) + uint64(weight[uint8(x>>40)]) +
		uint64(weight[uint8(x>>48)]) + uint64(weight[uint8(x>>56)])
}

// Since returns the estimate of what c counted after start, a copy of c
// taken earlier, rounded up on its own: what a counter started at start
// would return. One counter so yields the estimates of the sections of a
// body as if each had been counted apart.
func (c *TokenCounter) Since(start TokenCounter) int64 {
	return (c.units-start.units+unitsPerToken-1)/unitsPerToken + c.fixed - start.fixed
}

// AddTokens adds a fixed number of tokens (media, framing overhead).
func (c *TokenCounter) AddTokens(n int64) { c.fixed += n }

// Tokens returns the estimate so far, rounding fractional tokens up.
func (c *TokenCounter) Tokens() int64 {
	return (c.units+unitsPerToken-1)/unitsPerToken + c.fixed
}

// EstimateTokens estimates the tokens of raw UTF-8 text with the heuristic
// described above (no framing overhead added).
func EstimateTokens(text []byte) int64 {
	var c TokenCounter
	c.Add(text)
	return c.Tokens()
}

// Base64DocumentTokens estimates a base64-encoded document (a PDF) of
// encodedLen bytes.
func Base64DocumentTokens(encodedLen int) int64 {
	n := int64(encodedLen) / 4 * 3 / DocumentBytesPerToken
	return max(n, DocumentTokens)
}
