package sim

import (
	"bytes"
	"io"
	"testing"
)

// BenchmarkExchange measures one whole exchange through an in-memory
// processor that answers every message unchanged: the cost the harness adds
// to the processor's own time.
func BenchmarkExchange(b *testing.B) {
	sse := bytes.Repeat([]byte("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hello\"}}\n\n"), 200)
	cases := []struct {
		name string
		cfg  Config
		body []byte
	}{
		{"headers_only", Config{NoTrace: true, NoRecordBody: true}, []byte("ok")},
		{"buffered_both", Config{ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED), NoTrace: true, NoRecordBody: true}, []byte(`{"usage":{}}`)},
		{"streamed_sse_1KiB_chunks", Config{ProcessingMode: mode(SEND, SEND, BUFFERED, STREAMED), Chunking: Chunking{Size: 1024}, NoTrace: true, NoRecordBody: true}, sse},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			c, _ := startProc(b, replyAll(passthrough))
			f, err := New(c, tc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			up := &testUpstream{body: tc.body}
			req := &Request{Method: "POST", Path: "/v1/messages", Body: []byte(`{"model":"claude-sonnet-4-5","stream":true}`)}
			b.SetBytes(int64(len(tc.body)))
			b.ReportAllocs()
			for b.Loop() {
				resp, err := f.Do(b.Context(), req, up)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if n != int64(len(tc.body)) {
					b.Fatalf("got %d bytes", n)
				}
			}
		})
	}
}
