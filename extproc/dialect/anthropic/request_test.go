package anthropic

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
		want wire.Request // InputTokens is checked separately
	}{
		{"minimal", `{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Hello"}]}`,
			wire.Request{Model: "claude-sonnet-4-5", MaxTokens: 256, Messages: 1}},
		{"stream, system blocks, tools", `{"stream":true,"system":[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}],
			"tools":[{"name":"get_weather","description":"Get weather","input_schema":{"type":"object"}}],
			"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":"ok"}],"model":"m","max_tokens":0}`,
			wire.Request{Model: "m", Stream: true, HasTools: true, Messages: 2}},
		{"escaped model and nulls", `{"model":"claude\u002dx","max_tokens":null,"stream":null,"system":null,"tools":null,"messages":[]}`,
			wire.Request{Model: "claude-x"}},
		{"empty tools", `{"model":"m","messages":[],"tools":[]}`, wire.Request{Model: "m"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRequest([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if got.InputTokens < wire.RequestOverheadTokens {
				t.Errorf("InputTokens = %d, below the fixed overhead", got.InputTokens)
			}
			got.InputTokens = 0
			got.PrefixFingerprint, got.HasPrefix = 0, false // TestParseRequestPrefixFingerprint
			got.Index = wire.Index{}                        // FuzzEditMatchesMultiPass
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseRequestErrors(t *testing.T) {
	tests := []struct{ name, body, msg string }{
		{"not json", `{"model":`, "request body is not valid JSON"},
		{"garbage", `hello`, "request body is not valid JSON"},
		{"array", `[]`, "request body must be a JSON object"},
		{"trailing data", `{"model":"m","messages":[]} x`, "request body is not valid JSON"},
		{"missing model", `{"messages":[]}`, "model: field required"},
		{"missing messages", `{"model":"m"}`, "messages: field required"},
		{"model number", `{"model":4,"messages":[]}`, "model: must be a string"},
		{"model empty", `{"model":"","messages":[]}`, "model: must not be empty"},
		{"messages object", `{"model":"m","messages":{}}`, "messages: must be an array"},
		{"message not object", `{"model":"m","messages":["hi"]}`, "messages.0: must be an object"},
		{"content number", `{"model":"m","messages":[{"role":"user","content":1}]}`, "messages.0.content: must be a string or an array"},
		{"block not object", `{"model":"m","messages":[{"role":"user","content":["x"]}]}`, "messages.0.content.0: content block must be an object"},
		{"max_tokens float", `{"model":"m","messages":[],"max_tokens":1.5}`, "max_tokens: must be a non-negative integer"},
		{"max_tokens negative", `{"model":"m","messages":[],"max_tokens":-1}`, "max_tokens: must be a non-negative integer"},
		{"max_tokens string", `{"model":"m","messages":[],"max_tokens":"9"}`, "max_tokens: must be an integer"},
		{"stream string", `{"model":"m","messages":[],"stream":"yes"}`, "stream: must be a boolean"},
		{"system number", `{"model":"m","messages":[],"system":3}`, "system: must be a string"},
		{"tools object", `{"model":"m","messages":[],"tools":{}}`, "tools: must be an array"},
		{"duplicate model", `{"model":"cheap","messages":[],"model":"dear"}`, "model: duplicate key"},
		{"duplicate model, escaped", `{"model":"cheap","messages":[],"mod\u0065l":"dear"}`, "model: duplicate key"},
		{"syntax error after a type error", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}}]}`, "request body is not valid JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.body))
			if !errors.Is(err, wire.ErrInvalidRequest) {
				t.Fatalf("err = %v, want an invalid-request error", err)
			}
			var re *wire.RequestError
			if !errors.As(err, &re) || !strings.HasPrefix(re.Msg, tc.msg) {
				t.Errorf("message = %q, want prefix %q", err, tc.msg)
			}
		})
	}
}

func estimate(t *testing.T, body string) int64 {
	t.Helper()
	r, err := ParseRequest([]byte(body))
	if err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return r.InputTokens
}

func TestEstimateRules(t *testing.T) {
	msg := func(content string) string {
		return `{"model":"m","messages":[{"role":"user","content":` + content + `}]}`
	}
	b64 := func(n int) string { return strings.Repeat("QUJD", n/4) }
	text := strings.Repeat("All work and no play makes Jack a dull boy.\n", 100)
	textJSON, _ := json.Marshal(text)
	base := estimate(t, msg(`""`))

	// A string and a text block holding the same text estimate the same.
	asString := estimate(t, msg(string(textJSON)))
	asBlock := estimate(t, msg(`[{"type":"text","text":`+string(textJSON)+`}]`))
	if asString != asBlock {
		t.Errorf("string content %d != text block %d", asString, asBlock)
	}
	if got, want := asString-base, wire.EstimateTokens([]byte(text)); got != want {
		t.Errorf("text adds %d tokens, want its estimate %d", got, want)
	}

	// Images cost a fixed estimate whatever the size of their data.
	for _, n := range []int{100, 100_000} {
		img := msg(`[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"` + b64(n) + `"}}]`)
		if got := estimate(t, img) - base; got != wire.ImageTokens {
			t.Errorf("image of %d base64 bytes adds %d tokens, want %d", n, got, wire.ImageTokens)
		}
	}
	// Source before type: still an image.
	late := msg(`[{"source":{"type":"url","url":"https://x/y.png"},"type":"image"}]`)
	if got := estimate(t, late) - base; got != wire.ImageTokens {
		t.Errorf("image with type last adds %d, want %d", got, wire.ImageTokens)
	}

	// A base64 PDF scales with its size; a text document costs its text.
	pdf := func(n int) int64 {
		return estimate(t, msg(`[{"type":"document","source":{"data":"`+b64(n)+`","type":"base64","media_type":"application/pdf"}}]`)) - base
	}
	if small, big := pdf(1000), pdf(4_000_000); small != wire.DocumentTokens || big != wire.Base64DocumentTokens(4_000_000) {
		t.Errorf("pdf estimates %d, %d", small, big)
	}
	doc := estimate(t, msg(`[{"type":"document","source":{"type":"text","media_type":"text/plain","data":`+string(textJSON)+`}}]`)) - base
	if doc != wire.EstimateTokens([]byte(text)) {
		t.Errorf("text document adds %d, want %d", doc, wire.EstimateTokens([]byte(text)))
	}

	// Tool results nest blocks: an image inside one is still an image.
	nested := msg(`[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{"type":"base64","data":"` + b64(50_000) + `"}}]}]`)
	if got := estimate(t, nested) - base; got != wire.ImageTokens+wire.ToolCallOverheadTokens {
		t.Errorf("image in tool_result adds %d, want %d", got, wire.ImageTokens+wire.ToolCallOverheadTokens)
	}

	// Tools add their definitions plus the fixed tool prompt.
	withTool := `{"model":"m","messages":[{"role":"user","content":""}],"tools":[{"name":"f","description":"d","input_schema":{"type":"object"}}]}`
	if got := estimate(t, withTool) - base; got <= wire.ToolPromptTokens+wire.ToolOverheadTokens {
		t.Errorf("one tool adds %d tokens, want more than the fixed %d", got, wire.ToolPromptTokens+wire.ToolOverheadTokens)
	}
}

// The estimate must not be wildly low against what the API billed for the
// recorded requests (and should not be absurdly high either).
func TestRecordedRequests(t *testing.T) {
	for _, r := range recordings(t) {
		t.Run(r.name, func(t *testing.T) {
			body := []byte(r.Request.Body)
			req, err := ParseRequest(body)
			if err != nil {
				t.Fatal(err)
			}
			m := decodeObj(t, body)
			stream, _ := m["stream"].(bool)
			mt, _ := num(m, "max_tokens")
			tools, _ := m["tools"].([]any)
			if req.Model != m["model"] || req.Messages != len(m["messages"].([]any)) || req.Stream != stream || req.MaxTokens != mt || req.HasTools != (len(tools) > 0) {
				t.Errorf("parsed %+v from %s", req, body)
			}
			var billed int64
			if strings.HasPrefix(r.Response.Body, "{") {
				u := expectJSON(t, []byte(r.Response.Body)).usage()
				billed = u.TotalInputTokens()
			} else {
				billed = expectSSE(t, []byte(r.Response.Body)).usage().TotalInputTokens()
			}
			t.Logf("estimate %d, billed %d (%.2fx)", req.InputTokens, billed, float64(req.InputTokens)/float64(billed))
			if req.InputTokens < billed || req.InputTokens > 3*billed {
				t.Errorf("estimate %d for a request billed %d input tokens", req.InputTokens, billed)
			}
		})
	}
}

func TestSetModel(t *testing.T) {
	tests := []struct{ name, body, old, model string }{
		{"compact", `{"model":"a","messages":[]}`, `"a"`, "claude-haiku-4-5"},
		{"spacing, escapes and numbers kept", "{ \"max_tokens\" : 1.0e3,\n \"model\" :\t\"old\" , \"x\":\"\\u00e9\\n\"}", `"old"`, "new"},
		{"model needing escapes", `{"messages":[],"model":"x"}`, `"x"`, "we\"ird\\name\n"},
		{"escaped key", `{"mod\u0065l":"x"}`, `"x"`, "y"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := SetModel([]byte(tc.body), tc.model)
			if err != nil {
				t.Fatal(err)
			}
			// Everything outside the model's value is byte-identical.
			enc, _ := json.Marshal(tc.model)
			i := strings.Index(tc.body, tc.old)
			want := tc.body[:i] + string(enc) + tc.body[i+len(tc.old):]
			if string(out) != want {
				t.Fatalf("got  %s\nwant %s", out, want)
			}
			if req, err := ParseRequest(append(out[:len(out)-1:len(out)-1], `,"messages":[]}`...)); err == nil && req.Model != tc.model {
				t.Errorf("model reads back as %q", req.Model)
			}
		})
	}
	for _, bad := range []string{`{"messages":[]}`, `{"model":"a","model":"b"}`, `[1]`, `{"model":"a"`} {
		if _, err := SetModel([]byte(bad), "x"); !errors.Is(err, wire.ErrInvalidRequest) {
			t.Errorf("SetModel(%s) err = %v, want invalid request", bad, err)
		}
	}
}

func TestErrorBody(t *testing.T) {
	b := ErrorBody(RateLimitError, `budget "day" exhausted`, "req_1")
	want := `{"type":"error","error":{"type":"rate_limit_error","message":"budget \"day\" exhausted"},"request_id":"req_1"}`
	if string(b) != want {
		t.Errorf("got %s\nwant %s", b, want)
	}
	if b := ErrorBody(OverloadedError, "Overloaded", ""); string(b) != `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}` {
		t.Errorf("without request id: %s", b)
	}
}

var fuzzBodies = []string{
	`{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Hello"}]}`,
	`{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","data":"QUJD"}},{"type":"tool_result","content":[{"type":"text","text":"x"}]}]}],"tools":[{"name":"f","input_schema":{}}],"system":[{"type":"text","text":"s"}]}`,
	`{"model":"m","messages":[],"mod\u0065l":"n"}`,
	`{"model":"m","messages":[{"content":[{"type":"document","source":{"type":"content","content":[{"type":"text","text":"t"}]}}]}]}`,
	`[]`, `{"model":1}`, `{`,
}

// FuzzParseRequest: no panic; a body accepted is valid JSON with a
// non-empty model, and the estimate is never below the fixed overhead.
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
		if !json.Valid(b) || req.Model == "" || req.InputTokens < wire.RequestOverheadTokens || req.Messages < 0 || req.MaxTokens < 0 {
			t.Fatalf("accepted %q as %+v", b, req)
		}
	})
}

// FuzzSetModel: whenever the input is valid JSON and the rewrite succeeds,
// the output is valid JSON, the model reads back, and ParseRequest agrees.
func FuzzSetModel(f *testing.F) {
	for _, s := range fuzzBodies {
		f.Add([]byte(s), "claude-\"x\"\n\u00e9")
	}
	f.Fuzz(func(t *testing.T, b []byte, model string) {
		out, err := SetModel(b, model)
		if err != nil {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("rewrote invalid JSON %q", b)
		}
		if !json.Valid(out) {
			t.Fatalf("output %q is not valid JSON", out)
		}
		var m struct{ Model *string }
		if json.Unmarshal(out, &m) != nil || m.Model == nil || (utf8.ValidString(model) && *m.Model != model) {
			t.Fatalf("model does not read back from %q", out)
		}
		if _, err := ParseRequest(b); err == nil && model != "" && wire.ValidModel(model) == nil {
			if req, err := ParseRequest(out); err != nil || (utf8.ValidString(model) && req.Model != model) {
				t.Fatalf("ParseRequest after SetModel: %+v, %v", req, err)
			}
		}
	})
}

// realisticBody builds a Messages request of about size bytes: a system
// prompt, three tool definitions, then turns of prose with code and
// newlines, tool calls and tool results, as an agent conversation looks.
func realisticBody(size int) []byte {
	type block map[string]any
	para := "Here is the plan. We refactor the parser so it reads the body once:\n\n```go\nfunc parse(b []byte) (Request, error) {\n\tvar r Reader\n\tr.Reset(b)\n\treturn walk(&r)\n}\n```\nThen we measure it with \"go test -bench\" and compare. "
	req := map[string]any{
		"model":      "claude-sonnet-4-5",
		"max_tokens": 8192,
		"stream":     true,
		"system":     []block{{"type": "text", "text": strings.Repeat("You are a careful coding agent. ", 20), "cache_control": block{"type": "ephemeral"}}},
		"tools": []block{
			{"name": "read_file", "description": "Read a file from the workspace.", "input_schema": block{"type": "object", "properties": block{"path": block{"type": "string"}}, "required": []string{"path"}}},
			{"name": "run", "description": "Run a shell command and return its output.", "input_schema": block{"type": "object", "properties": block{"cmd": block{"type": "string"}, "timeout": block{"type": "integer"}}}},
			{"name": "edit", "description": "Replace text in a file.", "input_schema": block{"type": "object", "properties": block{"path": block{"type": "string"}, "old": block{"type": "string"}, "new": block{"type": "string"}}}},
		},
	}
	var msgs []block
	for i := 0; ; i++ {
		b, _ := json.Marshal(req)
		if len(b) >= size {
			return b
		}
		id := fmt.Sprintf("toolu_%04d", i)
		msgs = append(msgs,
			block{"role": "user", "content": para},
			block{"role": "assistant", "content": []block{{"type": "text", "text": "Reading the file."}, {"type": "tool_use", "id": id, "name": "read_file", "input": block{"path": "extproc/llm/json.go"}}}},
			block{"role": "user", "content": []block{{"type": "tool_result", "tool_use_id": id, "content": strings.Repeat("\tif r.pos >= len(r.buf) {\n\t\treturn KindInvalid\n\t}\n", 3)}}},
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

func BenchmarkSetModel(b *testing.B) {
	body := realisticBody(100 << 10)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := SetModel(body, "claude-haiku-4-5"); err != nil {
			b.Fatal(err)
		}
	}
}

// The fingerprint taken during the parse moves with system and tools and
// with nothing else: not the model, the messages or max_tokens.
func TestParseRequestPrefixFingerprint(t *testing.T) {
	fp := func(body string) (uint64, bool) {
		t.Helper()
		r, err := ParseRequest([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return r.PrefixFingerprint, r.HasPrefix
	}
	base, ok := fp(`{"model":"a","max_tokens":5,"system":"You are helpful.","tools":[{"name":"t","input_schema":{}}],"messages":[{"role":"user","content":"hi"}]}`)
	if !ok {
		t.Fatal("system and tools make a prefix")
	}
	same, _ := fp(`{"model":"b","max_tokens":9,"messages":[{"role":"user","content":"other"}],"system":"You are helpful.","tools":[{"name":"t","input_schema":{}}]}`)
	if same != base {
		t.Error("model, messages, max_tokens and key order must not move the fingerprint")
	}
	for _, changed := range []string{
		`{"model":"a","system":"You are helpful. 09:00:01","tools":[{"name":"t","input_schema":{}}],"messages":[]}`,
		`{"model":"a","system":"You are helpful.","tools":[{"name":"u","input_schema":{}}],"messages":[]}`,
		`{"model":"a","system":"You are helpful.","messages":[]}`,
	} {
		if got, _ := fp(changed); got == base {
			t.Errorf("%s: the fingerprint must change", changed)
		}
	}
	if _, ok := fp(`{"model":"a","messages":[]}`); ok {
		t.Error("no system and no tools: no prefix")
	}
}
