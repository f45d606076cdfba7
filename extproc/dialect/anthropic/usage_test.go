package anthropic

import (
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
)

func TestUsageFromJSON(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		want  accounting.Usage
		model string
		ok    bool
	}{
		{"split by ttl", `{"model":"m","usage":{"input_tokens":3,"cache_creation_input_tokens":30,"cache_read_input_tokens":7,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20},"output_tokens":9}}`,
			accounting.Usage{InputTokens: 3, OutputTokens: 9, CacheReadTokens: 7, CacheWrite5mTokens: 10, CacheWrite1hTokens: 20}, "m", true},
		{"no cache_creation: all 5m", `{"model":"m","usage":{"input_tokens":3,"cache_creation_input_tokens":30,"output_tokens":9}}`,
			accounting.Usage{InputTokens: 3, OutputTokens: 9, CacheWrite5mTokens: 30}, "m", true},
		{"split below total: remainder 5m", `{"usage":{"cache_creation_input_tokens":30,"cache_creation":{"ephemeral_5m_input_tokens":5,"ephemeral_1h_input_tokens":20}}}`,
			accounting.Usage{CacheWrite5mTokens: 10, CacheWrite1hTokens: 20}, "", true},
		{"padding and unknown fields", `{"usage" : {"output_tokens" : 4, "server_tool_use":{"web_search_requests":1}}   , "x":[1]}   `,
			accounting.Usage{OutputTokens: 4}, "", true},
		{"service tier, verbatim", `{"model":"m","usage":{"input_tokens":3,"output_tokens":9,"service_tier":"priority"}}`,
			accounting.Usage{InputTokens: 3, OutputTokens: 9, ServiceTier: "priority"}, "m", true},
		{"batch tier", `{"usage":{"input_tokens":3,"service_tier":"batch","service_tier":"standard"}}`,
			accounting.Usage{InputTokens: 3, ServiceTier: "batch"}, "", true},
		{"a tier that is null or not a string is none", `{"usage":{"input_tokens":3,"service_tier":null}}`,
			accounting.Usage{InputTokens: 3}, "", true},
		{"service tier outside usage is not Anthropic's", `{"usage":{"input_tokens":3},"service_tier":"priority"}`,
			accounting.Usage{InputTokens: 3}, "", true},
		{"error body", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`, accounting.Usage{}, "", false},
		{"truncated", `{"model":"m","usage":{"input_tokens":3,"output_tok`, accounting.Usage{}, "", false},
		{"usage not an object", `{"usage":null}`, accounting.Usage{}, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, model, ok := UsageFromJSON([]byte(tc.body))
			if u != tc.want || model != tc.model || ok != tc.ok {
				t.Errorf("got %+v %q %v, want %+v %q %v", u, model, ok, tc.want, tc.model, tc.ok)
			}
		})
	}
}

func TestRecordedJSONResponses(t *testing.T) {
	n := 0
	for _, r := range recordings(t) {
		if !strings.HasPrefix(r.Response.Body, "{") {
			continue
		}
		n++
		want := expectJSON(t, []byte(r.Response.Body))
		u, model, ok := UsageFromJSON([]byte(r.Response.Body))
		if !ok || u != want.usage() || model != want.model || u.OutputTokens == 0 {
			t.Errorf("%s: got %+v %q %v, want %+v %q", r.name, u, model, ok, want.usage(), want.model)
		}
	}
	if n < 10 {
		t.Errorf("only %d recorded JSON responses checked", n)
	}
}
