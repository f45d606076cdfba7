package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// recordedWithout is recorded as OpenAI sends it to a client that did not
// ask for usage: no usage chunk, no "usage" member.
const recordedWithout = `data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","service_tier":"default","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}],"obfuscation":"WuQNX"}

data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","service_tier":"default","system_fingerprint":null,"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"obfuscation":"IPio8PDeczEmdPr"}

data: [DONE]

`

// rewriteChunks runs a fresh remover over chunks and returns what it
// forwards.
func rewriteChunks(chunks ...[]byte) []byte {
	var r UsageChunkRemover
	var out []byte
	for _, c := range chunks {
		out = r.Rewrite(out, c)
	}
	return r.Flush(out)
}

func TestUsageChunkRemover(t *testing.T) {
	const done = "data: [DONE]\n\n"
	tests := []struct{ name, in, want string }{
		{"recorded gpt-5-nano", recorded, recordedWithout},
		{"usage null in the middle", `data: {"a":1,"usage":null,"b":2}` + "\n\n", `data: {"a":1,"b":2}` + "\n\n"},
		{"usage null last", `data: {"a":1,"usage":null}` + "\n\n", `data: {"a":1}` + "\n\n"},
		{"usage null first", `data: {"usage":null,"a":1}` + "\n\n", `data: {"a":1}` + "\n\n"},
		{"usage null alone", `data: {"usage":null}` + "\n\n", `data: {}` + "\n\n"},
		{"whitespace around it", "data: { \"a\" : 1 , \"usage\" : null , \"b\":2 }\n\n", "data: { \"a\" : 1 , \"b\":2 }\n\n"},
		{"first, with whitespace", "data: { \"usage\" : null ,  \"a\":1 }\n\n", "data: { \"a\":1 }\n\n"},
		{"usage chunk dropped", `data: {"id":"x","choices":[],"usage":{"prompt_tokens":1}}` + "\n\n" + done, done},
		{"usage chunk with blank choices", `data: {"choices":[ ],"usage":{}}` + "\n\n" + done, done},
		{"usage chunk before choices", `data: {"usage":{"prompt_tokens":1},"choices":[]}` + "\n\n", ""},
		{"usage on a content chunk is cut (llama.cpp)", `data: {"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}` + "\n\n", `data: {"choices":[{"delta":{}}]}` + "\n\n"},
		{"empty choices without usage stays (Azure prompt_filter_results)", `data: {"choices":[],"prompt_filter_results":[],"usage":null}` + "\n\n", `data: {"choices":[],"prompt_filter_results":[]}` + "\n\n"},
		{"crlf framing", "data: {\"a\":1,\"usage\":null}\r\n\r\ndata: {\"choices\":[],\"usage\":{}}\r\n\r\n" + "data: [DONE]\r\n\r\n", "data: {\"a\":1}\r\n\r\ndata: [DONE]\r\n\r\n"},
		{"cr framing", "data: {\"a\":1,\"usage\":null}\r\rdata: {\"choices\":[],\"usage\":{}}\r\rdata: [DONE]\r\r", "data: {\"a\":1}\r\rdata: [DONE]\r\r"},
		{"no space after the colon", "data:{\"a\":1,\"usage\":null}\n\n", "data:{\"a\":1}\n\n"},
		{"other fields and comments kept", ": keep-alive\nevent: chunk\nid: 7\ndata: {\"a\":1,\"usage\":null}\nretry: 10\n\n", ": keep-alive\nevent: chunk\nid: 7\ndata: {\"a\":1}\nretry: 10\n\n"},
		{"multi-line data untouched", "data: {\"a\":1,\n" + "data: \"usage\":null}\n\n", "data: {\"a\":1,\n" + "data: \"usage\":null}\n\n"},
		{"error event untouched", `data: {"error":{"message":"overloaded","type":"server_error"}}` + "\n\n", `data: {"error":{"message":"overloaded","type":"server_error"}}` + "\n\n"},
		{"invalid json untouched", `data: {"a":1,"usage":null` + "\n\n", `data: {"a":1,"usage":null` + "\n\n"},
		{"trailing garbage untouched", `data: {"usage":null} x` + "\n\n", `data: {"usage":null} x` + "\n\n"},
		{"two usage members untouched", `data: {"usage":null,"usage":null}` + "\n\n", `data: {"usage":null,"usage":null}` + "\n\n"},
		{"escaped key is still usage", `data: {"a":1,"us\u0061ge":null}` + "\n\n", `data: {"a":1}` + "\n\n"},
		{"nested usage untouched", `data: {"x":{"usage":null}}` + "\n\n", `data: {"x":{"usage":null}}` + "\n\n"},
		{"not an object", "data: [1]\n\ndata: \"usage\"\n\n", "data: [1]\n\ndata: \"usage\"\n\n"},
		{"a field that only starts with data", "database: {\"usage\":null}\n\n", "database: {\"usage\":null}\n\n"},
		{"stray blank lines kept", "\n\ndata: {\"usage\":null}\n\n\n", "\n\ndata: {}\n\n\n"},
		{"unterminated last event judged at the end", `data: {"choices":[],"usage":{"a":1}}`, ""},
		{"unterminated last line after a field", "data: {\"a\":1,\"usage\":null}\n", "data: {\"a\":1}\n"},
		{"truncated usage chunk untouched", `data: {"choices":[],"usage":{"prompt_to`, `data: {"choices":[],"usage":{"prompt_to`},
		{"nothing", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(rewriteChunks([]byte(tc.in))); got != tc.want {
				t.Fatalf("whole:\n%q\nwant\n%q", got, tc.want)
			}
			// Every two- and three-way split (including between "\r" and
			// "\n") gives the same bytes.
			for i := 0; i <= len(tc.in); i++ {
				if got := string(rewriteChunks([]byte(tc.in[:i]), []byte(tc.in[i:]))); got != tc.want {
					t.Fatalf("split at %d:\n%q\nwant\n%q", i, got, tc.want)
				}
				for j := i; j <= len(tc.in) && len(tc.in) < 400; j++ {
					if got := string(rewriteChunks([]byte(tc.in[:i]), []byte(tc.in[i:j]), []byte(tc.in[j:]))); got != tc.want {
						t.Fatalf("split at %d, %d:\n%q\nwant\n%q", i, j, got, tc.want)
					}
				}
			}
		})
	}
}

// TestUsageChunkRemoverHoldsBackOnlyTheIncompleteEvent: complete events go
// out with the chunk that completes them; only the tail is held.
func TestUsageChunkRemoverHoldsBackOnlyTheIncompleteEvent(t *testing.T) {
	var r UsageChunkRemover
	out := r.Rewrite(nil, []byte("data: {\"a\":1,\"usage\":null}\n\ndata: {\"b\":"))
	if string(out) != "data: {\"a\":1}\n\n" {
		t.Fatalf("first chunk forwarded %q", out)
	}
	out = r.Rewrite(nil, []byte("2,\"usage\":null}\n"))
	if len(out) != 0 {
		t.Fatalf("an event without its blank line was forwarded: %q", out)
	}
	out = r.Rewrite(nil, []byte("\n"))
	if string(out) != "data: {\"b\":2}\n\n" {
		t.Fatalf("completed event forwarded %q", out)
	}
	// A blank line ended by '\r' waits for the next byte: a '\n' there is
	// part of it.
	out = r.Rewrite(nil, []byte("data: {\"choices\":[],\"usage\":{}}\r\n\r"))
	if len(out) != 0 {
		t.Fatalf("forwarded %q before the line end was known", out)
	}
	if out = r.Rewrite(nil, []byte("\ndata: [DONE]\r\n\r\n")); string(out) != "data: [DONE]\r\n\r\n" {
		t.Fatalf("forwarded %q", out)
	}
	if out = r.Flush(nil); len(out) != 0 {
		t.Fatalf("flush after complete events: %q", out)
	}
}

// TestUsageChunkRemoverLongEventPassesUnchanged: an event longer than
// wire.MaxSSELine is not held: it goes through as it comes, unchanged, and
// the events after it are rewritten again.
func TestUsageChunkRemoverLongEventPassesUnchanged(t *testing.T) {
	long := "data: {\"usage\":null,\"pad\":\"" + strings.Repeat("x", wire.MaxSSELine+200<<10) + "\"}\n\n"
	next := "data: {\"a\":1,\"usage\":null}\n\n"
	in := []byte(long + next)
	var r UsageChunkRemover
	var out []byte
	held := 0
	for c := range slices.Chunk(in, 64<<10) {
		out = r.Rewrite(out, c)
		held = max(held, len(r.held))
	}
	out = r.Flush(out)
	if want := long + "data: {\"a\":1}\n\n"; string(out) != want {
		t.Fatalf("got %d bytes, want %d", len(out), len(want))
	}
	if held > wire.MaxSSELine+64<<10 {
		t.Errorf("held %d bytes", held)
	}
	// The same with the blank line split across chunks, and with "\r\n".
	for _, tail := range []string{"\n", "\r\n"} {
		long := "data: " + strings.Repeat("y", wire.MaxSSELine+10) + tail
		in := long + tail + "data: {\"usage\":null}" + tail + tail
		got := rewriteChunks([]byte(in[:len(long)]), []byte(in[len(long):len(long)+1]), []byte(in[len(long)+1:]))
		if want := long + tail + "data: {}" + tail + tail; string(got) != want {
			t.Fatalf("%q tail: got ...%q", tail, got[len(got)-min(len(got), 40):])
		}
	}
}

func TestNewStreamRewriter(t *testing.T) {
	var d ChatCompletions
	if d.NewStreamRewriter(wire.EditReport{}) != nil {
		t.Error("a stream whose usage the client asked for is not rewritten")
	}
	if d.NewStreamRewriter(wire.EditReport{StreamUsageForced: true}) == nil {
		t.Error("a forced usage chunk must be removed")
	}
}

// oaiStream renders a Chat Completions stream as OpenAI does (field order
// of the API's chunks, usage before obfuscation), with or without
// include_usage: the oracle for "the stream the client would have had".
func oaiStream(texts []string, includeUsage, obfuscate bool, nl string, seed uint64) []byte {
	type chunk struct {
		ID                string          `json:"id"`
		Object            string          `json:"object"`
		Created           int64           `json:"created"`
		Model             string          `json:"model"`
		ServiceTier       string          `json:"service_tier"`
		SystemFingerprint *string         `json:"system_fingerprint"`
		Choices           []any           `json:"choices"`
		Usage             json.RawMessage `json:"usage,omitempty"`
		Obfuscation       string          `json:"obfuscation,omitempty"`
	}
	r := rand.New(rand.NewPCG(seed, 1))
	var out []byte
	add := func(choices []any, usage json.RawMessage) {
		c := chunk{ID: "chatcmpl-x", Object: "chat.completion.chunk", Created: 1755137921, Model: "gpt-5-nano", ServiceTier: "default", Choices: choices}
		if includeUsage {
			c.Usage = json.RawMessage("null")
		}
		if usage != nil {
			c.Usage = usage
		}
		if obfuscate {
			c.Obfuscation = strings.Repeat("z", 1+r.IntN(16))
		}
		b, _ := json.Marshal(c)
		out = append(out, "data: "...)
		out = append(out, b...)
		out = append(out, nl+nl...)
	}
	type delta struct {
		Content string `json:"content"`
	}
	type choice struct {
		Index        int     `json:"index"`
		Delta        delta   `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	}
	for _, t := range texts {
		add([]any{choice{Delta: delta{t}}}, nil)
	}
	stop := "stop"
	add([]any{choice{FinishReason: &stop}}, nil)
	if includeUsage {
		add([]any{}, json.RawMessage(`{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}`))
	}
	return append(out, "data: [DONE]"+nl+nl...)
}

// splitAt cuts b at pseudo-random offsets drawn from seed.
func splitAt(b []byte, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, 99))
	var out [][]byte
	for len(b) > 0 {
		n := r.IntN(min(len(b), 48) + 1)
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// FuzzUsageChunkRemover: for any bytes and any split, the forwarded bytes
// are those of the whole stream rewritten at once; a stream without
// "usage" is forwarded unchanged; and an OpenAI stream with include_usage
// becomes, under any split, exactly the stream without it.
func FuzzUsageChunkRemover(f *testing.F) {
	f.Add([]byte(recorded), uint64(1), "hello world", true)
	f.Add([]byte("data: {\"usage\":null}\r\rdata: {\"choices\":[],\"usage\":{}}\r\n\r\n"), uint64(7), "a\nb", false)
	f.Add([]byte(": x\n\ndata\n\ndata:{\"usage\":null ,\"a\":[]}\n\n"), uint64(3), "", true)
	f.Fuzz(func(t *testing.T, b []byte, seed uint64, text string, obfuscate bool) {
		whole := rewriteChunks(b)
		if got := rewriteChunks(splitAt(b, seed)...); !bytes.Equal(got, whole) {
			t.Fatalf("split %d:\n%q\nwhole:\n%q", seed, got, whole)
		}
		if !bytes.Contains(b, []byte("usage")) && !bytes.Contains(b, []byte(`\u`)) && !bytes.Equal(whole, b) {
			t.Fatalf("a stream without usage changed:\n%q\n%q", b, whole)
		}
		if len(whole) > len(b) {
			t.Fatalf("the rewrite added bytes")
		}
		texts := strings.Fields(text)
		for _, nl := range []string{"\n", "\r\n"} {
			with := oaiStream(texts, true, obfuscate, nl, seed)
			without := oaiStream(texts, false, obfuscate, nl, seed)
			if got := rewriteChunks(splitAt(with, seed)...); !bytes.Equal(got, without) {
				t.Fatalf("include_usage stream rewritten:\n%s\nwant\n%s", got, without)
			}
			if got := rewriteChunks(without); !bytes.Equal(got, without) {
				t.Fatalf("a stream without usage changed:\n%s", got)
			}
		}
	})
}

func BenchmarkUsageChunkRemoverPerEvent(b *testing.B) {
	ev := []byte(`data: {"id":"chatcmpl-C4Hq5a6K3RaPMymUv70btQNYv6SvY","object":"chat.completion.chunk","created":1755137921,"model":"gpt-5-nano-2025-08-07","choices":[{"index":0,"delta":{"content":" San Francisco"},"finish_reason":null}],"usage":null,"obfuscation":"WuQNX"}` + "\n\n")
	var r UsageChunkRemover
	out := make([]byte, 0, 4<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		out = r.Rewrite(out[:0], ev[:100])
		out = r.Rewrite(out, ev[100:])
	}
	_ = fmt.Sprint(len(out))
}
