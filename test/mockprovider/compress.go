package mockprovider

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// Compression is applied where every handler's response passes —
// Provider.ServeHTTP wraps the ResponseWriter — so JSON and SSE from any
// dialect's handler are compressed alike, and a handler never knows. A
// streamed response is compressed flush by flush: the streamer flushes
// after each event (or each x-mock-split piece), and so the compressor
// does, as Anthropic gzip-flushes every SSE event. A response whose
// handler set content-length is compressed whole and sent with the
// compressed length.
//
// It happens only when a request asks through a knob: Go's HTTP client
// sends accept-encoding: gzip on its own, and every test that does not
// ask must keep its uncompressed bytes.

// codings the mock compresses with, by the knob's name. deflate is the
// zlib format RFC 9110 names; deflate-raw is raw DEFLATE sent as
// "deflate", as some servers do.
var codings = map[string]struct {
	header string
	new    func(io.Writer) compressor
}{
	"gzip":    {"gzip", func(w io.Writer) compressor { return gzip.NewWriter(w) }},
	"deflate": {"deflate", func(w io.Writer) compressor { return zlib.NewWriter(w) }},
	"deflate-raw": {"deflate", func(w io.Writer) compressor {
		f, _ := flate.NewWriter(w, flate.DefaultCompression)
		return f
	}},
	"br": {"br", func(w io.Writer) compressor { return brotli.NewWriter(w) }},
	"zstd": {"zstd", func(w io.Writer) compressor {
		// RFC 9659 caps a zstd content coding's window at 8 MiB, which is
		// the encoder's default; one goroutine-free encoder per response.
		z, _ := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(8<<20))
		return z
	}},
}

type compressor interface {
	io.WriteCloser
	Flush() error
}

// negotiatedCodings are what accept-encoding may choose, in the order that
// breaks a tie of equal q-values in favour of the more common coding.
var negotiatedCodings = []string{"gzip", "br", "zstd", "deflate"}

// responseCoding is the coding a request asks for: x-mock-compress names
// it; x-mock-honour-accept-encoding lets accept-encoding choose it
// (https://www.rfc-editor.org/rfc/rfc9110#section-12.5.3). "" means none.
// Invalid knob values choose none here; the handler's parseKnobs refuses
// them with a 400 in its dialect.
func responseCoding(h http.Header) string {
	if v := strings.ToLower(strings.TrimSpace(h.Get("x-mock-compress"))); v != "" {
		if _, ok := codings[v]; ok {
			return v
		}
		return ""
	}
	if honour, err := boolHeader(h, "x-mock-honour-accept-encoding"); err != nil || !honour {
		return ""
	}
	return negotiate(h.Values("accept-encoding"))
}

// negotiate picks the coding with the highest q-value that the mock
// supports; "*" stands for gzip, identity and unknown codings for none.
func negotiate(values []string) string {
	best, bestQ := "", 0.0
	rank := func(c string) int {
		for i, n := range negotiatedCodings {
			if n == c {
				return i
			}
		}
		return len(negotiatedCodings)
	}
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			name = strings.ToLower(strings.TrimSpace(name))
			if name == "*" {
				name = "gzip"
			}
			if name == "x-gzip" {
				name = "gzip"
			}
			if _, ok := codings[name]; !ok || name == "deflate-raw" {
				continue
			}
			q := 1.0
			if p := strings.TrimSpace(params); strings.HasPrefix(strings.ToLower(p), "q=") {
				f, err := strconv.ParseFloat(p[2:], 64)
				if err != nil {
					continue
				}
				q = f
			}
			if q > bestQ || q == bestQ && q > 0 && rank(name) < rank(best) {
				best, bestQ = name, q
			}
		}
	}
	if bestQ <= 0 {
		return ""
	}
	return best
}

// compressWriter compresses one response in coding when its content type
// is JSON or SSE. Unwrap lets http.ResponseController reach Hijack (the
// scripted disconnect) below it.
type compressWriter struct {
	http.ResponseWriter
	coding string

	wroteHeader bool
	status      int
	on          bool // compressing
	sized       bool // buffer the whole body to send its compressed length
	headerSent  bool // the underlying WriteHeader ran
	z           compressor
	buf         bytes.Buffer
}

func newCompressWriter(w http.ResponseWriter, coding string) *compressWriter {
	return &compressWriter{ResponseWriter: w, coding: coding}
}

func compressible(contentType string) bool {
	ct := strings.ToLower(contentType)
	return strings.HasPrefix(ct, "application/json") || strings.HasPrefix(ct, "text/event-stream")
}

func (c *compressWriter) WriteHeader(code int) {
	if c.wroteHeader {
		return
	}
	c.wroteHeader, c.status = true, code
	h := c.Header()
	if c.coding != "" && code != http.StatusNoContent && code != http.StatusNotModified &&
		compressible(h.Get("content-type")) && h.Get("content-encoding") == "" {
		c.on = true
		h.Set("content-encoding", codings[c.coding].header)
		if h.Get("content-length") != "" {
			c.sized = true
			h.Del("content-length")
		}
		c.z = codings[c.coding].new((*compressTarget)(c))
	}
	if !c.sized {
		c.sendHeader()
	}
}

func (c *compressWriter) sendHeader() {
	if !c.headerSent {
		c.headerSent = true
		c.ResponseWriter.WriteHeader(c.status)
	}
}

func (c *compressWriter) Write(b []byte) (int, error) {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	if !c.on {
		return c.ResponseWriter.Write(b)
	}
	return c.z.Write(b)
}

// FlushError flushes the compressor (a sync flush: everything written so
// far becomes decodable) and the connection. A sized response that is
// flushed after all goes out chunked, without a length.
func (c *compressWriter) FlushError() error {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	if c.on {
		if c.sized {
			c.sized = false
			c.sendHeader()
			if _, err := c.ResponseWriter.Write(c.buf.Bytes()); err != nil {
				return err
			}
			c.buf.Reset()
		}
		if err := c.z.Flush(); err != nil {
			return fmt.Errorf("mock: flush %s: %w", c.coding, err)
		}
	}
	return http.NewResponseController(c.ResponseWriter).Flush()
}

// Unwrap implements the ResponseController contract.
func (c *compressWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// finish ends the compressed stream and, for a sized response, sends it
// with its compressed length. Errors are those of a client gone away.
func (c *compressWriter) finish() {
	if !c.on {
		return
	}
	_ = c.z.Close()
	if c.sized {
		c.Header().Set("content-length", strconv.Itoa(c.buf.Len()))
		c.sendHeader()
		_, _ = c.ResponseWriter.Write(c.buf.Bytes())
	}
}

// compressTarget is where compressed bytes go: the buffer of a sized
// response, else the connection.
type compressTarget compressWriter

func (t *compressTarget) Write(b []byte) (int, error) {
	c := (*compressWriter)(t)
	if c.sized {
		return c.buf.Write(b)
	}
	return c.ResponseWriter.Write(b)
}
