package openai

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// responseSeeds are streams and JSON bodies for FuzzResponseMatchesGJSON:
// the stream and usage tests' inputs, every member a type other than the
// documented one, duplicated keys, escapes.
func responseSeeds() [][]byte {
	return [][]byte{
		[]byte(recorded),
		[]byte("data: {\"error\":{}}\r\rdata: {\"usage\":{\"prompt_tokens\":-1}}\n\n"),
		[]byte("data: {\"model\":\"llama\",\"choices\":[{\"delta\":{\"content\":\"h\\u00e9\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n" +
			"data: {\"choices\":[{\"delta\":{\"content\":\"llo\",\"reasoning_content\":\"hm\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\n"),
		[]byte("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\ndata: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n"),
		[]byte("data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n"),
		[]byte(": keep-alive\n\ndata: {not json}\n\ndata: [DONE]\n\n"),
		[]byte("data: {\"model\":\"a\\ud800\\u0041\",\"model\":\"b\",\"usage\":{\"prompt_tokens\":\"100\",\"prompt_tokens_details\":[],\"prompt_tokens_details\":{},\"prompt_tokens_details\":{\"cached_tokens\":2.5e1},\"completion_tokens\":true},\"choices\":{\"x\":{\"delta\":{\"content\":\"o\",\"content\":\"k\",\"tool_calls\":{\"0\":{\"function\":{\"arguments\":\"[]\"}},\"1\":\"{\\\"function\\\":{}}\"}}},\"y\":[1]}}\n\n" +
			"data: {\"error\":{\"code\":429,\"message\":[\"slow\"]}}\n\ndata: {\"error\":\"{\\\"type\\\":\\\"t\\\"}\"}\n\ndata: {\"error\":false}\n\n" +
			"data: \"{\\\"model\\\":\\\"m\\\"}\"\n\ndata: {\"choices\":\"{\\\"delta\\\":{}}\",\"usage\":{\"prompt_tokens\":1e400,\"completion_tokens\":-9223372036854775809}}\n\n"),
		[]byte(`{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"Hi there!","role":"assistant"}}],"model":"gpt-5-nano-2025-08-07","object":"chat.completion","usage":{"completion_tokens":377,"completion_tokens_details":{"reasoning_tokens":320},"prompt_tokens":8,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},"total_tokens":385}}`),
		[]byte(`{"model":"m","usage":{"prompt_tokens":1000,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":768}}}`),
		[]byte(`{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":20}},"model":["x"]}`),
		[]byte(`{"error":{"message":"x","type":"invalid_request_error","param":null,"code":"model_not_found"}}`),
	}
}

// tooDeep reports input that may nest beyond wire.MaxDepth, which the Reader
// refuses and gjson read with unbounded recursion: the one input on which
// the two are meant to differ.
func tooDeep(b []byte) bool {
	return bytes.Count(b, []byte("{"))+bytes.Count(b, []byte("[")) > wire.MaxDepth
}

// FuzzResponseMatchesGJSON holds the wire.Reader reading of responses to the
// gjson reading it replaced (refStreamParser, refUsageFromJSON): the same
// usage, final and done flags, model, output bytes, error and dropped count
// from any stream fed in any split, and the same usage and model from any
// JSON body.
func FuzzResponseMatchesGJSON(f *testing.F) {
	for i, b := range responseSeeds() {
		f.Add(b, uint64(i))
	}
	f.Fuzz(func(t *testing.T, b []byte, seed uint64) {
		if tooDeep(b) {
			return
		}
		p, ref := NewStreamParser(), &refStreamParser{}
		for _, c := range split(b, seed) {
			p.Write(c)
			ref.Write(c)
		}
		u, final := p.Usage()
		ru, rfinal := ref.Usage()
		k, m, e := p.Error()
		rk, rm, re := ref.Error()
		if u != ru || final != rfinal || p.Done() != ref.done || p.Model() != ref.Model() || p.OutputTextBytes() != ref.OutputTextBytes() ||
			k != rk || m != rm || e != re || p.Dropped() != ref.Dropped() {
			t.Fatalf("stream:\n got %+v %v %v %q %d %q %q %v %d\nwant %+v %v %v %q %d %q %q %v %d", u, final, p.Done(), p.Model(), p.OutputTextBytes(), k, m, e, p.Dropped(),
				ru, rfinal, ref.done, ref.Model(), ref.OutputTextBytes(), rk, rm, re, ref.Dropped())
		}
		gu, gm, gok := UsageFromJSON(b)
		wu, wm, wok := refUsageFromJSON(b)
		if gu != wu || gm != wm || gok != wok {
			t.Fatalf("UsageFromJSON: %+v %q %v; gjson %+v %q %v", gu, gm, gok, wu, wm, wok)
		}
	})
}

// realisticResponse is a non-streaming Chat Completions response of about
// size bytes: a message with newlines and quotes, the usage object last.
func realisticResponse(size int) []byte {
	text := strings.Repeat(`The inner sum makes it quadratic:\n\n`+"```python\\nfor x in xs:\\n    s = s + sum(xs[:x])\\n```"+`\nKeep a \"running\" prefix sum instead. `, size/130+1)
	return []byte(`{"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion","created":1755137921,"model":"gpt-5-mini-2025-08-07","choices":[{"index":0,"message":{"role":"assistant","content":"` + text + `","refusal":null,"annotations":[]},"finish_reason":"stop"}],"usage":{"prompt_tokens":2048,"completion_tokens":900,"total_tokens":2948,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":512,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":null}`)
}

// BenchmarkReadResponse compares the two readers of responses on what the
// gate meters: one chunk of a stream (a content delta, the most frequent; the
// usage chunk) and a complete JSON response. "gjson" is the reading this
// package used before (refStreamParser, refUsageFromJSON), "reader"
// wire.Lookup, which replaced it because it is faster on every one and
// allocates as little: nothing per chunk, the model name per response. gjson
// scans a chunk once to validate it and once more per member looked up, four
// of them on every chunk. Medians of -count 5 on a shared 2-core amd64
// machine (go1.26):
//
//	                 gjson              reader
//	sse-delta  1312 ns  0 allocs   581 ns  0 allocs
//	sse-usage  2025 ns  0 allocs   827 ns  0 allocs
//	json (4KB) 5970 ns  1 alloc   2917 ns  1 alloc (24 B each)
func BenchmarkReadResponse(b *testing.B) {
	chunk := []byte(`data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","choices":[{"index":0,"delta":{"content":" San Francisco"},"finish_reason":null}],"usage":null,"obfuscation":"WuQNX"}` + "\n\n")
	usage := []byte(`data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","service_tier":"default","system_fingerprint":null,"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":100,"total_tokens":112,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":100,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"t9"}` + "\n\n")
	for _, ev := range []struct {
		name string
		data []byte
	}{{"delta", chunk}, {"usage", usage}} {
		b.Run("sse-"+ev.name+"/gjson", func(b *testing.B) {
			p := &refStreamParser{}
			b.ReportAllocs()
			b.SetBytes(int64(len(ev.data)))
			for b.Loop() {
				p.Write(ev.data)
			}
		})
		b.Run("sse-"+ev.name+"/reader", func(b *testing.B) {
			p := NewStreamParser()
			b.ReportAllocs()
			b.SetBytes(int64(len(ev.data)))
			for b.Loop() {
				p.Write(ev.data)
			}
		})
	}
	body := realisticResponse(4 << 10)
	b.Run("json/gjson", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if _, _, ok := refUsageFromJSON(body); !ok {
				b.Fatal("no usage")
			}
		}
	})
	b.Run("json/reader", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if _, _, ok := UsageFromJSON(body); !ok {
				b.Fatal("no usage")
			}
		}
	})
}
