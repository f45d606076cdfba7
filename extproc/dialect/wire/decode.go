package wire

import (
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"iter"
	"strings"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// Encoding is a content coding of a response body
// (https://www.rfc-editor.org/rfc/rfc9110#section-8.4.1) that a Decoder
// undoes.
type Encoding uint8

const (
	Identity Encoding = iota // no coding
	Gzip                     // gzip (RFC 1952), x-gzip; concatenated members included
	Deflate                  // "deflate": zlib-wrapped (RFC 1950) as RFC 9110 says, or raw (RFC 1951) as some servers send it
	Brotli                   // br (RFC 7932)
	Zstd                     // zstd (RFC 8878, with RFC 9659's window limit)
)

var encodingNames = [...]string{"identity", "gzip", "deflate", "br", "zstd"}

func (e Encoding) String() string {
	if int(e) < len(encodingNames) {
		return encodingNames[e]
	}
	return "unknown"
}

// ParseContentEncoding reads a Content-Encoding header value. ok is false
// for a coding no Decoder undoes, or for several codings stacked ("gzip,
// br"), which no LLM provider sends; "identity" entries and an empty value
// mean no coding. Names are case-insensitive, and x-gzip is gzip
// (https://www.rfc-editor.org/rfc/rfc9110#section-8.4.1.3).
func ParseContentEncoding(v string) (enc Encoding, ok bool) {
	enc, seen := Identity, false
	for part := range strings.SplitSeq(v, ",") {
		var e Encoding
		switch strings.ToLower(strings.TrimSpace(part)) {
		case "", "identity":
			continue
		case "gzip", "x-gzip":
			e = Gzip
		case "deflate":
			e = Deflate
		case "br":
			e = Brotli
		case "zstd":
			e = Zstd
		default:
			return Identity, false
		}
		if seen {
			return Identity, false
		}
		enc, seen = e, true
	}
	return enc, true
}

// Decoding limits. A compressed response is untrusted input that can expand
// a thousandfold (DEFLATE, inside gzip and deflate, tops out near 1032:1;
// brotli and zstd have no such ceiling), so a Decoder stops at a total and
// at a ratio.
const (
	// DefaultMaxRatio is the decoded-to-compressed ratio past which a body
	// is taken for a decompression bomb, once RatioSlack bytes are decoded.
	// Real LLM streams compress 5–25:1 (BenchmarkDecodePerMB), but a model
	// stuck repeating itself compresses far better, so the ratio sits just
	// below DEFLATE's ceiling: it never refuses a DEFLATE body that decodes
	// within the totals, and it stops brotli and zstd bombs, which reach
	// millions to one, after about a thousand bytes per byte received.
	DefaultMaxRatio = 1024
	// RatioSlack is decoded before the ratio applies: a small, highly
	// redundant body is no threat however well it compresses.
	RatioSlack = 1 << 20
	// MaxDecodedStream bounds what one streamed (SSE) response may decode
	// to; the longest real streams are tens of MiB.
	MaxDecodedStream = 256 << 20
	// maxZstdWindow is the window a zstd content coding may use
	// (https://www.rfc-editor.org/rfc/rfc9659): a larger one is refused
	// rather than allocated.
	maxZstdWindow = 8 << 20
)

// Why a body could not be decoded; every one of them leaves the response
// unmetered (charged at its estimate), never a crash or a hang.
var (
	ErrDecodedTooLarge = errors.New("decoded body exceeds the limit")
	ErrDecodeRatio     = errors.New("decompression ratio exceeds the limit (a decompression bomb?)")
	ErrTrailingData    = errors.New("data after the end of the compressed stream")
	ErrTruncated       = errors.New("the compressed stream ends early")
	errStopped         = errors.New("decoder closed")
)

// brotliExcessiveInput is the message of andybalholm/brotli's unexported
// errExcessiveInput (reader.go).
const brotliExcessiveInput = "brotli: excessive input"

// DecodeLimits bound one Decoder.
type DecodeLimits struct {
	// MaxOutput bounds the decoded bytes in total.
	MaxOutput int64
	// MaxRatio bounds decoded bytes per compressed byte once RatioSlack
	// bytes are decoded; 0 means DefaultMaxRatio.
	MaxRatio int64
}

// Decoder undoes the content coding of one response body as Envoy streams
// it through the processor: Write takes each chunk as it comes — split
// anywhere, inside the coding's own header too — and hands the bytes it
// decodes to a sink at once. It keeps only the decompressor's state (its
// window), never the compressed stream, and never re-inflates from the
// start: each byte is decoded once.
//
// The decompressors of the standard library and of brotli and zstd pull
// their input (io.Reader); a Decoder runs one as a coroutine (iter.Pull)
// that asks for input by yielding, so Write resumes it with the chunk and
// gets control back as soon as the chunk is used up. The coroutine exists
// from the first compressed byte to the end of the compressed stream, the
// first error, or Close, whichever comes first; a caller that may stop
// early must Close. It decodes only while Write, Finish or Close runs, on
// the caller's goroutine's behalf, so a Decoder is used by one goroutine at
// a time, like the stream parsers.
//
// Output is what the decompressor can produce from the input so far: a
// provider's flush (Anthropic gzip-flushes each SSE event) yields the whole
// event in the Write that completes it; bytes of an unflushed DEFLATE block
// come with a later chunk.
type Decoder struct {
	enc      Encoding
	maxOut   int64
	maxRatio int64

	// The chunk being decoded and how far; back holds bytes read ahead
	// (the deflate sniff) that are to be read again.
	in   []byte
	pos  int
	back []byte

	sink  func([]byte)
	next  func() (struct{}, bool)
	stop  func()
	yield func(struct{}) bool

	eof     bool // Finish: no input follows
	stopped bool // Close: the coroutine is to end
	closed  bool // Close ran: Write and Finish do nothing more
	ended   bool // the coroutine returned
	done    bool // the compressed stream ended cleanly
	err     error

	consumed, produced int64
}

// NewDecoder returns a Decoder for one body in enc, which must not be
// Identity.
func NewDecoder(enc Encoding, lim DecodeLimits) *Decoder {
	if lim.MaxRatio <= 0 {
		lim.MaxRatio = DefaultMaxRatio
	}
	return &Decoder{enc: enc, maxOut: lim.MaxOutput, maxRatio: lim.MaxRatio}
}

// Encoding returns the coding being undone.
func (d *Decoder) Encoding() Encoding { return d.enc }

// Err returns why decoding stopped early, or nil.
func (d *Decoder) Err() error { return d.err }

// Counts returns the compressed bytes received and the bytes decoded.
func (d *Decoder) Counts() (compressed, decoded int64) { return d.consumed, d.produced }

// Write decodes one chunk, calling sink with each run of decoded bytes; the
// runs alias the Decoder's buffer and are valid only during the call. After
// an error every Write is a no-op returning it.
func (d *Decoder) Write(chunk []byte, sink func([]byte)) error {
	if d.err != nil || d.closed || len(chunk) == 0 {
		return d.err
	}
	d.consumed += int64(len(chunk))
	if d.ended {
		// Whatever follows a complete stream is not part of it.
		d.err = ErrTrailingData
		return d.err
	}
	d.in, d.pos, d.sink = chunk, 0, sink
	if d.next == nil {
		d.next, d.stop = iter.Pull(d.run)
	}
	d.resume()
	d.in, d.pos, d.sink = nil, 0, nil // the chunk is never kept
	return d.err
}

// Finish ends the input: the decompressor flushes what it holds and checks
// that the compressed stream ended where the body did. An empty body is no
// error (ai-gateway's #2291: a 204-like empty answer labelled gzip). The
// coroutine is over when Finish returns.
func (d *Decoder) Finish(sink func([]byte)) error {
	if d.err == nil && !d.closed && d.next != nil && !d.ended {
		d.eof, d.sink = true, sink
		d.resume()
		d.sink = nil
	}
	d.Close()
	return d.err
}

// Close ends the coroutine without finishing the stream (the response was
// cut short, or is no longer read). It is safe to call at any time, more
// than once.
func (d *Decoder) Close() {
	d.closed = true
	if d.stop != nil {
		d.stopped = true
		d.stop()
		d.stop = nil
	}
}

func (d *Decoder) resume() {
	if _, ok := d.next(); !ok {
		d.ended = true
	}
}

// run is the coroutine: it opens the decompressor on the Decoder's input,
// then drains it into the sink until the stream ends.
func (d *Decoder) run(yield func(struct{}) bool) {
	d.yield = yield
	r, release, err := d.open()
	if release != nil {
		defer release()
	}
	if err != nil {
		d.fail(err)
		return
	}
	buf := readBufs.Get().(*[32 << 10]byte)
	defer readBufs.Put(buf)
	brotliExcess := false
	for {
		n, err := r.Read(buf[:])
		if n > 0 && !d.emit(buf[:n]) {
			return
		}
		switch {
		case err == nil:
		case d.enc == Brotli && err.Error() == brotliExcessiveInput && !brotliExcess:
			// andybalholm/brotli also reports this for a valid stream whose
			// last bytes came in pieces (its Reader checks an internal
			// buffer the finished decoder may still mark as used). Asked
			// again, its Reader repeats it at once for input really left
			// over, and otherwise waits for more input: io.EOF at Finish
			// is a clean end, more bytes are trailing data.
			brotliExcess = true
		case err == io.EOF:
			d.done = true
			if d.pos < len(d.in) || len(d.back) > 0 {
				d.fail(ErrTrailingData)
			}
			return
		default:
			d.fail(err)
			return
		}
	}
}

// Decompressors are pooled: each holds a window (32 KiB for DEFLATE, up to
// 16 MiB for brotli and 8 MiB for zstd) whose allocation costs 15–60 µs, 20
// to 50 times what a Reset does (BenchmarkDecoderSetup). A pooled
// decompressor keeps a reference to its last input until reused; the
// input's chunks are never kept.
var (
	readBufs   = sync.Pool{New: func() any { return new([32 << 10]byte) }}
	gzipPool   sync.Pool // *gzip.Reader
	zlibPool   sync.Pool // io.ReadCloser, a zlib.Resetter
	flatePool  sync.Pool // io.ReadCloser, a flate.Resetter
	brotliPool sync.Pool // *brotli.Reader
	zstdPool   sync.Pool // *zstd.Decoder
)

// open starts the decompressor; gzip, zlib and zstd read their headers here
// (through the coroutine, so a header split across chunks is no matter).
// release returns it to its pool once the stream is over.
func (d *Decoder) open() (r io.Reader, release func(), err error) {
	in := (*feed)(d)
	switch d.enc {
	case Gzip:
		z, _ := gzipPool.Get().(*gzip.Reader)
		if z == nil {
			z, err = gzip.NewReader(in)
		} else {
			err = z.Reset(in)
		}
		if z == nil {
			return nil, nil, err
		}
		return z, func() { gzipPool.Put(z) }, err
	case Deflate:
		// RFC 9110 defines "deflate" as the zlib format, but servers have
		// long sent raw DEFLATE under that name
		// (https://www.rfc-editor.org/rfc/rfc9110#section-8.4.1.2), so the
		// first two bytes decide: a zlib header names method 8 with a
		// window of at most 32 KiB and is a multiple of 31 (RFC 1950 §2.2).
		b0, err := in.ReadByte()
		if err != nil {
			return nil, nil, err
		}
		b1, err := in.ReadByte()
		if err != nil {
			return nil, nil, err
		}
		d.back = append(d.back[:0], b0, b1)
		if b0&0x0f == 8 && b0>>4 <= 7 && (uint16(b0)<<8|uint16(b1))%31 == 0 {
			z, _ := zlibPool.Get().(io.ReadCloser)
			if z == nil {
				z, err = zlib.NewReader(in)
			} else {
				err = z.(zlib.Resetter).Reset(in, nil)
			}
			if z == nil {
				return nil, nil, err
			}
			return z, func() { zlibPool.Put(z) }, err
		}
		f, _ := flatePool.Get().(io.ReadCloser)
		if f == nil {
			f = flate.NewReader(in)
		} else {
			_ = f.(flate.Resetter).Reset(in, nil)
		}
		return f, func() { flatePool.Put(f) }, nil
	case Brotli:
		b, _ := brotliPool.Get().(*brotli.Reader)
		if b == nil {
			b = brotli.NewReader(in)
		} else {
			_ = b.Reset(in)
		}
		return b, func() { brotliPool.Put(b) }, nil
	case Zstd:
		z, _ := zstdPool.Get().(*zstd.Decoder)
		if z == nil {
			// Goroutine-free: with concurrency 1 the zstd decoder decodes
			// synchronously inside Read (zstd.WithDecoderConcurrency).
			z, err = zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow))
		} else {
			err = z.Reset(in)
		}
		if z == nil {
			return nil, nil, err
		}
		return z, func() { zstdPool.Put(z) }, err
	}
	return nil, nil, errors.New("wire: no decoder for " + d.enc.String())
}

// emit checks the limits, then hands decoded bytes to the sink.
func (d *Decoder) emit(b []byte) bool {
	if d.stopped || d.sink == nil {
		// Close: a decompressor may still return what it had decoded
		// before it sees the end of its input; nobody reads it now.
		return false
	}
	d.produced += int64(len(b))
	switch {
	case d.produced > d.maxOut:
		d.fail(ErrDecodedTooLarge)
		return false
	case d.produced > RatioSlack && d.produced > d.maxRatio*d.consumed:
		d.fail(ErrDecodeRatio)
		return false
	}
	d.sink(b)
	return true
}

func (d *Decoder) fail(err error) {
	if d.err != nil {
		return
	}
	switch {
	case d.enc == Brotli && err.Error() == brotliExcessiveInput:
		err = ErrTrailingData
	case errors.Is(err, errStopped):
		return // Close: not a fault of the body
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		err = ErrTruncated
	}
	d.err = err
}

// feed is the decompressor's view of a Decoder: its input.
type feed Decoder

// Read is the decompressor's input: the current chunk, then — by yielding
// back to Write — the next one. It never returns 0, nil.
func (d *feed) Read(p []byte) (int, error) {
	if len(d.back) > 0 {
		n := copy(p, d.back)
		d.back = d.back[n:]
		return n, nil
	}
	for d.pos >= len(d.in) {
		if err := d.wait(); err != nil {
			return 0, err
		}
	}
	n := copy(p, d.in[d.pos:])
	d.pos += n
	return n, nil
}

// ReadByte makes feed a flate.Reader, so gzip, zlib and flate read it
// directly instead of through a bufio.Reader of their own.
func (d *feed) ReadByte() (byte, error) {
	if len(d.back) > 0 {
		b := d.back[0]
		d.back = d.back[1:]
		return b, nil
	}
	for d.pos >= len(d.in) {
		if err := d.wait(); err != nil {
			return 0, err
		}
	}
	b := d.in[d.pos]
	d.pos++
	return b, nil
}

// wait gives control back to Write until the next chunk, the end of the
// input, or Close.
func (d *feed) wait() error {
	if d.eof {
		return io.EOF
	}
	if d.stopped || !d.yield(struct{}{}) {
		d.stopped = true
		return errStopped
	}
	return nil
}
