package anthropic

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// responseSeeds are streams and JSON bodies for FuzzResponseMatchesGJSON:
// the stream and usage tests' inputs, every member a type other than the
// documented one, duplicated keys, escapes, and the recordings when present.
func responseSeeds() [][]byte {
	out := [][]byte{
		[]byte(startEv + "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\r\n\r\n"),
		[]byte("data: {\"type\":\"error\",\"error\":{\"type\":\"x\"}}\r\rdata: [1,2"),
		[]byte(":c\ndata:\ndata:{}\n\n\ufeff"),
		[]byte(startEv + "event: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"h\\u00e9\\n\"}}\n\nevent: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n"),
		[]byte("event: message_start\ndata: {\"type\":\"message_st\\u0061rt\",\"type\":\"x\",\"message\":{\"model\":\"claude-\\ud83d\\ude00\\ud800\\u0041\",\"model\":\"y\",\"usage\":{\"input_tokens\":\"12\",\"output_tokens\":1.5e3,\"cache_read_input_tokens\":true,\"cache_creation_input_tokens\":-0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":\"1e2\",\"ephemeral_1h_input_tokens\":99999999999999999999}}}}\n\n" +
			"event: message_delta\ndata: {\"usage\":{\"output_tokens\":null,\"input_tokens\":-3.7,\"cache_read_input_tokens\":\"-9223372036854775809\"},\"type\":\"message_delta\",\"usage\":null}\n\n" +
			"event: content_block_start\ndata: {\"content_block\":{\"type\":\"tool_use\",\"partial_json\":\"{}\",\"text\":\"ab\",\"text\":\"c\"},\"type\":\"content_block_start\"}\n\n" +
			"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":529,\"message\":{\"a\":[1]}}}\n\n" +
			"event: error\ndata: {\"type\":\"error\",\"error\":\"{\\\"type\\\":\\\"x\\\"}\"}\n\n"),
		[]byte("event: message_delta\ndata: {\"delta\":{}}\n\nevent: message_start\ndata: \"{\\\"type\\\":\\\"message_start\\\"}\"\n\n"),
		[]byte(`{"model":"m","usage":{"input_tokens":3,"cache_creation_input_tokens":30,"cache_read_input_tokens":7,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20},"output_tokens":9}}`),
		[]byte(`{"usage" : {"output_tokens" : 4, "server_tool_use":{"web_search_requests":1}}   , "x":[1]}   `),
		[]byte(`{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`),
		[]byte(`{"model":{"id":1},"usage":{"input_tokens":1e400,"output_tokens":"0x10"},"usage":{"input_tokens":5}}`),
		[]byte(`{"model":1.50,"usage":{"cache_creation":[],"cache_creation":{"ephemeral_5m_input_tokens":1}}}`),
	}
	if dir, ok := findRecorded(); ok {
		for _, pattern := range []string{"sse/*.sse"} {
			files, _ := filepath.Glob(filepath.Join(dir, pattern))
			for _, f := range files {
				if b, err := os.ReadFile(f); err == nil {
					out = append(out, b)
				}
			}
		}
	}
	return out
}

// tooDeep reports input that may nest beyond wire.MaxDepth, which the Reader
// refuses and gjson read with unbounded recursion: the one input on which
// the two are meant to differ.
func tooDeep(b []byte) bool {
	return bytes.Count(b, []byte("{"))+bytes.Count(b, []byte("[")) > wire.MaxDepth
}

// FuzzResponseMatchesGJSON holds the wire.Reader reading of responses to the
// gjson reading it replaced (refStreamParser, refUsageFromJSON): the same
// usage, final flag, model, output bytes, error and dropped count from any
// stream fed in any split, and the same usage and model from any JSON body.
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
		if u != ru || final != rfinal || p.Model() != ref.Model() || p.OutputTextBytes() != ref.OutputTextBytes() ||
			k != rk || m != rm || e != re || p.Dropped() != ref.Dropped() {
			t.Fatalf("stream:\n got %+v %v %q %d %q %q %v %d\nwant %+v %v %q %d %q %q %v %d", u, final, p.Model(), p.OutputTextBytes(), k, m, e, p.Dropped(),
				ru, rfinal, ref.Model(), ref.OutputTextBytes(), rk, rm, re, ref.Dropped())
		}
		gu, gm, gok := UsageFromJSON(b)
		wu, wm, wok := refUsageFromJSON(b)
		if gu != wu || gm != wm || gok != wok {
			t.Fatalf("UsageFromJSON: %+v %q %v; gjson %+v %q %v", gu, gm, gok, wu, wm, wok)
		}
	})
}

// realisticResponse is a non-streaming Messages response of about size
// bytes: text with newlines and quotes, a tool call, the usage object last.
func realisticResponse(size int) []byte {
	text := strings.Repeat(`I read the file. The parser walks the body once:\n\n`+"```go\\nfor key, ok := r.NextKey(&it); ok; {\\n\\tr.Skip()\\n}\\n```"+`\nIt \"validates\" as it goes. `, size/150+1)
	return []byte(`{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"` + text + `"},{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"read_file","input":{"path":"extproc/dialect/wire/reader.go"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":1024,"cache_read_input_tokens":40960,"cache_creation":{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":0},"output_tokens":503,"service_tier":"standard"}}`)
}

// BenchmarkReadResponse compares the two readers of responses on what the
// gate meters: one SSE event of each kind that carries something
// (content_block_delta, the most frequent; message_start and message_delta,
// which carry usage) and a complete JSON response. "gjson" is the reading
// this package used before (refStreamParser, refUsageFromJSON), "reader"
// wire.Lookup, which replaced it because it is faster on every one and
// allocates as little: nothing per event, the model name per response.
// Medians of -count 6 on a shared 2-core amd64 machine (go1.26; noisy, up to
// ±40% for gjson, but the order held in every run):
//
//	                 gjson              reader
//	sse-delta   694 ns  0 allocs   322 ns  0 allocs
//	sse-start  1625 ns  0 allocs   792 ns  0 allocs
//	sse-end     643 ns  0 allocs   261 ns  0 allocs
//	json (4KB) 6720 ns  1 alloc   3093 ns  1 alloc (32 B each)
func BenchmarkReadResponse(b *testing.B) {
	delta := []byte("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" San Francisco for you in\"}}      \n\n")
	start := []byte(startEv)
	end := []byte("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":503}}\n\n")
	for _, ev := range []struct {
		name string
		data []byte
	}{{"delta", delta}, {"start", start}, {"end", end}} {
		b.Run("sse-"+ev.name+"/gjson", func(b *testing.B) {
			p := &refStreamParser{}
			p.Write(start)
			b.ReportAllocs()
			b.SetBytes(int64(len(ev.data)))
			for b.Loop() {
				p.Write(ev.data)
			}
		})
		b.Run("sse-"+ev.name+"/reader", func(b *testing.B) {
			p := NewStreamParser()
			p.Write(start)
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
