package anthropic

import (
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire/wiretest"
)

// twoWays are bodies a provider could read differently from tokenwarden:
// each must be refused.
var twoWays = []string{
	`{"model":"claude-haiku-4-5","Model":"claude-opus-4-1","max_tokens":1,"messages":[]}`,
	`{"model":"claude-haiku-4-5","model":"claude-opus-4-1","max_tokens":1,"messages":[]}`,
	`{"model":"claude-haiku-4-5","\u006dodel":"claude-opus-4-1","max_tokens":1,"messages":[]}`,
	`{"model":"claude-haiku-4-5","max_tokens":1,"MAX_TOKENS":64000,"messages":[]}`,
	"{\"model\":\"claude-haiku-4-5\",\"max_to\u212Aens\":64000,\"messages\":[]}", // a Kelvin sign folds to k
	`{"model":"claude-haiku-4-5","max_tokens":1,"messages":[],"Stream":true}`,
	`{"model":"claude-haiku-4-5","max_tokens":1,"messages":[],"MESSAGES":[{"role":"user","content":"x"}]}`,
	`{"model":"claude-haiku-4-5","max_tokens":1,"messages":[],"System":"be expensive"}`,
	"{\"model\":\"claude-\xff\",\"max_tokens\":1,\"messages\":[]}",
	`{"model":"claude-\u0007","max_tokens":1,"messages":[]}`,
	`{"model":"claude-haiku-4-5\n","max_tokens":1,"messages":[]}`,
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
			"model": wiretest.String, "max_tokens": wiretest.Number, "stream": wiretest.Bool,
			"messages": wiretest.Count, "tools": wiretest.Count,
		})
		if got["model"] != req.Model {
			t.Fatalf("model %q, encoding/json %#v", req.Model, got["model"])
		}
		if mt, ok := got["max_tokens"].(float64); ok && int64(mt) != req.MaxTokens || !ok && req.MaxTokens != 0 {
			t.Fatalf("max_tokens %d, encoding/json %#v", req.MaxTokens, got["max_tokens"])
		}
		if st, _ := got["stream"].(bool); st != req.Stream {
			t.Fatalf("stream %v, encoding/json %#v", req.Stream, got["stream"])
		}
		if n, _ := got["messages"].(int); n != req.Messages {
			t.Fatalf("messages %d, encoding/json %#v", req.Messages, got["messages"])
		}
		if n, _ := got["tools"].(int); (n > 0) != req.HasTools {
			t.Fatalf("tools %v, encoding/json %#v", req.HasTools, got["tools"])
		}
	})
}
