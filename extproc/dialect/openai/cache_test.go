package openai

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// The marker as the tests spell it, independently of the constant.
const bp = `,"prompt_cache_breakpoint":{"mode":"explicit"}`

// api is one of the two dialects that place breakpoints.
type api struct {
	name string
	d    interface {
		Parse([]byte) (wire.Request, error)
		Edit([]byte, *wire.Request, wire.EditRequest, *wire.Edits) (wire.EditReport, error)
	}
	list string // "messages" or "input"
}

var (
	chatAPI      = api{"chat", ChatCompletions{}, "messages"}
	responsesAPI = api{"responses", Responses{}, "input"}
)

// inject parses body and applies the edits of a cache request (and a model
// rewrite to model, when not "").
func inject(t testing.TB, a api, body, model string, minTokens int64) ([]byte, wire.EditReport, *wire.Edits) {
	t.Helper()
	req, err := a.d.Parse([]byte(body))
	if err != nil {
		t.Fatalf("parse %s: %v", body, err)
	}
	var edits wire.Edits
	rep, err := a.d.Edit([]byte(body), &req, wire.EditRequest{Model: model, Cache: &wire.CacheRequest{TTL: "5m", MinTokens: minTokens}}, &edits)
	if err != nil {
		t.Fatalf("edit: %v", err)
	}
	out, err := wire.Apply([]byte(body), &edits)
	if err != nil {
		t.Fatal(err)
	}
	return out, rep, &edits
}

func TestInjectBreakpoints(t *testing.T) {
	sys := strings.Repeat("Answer in one short sentence. ", 200) // ~1200 tokens
	tests := []struct {
		name     string
		api      api
		body     string
		model    string // rewritten to, when set
		min      int64
		want     string // "" for unchanged
		existing int
		added    int
		skipped  []string
	}{
		{
			name:  "chat: a string system prompt becomes one text part",
			api:   chatAPI,
			body:  `{"model":"gpt-5.6-terra","messages":[{"role":"system","content":"S"},{"role":"user","content":"Q"}]}`,
			want:  `{"model":"gpt-5.6-terra","messages":[{"role":"system","content":[{"type":"text","text":"S"` + bp + `}]},{"role":"user","content":"Q"}]}`,
			added: 1,
		},
		{
			name: "chat: the end of the leading system and developer messages, and the previous user turn",
			api:  chatAPI,
			body: `{"model":"gpt-5.6-sol","messages":[{"role":"system","content":[{"type":"text","text":"S1"},{"type":"text","text":"S2"}]},{"role":"developer","content":[{"type":"text","text":"D"}]},` +
				`{"role":"user","content":[{"type":"text","text":"U1"},{"type":"image_url","image_url":{"url":"https://x/i.png"}}]},{"role":"assistant","content":"A1"},{"role":"system","content":"late"},{"role":"user","content":"U2"}]}`,
			want: `{"model":"gpt-5.6-sol","messages":[{"role":"system","content":[{"type":"text","text":"S1"},{"type":"text","text":"S2"}]},{"role":"developer","content":[{"type":"text","text":"D"` + bp + `}]},` +
				`{"role":"user","content":[{"type":"text","text":"U1"},{"type":"image_url","image_url":{"url":"https://x/i.png"}` + bp + `}]},{"role":"assistant","content":"A1"},{"role":"system","content":"late"},{"role":"user","content":"U2"}]}`,
			added: 2,
		},
		{
			name:  "chat: the last user message is the turn when the final message is a tool result",
			api:   chatAPI,
			body:  `{"model":"gpt-5.6-luna","messages":[{"role":"user","content":"U"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"R"}]}`,
			want:  `{"model":"gpt-5.6-luna","messages":[{"role":"user","content":[{"type":"text","text":"U"` + bp + `}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"R"}]}`,
			added: 1,
		},
		{
			name:  "chat: a part that cannot carry a marker passes it to the one before; audio can",
			api:   chatAPI,
			body:  `{"model":"gpt-5.6","messages":[{"role":"system","content":[{"type":"input_audio","input_audio":{"data":"AA==","format":"wav"}},{"type":"text","text":""},{"type":"file","file":{"file_id":"f"}}]},{"role":"user","content":"Q"}]}`,
			want:  `{"model":"gpt-5.6","messages":[{"role":"system","content":[{"type":"input_audio","input_audio":{"data":"AA==","format":"wav"}` + bp + `},{"type":"text","text":""},{"type":"file","file":{"file_id":"f"}}]},{"role":"user","content":"Q"}]}`,
			added: 1,
		},
		{
			name:    "chat: no part can carry one",
			api:     chatAPI,
			body:    `{"model":"gpt-5.6","messages":[{"role":"system","content":""},{"role":"user","content":"Q"}]}`,
			skipped: []string{"messages.0: no content part can carry a marker"},
		},
		{
			name:     "chat: a client marker is kept and counted; the other slot is still filled",
			api:      chatAPI,
			body:     `{"model":"gpt-5.6","messages":[{"role":"system","content":[{"type":"text","text":"S"` + bp + `}]},{"role":"user","content":"U1"},{"role":"assistant","content":"A"},{"role":"user","content":"U2"}]}`,
			want:     `{"model":"gpt-5.6","messages":[{"role":"system","content":[{"type":"text","text":"S"` + bp + `}]},{"role":"user","content":[{"type":"text","text":"U1"` + bp + `}]},{"role":"assistant","content":"A"},{"role":"user","content":"U2"}]}`,
			existing: 1, added: 1, skipped: []string{"messages.0.content.0: client marker kept"},
		},
		{
			name:    "chat: a client's null marker is its choice",
			api:     chatAPI,
			body:    `{"model":"gpt-5.6","messages":[{"role":"system","content":[{"type":"text","text":"S","prompt_cache_breakpoint":null}]},{"role":"user","content":"U"}]}`,
			skipped: []string{"messages.0.content.0: client set prompt_cache_breakpoint to null"},
		},
		{
			name: "chat: three client markers fill the default mode",
			api:  chatAPI,
			body: `{"model":"gpt-5.6","messages":[{"role":"system","content":"S"},{"role":"user","content":[{"type":"text","text":"a"` + bp + `},{"type":"text","text":"b"` + bp + `}]},` +
				`{"role":"assistant","content":[{"type":"text","text":"c"` + bp + `}]},{"role":"user","content":"U"}]}`,
			existing: 3,
			skipped:  []string{"messages.0.content: all 3 breakpoints in use", "messages.1.content.1: client marker kept"},
		},
		{
			name: "chat: two client markers leave one slot, in prompt order",
			api:  chatAPI,
			body: `{"model":"gpt-5.6","messages":[{"role":"system","content":"S"},{"role":"user","content":[{"type":"text","text":"a"` + bp + `},{"type":"text","text":"b"}]},` +
				`{"role":"assistant","content":[{"type":"text","text":"c"` + bp + `}]},{"role":"user","content":"U"}]}`,
			want: `{"model":"gpt-5.6","messages":[{"role":"system","content":[{"type":"text","text":"S"` + bp + `}]},{"role":"user","content":[{"type":"text","text":"a"` + bp + `},{"type":"text","text":"b"}]},` +
				`{"role":"assistant","content":[{"type":"text","text":"c"` + bp + `}]},{"role":"user","content":"U"}]}`,
			existing: 2, added: 1, skipped: []string{"messages.1.content.1: all 3 breakpoints in use"},
		},
		{
			name:    "chat: explicit mode is the client's to place",
			api:     chatAPI,
			body:    `{"model":"gpt-5.6","prompt_cache_options":{"mode":"explicit","ttl":"30m"},"messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]}`,
			skipped: []string{"messages.0.content: prompt_cache_options.mode is explicit: the client places every breakpoint"},
		},
		{
			name:  "chat: implicit mode and the 30m ttl are the default",
			api:   chatAPI,
			body:  `{"model":"gpt-5.6","prompt_cache_options":{"ttl":"30m","mode":"implicit"},"messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]}`,
			want:  `{"model":"gpt-5.6","prompt_cache_options":{"ttl":"30m","mode":"implicit"},"messages":[{"role":"system","content":[{"type":"text","text":"S"` + bp + `}]},{"role":"user","content":"U"}]}`,
			added: 1,
		},
		{
			name:    "chat: an unknown mode is the API's to judge",
			api:     chatAPI,
			body:    `{"model":"gpt-5.6","prompt_cache_options":{"mode":"always"},"messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]}`,
			skipped: []string{"messages.0.content: prompt_cache_options not understood: left to the API"},
		},
		{
			name:    "chat: so is a duplicated prompt_cache_options",
			api:     chatAPI,
			body:    `{"model":"gpt-5.6","prompt_cache_options":{"mode":"explicit"},"prompt_cache_options":null,"messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]}`,
			skipped: []string{"messages.0.content: prompt_cache_options not understood: left to the API"},
		},
		{
			name: "chat: models before gpt-5.6 cache by themselves",
			api:  chatAPI,
			body: `{"model":"gpt-5.5","messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]}`,
		},
		{
			name:  "chat: the model the request is sent with decides",
			api:   chatAPI,
			body:  `{"model":"fast","messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]}`,
			model: "gpt-5.6-luna",
			want:  `{"model":"gpt-5.6-luna","messages":[{"role":"system","content":[{"type":"text","text":"S"` + bp + `}]},{"role":"user","content":"U"}]}`,
			added: 1,
		},
		{
			name:  "chat: rewritten to an older model, none",
			api:   chatAPI,
			body:  `{"model":"gpt-5.6","messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]}`,
			model: "gpt-4o",
			want:  `{"model":"gpt-4o","messages":[{"role":"system","content":"S"},{"role":"user","content":"U"}]}`,
		},
		{
			name:    "chat: a prefix below the minimum",
			api:     chatAPI,
			body:    `{"model":"gpt-5.6","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"U"}]}`,
			min:     1024,
			skipped: []string{"messages.0.content: prefix ~7 tokens, below the 1024 minimum"},
		},
		{
			name:  "chat: a long system prompt reaches it; the tools count towards the prefix",
			api:   chatAPI,
			body:  `{"model":"gpt-5.6","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"system","content":"` + sys + `"},{"role":"user","content":"U"}]}`,
			min:   1024,
			want:  `{"model":"gpt-5.6","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"system","content":[{"type":"text","text":"` + sys + `"` + bp + `}]},{"role":"user","content":"U"}]}`,
			added: 1,
		},
		{
			name:  "chat: a stream gets its usage chunk and the breakpoint in one copy",
			api:   chatAPI,
			body:  `{"stream":true,"model":"gpt-5.6","messages":[{"role":"developer","content":"D"},{"role":"user","content":"U"}]}`,
			want:  `{"stream":true,"model":"gpt-5.6","messages":[{"role":"developer","content":[{"type":"text","text":"D"` + bp + `}]},{"role":"user","content":"U"}],"stream_options":{"include_usage":true}}`,
			added: 1,
		},
		{
			name:  "responses: a developer message's string content becomes an input_text part",
			api:   responsesAPI,
			body:  `{"model":"gpt-5.6-terra","instructions":"I","input":[{"role":"developer","content":"D"},{"role":"user","content":"Q"}]}`,
			want:  `{"model":"gpt-5.6-terra","instructions":"I","input":[{"role":"developer","content":[{"type":"input_text","text":"D"` + bp + `}]},{"role":"user","content":"Q"}]}`,
			added: 1,
		},
		{
			name: "responses: input_text, input_image and input_file carry; the previous user turn too",
			api:  responsesAPI,
			body: `{"model":"gpt-5.6","input":[{"type":"message","role":"system","content":[{"type":"input_text","text":"S"},{"type":"input_file","file_id":"file-1"}]},` +
				`{"role":"user","content":[{"type":"input_image","image_url":"https://x/i.png"}]},{"type":"function_call","call_id":"c","name":"f","arguments":"{}"},` +
				`{"type":"function_call_output","call_id":"c","output":"R"},{"role":"user","content":[{"type":"input_text","text":"Q"}]}]}`,
			want: `{"model":"gpt-5.6","input":[{"type":"message","role":"system","content":[{"type":"input_text","text":"S"},{"type":"input_file","file_id":"file-1"` + bp + `}]},` +
				`{"role":"user","content":[{"type":"input_image","image_url":"https://x/i.png"` + bp + `}]},{"type":"function_call","call_id":"c","name":"f","arguments":"{}"},` +
				`{"type":"function_call_output","call_id":"c","output":"R"},{"role":"user","content":[{"type":"input_text","text":"Q"}]}]}`,
			added: 2,
		},
		{
			name:     "responses: markers in a call's output count",
			api:      responsesAPI,
			body:     `{"model":"gpt-5.6","input":[{"role":"system","content":"S"},{"type":"function_call_output","call_id":"c","output":[{"type":"input_text","text":"a"` + bp + `},{"type":"input_text","text":"b"` + bp + `},{"type":"input_text","text":"c"` + bp + `}]},{"role":"user","content":"Q"}]}`,
			existing: 3, skipped: []string{"input.0.content: all 3 breakpoints in use"},
		},
		{
			name: "responses: a string input is the final message, no candidate",
			api:  responsesAPI,
			body: `{"model":"gpt-5.6","instructions":"I","input":"Q"}`,
		},
		{
			name:    "responses: explicit mode",
			api:     responsesAPI,
			body:    `{"model":"gpt-5.6","prompt_cache_options":{"mode":"explicit"},"input":[{"role":"system","content":"S"},{"role":"user","content":"Q"}]}`,
			skipped: []string{"input.0.content: prompt_cache_options.mode is explicit: the client places every breakpoint"},
		},
		{
			name:  "responses: the instructions count towards the minimum",
			api:   responsesAPI,
			body:  `{"model":"gpt-5.6","instructions":"` + sys + `","input":[{"role":"developer","content":"D"},{"role":"user","content":"Q"}]}`,
			min:   1024,
			want:  `{"model":"gpt-5.6","instructions":"` + sys + `","input":[{"role":"developer","content":[{"type":"input_text","text":"D"` + bp + `}]},{"role":"user","content":"Q"}]}`,
			added: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.api.name+"/"+tc.name, func(t *testing.T) {
			out, rep, _ := inject(t, tc.api, tc.body, tc.model, tc.min)
			want := tc.want
			if want == "" {
				want = tc.body
			}
			if string(out) != want {
				t.Errorf("got\n%s\nwant\n%s", out, want)
			}
			if !json.Valid(out) {
				t.Errorf("invalid JSON: %s", out)
			}
			if rep.CacheExisting != tc.existing || rep.CacheAdded != tc.added || !slices.Equal(rep.CacheSkipped, tc.skipped) {
				t.Errorf("report %d existing, %d added, skipped %q; want %d, %d, %q", rep.CacheExisting, rep.CacheAdded, rep.CacheSkipped, tc.existing, tc.added, tc.skipped)
			}
		})
	}
}

// TestBreakpointLimit: the API's counts per mode.
func TestBreakpointLimit(t *testing.T) {
	for m, want := range map[wire.CacheMode]int{wire.CacheModeDefault: 3, wire.CacheModeExplicit: 4, wire.CacheModeOther: 0} {
		if got := BreakpointLimit(m); got != want {
			t.Errorf("BreakpointLimit(%d) = %d, want %d", m, got, want)
		}
	}
}

// decodedMarkers counts the non-null prompt_cache_breakpoint members of the
// content (and Responses call output) parts of a body, as a JSON decoder
// reads it, and its prompt_cache_options.mode.
func decodedMarkers(body []byte, list string) (n int, mode string, ok bool) {
	var doc map[string]json.RawMessage
	if json.Unmarshal(body, &doc) != nil {
		return 0, "", false
	}
	var opts struct {
		Mode string `json:"mode"`
	}
	_ = json.Unmarshal(doc["prompt_cache_options"], &opts)
	var items []map[string]json.RawMessage
	_ = json.Unmarshal(doc[list], &items)
	for _, it := range items {
		for _, key := range []string{"content", "output"} {
			var parts []map[string]json.RawMessage
			_ = json.Unmarshal(it[key], &parts)
			for _, p := range parts {
				if m, ok := p["prompt_cache_breakpoint"]; ok && !bytes.Equal(bytes.TrimSpace(m), []byte("null")) {
					n++
				}
			}
		}
	}
	return n, opts.Mode, true
}

// FuzzInjectBreakpoints: on any body either API parses, for any model,
// placing breakpoints yields valid JSON; only insertions of the marker
// (and of the array around a string content) are made, so every byte of
// the body is kept in order; the markers added are what a decoder counts
// as new; and they never take the total past the mode's limit, nor are any
// added in explicit or an unknown mode.
func FuzzInjectBreakpoints(f *testing.F) {
	seeds := []string{
		`{"model":"gpt-5.6","messages":[{"role":"system","content":"S"},{"role":"user","content":"U1"},{"role":"assistant","content":"A"},{"role":"user","content":"U2"}]}`,
		`{"model":"gpt-5.6","messages":[{"role":"system","content":[{"type":"text","text":"S"` + bp + `},{"type":"image_url","image_url":{"url":"u"}}]},{"role":"user","content":[{"type":"text","text":"a","prompt_cache_breakpoint":null}]},{"role":"user","content":"U"}]}`,
		`{"model":"gpt-5.6","prompt_cache_options":{"mode":"explicit"},"messages":[{"role":"developer","content":"D"},{"role":"user","content":"U"}]}`,
		`{"model":"gpt-5.6","messages":[{"role":"system","content":"S","content":[{"type":"text","text":""}]},{"role":"user","content":"U"}]}`,
		`{"stream":true,"model":"gpt-5.6","messages":[{"role":"developer","content":[{"type":"text","text":"D" }]},{"role":"user","content":"U"}]}`,
		`{"model":"gpt-5.6","input":[{"role":"developer","content":"D"},{"role":"user","content":[{"type":"input_image","image_url":"u"}]},{"type":"function_call_output","call_id":"c","output":[{"type":"input_text","text":"x"` + bp + `}]},{"role":"user","content":"Q"}]}`,
		`{"model":"gpt-5.6","instructions":"I","input":"Q","prompt_cache_options":{"mode":"implicit","mode":"explicit"}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), "", uint16(0))
		f.Add([]byte(s), "gpt-5.6-terra", uint16(3))
	}
	f.Fuzz(func(t *testing.T, body []byte, model string, min uint16) {
		for _, a := range []api{chatAPI, responsesAPI} {
			req, err := a.d.Parse(body)
			if err != nil {
				continue
			}
			var edits wire.Edits
			rep, err := a.d.Edit(body, &req, wire.EditRequest{Model: model, Cache: &wire.CacheRequest{TTL: "1h", MinTokens: int64(min)}}, &edits)
			if err != nil {
				continue // a model the rewrite refuses
			}
			// Leave the model rewrite out: the body's own bytes, and only
			// insertions, must remain.
			var only wire.Edits
			for _, e := range edits.List() {
				if e.Start == req.Index.Model.Start && e.End == req.Index.Model.End && e.End > e.Start {
					continue
				}
				if e.Start != e.End {
					t.Fatalf("%s: a replacement %+v", a.name, e)
				}
				switch e.Text {
				case breakpointMarker, breakpointMarker + partClose, chatTextOpen, inputTextOpen,
					`"stream_options":{"include_usage":true}`, `,"stream_options":{"include_usage":true}`, `"include_usage":true`, `,"include_usage":true`:
				default:
					t.Fatalf("%s: inserted %q", a.name, e.Text)
				}
				only.Add(e.Start, e.End, e.Text)
			}
			out, err := wire.Apply(body, &only)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(out) {
				t.Fatalf("%s: invalid JSON\n%s\nfrom\n%s", a.name, out, body)
			}
			// Every byte of the body, in order: removing the insertions
			// gives it back.
			var back []byte
			prev := 0
			ins := slices.Clone(only.List())
			slices.SortStableFunc(ins, func(x, y wire.Edit) int { return x.Start - y.Start })
			pos := 0
			for _, e := range ins {
				back = append(back, out[pos:pos+e.Start-prev]...)
				pos += e.Start - prev + len(e.Text)
				prev = e.Start
			}
			back = append(back, out[pos:]...)
			if !bytes.Equal(back, body) {
				t.Fatalf("%s: the body's bytes moved:\n%s\n%s", a.name, back, body)
			}
			before, mode, ok1 := decodedMarkers(body, a.list)
			after, _, ok2 := decodedMarkers(out, a.list)
			if !ok1 || !ok2 {
				continue
			}
			if after-before != rep.CacheAdded {
				t.Fatalf("%s: %d markers added, the report says %d\n%s", a.name, after-before, rep.CacheAdded, out)
			}
			if rep.CacheAdded > 0 {
				if after > ImplicitModeBreakpoints || req.Index.Cache.Mode != wire.CacheModeDefault || mode == "explicit" {
					t.Fatalf("%s: %d markers in mode %q (%d)\n%s", a.name, after, mode, req.Index.Cache.Mode, out)
				}
			}
		}
	})
}
