package wire

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

type recorder struct{ events []string }

func (r *recorder) Event(name, data []byte) {
	r.events = append(r.events, fmt.Sprintf("%s|%s", name, data))
}

func decodeAll(chunks ...[]byte) (*recorder, *SSEDecoder) {
	var d SSEDecoder
	rec := &recorder{}
	for _, c := range chunks {
		d.Write(c, rec)
	}
	return rec, &d
}

func TestSSEDecoderFraming(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   []string
	}{
		{"lf", "event: a\ndata: 1\n\n", []string{"a|1"}},
		{"crlf", "event: a\r\ndata: 1\r\n\r\n", []string{"a|1"}},
		{"cr", "event: a\rdata: 1\r\r", []string{"a|1"}},
		{"data only", "data: {\"x\":1}\n\ndata: [DONE]\n\n", []string{"|{\"x\":1}", "|[DONE]"}},
		{"multi-line data joins with newline", "data: a\ndata:b\ndata\n\n", []string{"|a\nb\n"}},
		{"comments and unknown fields ignored", ": ping\nid: 7\nretry: 10\nfoo: bar\ndata: x\n\n", []string{"|x"}},
		{"only one leading space dropped", "data:  x \n\n", []string{"| x "}},
		{"event without data is not dispatched", "event: a\n\ndata: y\n\n", []string{"|y"}},
		{"event name resets after dispatch", "event: a\ndata: 1\n\ndata: 2\n\n", []string{"a|1", "|2"}},
		{"incomplete event at end is held", "data: 1\n\ndata: 2\n", []string{"|1"}},
		{"bom stripped", "\uFEFFdata: 1\n\n", []string{"|1"}},
		{"empty data dispatches", "data:\n\n", []string{"|"}},
		{"padding inside json preserved", "data: {\"a\":1}      \n\n", []string{"|{\"a\":1}      "}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			whole, _ := decodeAll([]byte(tc.stream))
			if got := strings.Join(whole.events, ";"); got != strings.Join(tc.want, ";") {
				t.Fatalf("events = %q, want %q", whole.events, tc.want)
			}
			// Every two-way split gives the same events, including a "\r\n" split
			// between its bytes.
			for i := 0; i <= len(tc.stream); i++ {
				rec, _ := decodeAll([]byte(tc.stream[:i]), []byte(tc.stream[i:]))
				if got := strings.Join(rec.events, ";"); got != strings.Join(tc.want, ";") {
					t.Fatalf("split at %d: events = %q, want %q", i, rec.events, tc.want)
				}
			}
		})
	}
}

func TestSSEDecoderRandomSplits(t *testing.T) {
	var b strings.Builder
	for i := range 200 {
		fmt.Fprintf(&b, "event: e%d\r\ndata: {\"i\": %d}   \r\n: c\r\n\r\n", i, i)
	}
	stream := []byte(b.String())
	want, _ := decodeAll(stream)
	if len(want.events) != 200 {
		t.Fatalf("whole stream gave %d events, want 200", len(want.events))
	}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		var chunks [][]byte
		for rest := stream; len(rest) > 0; {
			n := min(1+rng.IntN(40), len(rest))
			if seed == 0 {
				n = 1
			}
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		got, _ := decodeAll(chunks...)
		if strings.Join(got.events, ";") != strings.Join(want.events, ";") {
			t.Fatalf("seed %d: events differ from the whole-stream decode", seed)
		}
	}
}

// A line that never ends must not grow memory without bound: the decoder
// drops it, counts it, and resumes at the next line.
func TestSSEDecoderBoundsLongLines(t *testing.T) {
	var d SSEDecoder
	rec := &recorder{}
	d.Write([]byte("event: big\ndata: "), rec)
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for range (3 * MaxSSELine) / len(chunk) {
		d.Write(chunk, rec)
		if cap(d.line) > MaxSSELine {
			t.Fatalf("line buffer grew to %d bytes", cap(d.line))
		}
	}
	d.Write([]byte("\n\nevent: small\ndata: ok\n\n"), rec)
	if got := strings.Join(rec.events, ";"); got != "small|ok" {
		t.Fatalf("events = %q, want only the small event", rec.events)
	}
	if d.Dropped() != 1 {
		t.Errorf("Dropped = %d, want 1", d.Dropped())
	}

	// A single chunk holding an over-long complete line is dropped too.
	var d2 SSEDecoder
	rec2 := &recorder{}
	long := append([]byte("data: "), bytes.Repeat([]byte("y"), MaxSSELine)...)
	d2.Write(append(long, "\n\ndata: ok\n\n"...), rec2)
	if got := strings.Join(rec2.events, ";"); got != "|ok" || d2.Dropped() != 1 {
		t.Errorf("events = %q, dropped %d; want only |ok and 1 dropped", rec2.events, d2.Dropped())
	}
}

type nopHandler struct{ n int }

func (h *nopHandler) Event(name, data []byte) { h.n++ }

func TestSSEDecoderSteadyStateAllocs(t *testing.T) {
	var d SSEDecoder
	h := &nopHandler{}
	ev := []byte("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}   \n\n")
	d.Write(ev, h)
	allocs := testing.AllocsPerRun(100, func() {
		d.Write(ev[:20], h) // split mid-line: the carry buffer is reused
		d.Write(ev[20:], h)
	})
	if allocs != 0 {
		t.Errorf("allocations per event = %v, want 0", allocs)
	}
	if h.n != 102 {
		t.Errorf("events = %d, want 102", h.n)
	}
}
