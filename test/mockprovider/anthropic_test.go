package mockprovider

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

const helloReq = `{"model":"claude-sonnet-4-5","max_tokens":1000,"messages":[{"role":"user","content":"Hello"}]}`

func TestAnthropicJSONResponse(t *testing.T) {
	s := startMock(t, Options{})
	resp, body, err := post(t, s.URL()+"/v1/messages?beta=true", helloReq, anthropicHeaders())
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d err %v body %s", resp.StatusCode, err, body)
	}
	if !strings.HasPrefix(string(body), `{"model":"claude-sonnet-4-5","id":"msg_01`) {
		t.Errorf("body does not start like a real response: %.60s", body)
	}
	if got := keys(body, "@this"); got != "model,id,type,role,content,stop_reason,stop_sequence,usage" {
		t.Errorf("top-level key order %s", got)
	}
	if got := keys(body, "usage"); got != "input_tokens,cache_creation_input_tokens,cache_read_input_tokens,cache_creation,output_tokens,service_tier" {
		t.Errorf("usage key order %s", got)
	}
	m := mustJSON(t, body)
	// "Hello" is ceil(5/4)=2 tokens plus the 3-token message overhead.
	if in := num(t, m, "usage.input_tokens"); in != 5 {
		t.Errorf("input_tokens = %d, want 5", in)
	}
	out := num(t, m, "usage.output_tokens")
	if want := naturalOutput([]byte(`"Hello"`)); out != want {
		t.Errorf("output_tokens = %d, want %d", out, want)
	}
	text := gjson.GetBytes(body, "content.0.text").String()
	if n := int64(len(strings.Fields(text))); n != out {
		t.Errorf("text has %d words, output_tokens %d", n, out)
	}
	if sr := gjson.GetBytes(body, "stop_reason").String(); sr != "end_turn" {
		t.Errorf("stop_reason %q", sr)
	}
	h := resp.Header
	if !strings.HasPrefix(h.Get("request-id"), "req_011C") || h.Get("anthropic-organization-id") == "" {
		t.Errorf("identity headers: request-id %q org %q", h.Get("request-id"), h.Get("anthropic-organization-id"))
	}
	checkAnthropicRateHeaders(t, h)
	led := s.Provider().Ledger()
	if len(led) != 1 || led[0].RequestID != h.Get("request-id") || led[0].Reported.OutputTokens != out ||
		led[0].Reported.InputTokens != 5 || led[0].Cut || !led[0].Complete || led[0].Dialect != DialectAnthropic {
		t.Errorf("ledger %+v", led)
	}
	if len(led) == 1 && (len(led[0].Usage) != 1 || !strings.Contains(string(body), string(led[0].Usage[0]))) {
		t.Errorf("ledger usage %s is not the usage as sent", led[0].Usage)
	}
}

// keys lists the object keys at path in document order.
func keys(doc []byte, path string) string {
	var ks []string
	gjson.GetBytes(doc, path).ForEach(func(k, _ gjson.Result) bool {
		ks = append(ks, k.String())
		return true
	})
	return strings.Join(ks, ",")
}

func checkAnthropicRateHeaders(t *testing.T, h http.Header) {
	t.Helper()
	for _, dim := range []string{"requests", "tokens", "input-tokens", "output-tokens"} {
		limit, err1 := strconv.ParseInt(h.Get("anthropic-ratelimit-"+dim+"-limit"), 10, 64)
		left, err2 := strconv.ParseInt(h.Get("anthropic-ratelimit-"+dim+"-remaining"), 10, 64)
		_, err3 := time.Parse(time.RFC3339, h.Get("anthropic-ratelimit-"+dim+"-reset"))
		if err1 != nil || err2 != nil || err3 != nil || left > limit || left < 0 {
			t.Errorf("%s headers: limit %q remaining %q reset %q", dim, h.Get("anthropic-ratelimit-"+dim+"-limit"),
				h.Get("anthropic-ratelimit-"+dim+"-remaining"), h.Get("anthropic-ratelimit-"+dim+"-reset"))
		}
		if dim != "requests" && left%1000 != 0 {
			t.Errorf("%s remaining %d not rounded to thousands", dim, left)
		}
	}
}

func TestAnthropicTokenRule(t *testing.T) {
	opts := Options{}.withDefaults()
	tests := []struct {
		name string
		body string
		want int64
	}{
		{"string content", `{"model":"m","messages":[{"role":"user","content":"Hello"}]}`, 2 + 3},
		{"text blocks", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"12345678"},{"type":"text","text":"123456789"}]}]}`, 2 + 3 + 3},
		{"system string", `{"model":"m","system":"abcdefgh","messages":[{"role":"user","content":"a"}]}`, 2 + 1 + 3},
		{"system blocks", `{"model":"m","system":[{"type":"text","text":"abcd"},{"type":"text","text":"abcde"}],"messages":[{"role":"user","content":"a"}]}`, 1 + 2 + 4},
		{"image", `{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"xxxx"}}]}]}`, 1600 + 3},
		{"text document", `{"model":"m","messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"12345"}}]}]}`, 2 + 3},
		{"tool", `{"model":"m","tools":[{"name":"ab","description":"cd","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"a"}]}`,
			ceilTokens(2+2+len(`{"type":"object"}`)) + 4},
		{"tool_use and tool_result", `{"model":"m","messages":[
			{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"get","input":{"a":1}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"123456789"},{"type":"image","source":{"type":"url","url":"u"}}]}]}]}`,
			ceilTokens(3+len(`{"a":1}`)) + 3 + 3 + 1600 + 3},
		{"thinking", `{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"thinking","thinking":"12345","signature":"s"},{"type":"text","text":"ok"}]}]}`,
			4 + 2 + 3 + 1},
		{"empty content array", `{"model":"m","messages":[{"role":"user","content":[]}]}`, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseAnthropic([]byte(tc.body), false, opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.total(); got != tc.want {
				t.Errorf("total = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestAnthropicBadRequests(t *testing.T) {
	s := startMock(t, Options{Models: []string{"claude-sonnet-4-5"}})
	tests := []struct {
		name, body string
		h          http.Header
		status     int
		errType    string
		msg        string
	}{
		{"no key", helloReq, with(http.Header{}, "anthropic-version", "2023-06-01"), 401, "authentication_error", "x-api-key"},
		{"no version", helloReq, with(http.Header{}, "x-api-key", "k"), 401, "authentication_error", "anthropic-version"},
		{"bearer is fine but model unknown", strings.Replace(helloReq, "claude-sonnet-4-5", "claude-x", 1),
			with(http.Header{}, "authorization", "Bearer t", "anthropic-version", "2023-06-01"), 404, "not_found_error", "model: claude-x"},
		{"malformed", `{"model":`, anthropicHeaders(), 400, "invalid_request_error", "not valid JSON"},
		{"no model", `{"max_tokens":1,"messages":[{"role":"user","content":"a"}]}`, anthropicHeaders(), 400, "invalid_request_error", "model: Field required"},
		{"no messages", `{"model":"claude-sonnet-4-5","max_tokens":1}`, anthropicHeaders(), 400, "invalid_request_error", "messages: Field required"},
		{"no max_tokens", `{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"a"}]}`, anthropicHeaders(), 400, "invalid_request_error", "max_tokens"},
		{"bad role", `{"model":"claude-sonnet-4-5","max_tokens":1,"messages":[{"role":"robot","content":"a"}]}`, anthropicHeaders(), 400, "invalid_request_error", "role"},
		{"bad knob", helloReq, with(anthropicHeaders(), "x-mock-error-after", "soon"), 400, "invalid_request_error", "x-mock-error-after"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, _ := post(t, s.URL()+"/v1/messages", tc.body, tc.h)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if gjson.GetBytes(body, "type").String() != "error" || gjson.GetBytes(body, "error.type").String() != tc.errType ||
				!strings.Contains(gjson.GetBytes(body, "error.message").String(), tc.msg) ||
				gjson.GetBytes(body, "request_id").String() != resp.Header.Get("request-id") {
				t.Errorf("body %s", body)
			}
		})
	}
	if n := len(s.Provider().Ledger()); n != 0 {
		t.Errorf("failed requests reached the ledger: %d entries", n)
	}
}

func TestAnthropicOutputControl(t *testing.T) {
	s := startMock(t, Options{})
	tests := []struct {
		name      string
		maxTokens int
		header    string
		want      int64
		stop      string
	}{
		{"header exact", 1000, "37", 37, "end_turn"},
		{"header capped", 10, "37", 10, "max_tokens"},
		{"max_tokens zero", 0, "", 0, "max_tokens"},
		{"natural capped", 3, "", 3, "max_tokens"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := anthropicHeaders()
			if tc.header != "" {
				h.Set("x-mock-output-tokens", tc.header)
			}
			body := fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":%d,"messages":[{"role":"user","content":"Hello"}]}`, tc.maxTokens)
			_, got, _ := post(t, s.URL()+"/v1/messages", body, h)
			if n := gjson.GetBytes(got, "usage.output_tokens").Int(); n != tc.want {
				t.Errorf("output_tokens %d, want %d", n, tc.want)
			}
			if sr := gjson.GetBytes(got, "stop_reason").String(); sr != tc.stop {
				t.Errorf("stop_reason %q, want %q", sr, tc.stop)
			}
			content := gjson.GetBytes(got, "content")
			if tc.want == 0 && content.Raw != "[]" {
				t.Errorf("content %s, want []", content.Raw)
			}
			if tc.want > 0 && int64(len(strings.Fields(content.Get("0.text").String()))) != tc.want {
				t.Errorf("text %q is not %d words", content.Get("0.text").String(), tc.want)
			}
		})
	}
}

func TestDeterminism(t *testing.T) {
	a, b := startMock(t, Options{}), startMock(t, Options{})
	outputs := map[int64]bool{}
	for i := range 8 {
		body := fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":4096,"messages":[{"role":"user","content":"question number %d"}]}`, i)
		var usages []string
		for _, s := range []*Server{a, a, b} {
			_, got, _ := post(t, s.URL()+"/v1/messages", body, anthropicHeaders())
			usages = append(usages, gjson.GetBytes(got, "usage").Raw)
		}
		if usages[0] != usages[1] || usages[0] != usages[2] {
			t.Errorf("request %d: usage differs: %v", i, usages)
		}
		out := gjson.Get(usages[0], "output_tokens").Int()
		if out < 5 || out > 200 {
			t.Errorf("output %d outside [5, 200]", out)
		}
		outputs[out] = true
	}
	if len(outputs) < 2 {
		t.Errorf("eight different prompts all produced the same output length: %v", outputs)
	}
}

func TestCountTokens(t *testing.T) {
	s := startMock(t, Options{})
	body := `{"model":"claude-sonnet-4-5","system":[{"type":"text","text":"You are terse."}],"messages":[{"role":"user","content":"What is two plus two?"}]}`
	resp, got, _ := post(t, s.URL()+"/v1/messages/count_tokens?beta=true", body, anthropicHeaders())
	if resp.StatusCode != 200 || keys(got, "@this") != "input_tokens" {
		t.Fatalf("status %d body %s", resp.StatusCode, got)
	}
	// The same prompt as a message must report the same input.
	msg := strings.Replace(body, `"messages"`, `"max_tokens":10,"messages"`, 1)
	_, m, _ := post(t, s.URL()+"/v1/messages", msg, anthropicHeaders())
	if c, in := gjson.GetBytes(got, "input_tokens").Int(), gjson.GetBytes(m, "usage.input_tokens").Int(); c != in || c != 4+3+6 {
		t.Errorf("count_tokens %d, messages input %d, want both %d", c, in, 4+3+6)
	}
	if n := len(s.Provider().Ledger()); n != 1 {
		t.Errorf("ledger has %d entries; count_tokens must not be recorded", n)
	}
}

// sys builds a system block of about n tokens with an optional cache_control.
func sys(n int, cc string) string {
	text := strings.Repeat("abcd", n)
	if cc == "" {
		return fmt.Sprintf(`{"type":"text","text":%q}`, text)
	}
	return fmt.Sprintf(`{"type":"text","text":%q,"cache_control":%s}`, text, cc)
}

const (
	eph   = `{"type":"ephemeral"}`
	eph1h = `{"type":"ephemeral","ttl":"1h"}`
)

func cacheReq(model string, system []string, msgs string) string {
	return fmt.Sprintf(`{"model":%q,"max_tokens":50,"system":[%s],"messages":%s}`, model, strings.Join(system, ","), msgs)
}

func TestPromptCaching(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	s := startMock(t, Options{Now: clock, MinCacheTokens: map[string]int64{"custom-min": 100}})
	url := s.URL() + "/v1/messages"
	user := `[{"role":"user","content":"12345678"}]` // 2 + 3 tokens after the system prompt
	usageOf := func(body string) (in, write, w5, w1, read int64) {
		t.Helper()
		resp, got, _ := post(t, url, body, anthropicHeaders())
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, got)
		}
		u := gjson.GetBytes(got, "usage")
		in, write, read = u.Get("input_tokens").Int(), u.Get("cache_creation_input_tokens").Int(), u.Get("cache_read_input_tokens").Int()
		w5, w1 = u.Get("cache_creation.ephemeral_5m_input_tokens").Int(), u.Get("cache_creation.ephemeral_1h_input_tokens").Int()
		if write != w5+w1 {
			t.Errorf("cache_creation_input_tokens %d != split %d+%d", write, w5, w1)
		}
		return
	}

	t.Run("write then read then expire", func(t *testing.T) {
		body := cacheReq("claude-sonnet-4-5", []string{sys(1500, eph)}, user)
		if in, write, _, _, read := usageOf(body); in != 5 || write != 1500 || read != 0 {
			t.Errorf("first: input %d write %d read %d, want 5 1500 0", in, write, read)
		}
		now = now.Add(4 * time.Minute)
		if in, write, _, _, read := usageOf(body); in != 5 || write != 0 || read != 1500 {
			t.Errorf("repeat: input %d write %d read %d, want 5 0 1500", in, write, read)
		}
		// The read refreshed the 5-minute TTL; 4 more minutes still hit.
		now = now.Add(4 * time.Minute)
		if _, _, _, _, read := usageOf(body); read != 1500 {
			t.Errorf("after refresh: read %d, want 1500", read)
		}
		now = now.Add(6 * time.Minute)
		if _, write, _, _, read := usageOf(body); write != 1500 || read != 0 {
			t.Errorf("after expiry: write %d read %d, want 1500 0", write, read)
		}
	})

	t.Run("below minimum is not cached", func(t *testing.T) {
		for _, tc := range []struct {
			model  string
			tokens int
		}{{"claude-sonnet-4-5", 1000}, {"claude-haiku-4-5", 3000}, {"claude-opus-4-7", 2000}} {
			body := cacheReq(tc.model, []string{sys(tc.tokens, eph)}, user)
			for range 2 {
				if in, write, _, _, read := usageOf(body); write != 0 || read != 0 || in != int64(tc.tokens)+5 {
					t.Errorf("%s with %d tokens: input %d write %d read %d", tc.model, tc.tokens, in, write, read)
				}
			}
		}
		body := cacheReq("claude-custom-min", []string{sys(150, eph)}, user)
		if _, write, _, _, _ := usageOf(body); write != 150 {
			t.Errorf("configured minimum 100: write %d, want 150", write)
		}
	})

	t.Run("ttl split and lookback", func(t *testing.T) {
		body := cacheReq("claude-sonnet-4-5", []string{sys(1100, eph1h), sys(300, ""), sys(200, eph)}, user)
		if in, _, w5, w1, read := usageOf(body); w1 != 1100 || w5 != 500 || in != 5 || read != 0 {
			t.Errorf("input %d w5 %d w1 %d read %d, want 5 500 1100 0", in, w5, w1, read)
		}
		// A later turn moves the breakpoint forward; the lookback finds the
		// previous prefix even though its marker moved.
		next := cacheReq("claude-sonnet-4-5", []string{sys(1100, eph1h), sys(300, ""), sys(200, "")},
			`[{"role":"user","content":"12345678"},{"role":"assistant","content":"ok"},{"role":"user","content":[{"type":"text","text":"more","cache_control":{"type":"ephemeral"}}]}]`)
		in, _, w5, w1, read := usageOf(next)
		if read != 1600 || w1 != 0 || w5 != 5+4+4 || in != 0 {
			t.Errorf("next turn: input %d w5 %d w1 %d read %d, want 0 13 0 1600", in, w5, w1, read)
		}
	})

	t.Run("automatic caching", func(t *testing.T) {
		body := `{"model":"claude-sonnet-4-5","max_tokens":5,"cache_control":{"type":"ephemeral"},"system":[` + sys(1200, "") +
			`],"messages":[{"role":"user","content":"abcd"}]}`
		if in, write, _, _, _ := usageOf(body); in != 0 || write != 1204 {
			t.Errorf("automatic: input %d write %d, want 0 1204", in, write)
		}
	})
}

// TestCachingTotalIsUncachedCount: whatever the cache state, the three input
// classes sum to the request's count_tokens value.
func TestCachingTotalIsUncachedCount(t *testing.T) {
	s := startMock(t, Options{})
	bodies := []string{
		cacheReq("claude-sonnet-4-5", []string{sys(1100, eph1h), sys(500, eph)}, `[{"role":"user","content":"hi there"}]`),
		cacheReq("claude-sonnet-4-5", []string{sys(1100, eph1h), sys(500, "")}, `[{"role":"user","content":[{"type":"text","text":"hi there","cache_control":{"type":"ephemeral"}}]}]`),
		cacheReq("claude-sonnet-4-5", []string{sys(10, "")}, `[{"role":"user","content":"short"}]`),
	}
	for round := range 2 {
		for i, body := range bodies {
			_, count, _ := post(t, s.URL()+"/v1/messages/count_tokens", body, anthropicHeaders())
			_, got, _ := post(t, s.URL()+"/v1/messages", body, anthropicHeaders())
			u := gjson.GetBytes(got, "usage")
			sum := u.Get("input_tokens").Int() + u.Get("cache_creation_input_tokens").Int() + u.Get("cache_read_input_tokens").Int()
			if want := gjson.GetBytes(count, "input_tokens").Int(); sum != want || want == 0 {
				t.Errorf("round %d body %d: input classes sum to %d, count_tokens %d (%s)", round, i, sum, want, u.Raw)
			}
		}
	}
}

func TestBreakpointErrors(t *testing.T) {
	s := startMock(t, Options{})
	tool := func(cc string) string {
		return `{"name":"t","input_schema":{"type":"object"},"cache_control":` + cc + `}`
	}
	tests := []struct {
		name, body, msg string
	}{
		{"five explicit", `{"model":"claude-sonnet-4-5","max_tokens":5,"tools":[` + tool(eph) + `,` + tool(eph) + `],"system":[` +
			sys(1, eph) + `,` + sys(1, eph) + `],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"x","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]}]}]}`,
			"A maximum of 4 blocks with cache_control may be provided. Found 5."},
		{"four plus top-level", `{"model":"claude-sonnet-4-5","max_tokens":5,"cache_control":{"type":"ephemeral"},"system":[` +
			strings.Join([]string{sys(1, eph), sys(1, eph), sys(1, eph), sys(1, eph)}, ",") + `],"messages":[{"role":"user","content":"a"}]}`,
			"A maximum of 4 blocks with cache_control may be provided. Found 5."},
		{"1h after 5m", cacheReq("claude-sonnet-4-5", []string{sys(1, eph), sys(1, eph1h)}, `[{"role":"user","content":"a"}]`), "1h"},
		{"bad ttl", cacheReq("claude-sonnet-4-5", []string{sys(1, `{"type":"ephemeral","ttl":"2h"}`)}, `[{"role":"user","content":"a"}]`), "ttl"},
		{"thinking marked", `{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"thinking","thinking":"x","signature":"s","cache_control":{"type":"ephemeral"}}]}]}`, "thinking"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/v1/messages", "/v1/messages/count_tokens"} {
				resp, got, _ := post(t, s.URL()+path, tc.body, anthropicHeaders())
				if resp.StatusCode != 400 || gjson.GetBytes(got, "error.type").String() != "invalid_request_error" ||
					!strings.Contains(gjson.GetBytes(got, "error.message").String(), tc.msg) {
					t.Errorf("%s: status %d body %s", path, resp.StatusCode, got)
				}
			}
		})
	}
}

func TestCacheBounded(t *testing.T) {
	c := newPromptCache(3)
	now := time.Unix(0, 0)
	for i := range 10 {
		c.commit(cachePlan{writes: []cacheWrite{{key: [32]byte{byte(i)}, ttl: time.Duration(i+1) * time.Minute}}}, now)
	}
	if n := len(c.entries); n != 3 {
		t.Fatalf("cache holds %d entries, want 3", n)
	}
	for i := 7; i < 10; i++ {
		if _, ok := c.entries[[32]byte{byte(i)}]; !ok {
			t.Errorf("entry %d (latest expiry) was evicted", i)
		}
	}
}

func TestScriptedStatus(t *testing.T) {
	s := startMock(t, Options{})
	tests := []struct {
		status      int
		retry       string
		wantType    string
		wantRetry   string
		oaiType     string
		oaiCode     string
		description string
	}{
		{429, "", "rate_limit_error", "1", "tokens", "rate_limit_exceeded", "429 defaults retry-after"},
		{429, "7", "rate_limit_error", "7", "tokens", "rate_limit_exceeded", "explicit retry-after"},
		{529, "3", "overloaded_error", "3", "server_error", "", "overloaded"},
		{500, "", "api_error", "", "server_error", "", "internal"},
		{503, "", "api_error", "", "server_error", "", "unavailable"},
		{504, "", "timeout_error", "", "server_error", "", "timeout"},
		{402, "", "billing_error", "", "invalid_request_error", "", "billing"},
		{403, "", "permission_error", "", "invalid_request_error", "", "permission"},
	}
	for _, tc := range tests {
		t.Run(tc.description, func(t *testing.T) {
			kv := []string{"x-mock-status", strconv.Itoa(tc.status)}
			if tc.retry != "" {
				kv = append(kv, "x-mock-retry-after", tc.retry)
			}
			resp, got, _ := post(t, s.URL()+"/v1/messages", helloReq, with(anthropicHeaders(), kv...))
			if resp.StatusCode != tc.status || gjson.GetBytes(got, "error.type").String() != tc.wantType ||
				resp.Header.Get("retry-after") != tc.wantRetry || !strings.HasPrefix(gjson.GetBytes(got, "request_id").String(), "req_") {
				t.Errorf("anthropic: status %d retry-after %q body %s", resp.StatusCode, resp.Header.Get("retry-after"), got)
			}
			checkAnthropicRateHeaders(t, resp.Header)
			resp, got, _ = post(t, s.URL()+"/v1/chat/completions", oaiHello, with(openaiHeaders(), kv...))
			if resp.StatusCode != tc.status || gjson.GetBytes(got, "error.type").String() != tc.oaiType ||
				gjson.GetBytes(got, "error.code").String() != tc.oaiCode || resp.Header.Get("retry-after") != tc.wantRetry {
				t.Errorf("openai: status %d retry-after %q body %s", resp.StatusCode, resp.Header.Get("retry-after"), got)
			}
		})
	}
	if n := len(s.Provider().Ledger()); n != 0 {
		t.Errorf("scripted errors reached the ledger: %d", n)
	}
}

func TestEnforcedRateLimit(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	s := startMock(t, Options{RPM: 2, Enforce: true, Now: func() time.Time { return now }})
	var remaining []string
	for range 2 {
		resp, got, _ := post(t, s.URL()+"/v1/messages", helloReq, anthropicHeaders())
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, got)
		}
		remaining = append(remaining, resp.Header.Get("anthropic-ratelimit-requests-remaining"))
	}
	if remaining[0] != "1" || remaining[1] != "0" {
		t.Errorf("requests remaining %v, want [1 0]", remaining)
	}
	resp, got, _ := post(t, s.URL()+"/v1/messages", helloReq, anthropicHeaders())
	if resp.StatusCode != 429 || gjson.GetBytes(got, "error.type").String() != "rate_limit_error" || resp.Header.Get("retry-after") != "30" {
		t.Errorf("over the limit: status %d retry-after %q body %s", resp.StatusCode, resp.Header.Get("retry-after"), got)
	}
	if reset, err := time.Parse(time.RFC3339, resp.Header.Get("anthropic-ratelimit-requests-reset")); err != nil || !reset.Equal(now.Add(time.Minute)) {
		t.Errorf("requests reset %q, want %s", resp.Header.Get("anthropic-ratelimit-requests-reset"), now.Add(time.Minute).Format(time.RFC3339))
	}
	now = now.Add(30 * time.Second)
	if resp, _, _ := post(t, s.URL()+"/v1/messages", helloReq, anthropicHeaders()); resp.StatusCode != 200 {
		t.Errorf("after refill: status %d", resp.StatusCode)
	}
	if n := len(s.Provider().Ledger()); n != 3 {
		t.Errorf("ledger has %d entries, want 3 (the 429 consumed nothing)", n)
	}
}

func TestModelsLedgerReset(t *testing.T) {
	s := startMock(t, Options{})
	get := func(path string, h http.Header) (*http.Response, []byte) {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header = h
		rec := httptest.NewRecorder()
		s.Provider().ServeHTTP(rec, req)
		return rec.Result(), rec.Body.Bytes()
	}
	_, anth := get("/v1/models", anthropicHeaders())
	if gjson.GetBytes(anth, "data.0.type").String() != "model" || !gjson.GetBytes(anth, "has_more").Exists() {
		t.Errorf("anthropic models %s", anth)
	}
	_, oai := get("/v1/models", openaiHeaders())
	if gjson.GetBytes(oai, "object").String() != "list" || gjson.GetBytes(oai, "data.#").Int() != int64(len(modelList)) {
		t.Errorf("openai models %s", oai)
	}
	if resp, _ := get("/v1/models", http.Header{}); resp.StatusCode != 401 {
		t.Errorf("models without auth: %d", resp.StatusCode)
	}
	post(t, s.URL()+"/v1/messages", helloReq, anthropicHeaders())
	post(t, s.URL()+"/v1/chat/completions", oaiHello, openaiHeaders())
	_, led := get("/mock/ledger", http.Header{})
	var doc struct {
		Entries []LedgerEntry `json:"entries"`
	}
	if err := json.Unmarshal(led, &doc); err != nil || len(doc.Entries) != 2 || doc.Entries[0].Dialect != DialectAnthropic ||
		doc.Entries[1].Dialect != DialectOpenAI || doc.Entries[1].Reported.InputTokens == 0 {
		t.Fatalf("ledger %s (%v)", led, err)
	}
	req := httptest.NewRequest(http.MethodPost, "/mock/reset", nil)
	s.Provider().ServeHTTP(httptest.NewRecorder(), req)
	if n := len(s.Provider().Ledger()); n != 0 {
		t.Errorf("after reset the ledger has %d entries", n)
	}
}
