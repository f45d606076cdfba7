package anthropic

import (
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// BenchmarkPlan is what the gate does with a request body (gate's
// Exchange.edit): one Parse, then Edit with a model rewrite and prompt-cache
// injection, then wire.Apply. "parse" is the Parse alone on the same body,
// so plan/parse shows how many passes and copies the edits add: with -benchmem
// the bytes allocated by "plan" are one copy of the body, the edited body
// itself.
func BenchmarkPlan(b *testing.B) {
	body := realisticBody(100 << 10)
	const model = "claude-haiku-4-5"
	e := wire.EditRequest{Model: model, Cache: &wire.CacheRequest{TTL: "5m", MinTokens: accounting.MinCacheTokens(model)}}
	d := Messages{}
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if _, err := d.Parse(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plan", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			req, err := d.Parse(body)
			if err != nil {
				b.Fatal(err)
			}
			var edits wire.Edits
			rep, err := d.Edit(body, &req, e, &edits)
			if err != nil {
				b.Fatal(err)
			}
			out, err := wire.Apply(body, &edits)
			if err != nil || len(out) <= len(body) || rep.CacheAdded == 0 {
				b.Fatal(err, len(out), rep)
			}
		}
	})
}
