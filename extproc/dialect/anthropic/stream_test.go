package anthropic

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

type streamResult struct {
	usage   accounting.Usage
	final   bool
	model   string
	text    int64
	errKind string
	errMsg  string
	hasErr  bool
	drops   int
}

func feed(chunks ...[]byte) streamResult {
	p := NewStreamParser()
	for _, c := range chunks {
		p.Write(c)
	}
	var r streamResult
	r.usage, r.final = p.Usage()
	r.model, r.text = p.Model(), p.OutputTextBytes()
	r.errKind, r.errMsg, r.hasErr = p.Error()
	r.drops = p.Dropped()
	return r
}

// split cuts b into chunks of random sizes (1 byte each for seed 0).
func split(b []byte, seed uint64) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	var out [][]byte
	for len(b) > 0 {
		n := 1
		if seed != 0 {
			n = min(1+rng.IntN(64), len(b))
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func TestRecordedStreams(t *testing.T) {
	for name, stream := range recordedStreams(t) {
		t.Run(name, func(t *testing.T) {
			want := expectSSE(t, stream)
			got := feed(stream)
			if got.usage != want.usage() || got.final != want.final || got.model != want.model || got.text != want.text {
				t.Fatalf("got usage %+v final %v model %q text %d\nwant usage %+v final %v model %q text %d",
					got.usage, got.final, got.model, got.text, want.usage(), want.final, want.model, want.text)
			}
			if !got.final || got.usage.OutputTokens == 0 {
				t.Errorf("a complete recorded stream must end final with output tokens: %+v", got)
			}
			for seed := range uint64(40) {
				if s := feed(split(stream, seed)...); s != got {
					t.Fatalf("seed %d: split feed gave %+v, whole gave %+v", seed, s, got)
				}
			}
		})
	}
}

const startEv = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":5,\"cache_creation\":{\"ephemeral_5m_input_tokens\":40,\"ephemeral_1h_input_tokens\":60},\"output_tokens\":1}}}\n\n"

func TestStreamSemantics(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   streamResult
	}{
		{
			name:   "cut after message_start: not final, placeholder output",
			stream: startEv,
			want:   streamResult{usage: accounting.Usage{InputTokens: 10, OutputTokens: 1, CacheReadTokens: 5, CacheWrite5mTokens: 40, CacheWrite1hTokens: 60}, model: "claude-x"},
		},
		{
			name:   "delta overlays present fields, null and absent ones keep message_start",
			stream: startEv + "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":null,\"output_tokens\":77}   }\n\n",
			want:   streamResult{usage: accounting.Usage{InputTokens: 10, OutputTokens: 77, CacheReadTokens: 5, CacheWrite5mTokens: 40, CacheWrite1hTokens: 60}, final: true, model: "claude-x"},
		},
		{
			name:   "delta raising cache_creation above the split: remainder is 5m",
			stream: startEv + "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":130,\"cache_read_input_tokens\":0,\"output_tokens\":5}}\n\n",
			want:   streamResult{usage: accounting.Usage{InputTokens: 12, OutputTokens: 5, CacheWrite5mTokens: 70, CacheWrite1hTokens: 60}, final: true, model: "claude-x"},
		},
		{
			name: "no cache_creation split: every write is 5m",
			stream: "data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":1,\"cache_creation_input_tokens\":9,\"cache_creation\":null,\"output_tokens\":1}}}\n\n" +
				"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n",
			want: streamResult{usage: accounting.Usage{InputTokens: 1, OutputTokens: 3, CacheWrite5mTokens: 9}, final: true, model: "m"},
		},
		{
			name:   "delta without usage is not final; message_stop is",
			stream: startEv + "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n",
			want:   streamResult{usage: accounting.Usage{InputTokens: 10, OutputTokens: 1, CacheReadTokens: 5, CacheWrite5mTokens: 40, CacheWrite1hTokens: 60}, model: "claude-x"},
		},
		{
			name: "mid-stream error, ping, unknown events and broken JSON",
			stream: startEv + "event: ping\ndata: {\"type\": \"ping\"}\n\nevent: future_thing\ndata: {\"type\":\"future_thing\",\"usage\":{\"output_tokens\":999}}\n\n" +
				"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"h\\u00e9\\n\"}}\n\n" +
				"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"trunc\n\n" +
				"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
			want: streamResult{usage: accounting.Usage{InputTokens: 10, OutputTokens: 1, CacheReadTokens: 5, CacheWrite5mTokens: 40, CacheWrite1hTokens: 60}, model: "claude-x",
				text: 4, errKind: "overloaded_error", errMsg: "Overloaded", hasErr: true, drops: 1},
		},
		{
			name: "service tier from message_start, kept by a delta that names none",
			stream: "data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":4,\"output_tokens\":1,\"service_tier\":\"priority\"}}}\n\n" +
				"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3,\"service_tier\":null}}\n\n",
			want: streamResult{usage: accounting.Usage{InputTokens: 4, OutputTokens: 3, ServiceTier: "priority"}, final: true, model: "m"},
		},
		{
			name: "a delta's service tier overrides message_start's",
			stream: "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n" +
				"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3,\"service_tier\":\"batch\"}}\n\n",
			want: streamResult{usage: accounting.Usage{InputTokens: 4, OutputTokens: 3, ServiceTier: "batch"}, final: true},
		},
		{
			name:   "negative counts are clamped",
			stream: "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":-5,\"output_tokens\":1}}}\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":-9}}\n\n",
			want:   streamResult{final: true},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, s := range []string{tc.stream, strings.ReplaceAll(tc.stream, "\n", "\r\n")} {
				if got := feed([]byte(s)); got != tc.want {
					t.Fatalf("got  %+v\nwant %+v", got, tc.want)
				}
				for seed := range uint64(10) {
					if got := feed(split([]byte(s), seed)...); got != tc.want {
						t.Fatalf("seed %d: got %+v\nwant %+v", seed, got, tc.want)
					}
				}
			}
		})
	}
}

func TestStreamParserSteadyStateAllocs(t *testing.T) {
	p := NewStreamParser()
	p.Write([]byte(startEv))
	ev := []byte("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a line\\nwith \\\"escapes\\\"\"}}     \n\n")
	p.Write(ev)
	allocs := testing.AllocsPerRun(200, func() {
		p.Write(ev[:30])
		p.Write(ev[30:])
	})
	if allocs != 0 {
		t.Errorf("allocations per event = %v, want 0", allocs)
	}
}

// FuzzStreamParser: no input panics, and any split of the input yields the
// same results as feeding it whole.
func FuzzStreamParser(f *testing.F) {
	f.Add([]byte(startEv+"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\r\n\r\n"), uint64(1))
	f.Add([]byte("data: {\"type\":\"error\",\"error\":{\"type\":\"x\"}}\r\rdata: [1,2"), uint64(0))
	f.Add([]byte(":c\ndata:\ndata:{}\n\n\ufeff"), uint64(3))
	f.Fuzz(func(t *testing.T, b []byte, seed uint64) {
		whole := feed(b)
		if got := feed(split(b, seed)...); got != whole {
			t.Fatalf("split %d: %+v, whole: %+v", seed, got, whole)
		}
		u := whole.usage
		if u.InputTokens < 0 || u.OutputTokens < 0 || u.CacheReadTokens < 0 || u.CacheWrite5mTokens < 0 || u.CacheWrite1hTokens < 0 {
			t.Fatalf("negative usage %+v", u)
		}
	})
}

func BenchmarkStreamParserPerEvent(b *testing.B) {
	ev := []byte("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" San Francisco for you in\"}}      \n\n")
	p := NewStreamParser()
	p.Write([]byte(startEv))
	b.ReportAllocs()
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		p.Write(ev)
	}
	var _ wire.StreamParser = p
}

// A stream that ends without message_delta usage has only message_start's
// placeholder output count; treating message_stop as final would bill 1-2
// output tokens for a whole answer.
func TestStreamWithoutDeltaUsageIsNotFinal(t *testing.T) {
	p := NewStreamParser()
	p.Write([]byte("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello world\"}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"))
	u, final := p.Usage()
	if final {
		t.Fatal("message_stop without message_delta usage must not be final")
	}
	if u.InputTokens != 10 || p.OutputTextBytes() != int64(len("hello world")) {
		t.Fatalf("usage %+v, output bytes %d", u, p.OutputTextBytes())
	}
}
