package gemini

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire/wiretest"
)

func TestForPath(t *testing.T) {
	for path, want := range map[string]string{
		"/v1beta/models/gemini-2.5-flash:generateContent":               "gemini-2.5-flash/false",
		"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse": "gemini-2.5-flash/true",
		"/v1/models/gemini-2.5-pro:streamGenerateContent":               "gemini-2.5-pro/true",
		"/v1beta/models/gemini%2D2.5-flash:generateContent?key=abc":     "gemini-2.5-flash/false",
		"/v1beta/models/gemini-2.5-flash:countTokens":                   "",
		"/v1beta/models/gemini-2.5-flash":                               "",
		"/v1beta/models/:generateContent":                               "",
		"/v1beta/models/a/b:generateContent":                            "",
		"/v1beta/tunedModels/x:generateContent":                         "",
		"/v1/chat/completions":                                          "",
	} {
		g, ok := ForPath(path)
		got := ""
		if ok {
			got = fmt.Sprintf("%s/%v", g.model, g.stream)
		}
		if got != want {
			t.Errorf("ForPath(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	g, _ := ForPath("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
	body := `{"contents":[{"role":"user","parts":[{"text":"Explain how AI works in a few words"},{"inlineData":{"mimeType":"image/jpeg","data":"/9j/4AAQ"}}]},
		{"role":"model","parts":[{"text":"ok","thought":true,"thoughtSignature":"c2ln"}]},
		{"role":"user","parts":[{"functionResponse":{"name":"f","response":{"r":1}}}]}],
		"system_instruction":{"parts":[{"text":"You are a cat."}]},
		"tools":[{"functionDeclarations":[{"name":"f","parameters":{"type":"object"}}]}],
		"generationConfig":{"temperature":0.1,"maxOutputTokens":800,"thinkingConfig":{"thinkingBudget":0}}}`
	req, err := g.Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if req.Model != "gemini-2.5-flash" || !req.Stream || req.MaxTokens != 800 || !req.HasTools || req.Messages != 3 || !req.HasPrefix {
		t.Errorf("got %+v", req)
	}
	lo := int64(wire.ImageTokens + wire.ToolPromptTokens + wire.ToolCallOverheadTokens)
	if req.InputTokens < lo || req.InputTokens > lo+120 {
		t.Errorf("input estimate %d, want in [%d, %d]", req.InputTokens, lo, lo+120)
	}
	pdf := `{"contents":[{"parts":[{"inline_data":{"mime_type":"application/pdf","data":"` + strings.Repeat("QUJD", 30000) + `"}},{"file_data":{"mime_type":"video/mp4","file_uri":"gs://x"}}]}]}`
	if req, err := ParseRequest([]byte(pdf)); err != nil || req.InputTokens != wire.Base64DocumentTokens(120000)+wire.MediaTokens+wire.MessageOverheadTokens+wire.RequestOverheadTokens {
		t.Errorf("documents and media: %+v %v", req, err)
	}
}

func TestParseErrors(t *testing.T) {
	g, _ := ForPath("/v1beta/models/gemini-2.5-flash:generateContent")
	for body, want := range map[string]string{
		`{}`:                                    "contents: field required",
		`{"contents":{}}`:                       "contents: must be an array",
		`{"contents":[1]}`:                      "contents.0: must be an object",
		`{"contents":[{"parts":"x"}]}`:          "contents.0.parts: must be an array",
		`{"contents":[{"parts":[1]}]}`:          "contents.0.parts.0: must be an object",
		`{"contents":[],"generationConfig":[]}`: "generationConfig: must be an object",
		`{"contents":[],"generationConfig":{"maxOutputTokens":-2}}`:                        "generationConfig.maxOutputTokens: must be a non-negative integer",
		`{"contents":[],"generationConfig":{"maxOutputTokens":2,"max_output_tokens":900}}`: "generationConfig.maxOutputTokens: duplicate key",
		`{"contents":[],"generationConfig":{"MaxOutputTokens":2}}`:                         `generationConfig: the key "MaxOutputTokens" differs from maxOutputTokens only in case`,
		`{"contents":[],"systemInstruction":{},"system_instruction":{}}`:                   "systemInstruction: duplicate key",
		`{"contents":[],"generationConfig":{},"generation_config":{}}`:                     "generationConfig: duplicate key",
		`{"contents":[],"model":"models/gemini-2.5-pro"}`:                                  `model: the body names "models/gemini-2.5-pro" but the path "gemini-2.5-flash"; name it in the path only`,
		`{"contents":[]`: "request body is not valid JSON: unexpected end of input at byte 14",
	} {
		_, err := g.Parse([]byte(body))
		if !errors.Is(err, wire.ErrInvalidRequest) || err.Error() != want {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
	bad, _ := ForPath("/v1beta/models/gemini%zz:generateContent")
	if _, err := bad.Parse([]byte(`{"contents":[]}`)); err == nil {
		t.Error("a malformed escape in the path's model must be refused")
	}
	if _, err := g.Parse([]byte(`{"contents":[],"model":"models/gemini-2.5-flash"}`)); err != nil {
		t.Errorf("the path's own model in the body is no conflict: %v", err)
	}
}

func TestEditRewritesThePath(t *testing.T) {
	g, _ := ForPath("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=k")
	body := []byte(`{"contents":[{"parts":[{"text":"hi"}]}]}`)
	req, err := g.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	var edits wire.Edits
	rep, err := g.Edit(body, &req, wire.EditRequest{Model: "gemini-2.5-flash", Cache: &wire.CacheRequest{}}, &edits)
	if err != nil || edits.Len() != 0 || rep.Path != "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=k" {
		t.Errorf("%+v %v %d", rep, err, edits.Len())
	}
	if rep, _ := g.Edit(body, &req, wire.EditRequest{Model: "gemini-2.5-pro"}, &edits); rep.Path != "" {
		t.Error("the same model needs no rewrite")
	}
	if p := g.PathFor("a b/c"); p != "/v1beta/models/a%20b%2Fc:streamGenerateContent?alt=sse&key=k" {
		t.Errorf("PathFor escapes: %s", p)
	}
}

func TestErrorBody(t *testing.T) {
	b := GenerateContent{}.ErrorBody(wire.ErrorBudget, "budget_day", `over "budget"`, "id")
	var e struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Status  string `json:"status"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Code != 429 || e.Error.Status != "RESOURCE_EXHAUSTED" || e.Error.Message != `over "budget"` {
		t.Errorf("%s %v", b, err)
	}
}

// chunk is one streamGenerateContent response as the API sends it
// (https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse).
func chunk(text, finish, usage string) string {
	c := `{"candidates": [{"content": {"parts": [{"text": "` + text + `"}],"role": "model"}`
	if finish != "" {
		c += `,"finishReason": "` + finish + `"`
	}
	c += `,"index": 0}],"usageMetadata": ` + usage + `,"modelVersion": "gemini-2.5-flash","responseId": "mOBqaPXPD8HZz7IP0pTW8Qk"}`
	return c
}

var (
	usage1 = `{"promptTokenCount": 1200,"totalTokenCount": 1200,"cachedContentTokenCount": 1000}`
	usage2 = `{"promptTokenCount": 1200,"candidatesTokenCount": 7,"totalTokenCount": 1243,"cachedContentTokenCount": 1000,"thoughtsTokenCount": 36,"toolUsePromptTokenCount": 5,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 1200}]}`
	final  = accounting.Usage{InputTokens: 205, CacheReadTokens: 1000, OutputTokens: 43}
)

func TestUsageFromJSON(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       accounting.Usage
		model      string
		ok         bool
	}{
		{"generateContent", chunk("hi", "STOP", usage2), final, "gemini-2.5-flash", true},
		{"stream as a JSON array: the last usage counts", "[" + chunk("The", "", usage1) + "\n,\r\n" + chunk(" cat", "STOP", usage2) + "\n]", final, "gemini-2.5-flash", true},
		{"array of errors", `[{"error": {"code": 429,"message": "Resource exhausted","status": "RESOURCE_EXHAUSTED"}}]`, accounting.Usage{}, "", false},
		{"error", `{"error": {"code": 400,"message": "x","status": "INVALID_ARGUMENT"}}`, accounting.Usage{}, "", false},
		{"truncated array", "[" + chunk("The", "", usage1), accounting.Usage{}, "", false},
		{"no thoughts, no cache", `{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3}}`, accounting.Usage{InputTokens: 8, OutputTokens: 3}, "", true},
		{"Vertex priority traffic", `{"usageMetadata":{"promptTokenCount":8,"trafficType":"ON_DEMAND_PRIORITY"}}`, accounting.Usage{InputTokens: 8, ServiceTier: "priority"}, "", true},
		{"Vertex priority traffic, escaped", `{"usageMetadata":{"promptTokenCount":8,"trafficType":"ON_DEMAND_PRI\u004fRITY"}}`, accounting.Usage{InputTokens: 8, ServiceTier: "priority"}, "", true},
		{"Vertex flex traffic", `{"usageMetadata":{"promptTokenCount":8,"trafficType":"ON_DEMAND_FLEX"}}`, accounting.Usage{InputTokens: 8, ServiceTier: "flex"}, "", true},
		{"Vertex on-demand traffic, verbatim (standard)", `{"usageMetadata":{"promptTokenCount":8,"trafficType":"ON_DEMAND"}}`, accounting.Usage{InputTokens: 8, ServiceTier: "ON_DEMAND"}, "", true},
		{"provisioned throughput, verbatim (standard)", `{"usageMetadata":{"promptTokenCount":8,"trafficType":"PROVISIONED_THROUGHPUT"}}`,
			accounting.Usage{InputTokens: 8, ServiceTier: "PROVISIONED_THROUGHPUT"}, "", true},
		{"a traffic type that is not a string is none", `{"usageMetadata":{"promptTokenCount":8,"trafficType":2}}`, accounting.Usage{InputTokens: 8}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, m, ok := UsageFromJSON([]byte(tc.body))
			if u != tc.want || m != tc.model || ok != tc.ok {
				t.Errorf("got %+v %q %v, want %+v %q %v", u, m, ok, tc.want, tc.model, tc.ok)
			}
		})
	}
}

type result struct {
	usage     accounting.Usage
	final     bool
	model     string
	text      int64
	kind, msg string
	hasErr    bool
	dropped   int
}

func feed(chunks ...[]byte) result {
	p := NewStreamParser()
	for _, c := range chunks {
		p.Write(c)
	}
	var r result
	r.usage, r.final = p.Usage()
	r.model, r.text, r.dropped = p.Model(), p.OutputTextBytes(), p.Dropped()
	r.kind, r.msg, r.hasErr = p.Error()
	return r
}

func split(b []byte, seed uint64) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 3))
	var out [][]byte
	for len(b) > 0 {
		n := 1
		if seed != 0 {
			n = min(1+rng.IntN(50), len(b))
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func sse(chunks ...string) string {
	var b strings.Builder
	for _, c := range chunks {
		b.WriteString("data: " + c + "\r\n\r\n")
	}
	return b.String()
}

func TestStreamParser(t *testing.T) {
	for _, tc := range []struct {
		name, stream string
		want         result
	}{
		{"cumulative usage: the last is kept, never summed", sse(chunk("The", "", usage1), chunk(" cat", "STOP", usage2)),
			result{usage: final, final: true, model: "gemini-2.5-flash", text: 7}},
		{"cut before the last chunk", sse(chunk("The", "", usage1)),
			result{usage: accounting.Usage{InputTokens: 200, CacheReadTokens: 1000}, model: "gemini-2.5-flash", text: 3}},
		{"error", sse(chunk("The", "", usage1), `{"error": {"code": 503,"message": "The model is overloaded.","status": "UNAVAILABLE"}}`),
			result{usage: accounting.Usage{InputTokens: 200, CacheReadTokens: 1000}, model: "gemini-2.5-flash", text: 3, kind: "UNAVAILABLE", msg: "The model is overloaded.", hasErr: true}},
		{"garbage", "data: {x\r\n\r\n: c\r\n\r\n", result{dropped: 1}},
		{"Vertex traffic type: the last one named is kept", sse(chunk("The", "", `{"promptTokenCount": 4,"trafficType": "ON_DEMAND_FLEX"}`), chunk(" cat", "STOP", `{"promptTokenCount": 4,"candidatesTokenCount": 2}`)),
			result{usage: accounting.Usage{InputTokens: 4, OutputTokens: 2, ServiceTier: "flex"}, final: true, model: "gemini-2.5-flash", text: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, s := range []string{tc.stream, strings.ReplaceAll(tc.stream, "\r\n", "\n")} {
				if got := feed([]byte(s)); got != tc.want {
					t.Fatalf("got  %+v\nwant %+v", got, tc.want)
				}
				for seed := range uint64(20) {
					if got := feed(split([]byte(s), seed)...); got != tc.want {
						t.Fatalf("seed %d: got %+v, want %+v", seed, got, tc.want)
					}
				}
			}
		})
	}
}

func TestStreamParserSteadyStateAllocs(t *testing.T) {
	for _, usage := range []string{usage1, `{"promptTokenCount": 4,"trafficType": "ON_DEMAND_PRIORITY"}`, `{"promptTokenCount": 4,"trafficType": "ON_DEMAND"}`} {
		p := NewStreamParser()
		ev := []byte("data: " + chunk(`a \"quoted\"\nline`, "", usage) + "\r\n\r\n")
		p.Write(ev)
		if allocs := testing.AllocsPerRun(200, func() { p.Write(ev[:40]); p.Write(ev[40:]) }); allocs != 0 {
			t.Errorf("%s: allocations per event = %v, want 0", usage, allocs)
		}
	}
}

var fuzzBodies = []string{
	`{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`,
	`{"contents":[],"systemInstruction":"be brief","generationConfig":{"maxOutputTokens":5},"tools":[{"googleSearch":{}}]}`,
	`{"contents":[{"parts":[{"inlineData":{"mimeType":"image/png","data":"AAAA"}}]}],"system_instruction":{"parts":[]}}`,
	`{"contents":null}`, `{}`, `[`, `{"contents":[],"Contents":[]}`,
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
		if !json.Valid(b) || req.InputTokens < wire.RequestOverheadTokens || req.MaxTokens < 0 {
			t.Fatalf("accepted %q as %+v", b, req)
		}
		got := wiretest.OneReading(t, b, map[string]wiretest.Kind{
			"contents": wiretest.Count, "tools": wiretest.Count,
		})
		if n, _ := got["contents"].(int); n != req.Messages {
			t.Fatalf("contents %d, encoding/json %#v", req.Messages, got["contents"])
		}
	})
}

func FuzzUsageFromJSON(f *testing.F) {
	f.Add([]byte(chunk("hi", "STOP", usage2)))
	f.Add([]byte("[" + chunk("The", "", usage1) + "," + chunk(" cat", "STOP", usage2) + "]"))
	f.Add([]byte(`[{"usageMetadata":{"promptTokenCount":-5,"cachedContentTokenCount":9e99}},3]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, _, ok := UsageFromJSON(b)
		if ok && !json.Valid(b) {
			t.Fatalf("usage from invalid JSON %q", b)
		}
		if u.InputTokens < 0 || u.OutputTokens < 0 || u.CacheReadTokens < 0 || u.CacheWrite5mTokens != 0 || u.CacheWrite1hTokens != 0 {
			t.Fatalf("impossible usage %+v from %q", u, b)
		}
	})
}

func FuzzStreamParser(f *testing.F) {
	f.Add([]byte(sse(chunk("The", "", usage1), chunk(" cat", "STOP", usage2))), uint64(1))
	f.Add([]byte("data: {\"error\":{}}\r\rdata: {\"usageMetadata\":{\"promptTokenCount\":-1}}\n\n"), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, seed uint64) {
		whole := feed(b)
		if got := feed(split(b, seed)...); got != whole {
			t.Fatalf("split %d: %+v, whole %+v", seed, got, whole)
		}
		if u := whole.usage; u.InputTokens < 0 || u.OutputTokens < 0 || u.CacheReadTokens < 0 {
			t.Fatalf("negative usage %+v", u)
		}
	})
}

func realisticBody(size int) []byte {
	type obj = map[string]any
	para := "Explain why this function is slow and propose a fix:\n\n```python\ndef total(xs):\n    s = 0\n    for x in xs:\n        s = s + sum(xs[:x])\n    return s\n```\n"
	req := obj{"systemInstruction": obj{"parts": []obj{{"text": "You are a senior engineer."}}},
		"generationConfig": obj{"maxOutputTokens": 4096, "temperature": 0.2},
		"tools":            []obj{{"functionDeclarations": []obj{{"name": "run_python", "description": "Run Python code.", "parameters": obj{"type": "object", "properties": obj{"code": obj{"type": "string"}}}}}}}}
	var contents []obj
	for {
		b, _ := json.Marshal(req)
		if len(b) >= size {
			return b
		}
		contents = append(contents,
			obj{"role": "user", "parts": []obj{{"text": para}}},
			obj{"role": "model", "parts": []obj{{"functionCall": obj{"name": "run_python", "args": obj{"code": "print(total([1,2,3]))"}}}}},
			obj{"role": "user", "parts": []obj{{"functionResponse": obj{"name": "run_python", "response": obj{"output": "6\n"}}}}},
			obj{"role": "model", "parts": []obj{{"text": "The inner sum makes it quadratic; keep a running prefix sum instead."}}},
		)
		req["contents"] = contents
	}
}

func BenchmarkParseRequest(b *testing.B) {
	g, _ := ForPath("/v1beta/models/gemini-2.5-flash:generateContent")
	for _, size := range []int{2 << 10, 100 << 10} {
		body := realisticBody(size)
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := g.Parse(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkStreamParserPerEvent(b *testing.B) {
	ev := []byte("data: " + chunk(" San Francisco", "", usage1) + "\r\n\r\n")
	p := NewStreamParser()
	b.ReportAllocs()
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		p.Write(ev)
	}
}
