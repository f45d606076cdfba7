package anthropic

import (
	"testing"

	"github.com/tidwall/gjson"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// BenchmarkParseRequestWithGJSON is the well-kept-library alternative to the
// hand-written reader behind ParseRequest, kept as the benchmark that
// justifies it: validate with gjson, then read the same fields and feed every
// text to the same estimator through gjson's accessors. gjson allocates a
// copy of every string that contains an escape (every message with a
// newline) and walks the body once more per accessor, so its allocations grow
// with the number of messages while ParseRequest's stay at 3.
func BenchmarkParseRequestWithGJSON(b *testing.B) {
	body := realisticBody(100 << 10)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if !gjson.ValidBytes(body) {
			b.Fatal("invalid")
		}
		var c wire.TokenCounter
		root := gjson.ParseBytes(body)
		_ = root.Get("model").String()
		_ = root.Get("max_tokens").Int()
		_ = root.Get("stream").Bool()
		sys := root.Get("system")
		if sys.Type == gjson.String {
			c.AddString(sys.String())
		} else {
			sys.ForEach(func(_, blk gjson.Result) bool { c.AddString(blk.Get("text").String()); return true })
		}
		root.Get("tools").ForEach(func(_, t gjson.Result) bool { c.AddString(t.Raw); return true })
		root.Get("messages").ForEach(func(_, m gjson.Result) bool {
			content := m.Get("content")
			if content.Type == gjson.String {
				c.AddString(content.String())
				return true
			}
			content.ForEach(func(_, blk gjson.Result) bool {
				switch blk.Get("type").String() {
				case "text":
					c.AddString(blk.Get("text").String())
				case "tool_use":
					c.AddString(blk.Get("input").Raw)
				case "tool_result":
					c.AddString(blk.Get("content").String())
				}
				return true
			})
			return true
		})
		_ = c.Tokens()
	}
}
