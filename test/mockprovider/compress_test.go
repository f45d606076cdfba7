package mockprovider

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// rawClient sends accept-encoding only when asked and never decodes, so
// tests see the bytes on the wire.
var rawClient = &http.Client{Transport: &http.Transport{DisableCompression: true}}

func rawPost(t *testing.T, url, body string, h http.Header) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err := rawClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// decompress undoes a content coding with the libraries' own readers;
// "deflate" may be zlib or raw.
func decompress(t *testing.T, coding string, b []byte) ([]byte, error) {
	t.Helper()
	var r io.Reader
	var err error
	switch coding {
	case "gzip":
		r, err = gzip.NewReader(bytes.NewReader(b))
	case "deflate":
		if r, err = zlib.NewReader(bytes.NewReader(b)); err != nil {
			r, err = flate.NewReader(bytes.NewReader(b)), nil
		}
	case "br":
		r = brotli.NewReader(bytes.NewReader(b))
	case "zstd":
		var z *zstd.Decoder
		z, err = zstd.NewReader(bytes.NewReader(b))
		if err == nil {
			defer z.Close()
		}
		r = z
	default:
		t.Fatalf("no coding %q", coding)
	}
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// fixedNow stops the mock's clock ("created" is in seconds), so that two
// requests with one x-mock-seed get byte-identical answers.
func fixedNow() time.Time { return time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC) }

var knobCodings = map[string]string{"gzip": "gzip", "deflate": "deflate", "deflate-raw": "deflate", "br": "br", "zstd": "zstd"}

// TestCompressKnob: x-mock-compress compresses JSON (sized: content-length
// is the compressed length) and SSE (chunked) of both dialects; the bytes
// decode to exactly what an uncompressed request with the same seed gets.
func TestCompressKnob(t *testing.T) {
	s := startMock(t, Options{Now: fixedNow})
	type req struct {
		name, path, body string
		h                http.Header
	}
	reqs := []req{
		{"anthropic json", "/v1/messages", helloReq, anthropicHeaders()},
		{"anthropic sse", "/v1/messages", streamReq, anthropicHeaders()},
		{"openai json", "/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}`, openaiHeaders()},
		{"openai sse", "/v1/chat/completions", `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello"}]}`, openaiHeaders()},
	}
	for i, rq := range reqs {
		seed := strconv.Itoa(100 + i)
		_, plain := rawPost(t, s.URL()+rq.path, rq.body, with(rq.h, "x-mock-seed", seed))
		for knob, header := range knobCodings {
			t.Run(rq.name+"/"+knob, func(t *testing.T) {
				resp, got := rawPost(t, s.URL()+rq.path, rq.body, with(rq.h, "x-mock-seed", seed, "x-mock-compress", knob))
				if resp.StatusCode != 200 || resp.Header.Get("content-encoding") != header {
					t.Fatalf("status %d, content-encoding %q", resp.StatusCode, resp.Header.Get("content-encoding"))
				}
				sse := strings.Contains(rq.name, "sse")
				if cl := resp.Header.Get("content-length"); sse && cl != "" || !sse && cl != strconv.Itoa(len(got)) {
					t.Errorf("content-length %q for %d compressed bytes (sse %v)", cl, len(got), sse)
				}
				dec, err := decompress(t, header, got)
				if err != nil || !bytes.Equal(dec, plain) {
					t.Fatalf("decoded %d bytes (%v), want the %d uncompressed", len(dec), err, len(plain))
				}
				if bytes.Equal(got, plain) {
					t.Error("not compressed")
				}
			})
		}
	}
	// Errors are compressed too (they are JSON); a bad knob is a 400.
	resp, got := rawPost(t, s.URL()+"/v1/messages", helloReq, with(anthropicHeaders(), "x-mock-compress", "gzip", "x-mock-status", "529"))
	if dec, err := decompress(t, "gzip", got); resp.StatusCode != 529 || err != nil || !strings.Contains(string(dec), "overloaded_error") {
		t.Errorf("compressed error: %d %v %s", resp.StatusCode, err, dec)
	}
	for _, h := range []http.Header{with(anthropicHeaders(), "x-mock-compress", "lzma"), with(openaiHeaders(), "x-mock-record", "maybe"), with(openaiHeaders(), "x-mock-seed", "-1"),
		with(openaiHeaders(), "x-mock-honour-accept-encoding", "sometimes")} {
		path := "/v1/chat/completions"
		if h.Get("x-api-key") != "" {
			path = "/v1/messages"
		}
		if resp, body := rawPost(t, s.URL()+path, helloReq, h); resp.StatusCode != 400 || resp.Header.Get("content-encoding") != "" {
			t.Errorf("bad knob: %d %s", resp.StatusCode, body)
		}
	}
}

// TestCompressedStreamFlushesPerEvent: a compressed SSE stream is flushed
// after every event, as Anthropic's gzip is, so the compressed bytes up to
// each flush decode to whole events.
func TestCompressedStreamFlushesPerEvent(t *testing.T) {
	for knob, header := range knobCodings {
		t.Run(knob, func(t *testing.T) {
			p := New(Options{})
			w := &flushRecorder{header: http.Header{}}
			req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(streamReq))
			req.Header = with(anthropicHeaders(), "x-mock-compress", knob)
			p.ServeHTTP(w, req)
			if w.header.Get("content-encoding") != header {
				t.Fatalf("content-encoding %q", w.header.Get("content-encoding"))
			}
			if len(w.flushes) < 5 {
				t.Fatalf("%d flushes", len(w.flushes))
			}
			events := 0
			for i, n := range w.flushes {
				dec, _ := decompressPrefix(header, w.body.Bytes()[:n])
				if !bytes.HasSuffix(dec, []byte("\n\n")) || bytes.Count(dec, []byte("\n\n")) != i+1 {
					t.Fatalf("flush %d: %d events decodable, want %d: ...%q", i, bytes.Count(dec, []byte("\n\n")), i+1, dec[max(0, len(dec)-40):])
				}
				events = i + 1
			}
			all, err := decompress(t, header, w.body.Bytes())
			if err != nil || bytes.Count(all, []byte("\n\n")) != events {
				t.Fatalf("whole stream: %v, %d events for %d flushes", err, bytes.Count(all, []byte("\n\n")), events)
			}
			checkAnthropicStream(t, all)
		})
	}
}

// decompressPrefix decodes as much as a stream prefix allows.
func decompressPrefix(coding string, b []byte) ([]byte, error) {
	var r io.Reader
	switch coding {
	case "gzip":
		z, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		r = z
	case "deflate":
		z, err := zlib.NewReader(bytes.NewReader(b))
		if err != nil {
			z = flate.NewReader(bytes.NewReader(b))
		}
		r = z
	case "br":
		r = brotli.NewReader(bytes.NewReader(b))
	case "zstd":
		z, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		defer z.Close()
		r = z
	}
	var out bytes.Buffer
	_, err := io.Copy(&out, r)
	return out.Bytes(), err
}

// flushRecorder is a ResponseWriter that notes where each flush falls.
type flushRecorder struct {
	header  http.Header
	status  int
	body    bytes.Buffer
	flushes []int
}

func (f *flushRecorder) Header() http.Header         { return f.header }
func (f *flushRecorder) WriteHeader(code int)        { f.status = code }
func (f *flushRecorder) Write(b []byte) (int, error) { return f.body.Write(b) }
func (f *flushRecorder) Flush()                      { f.flushes = append(f.flushes, f.body.Len()) }

// TestHonourAcceptEncoding: with the knob, accept-encoding chooses the
// coding by q-value; without it, nothing is compressed whatever the client
// offers (Go's client offers gzip by itself).
func TestHonourAcceptEncoding(t *testing.T) {
	s := startMock(t, Options{})
	for _, tc := range []struct{ accept, want string }{
		{"gzip", "gzip"},
		{"br", "br"},
		{"zstd", "zstd"},
		{"deflate", "deflate"},
		{"gzip, deflate, br, zstd", "gzip"},
		{"br;q=1.0, gzip;q=0.5", "br"},
		{"gzip;q=0, zstd", "zstd"},
		{"*", "gzip"},
		{"identity", ""},
		{"compress, lzma", ""},
		{"*;q=0", ""},
		{"gzip;q=nonsense", ""},
		{"", ""},
	} {
		h := with(anthropicHeaders(), "x-mock-honour-accept-encoding", "1")
		if tc.accept != "" {
			h.Set("accept-encoding", tc.accept)
		}
		resp, body := rawPost(t, s.URL()+"/v1/messages", helloReq, h)
		if got := resp.Header.Get("content-encoding"); got != tc.want {
			t.Errorf("accept-encoding %q: content-encoding %q, want %q", tc.accept, got, tc.want)
		}
		if tc.want != "" {
			if dec, err := decompress(t, tc.want, body); err != nil || !strings.Contains(string(dec), `"usage"`) {
				t.Errorf("%q: %v %q", tc.accept, err, dec)
			}
		}
	}
	resp, _ := rawPost(t, s.URL()+"/v1/messages", helloReq, with(anthropicHeaders(), "accept-encoding", "gzip"))
	if resp.Header.Get("content-encoding") != "" {
		t.Error("compressed without the knob")
	}
}

// TestRecordAndSeed: x-mock-record keeps the response as it went on the
// wire; x-mock-seed makes a request's answer the same every time.
func TestRecordAndSeed(t *testing.T) {
	s := startMock(t, Options{Now: fixedNow})
	for _, tc := range []struct {
		name, path, body string
		h                http.Header
		idHeader         string
	}{
		{"anthropic sse gzip", "/v1/messages", streamReq, with(anthropicHeaders(), "x-mock-compress", "gzip"), "request-id"},
		{"anthropic json", "/v1/messages", helloReq, anthropicHeaders(), "request-id"},
		{"openai json br", "/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}`, with(openaiHeaders(), "x-mock-compress", "br"), "x-request-id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := with(tc.h, "x-mock-record", "true", "x-mock-seed", "42")
			resp, body := rawPost(t, s.URL()+tc.path, tc.body, h)
			id := resp.Header.Get(tc.idHeader)
			var tr Transcript
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				if tr, _ = s.Provider().Sent(id); tr.Done {
					break
				}
			}
			if !tr.Done || tr.Status != resp.StatusCode || !bytes.Equal(tr.Body, body) {
				t.Fatalf("transcript %d done %v, %d bytes; received %d, %d bytes", tr.Status, tr.Done, len(tr.Body), resp.StatusCode, len(body))
			}
			for name := range resp.Header {
				if name == "Transfer-Encoding" {
					continue
				}
				if got, want := resp.Header.Values(name), tr.Header.Values(name); strings.Join(got, "\x00") != strings.Join(want, "\x00") {
					t.Errorf("%s: received %q, recorded %q", name, got, want)
				}
			}
			if len(tr.Header) != len(resp.Header) {
				t.Errorf("recorded %v, received %v", tr.Header, resp.Header)
			}
			// The same request with the same seed: the same body.
			resp2, body2 := rawPost(t, s.URL()+tc.path, tc.body, h)
			if resp2.Header.Get(tc.idHeader) != id || !bytes.Equal(body, body2) {
				t.Error("x-mock-seed did not make the answer the same")
			}
			// Over HTTP too.
			r, err := rawClient.Get(s.URL() + "/mock/sent?request_id=" + id)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Body.Close()
			raw, _ := io.ReadAll(r.Body)
			if r.StatusCode != 200 || !strings.Contains(string(raw), `"body":"`) {
				t.Errorf("/mock/sent: %d %s", r.StatusCode, raw[:min(len(raw), 200)])
			}
		})
	}
	if _, ok := s.Provider().Sent("req_never"); ok {
		t.Error("a transcript for a request never made")
	}
	r, err := rawClient.Get(s.URL() + "/mock/sent?request_id=nope")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 404 {
		t.Errorf("unknown transcript: %d", r.StatusCode)
	}
	// Without the knob nothing is kept; Reset forgets.
	resp, _ := rawPost(t, s.URL()+"/v1/messages", helloReq, anthropicHeaders())
	if _, ok := s.Provider().Sent(resp.Header.Get("request-id")); ok {
		t.Error("recorded without the knob")
	}
	s.Provider().Reset()
	if len(s.Provider().sent.byID) != 0 {
		t.Error("Reset kept transcripts")
	}
}

// TestTranscriptsBounded: the store keeps the latest maxTranscripts, each
// body at most maxTranscriptBody.
func TestTranscriptsBounded(t *testing.T) {
	var ts transcripts
	for i := range maxTranscripts + 10 {
		ts.start(strconv.Itoa(i))
	}
	if len(ts.byID) != maxTranscripts || len(ts.order) != maxTranscripts {
		t.Errorf("%d kept", len(ts.byID))
	}
	if _, ok := ts.get("0"); ok {
		t.Error("the oldest was kept")
	}
	w := &recordWriter{ResponseWriter: httptest.NewRecorder(), ts: &ts}
	w.Header().Set("request-id", "big")
	_, _ = w.Write(make([]byte, maxTranscriptBody))
	_, _ = w.Write([]byte("x"))
	w.done()
	if tr, _ := ts.get("big"); len(tr.Body) != maxTranscriptBody || !tr.Truncated || !tr.Done || tr.Status != 200 {
		t.Errorf("%d bytes, truncated %v", len(tr.Body), tr.Truncated)
	}
}

// TestCompressedDisconnect: a scripted disconnect still cuts a compressed
// stream.
func TestCompressedDisconnect(t *testing.T) {
	s := startMock(t, Options{})
	req, _ := http.NewRequest(http.MethodPost, s.URL()+"/v1/messages", strings.NewReader(streamReq))
	req.Header = with(anthropicHeaders(), "x-mock-compress", "gzip", "x-mock-disconnect-after", "3")
	resp, err := rawClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read %d bytes, err %v: want the stream cut", len(body), err)
	}
	if dec, _ := decompressPrefix("gzip", body); bytes.Count(dec, []byte("\n\n")) != 3 {
		t.Errorf("decoded %q", dec)
	}
}
