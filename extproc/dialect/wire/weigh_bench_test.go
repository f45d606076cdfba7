package wire

import (
	"encoding/json"
	"strings"
	"testing"
)

// BenchmarkEstimateString weighs one long JSON string: prose with few
// escapes, code with an escape every few bytes (newlines, tabs, and the
// \u003c-style escapes encoding/json writes for <, > and &), and text
// that is mostly non-ASCII.
func BenchmarkEstimateString(b *testing.B) {
	for _, tc := range []struct{ name, text string }{
		{"prose", strings.Repeat("The quick brown fox jumps over the lazy dog, then rests a while. ", 1600)},
		{"code", strings.Repeat("\tif r.pos >= len(r.buf) {\n\t\treturn KindInvalid\n\t}\n", 2000)},
		{"cjk", strings.Repeat("你好世界，这是一个测试。", 3000)},
	} {
		doc, err := json.Marshal(tc.text)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(doc)))
			for b.Loop() {
				var r Reader
				r.Reset(doc)
				var c TokenCounter
				if !r.EstimateString(&c) {
					b.Fatal(r.Err())
				}
			}
		})
	}
}

func BenchmarkEstimateTokens(b *testing.B) {
	text := []byte(strings.Repeat(`{"type": "object", "properties": {"path": {"type": "string"}}} `, 1600))
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		EstimateTokens(text)
	}
}
