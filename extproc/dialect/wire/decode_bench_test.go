package wire_test

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// The figures behind the choice to decode in the processor rather than ask
// providers for identity (see the comment on Decoder's use in the gate,
// extproc/gate/meter.go): what decoding one MB costs per coding, next to
// what parsing the same MB of SSE costs, and what one gzip-flushed event
// costs per chunk.

type benchCoding struct {
	name string
	enc  wire.Encoding
	new  func(io.Writer) interface {
		io.WriteCloser
		Flush() error
	}
}

var benchCodings = []benchCoding{
	{"gzip", wire.Gzip, func(w io.Writer) interface {
		io.WriteCloser
		Flush() error
	} {
		return gzip.NewWriter(w)
	}},
	{"deflate", wire.Deflate, func(w io.Writer) interface {
		io.WriteCloser
		Flush() error
	} {
		return zlib.NewWriter(w)
	}},
	{"deflate-raw", wire.Deflate, func(w io.Writer) interface {
		io.WriteCloser
		Flush() error
	} {
		f, _ := flate.NewWriter(w, flate.DefaultCompression)
		return f
	}},
	{"br", wire.Brotli, func(w io.Writer) interface {
		io.WriteCloser
		Flush() error
	} {
		return brotli.NewWriter(w)
	}},
	{"zstd", wire.Zstd, func(w io.Writer) interface {
		io.WriteCloser
		Flush() error
	} {
		z, _ := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
		return z
	}},
}

// benchStream is an Anthropic stream of about 1 MB: message_start, text
// deltas of one to three words, message_delta and message_stop, as the API
// sends them. The words are drawn Zipf-like from a vocabulary of 2000, so
// the stream compresses like real text (about 7:1 in gzip, mostly the
// repeated framing), not like a repeated sentence.
func benchStream() [][]byte {
	r := rand.New(rand.NewPCG(11, 13))
	vocab := make([]string, 2000)
	for i := range vocab {
		w := make([]byte, 2+r.IntN(8))
		for j := range w {
			w[j] = "etaoinshrdlucmfwypvbgkjqxz"[min(r.IntN(26), r.IntN(26))]
		}
		vocab[i] = string(w)
	}
	zipf := rand.NewZipf(r, 1.1, 1, uint64(len(vocab)-1))
	word := func() string { return vocab[zipf.Uint64()] }
	ev := [][]byte{[]byte("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":2095,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n")}
	for len(ev) < 9000 {
		text := " " + word()
		for range r.IntN(3) {
			text += " " + word()
		}
		ev = append(ev, fmt.Appendf(nil, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":%q}}\n\n", text))
	}
	return append(ev, []byte("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":18000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"))
}

func benchCompress(b *testing.B, c benchCoding, events [][]byte, flush bool) ([]byte, []int) {
	var buf bytes.Buffer
	w := c.new(&buf)
	var ends []int
	for _, e := range events {
		_, _ = w.Write(e)
		if flush {
			_ = w.Flush()
			ends = append(ends, buf.Len())
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes(), ends
}

// BenchmarkDecodePerMB decodes a whole ~1 MB SSE stream per op, in the
// 16 KiB chunks an HTTP/1 read typically delivers; MB/s is of decoded
// bytes. "flushed" streams flush after every event (Anthropic's gzip).
func BenchmarkDecodePerMB(b *testing.B) {
	events := benchStream()
	plain := bytes.Join(events, nil)
	for _, c := range benchCodings {
		for _, flush := range []bool{false, true} {
			name := c.name
			if flush {
				name += "/flushed"
			}
			b.Run(name, func(b *testing.B) {
				z, _ := benchCompress(b, c, events, flush)
				b.SetBytes(int64(len(plain)))
				sink := func([]byte) {}
				b.ReportAllocs()
				for b.Loop() {
					d := wire.NewDecoder(c.enc, wire.DecodeLimits{MaxOutput: wire.MaxDecodedStream})
					for rest := z; len(rest) > 0; {
						n := min(len(rest), 16<<10)
						if err := d.Write(rest[:n], sink); err != nil {
							b.Fatal(err)
						}
						rest = rest[n:]
					}
					if err := d.Finish(sink); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(len(plain))/float64(len(z)), "ratio")
			})
		}
	}
}

// BenchmarkParseSSEPerMB is the baseline: the Anthropic stream parser over
// the same plain stream, in the same chunks.
func BenchmarkParseSSEPerMB(b *testing.B) {
	plain := bytes.Join(benchStream(), nil)
	b.SetBytes(int64(len(plain)))
	b.ReportAllocs()
	for b.Loop() {
		p := anthropic.NewStreamParser()
		for rest := plain; len(rest) > 0; {
			n := min(len(rest), 16<<10)
			p.Write(rest[:n])
			rest = rest[n:]
		}
		if _, final := p.Usage(); !final {
			b.Fatal("no usage")
		}
	}
}

// BenchmarkDecodeFlushedEventPerChunk is Anthropic's case as Envoy delivers
// it: one gzip-flushed event per chunk, decoded and parsed; ns/op is per
// chunk (event), next to parsing the same event uncompressed.
func BenchmarkDecodeFlushedEventPerChunk(b *testing.B) {
	events := benchStream()
	for _, c := range benchCodings {
		b.Run(c.name, func(b *testing.B) {
			z, ends := benchCompress(b, c, events, true)
			p := anthropic.NewStreamParser()
			d := wire.NewDecoder(c.enc, wire.DecodeLimits{MaxOutput: 1 << 62})
			sink := func(out []byte) { p.Write(out) }
			i, start := 0, 0
			b.ReportAllocs()
			for b.Loop() {
				if i == len(ends) {
					// Start over with a fresh stream (a new response).
					_ = d.Finish(sink)
					d = wire.NewDecoder(c.enc, wire.DecodeLimits{MaxOutput: 1 << 62})
					p = anthropic.NewStreamParser()
					i, start = 0, 0
				}
				if err := d.Write(z[start:ends[i]], sink); err != nil {
					b.Fatal(err)
				}
				start = ends[i]
				i++
			}
			d.Close()
		})
	}
	b.Run("identity", func(b *testing.B) {
		p := anthropic.NewStreamParser()
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			if i == len(events) {
				p, i = anthropic.NewStreamParser(), 0
			}
			p.Write(events[i])
			i++
		}
	})
}

// BenchmarkDecoderSetup is what a compressed response costs before its
// first byte: the decoder and its window, per coding.
func BenchmarkDecoderSetup(b *testing.B) {
	for _, c := range benchCodings {
		b.Run(c.name, func(b *testing.B) {
			z, _ := benchCompress(b, c, [][]byte{[]byte("data: {}\n\n")}, false)
			sink := func([]byte) {}
			b.ReportAllocs()
			for b.Loop() {
				d := wire.NewDecoder(c.enc, wire.DecodeLimits{MaxOutput: 1 << 20})
				if err := d.Write(z, sink); err != nil {
					b.Fatal(err)
				}
				if err := d.Finish(sink); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
