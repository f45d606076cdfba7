package llm

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
//     The tool figures are calibrated on the recorded Anthropic exchanges
//     (shared/fixtures): a tool call with its result bills ~60 tokens beyond
//     their visible text.
//
// Weights are kept in twelfths of a token so one table lookup and one add per
// byte does all the work; continuation bytes of a UTF-8 sequence weigh 0 and
// the lead byte carries the rune's weight.

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
func (c *TokenCounter) Add(text []byte) {
	var u int64
	for _, b := range text {
		u += int64(weight[b])
	}
	c.units += u
}

// AddString is Add for a string.
func (c *TokenCounter) AddString(text string) {
	var u int64
	for i := 0; i < len(text); i++ {
		u += int64(weight[text[i]])
	}
	c.units += u
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
