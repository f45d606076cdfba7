package mockprovider

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

const (
	oaiHello  = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}`
	oaiStream = `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello"}]}`
)

func TestOpenAIJSONResponse(t *testing.T) {
	s := startMock(t, Options{})
	resp, body, err := post(t, s.URL()+"/v1/chat/completions", oaiHello, openaiHeaders())
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d err %v body %s", resp.StatusCode, err, body)
	}
	h := resp.Header
	if !strings.HasPrefix(h.Get("x-request-id"), "req_") || h.Get("openai-version") != "2020-10-01" || h.Get("openai-processing-ms") == "" {
		t.Errorf("identity headers %v", h)
	}
	checkOpenAIRateHeaders(t, h)
	if got := keys(body, "@this"); got != "id,object,created,model,choices,usage,service_tier,system_fingerprint" {
		t.Errorf("key order %s", got)
	}
	u := gjson.GetBytes(body, "usage")
	// "Hello": 2 + 3 per message + 3 for the reply.
	if u.Get("prompt_tokens").Int() != 8 || !u.Get("prompt_tokens_details.cached_tokens").Exists() ||
		!u.Get("completion_tokens_details.reasoning_tokens").Exists() ||
		u.Get("total_tokens").Int() != u.Get("prompt_tokens").Int()+u.Get("completion_tokens").Int() {
		t.Errorf("usage %s", u.Raw)
	}
	text := gjson.GetBytes(body, "choices.0.message.content").String()
	if int64(len(strings.Fields(text))) != u.Get("completion_tokens").Int() {
		t.Errorf("%q is not %d words", text, u.Get("completion_tokens").Int())
	}
	if fr := gjson.GetBytes(body, "choices.0.finish_reason").String(); fr != "stop" {
		t.Errorf("finish_reason %q", fr)
	}
	led := s.Provider().Ledger()
	if len(led) != 1 || led[0].Dialect != DialectOpenAI || led[0].Reported.InputTokens != 8 || led[0].RequestID != h.Get("x-request-id") {
		t.Errorf("ledger %+v", led)
	}
}

func checkOpenAIRateHeaders(t *testing.T, h http.Header) {
	t.Helper()
	for _, name := range []string{"limit-requests", "limit-tokens", "remaining-requests", "remaining-tokens"} {
		if v := h.Get("x-ratelimit-" + name); v == "" || strings.Trim(v, "0123456789") != "" {
			t.Errorf("x-ratelimit-%s = %q", name, v)
		}
	}
	for _, name := range []string{"reset-requests", "reset-tokens"} {
		if _, err := time.ParseDuration(h.Get("x-ratelimit-" + name)); err != nil {
			t.Errorf("x-ratelimit-%s = %q: %v", name, h.Get("x-ratelimit-"+name), err)
		}
	}
}

func TestOpenAIPromptRule(t *testing.T) {
	opts := Options{}.withDefaults()
	tests := []struct {
		name, body string
		want       int64
	}{
		{"string", oaiHello, 2 + 3 + 3},
		{"parts", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"12345"},{"type":"image_url","image_url":{"url":"x"}}]}]}`, 2 + 1600 + 3 + 3},
		{"system and tool call", `{"model":"m","messages":[{"role":"system","content":"abcd"},{"role":"assistant","content":null,"tool_calls":[{"id":"c"}]},{"role":"tool","content":"ok"}]}`,
			1 + 3 + ceilTokens(len(`[{"id":"c"}]`)) + 3 + 1 + 3 + 3},
		{"tools", `{"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"a"}]}`,
			ceilTokens(len(`{"type":"function","function":{"name":"f"}}`)) + 1 + 3 + 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parseOpenAI([]byte(tc.body), opts)
			if err != nil {
				t.Fatal(err)
			}
			if p.promptTokens != tc.want {
				t.Errorf("prompt tokens %d, want %d", p.promptTokens, tc.want)
			}
		})
	}
}

func TestOpenAIBadRequests(t *testing.T) {
	s := startMock(t, Options{Models: []string{"gpt-4o-mini", "gpt-5-nano"}})
	tests := []struct {
		name, body string
		h          http.Header
		status     int
		code       string
	}{
		{"no auth", oaiHello, http.Header{}, 401, ""},
		{"x-api-key is not OpenAI auth", oaiHello, with(http.Header{}, "x-api-key", "k"), 401, ""},
		{"malformed", `{"model"`, openaiHeaders(), 400, ""},
		{"no messages", `{"model":"gpt-4o-mini"}`, openaiHeaders(), 400, "missing_required_parameter"},
		{"empty messages", `{"model":"gpt-4o-mini","messages":[]}`, openaiHeaders(), 400, "empty_array"},
		{"max_tokens on reasoning model", `{"model":"gpt-5-nano","max_tokens":10,"messages":[{"role":"user","content":"a"}]}`, openaiHeaders(), 400, "unsupported_parameter"},
		{"stream_options without stream", `{"model":"gpt-4o-mini","stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a"}]}`, openaiHeaders(), 400, "invalid_value"},
		{"unknown model", `{"model":"gpt-x","messages":[{"role":"user","content":"a"}]}`, openaiHeaders(), 404, "model_not_found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, _ := post(t, s.URL()+"/v1/chat/completions", tc.body, tc.h)
			e := gjson.GetBytes(body, "error")
			if resp.StatusCode != tc.status || e.Get("type").String() != "invalid_request_error" || e.Get("message").String() == "" ||
				e.Get("code").String() != tc.code || !e.Get("param").Exists() {
				t.Errorf("status %d body %s", resp.StatusCode, body)
			}
		})
	}
}

func TestOpenAIMaxTokens(t *testing.T) {
	s := startMock(t, Options{})
	_, body, _ := post(t, s.URL()+"/v1/chat/completions",
		`{"model":"gpt-5-nano","max_completion_tokens":4,"messages":[{"role":"user","content":"Hello"}]}`, with(openaiHeaders(), "x-mock-output-tokens", "50"))
	if gjson.GetBytes(body, "usage.completion_tokens").Int() != 4 || gjson.GetBytes(body, "choices.0.finish_reason").String() != "length" {
		t.Errorf("body %s", body)
	}
}

func TestOpenAIStream(t *testing.T) {
	s := startMock(t, Options{})
	tests := []struct {
		name, body  string
		h           http.Header
		wantUsage   bool
		obfuscation bool
	}{
		{"include_usage", oaiStream, openaiHeaders(), true, true},
		{"no include_usage", strings.Replace(oaiStream, `"stream_options":{"include_usage":true},`, "", 1), openaiHeaders(), false, true},
		{"no obfuscation", strings.Replace(oaiStream, `"include_usage":true`, `"include_usage":true,"include_obfuscation":false`, 1), openaiHeaders(), true, false},
		{"no usage knob", oaiStream, with(openaiHeaders(), "x-mock-no-usage", "1"), false, true},
		{"random split", oaiStream, with(openaiHeaders(), "x-mock-split", "random"), true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, err := post(t, s.URL()+"/v1/chat/completions", tc.body, tc.h)
			if err != nil || resp.StatusCode != 200 || resp.Header.Get("content-type") != "text/event-stream; charset=utf-8" {
				t.Fatalf("status %d err %v headers %v", resp.StatusCode, err, resp.Header)
			}
			events, err := decodeSSE(body)
			if err != nil {
				t.Fatal(err)
			}
			if last := events[len(events)-1]; last.Data != "[DONE]" || last.Event != "" {
				t.Errorf("last event %+v", last)
			}
			var text strings.Builder
			usageChunks := 0
			var usage gjson.Result
			for i, e := range events[:len(events)-1] {
				if e.Event != "" || !json.Valid([]byte(e.Data)) {
					t.Fatalf("chunk %d: %+v", i, e)
				}
				c := gjson.Parse(e.Data)
				if c.Get("object").String() != "chat.completion.chunk" || c.Get("obfuscation").Exists() != tc.obfuscation {
					t.Errorf("chunk %d: %s", i, e.Data)
				}
				if c.Get("usage").Exists() != tc.wantUsage && !(tc.name == "no usage knob") {
					t.Errorf("chunk %d usage presence: %s", i, e.Data)
				}
				if c.Get("usage").IsObject() {
					usageChunks++
					usage = c.Get("usage")
					if c.Get("choices").Raw != "[]" || i != len(events)-2 {
						t.Errorf("usage chunk %d (of %d) has choices %s", i, len(events), c.Get("choices").Raw)
					}
				}
				text.WriteString(c.Get("choices.0.delta.content").String())
			}
			if (usageChunks == 1) != tc.wantUsage {
				t.Fatalf("%d usage chunks", usageChunks)
			}
			if tc.wantUsage && int64(len(strings.Fields(text.String()))) != usage.Get("completion_tokens").Int() {
				t.Errorf("streamed %q, usage %s", text.String(), usage.Raw)
			}
			if fr := gjson.Get(events[len(events)-2-boolInt(tc.wantUsage)].Data, "choices.0.finish_reason").String(); fr != "stop" {
				t.Errorf("finish chunk reason %q", fr)
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestOpenAIStreamErrorAfter(t *testing.T) {
	s := startMock(t, Options{})
	_, body, _ := post(t, s.URL()+"/v1/chat/completions", oaiStream, with(openaiHeaders(), "x-mock-error-after", "2"))
	events, err := decodeSSE(body)
	if err != nil || len(events) != 3 || gjson.Get(events[2].Data, "error.type").String() != "server_error" {
		t.Fatalf("events %+v (%v)", events, err)
	}
	led := s.Provider().Ledger()
	if len(led) != 1 || !led[0].Cut || len(led[0].Usage) != 0 || led[0].Reported != (Tokens{}) {
		t.Errorf("ledger %+v", led)
	}
}

// TestOpenAIPromptCache: a prompt of 1024+ tokens warms the cache; a later
// prompt sharing its prefix reports the prefix's tokens, in 128-token
// increments, as cached_tokens (still inside prompt_tokens), in JSON and in
// the stream's usage chunk; short prompts, other models and expired
// prefixes never hit.
func TestOpenAIPromptCache(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	s := startMock(t, Options{Now: func() time.Time { return now }})
	// 4800 bytes: 1200 tokens, plus 3 for the message: a 1203-token prefix.
	system := strings.Repeat("You are terse. ", 320)
	body := func(model, user string, stream bool) string {
		b, _ := json.Marshal(map[string]any{"model": model, "stream": stream, "messages": []map[string]string{
			{"role": "system", "content": system}, {"role": "user", "content": user}}})
		if stream {
			b = []byte(strings.Replace(string(b), `"stream":true`, `"stream":true,"stream_options":{"include_usage":true}`, 1))
		}
		return string(b)
	}
	usage := func(b []byte, stream bool) gjson.Result {
		if !stream {
			return gjson.GetBytes(b, "usage")
		}
		var u gjson.Result
		for _, line := range strings.Split(string(b), "\n") {
			if d, ok := strings.CutPrefix(line, "data: "); ok && gjson.Get(d, "usage").IsObject() {
				u = gjson.Get(d, "usage")
			}
		}
		return u
	}
	call := func(b string, stream bool) (prompt, cached int64) {
		t.Helper()
		resp, got, err := post(t, s.URL()+"/v1/chat/completions", b, openaiHeaders())
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d, %v: %s", resp.StatusCode, err, got)
		}
		u := usage(got, stream)
		return u.Get("prompt_tokens").Int(), u.Get("prompt_tokens_details.cached_tokens").Int()
	}
	if _, cached := call(body("gpt-4o", "Hello", false), false); cached != 0 {
		t.Fatalf("a cold prompt reported %d cached tokens", cached)
	}
	// The system prefix (1203 tokens) is warm: 1152 of it, a multiple of 128, is cached.
	// Each user message is 400 bytes: 100 tokens, 103 with its message.
	longA, longB := strings.Repeat("Tell me about A. ", 25)[:400], strings.Repeat("Tell me about B. ", 25)[:400]
	for _, tc := range []struct {
		user   string
		stream bool
	}{{longA, false}, {longB, true}} {
		prompt, cached := call(body("gpt-4o", tc.user, tc.stream), tc.stream)
		if prompt != 1203+103+3 || cached != 1152 {
			t.Errorf("stream %v: prompt %d, cached %d; want 1309 and 1152", tc.stream, prompt, cached)
		}
	}
	// The whole of the first of those prompts (1306 tokens before the
	// reply's priming) is warm too: the longest prefix wins.
	prompt, cached := call(body("gpt-4o", longA, false), false)
	if cached != 1280 {
		t.Errorf("prompt %d: cached %d, want 1280", prompt, cached)
	}
	led := s.Provider().Ledger()
	if last := led[len(led)-1]; last.Reported.CacheReadTokens != cached || last.Reported.InputTokens != prompt-cached {
		t.Errorf("ledger %+v: cached tokens are cache reads, the rest input", last.Reported)
	}
	if _, cached := call(body("gpt-4o-mini", "Hello", false), false); cached != 0 {
		t.Errorf("another model hit gpt-4o's cache: %d", cached)
	}
	short := `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}`
	call(short, false)
	if _, cached := call(short, false); cached != 0 {
		t.Errorf("a prompt under 1024 tokens reported %d cached", cached)
	}
	now = now.Add(6 * time.Minute)
	if _, cached := call(body("gpt-4o", "Hello", false), false); cached != 0 {
		t.Errorf("an expired prefix reported %d cached", cached)
	}
}

// TestCombinedTokensLimit: with TPM set, OpenAI's tokens headers report one
// tokens-per-minute bucket charged input and output together, a request it
// cannot cover is a 429 naming the wait, and a shorter Window refills the
// same limits faster.
func TestCombinedTokensLimit(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	s := startMock(t, Options{RPM: 60, TPM: 1000, Window: 10 * time.Second, Enforce: true, Now: func() time.Time { return now }})
	body := `{"model":"gpt-4o-mini","max_tokens":400,"messages":[{"role":"user","content":"Hello!"}]}`
	h := openaiHeaders()
	h.Set("x-mock-output-tokens", "400")
	var left []int64
	for range 2 {
		resp, got, _ := post(t, s.URL()+"/v1/chat/completions", body, h)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, got)
		}
		if resp.Header.Get("x-ratelimit-limit-tokens") != "1000" || resp.Header.Get("x-ratelimit-limit-requests") != "60" {
			t.Fatalf("limits %q tokens, %q requests", resp.Header.Get("x-ratelimit-limit-tokens"), resp.Header.Get("x-ratelimit-limit-requests"))
		}
		n, _ := strconv.ParseInt(resp.Header.Get("x-ratelimit-remaining-tokens"), 10, 64)
		left = append(left, n)
	}
	used := 1000 - left[0]
	if used <= 400 || left[1] != 1000-2*used {
		t.Fatalf("tokens remaining %v: want each request charged its input and output (over 400) against one bucket", left)
	}
	resp, got, _ := post(t, s.URL()+"/v1/chat/completions", body, h)
	if resp.StatusCode != 429 || resp.Header.Get("retry-after") == "" {
		t.Fatalf("a third request: status %d retry-after %q: %s", resp.StatusCode, resp.Header.Get("retry-after"), got)
	}
	// The bucket refills 1000 tokens per 10s: full again in (2·used/1000)×10s.
	full := time.Duration(float64(2*used) / 1000 * float64(10*time.Second))
	if reset, err := time.ParseDuration(resp.Header.Get("x-ratelimit-reset-tokens")); err != nil || reset.Round(time.Millisecond) != full.Round(time.Millisecond) {
		t.Errorf("tokens reset %q, want %s", resp.Header.Get("x-ratelimit-reset-tokens"), full)
	}
	now = now.Add(full)
	if resp, got, _ := post(t, s.URL()+"/v1/chat/completions", body, h); resp.StatusCode != 200 {
		t.Errorf("after the window's refill: status %d: %s", resp.StatusCode, got)
	}
}
