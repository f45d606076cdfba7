package wire

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// coding is one way a test body is compressed: the Encoding the header
// names and a writer producing it. "deflate-raw" is raw DEFLATE sent as
// "deflate", as some servers do.
type coding struct {
	name string
	enc  Encoding
	new  func(io.Writer) flushWriter
}

type flushWriter interface {
	io.WriteCloser
	Flush() error
}

var codings = []coding{
	{"gzip", Gzip, func(w io.Writer) flushWriter { return gzip.NewWriter(w) }},
	{"deflate-zlib", Deflate, func(w io.Writer) flushWriter { return zlib.NewWriter(w) }},
	{"deflate-raw", Deflate, func(w io.Writer) flushWriter {
		f, _ := flate.NewWriter(w, flate.DefaultCompression)
		return f
	}},
	{"br", Brotli, func(w io.Writer) flushWriter { return brotli.NewWriter(w) }},
	{"zstd", Zstd, func(w io.Writer) flushWriter {
		z, _ := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
		return z
	}},
}

// compress encodes parts, flushing after each when flush is set (as
// Anthropic does per SSE event), and returns the stream and the offset at
// which each part's flushed bytes end.
func compress(t testing.TB, c coding, parts [][]byte, flush bool) ([]byte, []int) {
	t.Helper()
	var buf bytes.Buffer
	w := c.new(&buf)
	var ends []int
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
		if flush {
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			ends = append(ends, buf.Len())
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), ends
}

// sseEvents is an Anthropic-like stream of n text deltas.
func sseEvents(n int) [][]byte {
	ev := [][]byte{[]byte(`event: message_start` + "\n" + `data: {"type":"message_start","message":{"model":"claude-sonnet-4-5","id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}` + "\n\n")}
	words := strings.Fields("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches at dawn")
	for i := range n {
		ev = append(ev, fmt.Appendf(nil, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" %s %s\"}}\n\n", words[i%len(words)], words[(i*7)%len(words)]))
	}
	ev = append(ev, []byte("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":503}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"))
	return ev
}

// decodeChunks feeds chunks and returns everything decoded.
func decodeChunks(enc Encoding, lim DecodeLimits, chunks [][]byte) ([]byte, error) {
	d := NewDecoder(enc, lim)
	var out []byte
	sink := func(b []byte) { out = append(out, b...) }
	for _, c := range chunks {
		if err := d.Write(c, sink); err != nil {
			d.Close()
			return out, err
		}
	}
	return out, d.Finish(sink)
}

var bigLimits = DecodeLimits{MaxOutput: MaxDecodedStream}

// randomSplit cuts b at random offsets, empty chunks included.
func randomSplit(r *rand.Rand, b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := r.IntN(min(len(b), 64) + 1)
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func TestDecoderRoundTripAnySplit(t *testing.T) {
	plain := bytes.Join(sseEvents(300), nil)
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range codings {
		for _, flush := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/flush=%v", c.name, flush), func(t *testing.T) {
				z, _ := compress(t, c, sseEvents(300), flush)
				cases := map[string][][]byte{"whole": {z}}
				bytewise := make([][]byte, len(z))
				for i := range z {
					bytewise[i] = z[i : i+1]
				}
				cases["bytewise"] = bytewise
				for i := range 5 {
					cases[fmt.Sprint("random", i)] = randomSplit(r, z)
				}
				for name, chunks := range cases {
					got, err := decodeChunks(c.enc, bigLimits, chunks)
					if err != nil || !bytes.Equal(got, plain) {
						t.Fatalf("%s: err %v, %d bytes decoded, want %d", name, err, len(got), len(plain))
					}
				}
			})
		}
	}
}

// TestDecoderFlushedEventsArriveWithTheirChunk: a provider that flushes
// after each SSE event (Anthropic, gzip) has each event decoded by the
// Write that completes its compressed bytes — nothing waits for the next
// chunk — whichever coding flushes that way.
func TestDecoderFlushedEventsArriveWithTheirChunk(t *testing.T) {
	events := sseEvents(40)
	for _, c := range codings {
		t.Run(c.name, func(t *testing.T) {
			z, ends := compress(t, c, events, true)
			d := NewDecoder(c.enc, bigLimits)
			var out []byte
			sink := func(b []byte) { out = append(out, b...) }
			start := 0
			var want []byte
			for i, end := range ends {
				// Each flushed event arrives in two chunks, cut mid-way.
				mid := start + (end-start)/2
				if err := d.Write(z[start:mid], sink); err != nil {
					t.Fatal(err)
				}
				if err := d.Write(z[mid:end], sink); err != nil {
					t.Fatal(err)
				}
				want = append(want, events[i]...)
				if !bytes.Equal(out, want) {
					t.Fatalf("after event %d: decoded %q, want %q", i, out, want)
				}
				start = end
			}
			if err := d.Write(z[start:], sink); err != nil {
				t.Fatal(err)
			}
			if err := d.Finish(sink); err != nil || !bytes.Equal(out, want) {
				t.Fatalf("finish: %v", err)
			}
		})
	}
}

func TestDecoderConcatenatedMembers(t *testing.T) {
	a, _ := compress(t, codings[0], [][]byte{[]byte("data: 1\n\n")}, false)
	b, _ := compress(t, codings[0], [][]byte{[]byte("data: 2\n\n")}, false)
	got, err := decodeChunks(Gzip, bigLimits, [][]byte{append(append([]byte{}, a...), b...)})
	if err != nil || string(got) != "data: 1\n\ndata: 2\n\n" {
		t.Fatalf("gzip members: %q %v", got, err)
	}
	zs := codings[4]
	a, _ = compress(t, zs, [][]byte{[]byte("one ")}, false)
	b, _ = compress(t, zs, [][]byte{[]byte("two")}, false)
	got, err = decodeChunks(Zstd, bigLimits, [][]byte{a, b})
	if err != nil || string(got) != "one two" {
		t.Fatalf("zstd frames: %q %v", got, err)
	}
}

func TestDecoderFaults(t *testing.T) {
	plain := bytes.Repeat([]byte("data: {\"type\":\"ping\"}\n\n"), 100)
	for _, c := range codings {
		z, _ := compress(t, c, [][]byte{plain}, false)
		t.Run(c.name+"/truncated", func(t *testing.T) {
			for _, cut := range []int{1, len(z) / 2, len(z) - 1} {
				if _, err := decodeChunks(c.enc, bigLimits, [][]byte{z[:cut]}); err == nil {
					t.Errorf("cut at %d of %d: no error", cut, len(z))
				}
			}
		})
		t.Run(c.name+"/corrupt", func(t *testing.T) {
			bad := bytes.Clone(z)
			for i := len(bad) / 3; i < len(bad)/3+8 && i < len(bad); i++ {
				bad[i] ^= 0x5a
			}
			got, err := decodeChunks(c.enc, bigLimits, [][]byte{bad})
			if err == nil && bytes.Equal(got, plain) {
				t.Error("a corrupted body decoded to the original")
			}
			if err == nil {
				t.Errorf("a corrupted body decoded without error to %d bytes", len(got))
			}
		})
		t.Run(c.name+"/trailing", func(t *testing.T) {
			for _, chunks := range [][][]byte{{append(bytes.Clone(z), "junk"...)}, {z, []byte("junk")}} {
				_, err := decodeChunks(c.enc, bigLimits, chunks)
				if err == nil {
					t.Errorf("trailing bytes accepted (%d chunks)", len(chunks))
				}
			}
		})
		t.Run(c.name+"/too large", func(t *testing.T) {
			_, err := decodeChunks(c.enc, DecodeLimits{MaxOutput: 1000}, [][]byte{z})
			if !errors.Is(err, ErrDecodedTooLarge) {
				t.Errorf("err %v", err)
			}
		})
		t.Run(c.name+"/bomb", func(t *testing.T) {
			bomb, _ := compress(t, c, [][]byte{make([]byte, 16<<20)}, false)
			lim := DecodeLimits{MaxOutput: 8 << 20}
			got, err := decodeChunks(c.enc, lim, [][]byte{bomb})
			if !errors.Is(err, ErrDecodeRatio) && !errors.Is(err, ErrDecodedTooLarge) {
				t.Errorf("16 MiB of zeros in %d bytes: err %v", len(bomb), err)
			}
			if (c.enc == Brotli || c.enc == Zstd) && !errors.Is(err, ErrDecodeRatio) {
				t.Errorf("a %s bomb must stop at the ratio, got %v", c.name, err)
			}
			if int64(len(got)) > min(lim.MaxOutput, RatioSlack+DefaultMaxRatio*int64(len(bomb))) {
				t.Errorf("decoded %d bytes past the limits", len(got))
			}
		})
		t.Run(c.name+"/empty body", func(t *testing.T) {
			if got, err := decodeChunks(c.enc, bigLimits, nil); err != nil || len(got) != 0 {
				t.Errorf("%q %v", got, err)
			}
		})
	}
	// A deflate body of one byte cannot even say which deflate it is.
	if _, err := decodeChunks(Deflate, bigLimits, [][]byte{{0x78}}); !errors.Is(err, ErrTruncated) {
		t.Errorf("one-byte deflate: %v", err)
	}
	// After an error, writes do nothing and report it.
	d := NewDecoder(Gzip, bigLimits)
	if err := d.Write([]byte("not gzip at all"), func([]byte) { t.Error("output from garbage") }); err == nil {
		t.Fatal("garbage accepted")
	}
	if err := d.Write([]byte{1}, nil); err == nil || d.Err() == nil {
		t.Error("the error must stick")
	}
	d.Close()
}

// TestDecoderCoroutineAlwaysEnds: the coroutine behind a Decoder ends
// however the stream ends — finished, closed mid-stream, failed — and
// decoding starts no goroutine of its own (zstd's concurrency included).
func TestDecoderCoroutineAlwaysEnds(t *testing.T) {
	plain := bytes.Join(sseEvents(200), nil)
	base := runtime.NumGoroutine()
	var open []*Decoder
	for _, c := range codings {
		z, _ := compress(t, c, [][]byte{plain}, true)
		for range 10 {
			d := NewDecoder(c.enc, bigLimits)
			_ = d.Write(z[:len(z)/2], func([]byte) {})
			open = append(open, d)
		}
	}
	if n := runtime.NumGoroutine() - base; n > len(open) {
		t.Errorf("%d decoders mid-stream hold %d goroutines; at most one each", len(open), n)
	}
	for i, d := range open {
		switch i % 3 {
		case 0:
			d.Close() // the stream was reset or cancelled
		case 1:
			_ = d.Finish(func([]byte) {}) // it ended early: truncated
		case 2:
			_ = d.Write([]byte("garbage"), func([]byte) {})
			d.Close()
		}
		d.Close() // twice is fine
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Errorf("%d goroutines left after every decoder ended, %d before", n, base)
	}
	// A decoder never written to holds nothing.
	NewDecoder(Gzip, bigLimits).Close()
}

func TestParseContentEncoding(t *testing.T) {
	for v, want := range map[string]Encoding{
		"": Identity, "identity": Identity, "gzip": Gzip, "GZip": Gzip, "x-gzip": Gzip, " br ": Brotli,
		"deflate": Deflate, "zstd": Zstd, "identity, gzip": Gzip, "gzip, identity": Gzip,
	} {
		if got, ok := ParseContentEncoding(v); !ok || got != want {
			t.Errorf("%q: %v %v, want %v", v, got, ok, want)
		}
	}
	for _, v := range []string{"compress", "gzip, br", "br, br", "lzma", "aes128gcm"} {
		if _, ok := ParseContentEncoding(v); ok {
			t.Errorf("%q accepted", v)
		}
	}
	for e := Identity; e <= Zstd+1; e++ {
		if e.String() == "" {
			t.Errorf("%d has no name", e)
		}
	}
	if _, err := decodeChunks(Identity, bigLimits, [][]byte{{1}}); err == nil {
		t.Error("an identity Decoder has nothing to undo")
	}
}

// FuzzDecoder: whatever the bytes and however they are split, a Decoder
// never panics, never decodes past its limits, and gives the same bytes
// and the same verdict as for the body in one piece. A valid compressed
// body of the fuzzed text decodes back to it under any split.
func FuzzDecoder(f *testing.F) {
	f.Add(uint8(0), []byte("data: {\"a\":1}\n\n"), uint64(1), true)
	f.Add(uint8(3), []byte("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"), uint64(7), false)
	f.Add(uint8(1), []byte("x\x9c\x03\x00\x00\x00\x00\x01"), uint64(3), false)
	f.Fuzz(func(t *testing.T, which uint8, data []byte, seed uint64, valid bool) {
		c := codings[int(which)%len(codings)]
		body := data
		if valid {
			body, _ = compress(t, c, [][]byte{data}, seed%2 == 0)
		}
		lim := DecodeLimits{MaxOutput: 1 << 20}
		whole, werr := decodeChunks(c.enc, lim, [][]byte{body})
		r := rand.New(rand.NewPCG(seed, seed>>7))
		split, serr := decodeChunks(c.enc, lim, randomSplit(r, body))
		if int64(len(whole)) > lim.MaxOutput || int64(len(split)) > lim.MaxOutput {
			t.Fatalf("decoded %d/%d bytes past the limit", len(whole), len(split))
		}
		if (werr == nil) != (serr == nil) {
			t.Fatalf("whole: %v, split: %v", werr, serr)
		}
		if werr == nil && !bytes.Equal(whole, split) {
			t.Fatalf("whole and split decode differently")
		}
		if valid && (werr != nil || !bytes.Equal(whole, data)) {
			t.Fatalf("a valid %s body: %v, %d bytes of %d", c.name, werr, len(whole), len(data))
		}
	})
}

// TestDecoderBrotliEndInPieces: andybalholm/brotli's Reader reports
// "excessive input" for a valid stream whose last bytes arrive one by one
// (a FuzzDecoder find); the Decoder tells that from real trailing data.
func TestDecoderBrotliEndInPieces(t *testing.T) {
	br := codings[3]
	for _, plain := range []string{"000000020001", "data: {}\n\n", strings.Repeat("data: {\"a\":1}\n\n", 50)} {
		z, _ := compress(t, br, [][]byte{[]byte(plain)}, false)
		bytewise := func(b []byte) [][]byte {
			out := make([][]byte, len(b))
			for i := range b {
				out[i] = b[i : i+1]
			}
			return out
		}
		if got, err := decodeChunks(Brotli, bigLimits, bytewise(z)); err != nil || string(got) != plain {
			t.Errorf("%q bytewise: %q %v", plain, got, err)
		}
		for i := range z {
			if got, err := decodeChunks(Brotli, bigLimits, [][]byte{z[:i], z[i:]}); err != nil || string(got) != plain {
				t.Errorf("%q split at %d: %q %v", plain, i, got, err)
			}
		}
		junk := append(bytes.Clone(z), "junk"...)
		for _, chunks := range [][][]byte{bytewise(junk), {z[:len(z)-1], junk[len(z)-1:]}} {
			if _, err := decodeChunks(Brotli, bigLimits, chunks); !errors.Is(err, ErrTrailingData) {
				t.Errorf("%q with trailing bytes in %d chunks: %v", plain, len(chunks), err)
			}
		}
	}
}
