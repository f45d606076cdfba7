package anthropic

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// The markers as the API documents them, spelled out here rather than
// borrowed from the implementation.
const (
	m5 = `,"cache_control":{"type":"ephemeral"}`
	m1 = `,"cache_control":{"type":"ephemeral","ttl":"1h"}`
)

// Fragments of realistic requests.
const (
	toolWeather = `{"name":"get_weather","description":"Get the current weather in a given location","input_schema":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}`
	toolTime    = `{"name":"get_time","description":"Get the time in a time zone","input_schema":{"type":"object","properties":{"tz":{"type":"string"}}}}`
	image       = `{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}`
	document    = `{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQK"},"title":"Q3 report"}`
	thinking    = `{"type":"thinking","thinking":"The user wants the weather.","signature":"EqQBCkYIBxgCKkA"}`
	redacted    = `{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix"}`
	toolUse     = `{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"location":"Paris"}}`
	toolResult  = `{"type":"tool_result","tool_use_id":"toolu_01","content":"15 degrees, light rain"}`
)

func req(members ...string) string {
	return `{"model":"claude-sonnet-4-5","max_tokens":1024,` + strings.Join(members, ",") + `}`
}

func TestInjectCacheControl(t *testing.T) {
	tests := []struct {
		name     string
		opts     CacheOptions
		body     string
		want     string // "" means unchanged
		existing int
		added    int
		skipped  []string
	}{
		{
			name: "tools, string system, single turn",
			body: req(`"tools":[`+toolWeather+`,`+toolTime+`]`, `"system":"You are a weather bot."`, `"messages":[{"role":"user","content":"Weather in Paris?"}]`),
			want: req(`"tools":[`+toolWeather+`,`+toolTime[:len(toolTime)-1]+m5+`}]`,
				`"system":[{"type":"text","text":"You are a weather bot."`+m5+`}]`,
				`"messages":[{"role":"user","content":"Weather in Paris?"}]`),
			added: 2,
		},
		{
			name: "system blocks, multi-turn string contents",
			body: req(`"system":[{"type":"text","text":"Rules."},{"type":"text","text":"Be brief."}]`,
				`"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},{"role":"user","content":"Weather?"}]`),
			want: req(`"system":[{"type":"text","text":"Rules."},{"type":"text","text":"Be brief."`+m5+`}]`,
				`"messages":[{"role":"user","content":[{"type":"text","text":"Hi"`+m5+`}]},{"role":"assistant","content":"Hello!"},{"role":"user","content":"Weather?"}]`),
			added: 2,
		},
		{
			name:  "image and document, empty text walked back",
			body:  req(`"messages":[{"role":"user","content":[` + image + `,` + document + `,{"type":"text","text":""}]},{"role":"assistant","content":"Summary."},{"role":"user","content":"More?"}]`),
			want:  req(`"messages":[{"role":"user","content":[` + image + `,` + document[:len(document)-1] + m5 + `},{"type":"text","text":""}]},{"role":"assistant","content":"Summary."},{"role":"user","content":"More?"}]`),
			added: 1,
		},
		{
			name:  "whitespace-only text walked back to an image",
			body:  req(`"messages":[{"role":"user","content":[` + image + `,{"type":"text","text":" \n\t"}]},{"role":"assistant","content":"A cat."},{"role":"user","content":"Sure?"}]`),
			want:  req(`"messages":[{"role":"user","content":[` + image[:len(image)-1] + m5 + `},{"type":"text","text":" \n\t"}]},{"role":"assistant","content":"A cat."},{"role":"user","content":"Sure?"}]`),
			added: 1,
		},
		{
			name:  "tool loop with thinking: the last tool_result before the final turn",
			body:  req(`"tools":[`+toolWeather+`]`, `"messages":[{"role":"user","content":"Paris?"},{"role":"assistant","content":[`+thinking+`,`+toolUse+`]},{"role":"user","content":[`+toolResult+`]},{"role":"assistant","content":[`+redacted+`,{"type":"text","text":"15 degrees."}]},{"role":"user","content":"And tomorrow?"}]`),
			want:  req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`}]`, `"messages":[{"role":"user","content":"Paris?"},{"role":"assistant","content":[`+thinking+`,`+toolUse+`]},{"role":"user","content":[`+toolResult[:len(toolResult)-1]+m5+`}]},{"role":"assistant","content":[`+redacted+`,{"type":"text","text":"15 degrees."}]},{"role":"user","content":"And tomorrow?"}]`),
			added: 2,
		},
		{
			name:  "assistant prefill: the user turn before it",
			body:  req(`"messages":[{"role":"user","content":"Answer in JSON."},{"role":"assistant","content":"{"}]`),
			want:  req(`"messages":[{"role":"user","content":[{"type":"text","text":"Answer in JSON."` + m5 + `}]},{"role":"assistant","content":"{"}]`),
			added: 1,
		},
		{
			name:    "a user turn of only thinking-like blocks cannot carry",
			body:    req(`"messages":[{"role":"user","content":[{"type":"text","text":""}]},{"role":"assistant","content":"?"},{"role":"user","content":"Hi"}]`),
			skipped: []string{"messages.0: no block can carry a marker"},
		},
		{
			name:     "client marker on an earlier tool: the last tool is still marked",
			body:     req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`},`+toolTime+`]`, `"messages":[{"role":"user","content":"Hi"}]`),
			want:     req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`},`+toolTime[:len(toolTime)-1]+m5+`}]`, `"messages":[{"role":"user","content":"Hi"}]`),
			existing: 1, added: 1,
		},
		{
			name:     "client marker on the last tool is kept, the rest filled",
			body:     req(`"tools":[`+toolTime[:len(toolTime)-1]+m5+`}]`, `"system":"Be brief."`, `"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},{"role":"user","content":"Bye"}]`),
			want:     req(`"tools":[`+toolTime[:len(toolTime)-1]+m5+`}]`, `"system":[{"type":"text","text":"Be brief."`+m5+`}]`, `"messages":[{"role":"user","content":[{"type":"text","text":"Hi"`+m5+`}]},{"role":"assistant","content":"Hello"},{"role":"user","content":"Bye"}]`),
			existing: 1, added: 2,
			skipped: []string{"tools.0: client marker kept"},
		},
		{
			name:     "client marker on the system block, in an assistant turn and nested in a tool_result",
			body:     req(`"system":[{"type":"text","text":"Rules."`+m5+`}]`, `"messages":[{"role":"user","content":"Paris?"},{"role":"assistant","content":[`+toolUse[:len(toolUse)-1]+m5+`}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":[{"type":"text","text":"15C"`+m5+`}]},{"type":"text","text":"thanks"}]},{"role":"assistant","content":"ok"},{"role":"user","content":"Bye"}]`),
			want:     req(`"system":[{"type":"text","text":"Rules."`+m5+`}]`, `"messages":[{"role":"user","content":"Paris?"},{"role":"assistant","content":[`+toolUse[:len(toolUse)-1]+m5+`}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":[{"type":"text","text":"15C"`+m5+`}]},{"type":"text","text":"thanks"`+m5+`}]},{"role":"assistant","content":"ok"},{"role":"user","content":"Bye"}]`),
			existing: 3, added: 1,
			skipped: []string{"system.0: client marker kept"},
		},
		{
			name:     "top-level automatic caching takes a slot",
			body:     req(`"cache_control":{"type":"ephemeral"}`, `"tools":[`+toolWeather+`]`, `"system":"S"`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]`),
			want:     req(`"cache_control":{"type":"ephemeral"}`, `"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`}]`, `"system":[{"type":"text","text":"S"`+m5+`}]`, `"messages":[{"role":"user","content":[{"type":"text","text":"a"`+m5+`}]},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]`),
			existing: 1, added: 3,
		},
		{
			name:     "three existing markers leave one slot, used in prefix order",
			body:     req(`"cache_control":{"type":"ephemeral"}`, `"tools":[`+toolWeather+`]`, `"system":"S"`, `"messages":[{"role":"user","content":[{"type":"text","text":"a"`+m5+`}]},{"role":"assistant","content":[{"type":"text","text":"b"`+m5+`}]},{"role":"user","content":"c"}]`),
			want:     req(`"cache_control":{"type":"ephemeral"}`, `"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`}]`, `"system":"S"`, `"messages":[{"role":"user","content":[{"type":"text","text":"a"`+m5+`}]},{"role":"assistant","content":[{"type":"text","text":"b"`+m5+`}]},{"role":"user","content":"c"}]`),
			existing: 3, added: 1,
			skipped: []string{"system: all 4 breakpoints in use", "messages.0.content.0: client marker kept"},
		},
		{
			name:     "four existing markers: no change",
			body:     req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`}]`, `"system":[{"type":"text","text":"S"`+m1+`}]`, `"messages":[{"role":"user","content":[{"type":"text","text":"a"`+m5+`}]},{"role":"assistant","content":[{"type":"text","text":"b"`+m5+`}]},{"role":"user","content":"c"}]`),
			existing: 4,
			skipped:  []string{"tools.0: client marker kept", "system.0: client marker kept", "messages.0.content.0: client marker kept"},
		},
		{
			name:     "four markers counting the top-level one: no change",
			body:     req(`"cache_control":{"type":"ephemeral","ttl":"1h"}`, `"tools":[`+toolWeather+`]`, `"system":[{"type":"text","text":"S"`+m1+`}]`, `"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"x"`+m1+`},{"type":"text","text":"y"`+m1+`}]}]},{"role":"user","content":"c"}]`),
			existing: 4,
			skipped:  []string{"tools.0: all 4 breakpoints in use", "system.0: client marker kept", "messages.0.content.0: all 4 breakpoints in use"},
		},
		{
			name:    "cache_control null is the client's choice",
			body:    req(`"tools":[`+toolWeather[:len(toolWeather)-1]+`,"cache_control":null}]`, `"messages":[{"role":"user","content":"a"}]`),
			skipped: []string{"tools.0: client set cache_control to null"},
		},
		{
			name:  "deferred last tool: the previous one is marked",
			body:  req(`"tools":[`+toolWeather+`,{"name":"rare","description":"Rarely used.","input_schema":{"type":"object"},"defer_loading":true}]`, `"messages":[{"role":"user","content":"a"}]`),
			want:  req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`},{"name":"rare","description":"Rarely used.","input_schema":{"type":"object"},"defer_loading":true}]`, `"messages":[{"role":"user","content":"a"}]`),
			added: 1,
		},
		{
			name:  "policy 1h",
			opts:  CacheOptions{TTL: "1h"},
			body:  req(`"tools":[`+toolWeather+`]`, `"system":"S"`),
			want:  req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m1+`}]`, `"system":[{"type":"text","text":"S"`+m1+`}]`),
			added: 2,
		},
		{
			name:     "policy 1h after a client 5m marker places 5m",
			opts:     CacheOptions{TTL: "1h"},
			body:     req(`"tools":[`+toolWeather+`]`, `"system":[{"type":"text","text":"S"`+m5+`}]`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]`),
			want:     req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m1+`}]`, `"system":[{"type":"text","text":"S"`+m5+`}]`, `"messages":[{"role":"user","content":[{"type":"text","text":"a"`+m5+`}]},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]`),
			existing: 1, added: 2,
			skipped: []string{"system.0: client marker kept"},
		},
		{
			name:     "policy 5m before a client 1h marker places 1h, after it 5m",
			body:     req(`"tools":[`+toolWeather+`]`, `"system":[{"type":"text","text":"S"`+m1+`}]`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]`),
			want:     req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m1+`}]`, `"system":[{"type":"text","text":"S"`+m1+`}]`, `"messages":[{"role":"user","content":[{"type":"text","text":"a"`+m5+`}]},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]`),
			existing: 1, added: 2,
			skipped: []string{"system.0: client marker kept"},
		},
		{
			name:     "top-level 1h makes every added marker 1h",
			body:     req(`"cache_control":{"type":"ephemeral","ttl":"1h"}`, `"system":"S"`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]`),
			want:     req(`"cache_control":{"type":"ephemeral","ttl":"1h"}`, `"system":[{"type":"text","text":"S"`+m1+`}]`, `"messages":[{"role":"user","content":[{"type":"text","text":"a"`+m1+`}]},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]`),
			existing: 1, added: 2,
		},
		{
			name:     "top-level 5m, final turn cannot carry: added markers take 5m",
			opts:     CacheOptions{TTL: "1h"},
			body:     req(`"cache_control":{"type":"ephemeral"}`, `"system":"S"`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[`+thinking+`]}]`),
			want:     req(`"cache_control":{"type":"ephemeral"}`, `"system":[{"type":"text","text":"S"`+m5+`}]`, `"messages":[{"role":"user","content":[{"type":"text","text":"a"`+m5+`}]},{"role":"assistant","content":[`+thinking+`]}]`),
			existing: 1, added: 2,
		},
		{
			name:     "client 5m before client 1h: nothing between them",
			body:     req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`}]`, `"system":"S"`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"text","text":"b"`+m1+`}]},{"role":"user","content":"c"}]`),
			existing: 2,
			skipped:  []string{"tools.0: client marker kept", "system: client markers put a 5m breakpoint before a 1h one", "messages.0.content: client markers put a 5m breakpoint before a 1h one"},
		},
		{
			name:     "prompt order, not key order",
			opts:     CacheOptions{TTL: "1h"},
			body:     `{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"text","text":"b"` + m5 + `}]},{"role":"user","content":"c"}],"system":"S","tools":[` + toolTime + `],"model":"m"}`,
			want:     `{"messages":[{"role":"user","content":[{"type":"text","text":"a"` + m1 + `}]},{"role":"assistant","content":[{"type":"text","text":"b"` + m5 + `}]},{"role":"user","content":"c"}],"system":[{"type":"text","text":"S"` + m1 + `}],"tools":[` + toolTime[:len(toolTime)-1] + m1 + `}],"model":"m"}`,
			existing: 1, added: 3,
		},
		{
			name:  "bytes outside the insertions are kept: whitespace, escapes, numbers",
			body:  "{\n  \"model\": \"claude-opus-4-5\",\n  \"max_tokens\": 1.0e3,\n  \"system\": \"Caf\\u00e9 \\\"menu\\\" \\/ 1E2\",\n  \"tools\": [ {\"name\": \"x\", \"input_schema\": {\"type\": \"object\", \"maximum\": 10.50}} ],\n  \"messages\": [ {\"role\": \"user\", \"content\": [ {\"type\": \"text\", \"text\": \"\\ud83d\\ude00\" } ]} , {\"role\":\"assistant\",\"content\":\"ok\"}, {\"role\":\"user\",\"content\":\"x\"} ]\n}\n",
			want:  "{\n  \"model\": \"claude-opus-4-5\",\n  \"max_tokens\": 1.0e3,\n  \"system\": [{\"type\":\"text\",\"text\":\"Caf\\u00e9 \\\"menu\\\" \\/ 1E2\"" + m5 + "}],\n  \"tools\": [ {\"name\": \"x\", \"input_schema\": {\"type\": \"object\", \"maximum\": 10.50}" + m5 + "} ],\n  \"messages\": [ {\"role\": \"user\", \"content\": [ {\"type\": \"text\", \"text\": \"\\ud83d\\ude00\" " + m5 + "} ]} , {\"role\":\"assistant\",\"content\":\"ok\"}, {\"role\":\"user\",\"content\":\"x\"} ]\n}\n",
			added: 3,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.body)
			if !json.Valid(in) {
				t.Fatalf("test body is not JSON: %s", in)
			}
			out, res, err := InjectCacheControl(in, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == "" {
				want = tc.body
				if len(out) > 0 && &out[0] != &in[0] {
					t.Error("unchanged body was copied")
				}
			}
			if string(out) != want {
				t.Errorf("body:\n got %s\nwant %s", out, want)
			}
			if res.Changed != (tc.want != "") || res.Existing != tc.existing || res.Added != tc.added {
				t.Errorf("result %+v, want changed=%v existing=%d added=%d", res, tc.want != "", tc.existing, tc.added)
			}
			if !reflect.DeepEqual(res.Skipped, tc.skipped) {
				t.Errorf("skipped %q, want %q", res.Skipped, tc.skipped)
			}
			checkMarkers(t, in, out)
		})
	}
}

// checkMarkers verifies, independently of the implementation, that out
// holds at most MaxCacheBreakpoints markers (or as many as in), in an order
// the API accepts when in's was, and that each added marker also decodes as
// an ephemeral cache_control.
func checkMarkers(t testing.TB, in, out []byte) {
	t.Helper()
	before, after := markerTTLs(t, in), markerTTLs(t, out)
	if len(after) > max(MaxCacheBreakpoints, len(before)) {
		t.Errorf("%d markers (had %d): %s", len(after), len(before), out)
	}
	if ttlOrderOK(before) && !ttlOrderOK(after) {
		t.Errorf("markers out of TTL order %v: %s", after, out)
	}
}

func ttlOrderOK(ttls []string) bool {
	seen5m := false
	for _, t := range ttls {
		if t == "5m" {
			seen5m = true
		} else if seen5m {
			return false
		}
	}
	return true
}

// markerTTLs lists the TTLs of the markers of a request in prompt order
// (tools, system, messages, then the top-level one, which lands on the last
// block), decoded with encoding/json.
func markerTTLs(t testing.TB, body []byte) []string {
	t.Helper()
	var ttls []string
	add := func(v any) {
		if v == nil {
			return
		}
		ttl := "5m"
		if m, ok := v.(obj); ok && m["ttl"] == "1h" {
			ttl = "1h"
		}
		ttls = append(ttls, ttl)
	}
	var block func(v any)
	block = func(v any) {
		b, ok := v.(obj)
		if !ok {
			return
		}
		blocks := func(v any) {
			if arr, ok := v.([]any); ok {
				for _, x := range arr {
					block(x)
				}
			}
		}
		blocks(b["content"])
		if src, ok := b["source"].(obj); ok {
			blocks(src["content"])
		}
		if cc, ok := b["cache_control"]; ok {
			add(cc)
		}
	}
	m := decodeObj(t, body)
	for _, key := range []string{"tools", "system"} {
		if arr, ok := m[key].([]any); ok {
			for _, x := range arr {
				if b, ok := x.(obj); ok && key == "tools" {
					if cc, ok := b["cache_control"]; ok {
						add(cc)
					}
					continue
				}
				block(x)
			}
		}
	}
	if msgs, ok := m["messages"].([]any); ok {
		for _, msg := range msgs {
			if mm, ok := msg.(obj); ok {
				if arr, ok := mm["content"].([]any); ok {
					for _, x := range arr {
						block(x)
					}
				}
			}
		}
	}
	if cc, ok := m["cache_control"]; ok {
		add(cc)
	}
	return ttls
}

func TestInjectCacheControlErrors(t *testing.T) {
	tests := []struct {
		name, body string
		opts       CacheOptions
		invalid    bool
	}{
		{"not json", `{"model":`, CacheOptions{}, true},
		{"array", `[]`, CacheOptions{}, true},
		{"trailing data", `{"model":"m","messages":[]} x`, CacheOptions{}, true},
		{"duplicate system", `{"system":"a","system":"b","messages":[]}`, CacheOptions{}, true},
		{"broken deep inside", `{"messages":[{"role":"user","content":[{"type":"text","text":"a}]}]}`, CacheOptions{}, true},
		{"unknown ttl", `{"model":"m","messages":[]}`, CacheOptions{TTL: "24h"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := InjectCacheControl([]byte(tc.body), tc.opts)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, wire.ErrInvalidRequest) != tc.invalid {
				t.Errorf("errors.Is(%v, ErrInvalidRequest) = %v, want %v", err, !tc.invalid, tc.invalid)
			}
		})
	}
}

// prefixEstimate estimates, with ParseRequest, the prompt up to and
// including the first n blocks carrying cache_control in prompt order:
// the request is cut after that block and re-encoded (encoding/json sorts
// keys, which leaves the estimate's per-byte sums unchanged).
func markedPrefixEstimates(t *testing.T, body []byte) []int64 {
	t.Helper()
	m := decodeObj(t, body)
	var out []int64
	estimate := func(cut obj) {
		b, err := json.Marshal(cut)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ParseRequest(b)
		if err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		out = append(out, r.InputTokens-wire.RequestOverheadTokens)
	}
	base := obj{"model": m["model"], "messages": []any{}}
	if tools, ok := m["tools"].([]any); ok {
		for i, x := range tools {
			if _, ok := x.(obj)["cache_control"]; ok {
				estimate(obj{"model": m["model"], "messages": []any{}, "tools": tools[:i+1]})
			}
		}
		base["tools"] = tools
	}
	if sys, ok := m["system"].([]any); ok {
		for i, x := range sys {
			if _, ok := x.(obj)["cache_control"]; ok {
				c := copyObj(base)
				c["system"] = sys[:i+1]
				estimate(c)
			}
		}
	}
	if sys, ok := m["system"]; ok {
		base["system"] = sys
	}
	msgs, _ := m["messages"].([]any)
	for i, msg := range msgs {
		content, ok := msg.(obj)["content"].([]any)
		if !ok {
			continue
		}
		for j, x := range content {
			if _, ok := x.(obj)["cache_control"]; ok {
				c := copyObj(base)
				last := copyObj(msg.(obj))
				last["content"] = content[:j+1]
				c["messages"] = append(append([]any{}, msgs[:i]...), last)
				estimate(c)
			}
		}
	}
	return out
}

func copyObj(m obj) obj {
	c := make(obj, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func TestInjectCacheControlMinTokens(t *testing.T) {
	long := strings.Repeat("The forecast model blends station data with satellite imagery. ", 40) // ~650 tokens
	body := []byte(req(`"tools":[`+toolWeather+`]`, `"system":"`+long+`"`,
		`"messages":[{"role":"user","content":"`+long+`"},{"role":"assistant","content":"Noted."},{"role":"user","content":"Go"}]`))
	for _, min := range []int64{0, 100, 400, 800, 1200, 1600, 5000} {
		t.Run(fmt.Sprint(min), func(t *testing.T) {
			out, res, err := InjectCacheControl(body, CacheOptions{MinTokens: min})
			if err != nil {
				t.Fatal(err)
			}
			ests := markedPrefixEstimates(t, out)
			if len(ests) != res.Added {
				t.Fatalf("%d markers, %d added", len(ests), res.Added)
			}
			for _, e := range ests {
				// Sections are estimated apart, each rounded up: at most one
				// token each over a single count.
				if e+2 < min {
					t.Errorf("marker on a prefix of ~%d tokens, minimum %d", e, min)
				}
			}
			if res.Added+len(res.Skipped) != 3 {
				t.Errorf("added %d, skipped %q: want 3 candidates accounted for", res.Added, res.Skipped)
			}
			for _, s := range res.Skipped {
				if !strings.Contains(s, fmt.Sprintf("below the %d minimum", min)) {
					t.Errorf("unexpected skip %q", s)
				}
			}
			checkMarkers(t, body, out)
		})
	}
	// The boundaries: 0 places all three, 5000 none, and something between
	// places only the longer prefixes.
	counts := map[int64]int{}
	for _, min := range []int64{0, 800, 5000} {
		_, res, _ := InjectCacheControl(body, CacheOptions{MinTokens: min})
		counts[min] = res.Added
	}
	if counts[0] != 3 || counts[800] != 2 || counts[5000] != 0 {
		t.Errorf("added by minimum: %v, want 0:3 800:2 5000:0", counts)
	}
}

// TestInjectRecorded injects into every recorded request: the result is
// valid, within the limit, estimates the same as the original (markers and
// the string-to-block conversion carry no text), and keeps the fingerprint.
func TestInjectRecorded(t *testing.T) {
	n := 0
	for _, rec := range recordings(t) {
		if rec.Request.Body == "" || !strings.Contains(rec.Request.URL, "/messages") {
			continue
		}
		in := []byte(rec.Request.Body)
		parsed, err := ParseRequest(in)
		if err != nil {
			t.Fatalf("%s: %v", rec.name, err)
		}
		for _, opts := range []CacheOptions{{}, {TTL: "1h", MinTokens: accounting.MinCacheTokens(parsed.Model)}} {
			out, res, err := InjectCacheControl(in, opts)
			if err != nil {
				t.Fatalf("%s: %v", rec.name, err)
			}
			if !json.Valid(out) {
				t.Fatalf("%s: invalid JSON out", rec.name)
			}
			checkMarkers(t, in, out)
			again, err := ParseRequest(out)
			if err != nil {
				t.Fatalf("%s: %v", rec.name, err)
			}
			if again.InputTokens != parsed.InputTokens {
				t.Errorf("%s: estimate %d after injection, %d before", rec.name, again.InputTokens, parsed.InputTokens)
			}
			if opts.MinTokens == 0 && parsed.HasTools && res.Added == 0 {
				t.Errorf("%s: nothing injected into a request with tools: %+v", rec.name, res)
			}
			n += res.Added
		}
	}
	if n == 0 {
		t.Error("no marker injected into any recording")
	}
}

// removeInserted undoes planned insertions on out, checking that each one is
// where the plan says, and returns what is left.
func removeInserted(t *testing.T, out []byte, edits []edit) []byte {
	t.Helper()
	sorted := append([]edit(nil), edits...)
	for i := 1; i < len(sorted); i++ {
		for j := i; j > 0 && sorted[j].at < sorted[j-1].at; j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	var rest []byte
	shift, prev := 0, 0
	for _, e := range sorted {
		at := e.at + shift
		if at+len(e.text) > len(out) || string(out[at:at+len(e.text)]) != e.text {
			t.Fatalf("insertion %q not found at %d", e.text, at)
		}
		rest = append(rest, out[prev:at]...)
		prev = at + len(e.text)
		shift += len(e.text)
	}
	return append(rest, out[prev:]...)
}

var knownInsertions = []string{m5, m1, `[{"type":"text","text":`, m5 + `}]`, m1 + `}]`}

func FuzzInjectCacheControl(f *testing.F) {
	for _, b := range []string{
		req(`"tools":[`+toolWeather+`]`, `"system":"S"`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[`+thinking+`]},{"role":"user","content":"c"}]`),
		req(`"cache_control":{"type":"ephemeral","ttl":"1h"}`, `"system":[{"type":"text","text":"S"`+m5+`}]`, `"messages":[{"role":"user","content":[`+toolResult+`,`+image+`]},{"role":"user","content":""}]`),
		`{"tools":[{}],"system":[{"type":"text","text":" "},{"type":"text","text":"x","cache_control":null}],"messages":[{"role":"user","content":[{"type":"tool_result","content":[{"type":"text","text":"y","cache_control":{"ttl":"1h"}}]}]},{}]}`,
		`{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"text","text":"b","cache_control":{"type":"ephemeral","ttl":"1h"}}]},{"role":"user","content":"c"}],"tools":[{"name":"t","cache_control":{"type":"ephemeral"}}]}`,
		`[]`, `{}`, `{"system":"\ud83d\ude00"}`,
	} {
		f.Add([]byte(b), false, uint16(0))
		f.Add([]byte(b), true, uint16(20))
	}
	f.Fuzz(func(t *testing.T, body []byte, long bool, minTokens uint16) {
		opts := CacheOptions{MinTokens: int64(minTokens)}
		if long {
			opts.TTL = "1h"
		}
		out, res, err := InjectCacheControl(body, opts)
		if err != nil {
			if !errors.Is(err, wire.ErrInvalidRequest) {
				t.Fatalf("error %v does not match ErrInvalidRequest", err)
			}
			return
		}
		if !res.Changed {
			if !bytes.Equal(out, body) || res.Added != 0 {
				t.Fatalf("unchanged result %+v differs from input", res)
			}
			return
		}
		if !json.Valid(body) {
			return // only valid JSON in promises valid JSON out
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON from valid input:\n in %s\nout %s", body, out)
		}
		checkMarkers(t, body, out)
		edits, n, _, _ := planCache(body, opts)
		for _, e := range edits[:n] {
			known := false
			for _, k := range knownInsertions {
				known = known || e.text == k
			}
			if !known {
				t.Fatalf("unexpected insertion %q", e.text)
			}
		}
		if rest := removeInserted(t, out, edits[:n]); !bytes.Equal(rest, body) {
			t.Fatalf("bytes outside the insertions changed:\n in %s\nout %s", body, rest)
		}
	})
}

func BenchmarkInjectCacheControl(b *testing.B) {
	body := realisticBody(100 << 10)
	for _, tc := range []struct {
		name string
		opts CacheOptions
	}{{"min0", CacheOptions{}}, {"min1024", CacheOptions{MinTokens: 1024}}, {"min4096-1h", CacheOptions{TTL: "1h", MinTokens: 4096}}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, res, err := InjectCacheControl(body, tc.opts); err != nil || !res.Changed {
					b.Fatal(err, res)
				}
			}
		})
	}
}
