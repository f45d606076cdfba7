package openai

import (
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire/wiretest"
)

// twoWays are bodies a provider could read differently from tokenwarden:
// each must be refused.
var twoWays = []string{
	`{"model":"gpt-4o-mini","Model":"gpt-5-pro","messages":[]}`,
	`{"model":"gpt-4o-mini","model":"gpt-5-pro","messages":[]}`,
	`{"model":"gpt-4o-mini","messages":[],"max_completion_tokens":1,"Max_Completion_Tokens":100000}`,
	`{"model":"gpt-4o-mini","messages":[],"stream":true,"Stream_Options":{"include_usage":false}}`,
	`{"model":"gpt-4o-mini","messages":[],"stream":true,"stream_options":{"include_usage":true,"include_usage":false}}`,
	`{"model":"gpt-4o-mini","messages":[],"stream":true,"stream_options":{"include_usage":true,"Include_Usage":false}}`,
	`{"model":"gpt-4o-mini","messages":[],"TOOLS":[{"type":"function"}]}`,
	"{\"model\":\"gpt-\xc3\x28\",\"messages\":[]}",
	`{"model":"gpt-4o\r\nx-evil: 1","messages":[]}`,
}

func TestRefusesBodiesReadTwoWays(t *testing.T) {
	for _, b := range twoWays {
		if req, err := ParseRequest([]byte(b)); err == nil {
			t.Errorf("accepted %q as model %q", b, req.Model)
		}
	}
}

// FuzzOneReading: the parser never panics, and every body it accepts has
// each governed field exactly once, read as encoding/json and an exact-key
// decoder read it.
func FuzzOneReading(f *testing.F) {
	for _, s := range append(fuzzBodies, twoWays...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseRequest(b)
		if err != nil {
			return
		}
		got := wiretest.OneReading(t, b, map[string]wiretest.Kind{
			"model": wiretest.String, "max_tokens": wiretest.Number, "max_completion_tokens": wiretest.Number,
			"stream": wiretest.Bool, "messages": wiretest.Count, "tools": wiretest.Count, "functions": wiretest.Count,
		})
		if got["model"] != req.Model {
			t.Fatalf("model %q, encoding/json %#v", req.Model, got["model"])
		}
		want := int64(0)
		if mt, ok := got["max_tokens"].(float64); ok {
			want = int64(mt)
		}
		if mc, ok := got["max_completion_tokens"].(float64); ok {
			want = int64(mc)
		}
		if want != req.MaxTokens {
			t.Fatalf("output bound %d, encoding/json %#v / %#v", req.MaxTokens, got["max_tokens"], got["max_completion_tokens"])
		}
		if st, _ := got["stream"].(bool); st != req.Stream {
			t.Fatalf("stream %v, encoding/json %#v", req.Stream, got["stream"])
		}
		if n, _ := got["messages"].(int); n != req.Messages {
			t.Fatalf("messages %d, encoding/json %#v", req.Messages, got["messages"])
		}
		nt, _ := got["tools"].(int)
		nf, _ := got["functions"].(int)
		if (nt+nf > 0) != req.HasTools {
			t.Fatalf("tools %v, encoding/json %#v %#v", req.HasTools, got["tools"], got["functions"])
		}
	})
}
