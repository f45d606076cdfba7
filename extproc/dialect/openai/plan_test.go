package openai

import (
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// BenchmarkPlan is what the gate does with a streaming request body (gate's
// Exchange.edit): one Parse, then Edit with a model rewrite (include_usage is
// forced because the stream does not ask for it), then wire.Apply. "parse" is
// the Parse alone on the same body, so plan/parse shows how many passes and
// copies the edits add: with -benchmem the bytes allocated by "plan" are one
// copy of the body, the edited body itself.
func BenchmarkPlan(b *testing.B) {
	body := realisticBody(100 << 10)
	e := wire.EditRequest{Model: "gpt-5-nano"}
	d := ChatCompletions{}
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
			if err != nil || len(out) <= len(body) || !rep.StreamUsageForced {
				b.Fatal(err, len(out), rep)
			}
		}
	})
}
