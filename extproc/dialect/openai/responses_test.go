package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire/wiretest"
)

// responsesStream follows the event sequence of
// https://platform.openai.com/docs/api-reference/responses-streaming: the
// lifecycle events with the whole response (usage null until the end), the
// item and part events, the text deltas, and response.completed.
func responsesStream(terminal, usage string) string {
	resp := func(status, usage string) string {
		return `{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec","object":"response","created_at":1741290958,"status":"` + status +
			`","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":` + usage + `}`
	}
	ev := func(name string, seq int, rest string) string {
		return "event: " + name + "\ndata: {\"type\":\"" + name + "\",\"sequence_number\":" + fmt.Sprint(seq) + "," + rest + "}\n\n"
	}
	s := ev("response.created", 0, `"response":`+resp("in_progress", "null")) +
		ev("response.in_progress", 1, `"response":`+resp("in_progress", "null")) +
		ev("response.output_item.added", 2, `"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}`) +
		ev("response.content_part.added", 3, `"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}`) +
		ev("response.output_text.delta", 4, `"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi th\u00e9re"`) +
		ev("response.output_text.delta", 5, `"item_id":"msg_1","output_index":0,"content_index":0,"delta":"!"`) +
		ev("response.output_text.done", 6, `"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hi thére!"`)
	if terminal != "" {
		st := map[string]string{"response.completed": "completed", "response.incomplete": "incomplete", "response.failed": "failed"}[terminal]
		s += ev(terminal, 7, `"response":`+resp(st, usage))
	}
	return s
}

const recordedUsage = `{"input_tokens":1037,"input_tokens_details":{"cached_tokens":512,"cache_write_tokens":256},"output_tokens":311,"output_tokens_details":{"reasoning_tokens":256},"total_tokens":1348}`

func TestParseResponsesRequest(t *testing.T) {
	tests := []struct {
		name              string
		body              string
		model             string
		max               int64
		stream, bg, tools bool
		items             int
		minIn, maxIn      int64
	}{
		{"string input", `{"model":"gpt-5","input":"Tell me a three sentence bedtime story about a unicorn."}`, "gpt-5", 0, false, false, false, 1, 20, 40},
		{"items, instructions, tools, bound", `{"model":"gpt-5.6-terra","instructions":"Be brief.","max_output_tokens":500,"stream":true,
			"tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}],
			"input":[{"role":"user","content":[{"type":"input_text","text":"what is in this image?"},{"type":"input_image","image_url":"data:image/png;base64,AAAA"}]},
			{"type":"function_call","call_id":"c1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
			{"type":"function_call_output","call_id":"c1","output":"sunny"},
			{"type":"reasoning","id":"rs_1","summary":[],"encrypted_content":"gAAAAA"}]}`,
			"gpt-5.6-terra", 500, true, false, true, 4, wire.ImageTokens + wire.ToolPromptTokens, wire.ImageTokens + wire.ToolPromptTokens + 200},
		{"background", `{"model":"o3-pro","input":"hi","background":true,"max_output_tokens":null}`, "o3-pro", 0, false, true, false, 1, 8, 20},
		{"compact", `{"model":"gpt-5","previous_response_id":"resp_1"}`, "gpt-5", 0, false, false, false, 0, 8, 8},
		{"file by data", `{"model":"gpt-5","input":[{"role":"user","content":[{"type":"input_file","filename":"a.pdf","file_data":"` + strings.Repeat("QUJD", 20000) + `"}]}]}`,
			"gpt-5", 0, false, false, false, 1, wire.Base64DocumentTokens(80000), wire.Base64DocumentTokens(80000) + 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseResponsesRequest([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if req.Model != tc.model || req.MaxTokens != tc.max || req.Stream != tc.stream || req.Background != tc.bg ||
				req.HasTools != tc.tools || req.Messages != tc.items || req.NoOutput {
				t.Errorf("got %+v", req)
			}
			if req.InputTokens < tc.minIn || req.InputTokens > tc.maxIn {
				t.Errorf("input estimate %d, want in [%d, %d]", req.InputTokens, tc.minIn, tc.maxIn)
			}
			if got := tc.body[req.Index.Model.Start:req.Index.Model.End]; got != `"`+tc.model+`"` {
				t.Errorf("model span %q", got)
			}
		})
	}
}

func TestParseResponsesRequestErrors(t *testing.T) {
	for body, want := range map[string]string{
		`{"input":"hi"}`:                                      "model: field required",
		`{"model":"m","input":3}`:                             "input: must be a string or an array of input items",
		`{"model":"m","input":[3]}`:                           "input.0: must be an object",
		`{"model":"m","input":[{"role":"user","content":5}]}`: "input.0.content: must be a string or an array of content parts",
		`{"model":"m","instructions":["x"]}`:                  "instructions: must be a string",
		`{"model":"m","max_output_tokens":-1}`:                "max_output_tokens: must be a non-negative integer",
		`{"model":"m","background":"yes"}`:                    "background: must be a boolean",
		`{"model":"m","background":true,"background":false}`:  "background: duplicate key",
		`{"model":"m","Max_Output_Tokens":1}`:                 `max_output_tokens: the key "Max_Output_Tokens" differs from it only in case; spell it max_output_tokens`,
		`{"model":"m","input":"hi"`:                           "request body is not valid JSON: unexpected end of input at byte 25",
	} {
		_, err := ParseResponsesRequest([]byte(body))
		if !errors.Is(err, wire.ErrInvalidRequest) || err.Error() != want {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
}

func TestResponsesPrefixFingerprint(t *testing.T) {
	fp := func(body string) (uint64, bool) {
		req, err := ParseResponsesRequest([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return req.PrefixFingerprint, req.HasPrefix
	}
	a, ok := fp(`{"model":"m","instructions":"Be brief.","input":"one"}`)
	b, _ := fp(`{"input":"two","model":"m","instructions":"Be brief."}`)
	c, _ := fp(`{"model":"m","instructions":"Be briefer.","input":"one"}`)
	if !ok || a != b || a == c {
		t.Errorf("fingerprints %x %x %x (%v): the instructions, wherever they sit, are the prefix", a, b, c, ok)
	}
	if _, ok := fp(`{"model":"m","input":"one"}`); ok {
		t.Error("a bare input has no stable prefix")
	}
}

func TestResponsesEdit(t *testing.T) {
	body := []byte(`{"model":"gpt-5","input":"hi","stream":true}`)
	req, err := ParseResponsesRequest(body)
	if err != nil {
		t.Fatal(err)
	}
	var edits wire.Edits
	rep, err := Responses{}.Edit(body, &req, wire.EditRequest{Model: "gpt-5-mini", Cache: &wire.CacheRequest{}}, &edits)
	if err != nil || rep.StreamUsageForced || rep.Path != "" {
		t.Fatal(err, rep)
	}
	out, err := wire.Apply(body, &edits)
	if err != nil || string(out) != `{"model":"gpt-5-mini","input":"hi","stream":true}` {
		t.Errorf("%s %v", out, err)
	}
}

func TestResponsesUsageFromJSON(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       accounting.Usage
		model      string
		ok         bool
	}{
		{"completed", `{"id":"resp_1","object":"response","status":"completed","model":"gpt-5.6-terra","output":[],"usage":` + recordedUsage + `}`,
			accounting.Usage{InputTokens: 269, CacheReadTokens: 512, CacheWrite5mTokens: 256, OutputTokens: 311}, "gpt-5.6-terra", true},
		{"compaction", `{"id":"cmp_1","object":"response.compaction","created_at":1,"output":[],"usage":{"input_tokens":90,"input_tokens_details":{"cached_tokens":0},"output_tokens":12,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":102}}`,
			accounting.Usage{InputTokens: 90, OutputTokens: 12}, "", true},
		{"background still queued", `{"id":"resp_1","object":"response","status":"queued","model":"o3-pro","usage":null}`, accounting.Usage{}, "", false},
		{"cache counts above input are clamped", `{"usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":8,"cache_write_tokens":8},"output_tokens":-3}}`,
			accounting.Usage{CacheReadTokens: 8, CacheWrite5mTokens: 2}, "", true},
		{"flex tier", `{"id":"resp_1","object":"response","status":"completed","model":"o3","service_tier":"flex","output":[],"usage":` + recordedUsage + `}`,
			accounting.Usage{InputTokens: 269, CacheReadTokens: 512, CacheWrite5mTokens: 256, OutputTokens: 311, ServiceTier: "flex"}, "o3", true},
		{"priority tier after the usage", `{"usage":{"input_tokens":10},"service_tier":"priority"}`,
			accounting.Usage{InputTokens: 10, ServiceTier: "priority"}, "", true},
		{"a tier that is not a string is none", `{"usage":{"input_tokens":10},"service_tier":{"tier":"flex"}}`,
			accounting.Usage{InputTokens: 10}, "", true},
		{"error body", `{"error":{"message":"x","type":"invalid_request_error","param":null,"code":null}}`, accounting.Usage{}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, m, ok := ResponsesUsageFromJSON([]byte(tc.body))
			if u != tc.want || m != tc.model || ok != tc.ok {
				t.Errorf("got %+v %q %v, want %+v %q %v", u, m, ok, tc.want, tc.model, tc.ok)
			}
		})
	}
}

type respResult struct {
	usage     accounting.Usage
	final     bool
	done      bool
	model     string
	text      int64
	kind, msg string
	hasErr    bool
	dropped   int
}

func feedResponses(chunks ...[]byte) respResult {
	p := NewResponsesStreamParser()
	for _, c := range chunks {
		p.Write(c)
	}
	var r respResult
	r.usage, r.final = p.Usage()
	r.done, r.model, r.text, r.dropped = p.Done(), p.Model(), p.OutputTextBytes(), p.Dropped()
	r.kind, r.msg, r.hasErr = p.Error()
	return r
}

func TestResponsesStreamParser(t *testing.T) {
	full := accounting.Usage{InputTokens: 269, CacheReadTokens: 512, CacheWrite5mTokens: 256, OutputTokens: 311}
	const model = "gpt-4.1-2025-04-14"
	// The lifecycle events echo the tier asked for ("auto"); the terminal
	// one names the tier that served the request, which prices it.
	tiered := func(terminal, tier string) string {
		s := strings.Replace(responsesStream(terminal, recordedUsage), `"output":[],"usage":`, `"service_tier":"auto","output":[],"usage":`, 2)
		return strings.Replace(s, `"output":[],"usage":{`, `"service_tier":"`+tier+`","output":[],"usage":{`, 1)
	}
	flex := full
	flex.ServiceTier = "flex"
	priority := full
	priority.ServiceTier = "priority"
	for _, tc := range []struct {
		name   string
		stream string
		want   respResult
	}{
		{"completed", responsesStream("response.completed", recordedUsage), respResult{usage: full, final: true, done: true, model: model, text: 10}},
		{"incomplete: the output bound was hit", responsesStream("response.incomplete", recordedUsage), respResult{usage: full, final: true, done: true, model: model, text: 10}},
		{"failed without usage", responsesStream("response.failed", "null"), respResult{done: true, model: model, text: 10, kind: "response.failed", hasErr: true}},
		{"cut before the end", responsesStream("", ""), respResult{model: model, text: 10}},
		{"flex tier on response.completed", tiered("response.completed", "flex"), respResult{usage: flex, final: true, done: true, model: model, text: 10}},
		{"priority tier on response.incomplete", tiered("response.incomplete", "priority"), respResult{usage: priority, final: true, done: true, model: model, text: 10}},
		{"the lifecycle events' tier is the request's, not the served one", strings.Replace(responsesStream("", ""), `"output":[],"usage":`, `"service_tier":"flex","output":[],"usage":`, 2),
			respResult{model: model, text: 10}},
		{"error event", "event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"overloaded\",\"param\":null,\"sequence_number\":3}\n\n",
			respResult{kind: "server_error", msg: "overloaded", hasErr: true}},
		{"garbage", ": ping\n\ndata: {nope}\n\ndata: [DONE]\n\n", respResult{dropped: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, s := range []string{tc.stream, strings.ReplaceAll(tc.stream, "\n", "\r\n")} {
				if got := feedResponses([]byte(s)); got != tc.want {
					t.Fatalf("got  %+v\nwant %+v", got, tc.want)
				}
				for seed := range uint64(20) {
					if got := feedResponses(split([]byte(s), seed)...); got != tc.want {
						t.Fatalf("seed %d: got %+v, want %+v", seed, got, tc.want)
					}
				}
			}
		})
	}
}

func TestResponsesStreamParserSteadyStateAllocs(t *testing.T) {
	p := NewResponsesStreamParser()
	ev := []byte("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654\",\"output_index\":0,\"content_index\":0,\"delta\":\" a \\\"quoted\\\"\\nline\"}\n\n")
	p.Write(ev)
	if allocs := testing.AllocsPerRun(200, func() { p.Write(ev[:40]); p.Write(ev[40:]) }); allocs != 0 {
		t.Errorf("allocations per event = %v, want 0", allocs)
	}
}

var responsesBodies = []string{
	`{"model":"gpt-5","input":"hi"}`,
	`{"model":"gpt-5","input":[{"role":"user","content":[{"type":"input_text","text":"hi"},{"type":"input_image","image_url":"x"}]}],"max_output_tokens":9,"stream":true,"background":false}`,
	`{"model":"m","instructions":"be brief","tools":[{"type":"web_search"}],"input":[{"type":"function_call_output","call_id":"c","output":[{"type":"input_text","text":"r"}]}]}`,
	`{"model":"m","input":null,"instructions":null}`, `{}`, `[`,
	`{"model":"m","Background":true}`,
}

func FuzzParseResponsesRequest(f *testing.F) {
	for _, s := range responsesBodies {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseResponsesRequest(b)
		if err != nil {
			if !errors.Is(err, wire.ErrInvalidRequest) {
				t.Fatalf("error %v is not an invalid-request error", err)
			}
			return
		}
		if !json.Valid(b) || req.Model == "" || req.InputTokens < wire.RequestOverheadTokens || req.MaxTokens < 0 {
			t.Fatalf("accepted %q as %+v", b, req)
		}
		got := wiretest.OneReading(t, b, map[string]wiretest.Kind{
			"model": wiretest.String, "max_output_tokens": wiretest.Number, "stream": wiretest.Bool, "background": wiretest.Bool,
			"tools": wiretest.Count,
		})
		if got["model"] != req.Model {
			t.Fatalf("model %q, encoding/json %#v", req.Model, got["model"])
		}
		if mo, _ := got["max_output_tokens"].(float64); int64(mo) != req.MaxTokens {
			t.Fatalf("output bound %d, encoding/json %#v", req.MaxTokens, got["max_output_tokens"])
		}
		if st, _ := got["stream"].(bool); st != req.Stream {
			t.Fatalf("stream %v, encoding/json %#v", req.Stream, got["stream"])
		}
		if bg, _ := got["background"].(bool); bg != req.Background {
			t.Fatalf("background %v, encoding/json %#v", req.Background, got["background"])
		}
		if n, _ := got["tools"].(int); (n > 0) != req.HasTools {
			t.Fatalf("tools %v, encoding/json %#v", req.HasTools, got["tools"])
		}
		// The model rewrite keeps the body valid and changes only the model.
		var edits wire.Edits
		if _, err := (Responses{}).Edit(b, &req, wire.EditRequest{Model: "gpt-\"x\""}, &edits); err != nil {
			t.Fatal(err)
		}
		out, err := wire.Apply(b, &edits)
		var m struct{ Model string }
		if err != nil || json.Unmarshal(out, &m) != nil || m.Model != `gpt-"x"` {
			t.Fatalf("%q -> %q (%v)", b, out, err)
		}
	})
}

func FuzzResponsesUsageFromJSON(f *testing.F) {
	f.Add([]byte(`{"model":"m","usage":` + recordedUsage + `}`))
	f.Add([]byte(`{"usage":{"input_tokens":"12","input_tokens_details":{"cached_tokens":1e3},"output_tokens":true}}`))
	f.Add([]byte(`{"usage":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, _, ok := ResponsesUsageFromJSON(b)
		if ok && !json.Valid(b) {
			t.Fatalf("usage from invalid JSON %q", b)
		}
		if u.InputTokens < 0 || u.OutputTokens < 0 || u.CacheReadTokens < 0 || u.CacheWrite5mTokens < 0 || u.CacheWrite1hTokens != 0 {
			t.Fatalf("impossible usage %+v from %q", u, b)
		}
	})
}

func FuzzResponsesStreamParser(f *testing.F) {
	f.Add([]byte(responsesStream("response.completed", recordedUsage)), uint64(1))
	f.Add([]byte(responsesStream("response.failed", `{"input_tokens":3}`)), uint64(5))
	f.Add([]byte("event: error\r\ndata: {\"error\":{\"type\":\"x\"}}\r\r"), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, seed uint64) {
		whole := feedResponses(b)
		if got := feedResponses(split(b, seed)...); got != whole {
			t.Fatalf("split %d: %+v, whole %+v", seed, got, whole)
		}
		if u := whole.usage; u.InputTokens < 0 || u.OutputTokens < 0 || u.CacheReadTokens < 0 || u.CacheWrite5mTokens < 0 {
			t.Fatalf("negative usage %+v", u)
		}
		if whole.final && !whole.done {
			t.Fatal("final usage without a terminal event")
		}
	})
}

func realisticResponsesBody(size int) []byte {
	type obj = map[string]any
	para := "Explain why this function is slow and propose a fix:\n\n```python\ndef total(xs):\n    s = 0\n    for x in xs:\n        s = s + sum(xs[:x])\n    return s\n```\n"
	req := obj{"model": "gpt-5.6-terra", "stream": true, "max_output_tokens": 4096, "instructions": "You are a senior engineer.",
		"tools": []obj{{"type": "function", "name": "run_python", "description": "Run Python code.", "parameters": obj{"type": "object", "properties": obj{"code": obj{"type": "string"}}}}}}
	var items []obj
	for i := 0; ; i++ {
		b, _ := json.Marshal(req)
		if len(b) >= size {
			return b
		}
		id := fmt.Sprintf("call_%d", i)
		items = append(items,
			obj{"role": "user", "content": []obj{{"type": "input_text", "text": para}}},
			obj{"type": "function_call", "call_id": id, "name": "run_python", "arguments": `{"code":"print(total([1,2,3]))"}`},
			obj{"type": "function_call_output", "call_id": id, "output": "6\n"},
			obj{"role": "assistant", "content": []obj{{"type": "output_text", "text": "The inner sum makes it quadratic; keep a running prefix sum instead.", "annotations": []obj{}}}},
		)
		req["input"] = items
	}
}

func BenchmarkParseResponsesRequest(b *testing.B) {
	for _, size := range []int{2 << 10, 100 << 10} {
		body := realisticResponsesBody(size)
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := ParseResponsesRequest(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkResponsesStreamParserPerEvent(b *testing.B) {
	ev := []byte("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654\",\"output_index\":0,\"content_index\":0,\"delta\":\" San Francisco\"}\n\n")
	p := NewResponsesStreamParser()
	b.ReportAllocs()
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		p.Write(ev)
	}
}
