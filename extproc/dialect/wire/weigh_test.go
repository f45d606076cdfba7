package wire

import (
	"bytes"
	"strings"
	"testing"
)

func TestEstimateTokens(t *testing.T) {
	tests := []struct {
		name string
		text string
		want int64
	}{
		{"empty", "", 0},
		{"one letter rounds up", "a", 1},
		{"word and space", "hello world", 3},       // 11 bytes at 4/token
		{"digits group in threes", "123456789", 3}, // 9 digits at 3/token
		{"punctuation", `{"":""}`, 4},              // 7 punctuation bytes at 2/token
		{"cjk one per rune", "你好世界", 4},            // 3-byte runes
		{"cyrillic", "привет", 4},                  // 6 two-byte runes at 7/12
		{"emoji two per rune", "😀😀", 4},            // 4-byte runes
		{"control characters", "\x00\x01", 2},      // one token each
		{"invalid utf-8 lead", "\xff", 1},          // counted, never free
		{"newlines are whitespace", "\n\n\n\n", 1}, // 4 at 4/token
		{"mixed", "The answer is 42.", 5},          // 13 letters/spaces, 2 digits, 1 dot
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EstimateTokens([]byte(tc.text)); got != tc.want {
				t.Errorf("EstimateTokens(%q) = %d, want %d", tc.text, got, tc.want)
			}
		})
	}
}

// The estimate is a reservation: for ordinary text it must land between the
// densities real tokenizers produce (prose ~4.3 bytes per token on cl100k,
// ~3.6 on current Claude tokenizers; JSON and code ~2.5-3.5), erring high.
func TestEstimateTokensDensity(t *testing.T) {
	prose := strings.Repeat("The quick brown fox jumps over the lazy dog, then rests a while. ", 200)
	code := strings.Repeat("func main() {\n\tfmt.Println(\"hello\", x[i]+1)\n}\n", 200)
	for _, tc := range []struct {
		name           string
		text           string
		minBPT, maxBPT float64 // bytes per token the estimate may imply
	}{
		{"prose", prose, 3.0, 4.3},
		{"code", code, 2.0, 3.6},
	} {
		got := EstimateTokens([]byte(tc.text))
		bpt := float64(len(tc.text)) / float64(got)
		if bpt < tc.minBPT || bpt > tc.maxBPT {
			t.Errorf("%s: %d tokens for %d bytes = %.2f bytes/token, want within [%.1f, %.1f]",
				tc.name, got, len(tc.text), bpt, tc.minBPT, tc.maxBPT)
		}
	}
}

func TestTokenCounterMatchesEstimate(t *testing.T) {
	text := []byte("Mixed text: 你好, привет, 😀 and code {\"a\": [1, 2]}.\n")
	var c TokenCounter
	for _, piece := range bytes.SplitAfter(text, []byte(" ")) {
		c.Add(piece)
	}
	if got, want := c.Tokens(), EstimateTokens(text); got != want {
		t.Errorf("counter over pieces = %d, whole = %d", got, want)
	}
	c.AddString("")
	c.AddTokens(ImageTokens)
	if got, want := c.Tokens(), EstimateTokens(text)+ImageTokens; got != want {
		t.Errorf("with fixed tokens = %d, want %d", got, want)
	}
}

func TestBase64DocumentTokens(t *testing.T) {
	if got := Base64DocumentTokens(100); got != DocumentTokens {
		t.Errorf("small document = %d, want the floor %d", got, DocumentTokens)
	}
	// 4 MB of base64 decode to 3 MB: one token per DocumentBytesPerToken.
	if got, want := Base64DocumentTokens(4<<20), int64(3<<20/DocumentBytesPerToken); got != want {
		t.Errorf("large document = %d, want %d", got, want)
	}
}
