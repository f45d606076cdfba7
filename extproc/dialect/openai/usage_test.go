package openai

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// recorded is a real gpt-5-nano stream (envoyproxy/ai-gateway's cassette
// chat-streaming-detailed-usage.yaml in
// https://github.com/envoyproxy/ai-gateway/tree/main/tests/internal/testopenai/cassettes):
// two chunks, the usage chunk with
// empty choices (stream_options.include_usage,
// https://platform.openai.com/docs/api-reference/chat/streaming), then [DONE].
const recorded = `data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","service_tier":"default","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}],"usage":null,"obfuscation":"WuQNX"}

data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","service_tier":"default","system_fingerprint":null,"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null,"obfuscation":"IPio8PDeczEmdPr"}

data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","service_tier":"default","system_fingerprint":null,"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":100,"total_tokens":112,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":100,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"t9"}

data: [DONE]

`

func TestUsageFromJSON(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		want  accounting.Usage
		model string
		ok    bool
	}{
		{"recorded gpt-5-nano", `{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"Hi there!","role":"assistant"}}],"model":"gpt-5-nano-2025-08-07","object":"chat.completion",
			"usage":{"completion_tokens":377,"completion_tokens_details":{"reasoning_tokens":320},"prompt_tokens":8,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},"total_tokens":385}}`,
			accounting.Usage{InputTokens: 8, OutputTokens: 377}, "gpt-5-nano-2025-08-07", true},
		{"cached tokens subtracted", `{"model":"m","usage":{"prompt_tokens":1000,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":768}}}`,
			accounting.Usage{InputTokens: 232, OutputTokens: 5, CacheReadTokens: 768}, "m", true},
		{"cached above prompt is clamped", `{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":20}}}`,
			accounting.Usage{CacheReadTokens: 10}, "", true},
		{"cache writes subtracted (gpt-5.6 explicit breakpoints)", `{"model":"gpt-5.6-terra","usage":{"prompt_tokens":3000,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":1024,"cache_write_tokens":1500,"audio_tokens":0}},"service_tier":"default"}`,
			accounting.Usage{InputTokens: 476, OutputTokens: 9, CacheReadTokens: 1024, CacheWrite5mTokens: 1500, ServiceTier: "default"}, "gpt-5.6-terra", true},
		{"cache writes above what cached leaves are clamped", `{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":4,"cache_write_tokens":20}}}`,
			accounting.Usage{CacheReadTokens: 4, CacheWrite5mTokens: 6}, "", true},
		{"cache_write_tokens null or negative is none", `{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":null,"cache_write_tokens":-5}}}`,
			accounting.Usage{InputTokens: 10}, "", true},
		{"each detail from the first details object that has it", `{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":1},"prompt_tokens_details":{"cached_tokens":5,"cache_write_tokens":2}}}`,
			accounting.Usage{InputTokens: 7, CacheReadTokens: 1, CacheWrite5mTokens: 2}, "", true},
		{"flex tier", `{"model":"o3","usage":{"prompt_tokens":10,"completion_tokens":1},"service_tier":"flex"}`,
			accounting.Usage{InputTokens: 10, OutputTokens: 1, ServiceTier: "flex"}, "o3", true},
		{"priority tier, escaped", `{"usage":{"prompt_tokens":10},"service_tier":"pr\u0069ority","service_tier":"flex"}`,
			accounting.Usage{InputTokens: 10, ServiceTier: "priority"}, "", true},
		{"a tier that is not a string, empty or too long is none", `{"usage":{"prompt_tokens":1},"service_tier":["flex"]}`,
			accounting.Usage{InputTokens: 1}, "", true},
		{"empty tier", `{"usage":{"prompt_tokens":1},"service_tier":""}`, accounting.Usage{InputTokens: 1}, "", true},
		{"too long a tier", `{"usage":{"prompt_tokens":1},"service_tier":"` + strings.Repeat("f", wire.MaxServiceTierLength+1) + `"}`,
			accounting.Usage{InputTokens: 1}, "", true},
		{"error body", `{"error":{"message":"x","type":"invalid_request_error","param":null,"code":"model_not_found"}}`, accounting.Usage{}, "", false},
		{"truncated", `{"usage":{"prompt_tokens":1`, accounting.Usage{}, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, m, ok := UsageFromJSON([]byte(tc.body))
			if u != tc.want || m != tc.model || ok != tc.ok {
				t.Errorf("got %+v %q %v, want %+v %q %v", u, m, ok, tc.want, tc.model, tc.ok)
			}
		})
	}
}

type result struct {
	usage       accounting.Usage
	final, done bool
	model       string
	text        int64
	kind, msg   string
	hasErr      bool
	dropped     int
}

func feed(chunks ...[]byte) result {
	p := NewStreamParser()
	for _, c := range chunks {
		p.Write(c)
	}
	var r result
	r.usage, r.final = p.Usage()
	r.done, r.model, r.text, r.dropped = p.Done(), p.Model(), p.OutputTextBytes(), p.Dropped()
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

func TestStreamParser(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   result
	}{
		{"recorded", recorded, result{usage: accounting.Usage{InputTokens: 12, OutputTokens: 100, ServiceTier: "default"}, final: true, done: true, model: "gpt-5-nano-2025-08-07"}},
		{"cut before usage", recorded[:strings.Index(recorded, "\n\n")+2], result{usage: accounting.Usage{ServiceTier: "default"}, model: "gpt-5-nano-2025-08-07"}},
		{"the last non-empty service tier wins, wherever the usage is",
			"data: {\"service_tier\":\"default\",\"choices\":[]}\n\n" +
				"data: {\"service_tier\":\"flex\",\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":10,\"cache_write_tokens\":15}}}\n\n" +
				"data: {\"service_tier\":\"\",\"choices\":[]}\n\ndata: {\"service_tier\":null,\"choices\":[]}\n\ndata: {\"choices\":[]}\n\ndata: [DONE]\n\n",
			result{usage: accounting.Usage{InputTokens: 5, OutputTokens: 2, CacheReadTokens: 10, CacheWrite5mTokens: 15, ServiceTier: "flex"}, final: true, done: true}},
		{"a tier after the usage chunk still counts",
			"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\ndata: {\"service_tier\":\"priority\",\"choices\":[]}\n\n",
			result{usage: accounting.Usage{InputTokens: 3, ServiceTier: "priority"}, final: true}},
		{"llama.cpp: usage on a choice chunk, last one wins",
			"data: {\"model\":\"llama\",\"choices\":[{\"delta\":{\"content\":\"h\\u00e9\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n" +
				"data: {\"choices\":[{\"delta\":{\"content\":\"llo\",\"reasoning_content\":\"hm\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\n",
			result{usage: accounting.Usage{InputTokens: 2, OutputTokens: 2, CacheReadTokens: 1}, final: true, model: "llama", text: 8}},
		{"tool call arguments count as output",
			"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\ndata: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n",
			result{text: 7}},
		{"mid-stream error", "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n",
			result{text: 2, kind: "server_error", msg: "overloaded", hasErr: true}},
		{"garbage and comments", ": keep-alive\n\ndata: {not json}\n\ndata: [DONE]\n\n", result{done: true, dropped: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, s := range []string{tc.stream, strings.ReplaceAll(tc.stream, "\n", "\r\n")} {
				if got := feed([]byte(s)); got != tc.want {
					t.Fatalf("got  %+v\nwant %+v", got, tc.want)
				}
				for seed := range uint64(30) {
					if got := feed(split([]byte(s), seed)...); got != tc.want {
						t.Fatalf("seed %d: got %+v, want %+v", seed, got, tc.want)
					}
				}
			}
		})
	}
}

func TestStreamParserSteadyStateAllocs(t *testing.T) {
	p := NewStreamParser()
	// service_tier is on every chunk: reading it must not copy it each time.
	ev := []byte(`data: {"id":"c","model":"gpt-5-nano-2025-08-07","service_tier":"flex","choices":[{"index":0,"delta":{"content":"a \"quoted\"\nline"},"finish_reason":null}],"usage":null,"obfuscation":"WuQNX"}` + "\n\n")
	p.Write(ev)
	if allocs := testing.AllocsPerRun(200, func() { p.Write(ev[:40]); p.Write(ev[40:]) }); allocs != 0 {
		t.Errorf("allocations per event = %v, want 0", allocs)
	}
}

func FuzzStreamParser(f *testing.F) {
	f.Add([]byte(recorded), uint64(1))
	f.Add([]byte("data: {\"error\":{}}\r\rdata: {\"usage\":{\"prompt_tokens\":-1}}\n\n"), uint64(0))
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

func BenchmarkStreamParserPerEvent(b *testing.B) {
	ev := []byte(`data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","choices":[{"index":0,"delta":{"content":" San Francisco"},"finish_reason":null}],"usage":null,"obfuscation":"WuQNX"}` + "\n\n")
	p := NewStreamParser()
	b.ReportAllocs()
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		p.Write(ev)
	}
}
