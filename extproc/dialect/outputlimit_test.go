package dialect_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// TestOutputLimitEdit bounds the output of a request in every dialect that
// generates output: after the edit, the same dialect's parse reads the new
// bound, and nothing else in the body has changed.
func TestOutputLimitEdit(t *testing.T) {
	const gemini = "/v1beta/models/gemini-2.5-flash:generateContent"
	cases := []struct {
		name, path, body string
		// field is where the bound sits after the edit (a path of keys), so
		// the test can remove it and compare the rest.
		field []string
	}{
		{"anthropic", "/v1/messages", `{"model":"claude-haiku-4-5","max_tokens":64000,"messages":[{"role":"user","content":"hi"}]}`, []string{"max_tokens"}},
		{"anthropic spaced", "/v1/messages", `{ "max_tokens" : 64000 , "model":"claude-haiku-4-5","messages":[{"role":"user","content":"hi"}] }`, []string{"max_tokens"}},
		{"chat absent", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, []string{"max_completion_tokens"}},
		{"chat max_tokens", "/v1/chat/completions", `{"model":"gpt-4o","max_tokens":9000,"messages":[{"role":"user","content":"hi"}]}`, []string{"max_tokens"}},
		{"chat null", "/v1/chat/completions", `{"model":"gpt-4o","max_completion_tokens":null,"messages":[{"role":"user","content":"hi"}]}`, []string{"max_completion_tokens"}},
		{"responses absent", "/v1/responses", `{"model":"gpt-5","input":"hi"}`, []string{"max_output_tokens"}},
		{"responses present", "/v1/responses", `{"model":"gpt-5","input":"hi","max_output_tokens":100000}`, []string{"max_output_tokens"}},
		{"gemini no config", gemini, `{"contents":[{"parts":[{"text":"hi"}]}]}`, []string{"generationConfig", "maxOutputTokens"}},
		{"gemini config null", gemini, `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":null}`, []string{"generationConfig", "maxOutputTokens"}},
		{"gemini empty config", gemini, `{"generationConfig":{},"contents":[{"parts":[{"text":"hi"}]}]}`, []string{"generationConfig", "maxOutputTokens"}},
		{"gemini config without bound", gemini, `{"generationConfig":{"temperature":0},"contents":[{"parts":[{"text":"hi"}]}]}`, []string{"generationConfig", "maxOutputTokens"}},
		{"gemini bound", gemini, `{"generationConfig":{"maxOutputTokens":65536,"temperature":0},"contents":[{"parts":[{"text":"hi"}]}]}`, []string{"generationConfig", "maxOutputTokens"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := dialect.ForPath(tc.path)
			req, err := d.Parse([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			var edits wire.Edits
			if _, err := d.Edit([]byte(tc.body), &req, wire.EditRequest{OutputLimit: 777}, &edits); err != nil {
				t.Fatal(err)
			}
			out, err := wire.Apply([]byte(tc.body), &edits)
			if err != nil {
				t.Fatal(err)
			}
			again, err := d.Parse(out)
			if err != nil {
				t.Fatalf("edited body does not parse: %v\n%s", err, out)
			}
			if again.MaxTokens != 777 {
				t.Fatalf("bound after the edit = %d, want 777\n%s", again.MaxTokens, out)
			}
			var before, after map[string]any
			if err := json.Unmarshal([]byte(tc.body), &before); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(out, &after); err != nil {
				t.Fatal(err)
			}
			if got := lookup(after, tc.field); got != float64(777) {
				t.Fatalf("%v = %v, want 777\n%s", tc.field, got, out)
			}
			remove(before, tc.field)
			remove(after, tc.field)
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("the edit changed more than the bound:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

func lookup(m map[string]any, path []string) any {
	for i, k := range path {
		if i == len(path)-1 {
			return m[k]
		}
		m, _ = m[k].(map[string]any)
	}
	return nil
}

// remove deletes the bound, and a nested object the edit created with it.
func remove(m map[string]any, path []string) {
	if len(path) == 1 {
		delete(m, path[0])
		return
	}
	inner, _ := m[path[0]].(map[string]any)
	remove(inner, path[1:])
	if len(inner) == 0 {
		delete(m, path[0]) // absent, null or empty before: all the same request
	}
}

// FuzzOutputLimitEdit: any body a dialect accepts, bounded at n, is still
// accepted and reads n as its bound.
func FuzzOutputLimitEdit(f *testing.F) {
	paths := []string{"/v1/messages", "/v1/chat/completions", "/v1/responses", "/v1beta/models/gemini-2.5-flash:generateContent"}
	f.Add(uint8(0), `{"model":"m","max_tokens":5,"messages":[]}`, int64(3))
	f.Add(uint8(1), `{"model":"m","max_tokens":5,"max_completion_tokens":7,"messages":[]}`, int64(3))
	f.Add(uint8(2), `{"model":"m","input":"x"}`, int64(1))
	f.Add(uint8(3), `{"contents":[],"generation_config":{"max_output_tokens":9}}`, int64(2))
	f.Add(uint8(3), `{"contents":[],"generationConfig":null}`, int64(2))
	f.Fuzz(func(t *testing.T, which uint8, body string, n int64) {
		if n <= 0 {
			return
		}
		d := dialect.ForPath(paths[int(which)%len(paths)])
		req, err := d.Parse([]byte(body))
		if err != nil {
			return
		}
		var edits wire.Edits
		if _, err := d.Edit([]byte(body), &req, wire.EditRequest{OutputLimit: n}, &edits); err != nil {
			t.Fatalf("edit of an accepted body failed: %v", err)
		}
		out, err := wire.Apply([]byte(body), &edits)
		if err != nil {
			t.Fatal(err)
		}
		again, err := d.Parse(out)
		if err != nil {
			t.Fatalf("bounded body refused: %v\n%s\n%s", err, body, out)
		}
		if again.MaxTokens != n {
			t.Fatalf("bound %d, want %d\n%s", again.MaxTokens, n, out)
		}
	})
}
