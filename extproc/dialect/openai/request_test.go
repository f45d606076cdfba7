package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name string
		body string
		want wire.Request
	}{
		{"minimal", `{"model":"gpt-5-nano","messages":[{"role":"user","content":"hi"}]}`, wire.Request{Model: "gpt-5-nano", Messages: 1}},
		{"max_completion_tokens wins", `{"model":"m","messages":[],"max_tokens":10,"max_completion_tokens":100}`, wire.Request{Model: "m", MaxTokens: 100}},
		{"max_tokens alone", `{"max_tokens":10,"model":"m","messages":[]}`, wire.Request{Model: "m", MaxTokens: 10}},
		{"null max_completion_tokens falls back", `{"model":"m","messages":[],"max_completion_tokens":null,"max_tokens":7}`, wire.Request{Model: "m", MaxTokens: 7}},
		{"stream with usage", `{"model":"m","messages":[],"stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true}}`,
			wire.Request{Model: "m", Stream: true, StreamUsageRequested: true}},
		{"stream usage false", `{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false}}`, wire.Request{Model: "m", Stream: true}},
		{"null stream_options", `{"model":"m","messages":[],"stream_options":null}`, wire.Request{Model: "m"}},
		{"tools", `{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},{"role":"tool","tool_call_id":"c","content":"42"}],
			"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}`, wire.Request{Model: "m", Messages: 2, HasTools: true}},
		{"legacy functions", `{"model":"m","messages":[],"functions":[{"name":"f"}]}`, wire.Request{Model: "m", HasTools: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRequest([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if got.InputTokens < wire.RequestOverheadTokens {
				t.Errorf("InputTokens = %d", got.InputTokens)
			}
			got.InputTokens = 0
			got.PrefixFingerprint, got.HasPrefix = 0, false // TestParsePrefixFingerprint
			got.Index = wire.Index{}                        // FuzzEditMatchesMultiPass
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseRequestErrors(t *testing.T) {
	tests := []struct{ name, body, msg string }{
		{"truncated", `{"model":"m","messages":[`, "request body is not valid JSON"},
		{"not an object", `"x"`, "request body must be a JSON object"},
		{"missing model", `{"messages":[]}`, "model: field required"},
		{"missing messages", `{"model":"m"}`, "messages: field required"},
		{"model bool", `{"model":true,"messages":[]}`, "model: must be a string"},
		{"messages string", `{"model":"m","messages":"hi"}`, "messages: must be an array"},
		{"content number", `{"model":"m","messages":[{"role":"user","content":5}]}`, "messages.0.content: must be a string, null"},
		{"part not object", `{"model":"m","messages":[{"role":"user","content":[1]}]}`, "messages.0.content.0: content part must be an object"},
		{"stream_options array", `{"model":"m","messages":[],"stream_options":[]}`, "stream_options: must be an object"},
		{"include_usage string", `{"model":"m","messages":[],"stream_options":{"include_usage":"yes"}}`, "stream_options.include_usage: must be a boolean"},
		{"max_completion_tokens negative", `{"model":"m","messages":[],"max_completion_tokens":-3}`, "max_completion_tokens: must be a non-negative integer"},
		{"duplicate stream_options", `{"model":"m","messages":[],"stream_options":{},"stream_options":{}}`, "stream_options: duplicate key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.body))
			var re *wire.RequestError
			if !errors.Is(err, wire.ErrInvalidRequest) || !errors.As(err, &re) || !strings.HasPrefix(re.Msg, tc.msg) {
				t.Errorf("err = %v, want message prefix %q", err, tc.msg)
			}
		})
	}
}

func TestEstimateParts(t *testing.T) {
	est := func(content string) int64 {
		r, err := ParseRequest([]byte(`{"model":"m","messages":[{"role":"user","content":` + content + `}]}`))
		if err != nil {
			t.Fatal(err)
		}
		return r.InputTokens
	}
	base := est(`""`)
	text := strings.Repeat("Summarise this report in three bullet points, please.\n", 50)
	enc, _ := json.Marshal(text)
	if a, b := est(string(enc)), est(`[{"type":"text","text":`+string(enc)+`}]`); a != b || a-base != wire.EstimateTokens([]byte(text)) {
		t.Errorf("string %d, text part %d, want base %d + %d", a, b, base, wire.EstimateTokens([]byte(text)))
	}
	for _, n := range []int{100, 200_000} {
		img := `[{"type":"image_url","image_url":{"url":"data:image/png;base64,` + strings.Repeat("A", n) + `","detail":"high"}}]`
		if got := est(img) - base; got != wire.ImageTokens {
			t.Errorf("image of %d bytes adds %d, want %d", n, got, wire.ImageTokens)
		}
	}
	if got := est(`[{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}]`) - base; got != wire.MediaTokens {
		t.Errorf("audio adds %d", got)
	}
	file := `[{"file":{"filename":"a.pdf","file_data":"` + strings.Repeat("A", 4_000_000) + `"},"type":"file"}]`
	if got := est(file) - base; got != wire.Base64DocumentTokens(4_000_002) {
		t.Errorf("file adds %d, want %d", got, wire.Base64DocumentTokens(4_000_002))
	}
	if got := est(`[{"type":"file","file":{"file_id":"file-1"}}]`) - base; got != wire.DocumentTokens {
		t.Errorf("file by id adds %d, want %d", got, wire.DocumentTokens)
	}
}

func TestForceStreamUsage(t *testing.T) {
	tests := []struct {
		name, body, want string
		changed          bool
	}{
		{"absent", `{"model":"m","stream":true}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, true},
		{"absent, pretty", "{\n  \"model\": \"m\"\n}", "{\n  \"model\": \"m\",\"stream_options\":{\"include_usage\":true}\n}", true},
		{"empty object body", `{}`, `{"stream_options":{"include_usage":true}}`, true},
		{"null", `{"stream_options":null,"model":"m"}`, `{"stream_options":{"include_usage":true},"model":"m"}`, true},
		{"empty options", `{"stream_options":{ },"model":"m"}`, `{"stream_options":{"include_usage":true },"model":"m"}`, true},
		{"other options kept", `{"stream_options":{"include_obfuscation":false}}`, `{"stream_options":{"include_obfuscation":false,"include_usage":true}}`, true},
		{"false", `{"stream_options":{"include_usage":false,"x":1}}`, `{"stream_options":{"include_usage":true,"x":1}}`, true},
		{"already true", `{"stream_options":{"include_usage" : true}}`, `{"stream_options":{"include_usage" : true}}`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, changed, err := ForceStreamUsage([]byte(tc.body))
			if err != nil || string(out) != tc.want || changed != tc.changed {
				t.Errorf("got %s, %v, %v; want %s, %v", out, changed, err, tc.want, tc.changed)
			}
		})
	}
	for _, bad := range []string{`{"stream_options":1}`, `{"stream_options":{"include_usage":true,"include_usage":false}}`, `[]`, `{"a":`} {
		if _, _, err := ForceStreamUsage([]byte(bad)); !errors.Is(err, wire.ErrInvalidRequest) {
			t.Errorf("ForceStreamUsage(%s) err = %v", bad, err)
		}
	}
}

func TestErrorBody(t *testing.T) {
	got := string(ErrorBody(TokensError, RateLimitExceeded, "Rate limit reached"))
	if want := `{"error":{"message":"Rate limit reached","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	got = string(ErrorBody(InvalidRequestError, "", "bad \"x\"", "max_tokens"))
	if want := `{"error":{"message":"bad \"x\"","type":"invalid_request_error","param":"max_tokens","code":null}}`; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

var fuzzBodies = []string{
	`{"model":"gpt-5","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"x"}}]}],"stream":true}`,
	`{"model":"m","messages":[],"stream_options":{"include_usage":false},"max_completion_tokens":5}`,
	`{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"function":{"arguments":"{}"}}]}],"tools":[{"type":"function"}]}`,
	`{}`, `{"stream_options":null}`, `[`,
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range fuzzBodies {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseRequest(b)
		if err != nil {
			if !errors.Is(err, wire.ErrInvalidRequest) {
				t.Fatalf("error %v is not an invalid-request error", err)
			}
			return
		}
		if !json.Valid(b) || req.Model == "" || req.InputTokens < wire.RequestOverheadTokens || req.MaxTokens < 0 {
			t.Fatalf("accepted %q as %+v", b, req)
		}
	})
}

// FuzzForceStreamUsage: valid JSON in gives valid JSON out with
// stream_options.include_usage true, and a second call changes nothing.
func FuzzForceStreamUsage(f *testing.F) {
	for _, s := range fuzzBodies {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out, changed, err := ForceStreamUsage(b)
		if err != nil {
			return
		}
		if !json.Valid(b) || !json.Valid(out) {
			t.Fatalf("%q -> %q", b, out)
		}
		var m struct {
			StreamOptions struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		if err := json.Unmarshal(out, &m); err != nil || !m.StreamOptions.IncludeUsage {
			t.Fatalf("include_usage not true in %q (%v)", out, err)
		}
		if !changed && string(out) != string(b) {
			t.Fatalf("unchanged but different output")
		}
		if again, changed2, err := ForceStreamUsage(out); err != nil || changed2 || string(again) != string(out) {
			t.Fatalf("not idempotent: %q -> %q (%v, %v)", out, again, changed2, err)
		}
	})
}

func FuzzSetModel(f *testing.F) {
	for _, s := range fuzzBodies {
		f.Add([]byte(s), "gpt-\"5\"")
	}
	f.Fuzz(func(t *testing.T, b []byte, model string) {
		out, err := SetModel(b, model)
		if err != nil {
			return
		}
		var m struct{ Model *string }
		if !json.Valid(out) || json.Unmarshal(out, &m) != nil || m.Model == nil || (utf8.ValidString(model) && *m.Model != model) {
			t.Fatalf("%q -> %q", b, out)
		}
	})
}

func realisticBody(size int) []byte {
	type obj = map[string]any
	para := "Explain why this function is slow and propose a fix:\n\n```python\ndef total(xs):\n    s = 0\n    for x in xs:\n        s = s + sum(xs[:x])\n    return s\n```\n"
	req := obj{"model": "gpt-5-mini", "stream": true, "max_completion_tokens": 4096,
		"tools": []obj{{"type": "function", "function": obj{"name": "run_python", "description": "Run Python code.", "parameters": obj{"type": "object", "properties": obj{"code": obj{"type": "string"}}}}}}}
	msgs := []obj{{"role": "system", "content": "You are a senior engineer."}}
	for i := 0; ; i++ {
		b, _ := json.Marshal(req)
		if len(b) >= size {
			return b
		}
		id := fmt.Sprintf("call_%d", i)
		msgs = append(msgs,
			obj{"role": "user", "content": []obj{{"type": "text", "text": para}}},
			obj{"role": "assistant", "content": nil, "tool_calls": []obj{{"id": id, "type": "function", "function": obj{"name": "run_python", "arguments": `{"code":"print(total([1,2,3]))"}`}}}},
			obj{"role": "tool", "tool_call_id": id, "content": "6\n"},
			obj{"role": "assistant", "content": "The inner sum makes it quadratic; keep a running prefix sum instead."},
		)
		req["messages"] = msgs
	}
}

func BenchmarkParseRequest(b *testing.B) {
	for _, size := range []int{2 << 10, 100 << 10, 200 << 10} {
		body := realisticBody(size)
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := ParseRequest(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkForceStreamUsage(b *testing.B) {
	body := realisticBody(100 << 10)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, _, err := ForceStreamUsage(body); err != nil {
			b.Fatal(err)
		}
	}
}
