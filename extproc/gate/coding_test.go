package gate

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"

	"github.com/tokenwarden/tokenwarden/accounting"
)

// Compressed responses are metered exactly and reach the client as the
// provider sent them; a forced OpenAI usage chunk is removed again.

const msgDecodeFail = "response body cannot be read; charged at the estimate"

// encode compresses s in a content coding, flushing after every part as
// Anthropic does per SSE event.
func encode(t *testing.T, coding string, parts ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w interface {
		io.WriteCloser
		Flush() error
	}
	switch coding {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "deflate":
		w = zlib.NewWriter(&buf)
	case "deflate-raw":
		w, _ = flate.NewWriter(&buf, flate.DefaultCompression)
	case "br":
		w = brotli.NewWriter(&buf)
	case "zstd":
		w, _ = zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
	default:
		t.Fatalf("no coding %s", coding)
	}
	for _, p := range parts {
		_, _ = w.Write([]byte(p))
		_ = w.Flush()
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// encodeUnclosed is gzip of parts, each flushed, without the end of the
// stream: a prefix of encode's gzip of more parts.
func encodeUnclosed(t *testing.T, parts ...string) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	for _, p := range parts {
		_, _ = w.Write([]byte(p))
		_ = w.Flush()
	}
	return buf.Bytes()
}

// headerName is the content-encoding a coding is sent under.
func headerName(coding string) string {
	if coding == "deflate-raw" {
		return "deflate"
	}
	return coding
}

func withEncoding(h HeaderList, coding string) HeaderList {
	return append(slices.Clone(h), Header{"content-encoding", coding})
}

var testCodings = []string{"gzip", "deflate", "deflate-raw", "br", "zstd"}

// feed sends body to the exchange in n-byte chunks, the last with
// end_of_stream, and returns the verdicts.
func feed(x *Exchange, body []byte, n int) []ChunkVerdict {
	var vs []ChunkVerdict
	for len(body) > n {
		vs = append(vs, x.ResponseBody(body[:n], false))
		body = body[n:]
	}
	return append(vs, x.ResponseBody(body, true))
}

// forwarded is what the client receives for chunks given the verdicts:
// the chunk itself, or its replacement.
func forwarded(body []byte, n int, vs []ChunkVerdict) []byte {
	var out []byte
	for _, v := range vs {
		c := body[:min(n, len(body))]
		body = body[len(c):]
		if v.Replace {
			out = append(out, v.Body...)
		} else {
			out = append(out, c...)
		}
	}
	return out
}

func TestCompressedResponsesMeterExactly(t *testing.T) {
	type resp struct {
		name, path, body string
		headers          HeaderList
		plain            string
		parts            []string
		want             accounting.Usage
	}
	resps := []resp{
		{"anthropic json", pathMessages, sonnetBody, jsonHeaders, messageJSON, []string{messageJSON},
			accounting.Usage{InputTokens: 25, OutputTokens: 150, CacheReadTokens: 1000, CacheWrite5mTokens: 200}},
		{"anthropic sse", pathMessages, sonnetBody, sseHeaders, sseStart + sseDelta + sseStop,
			strings.SplitAfter(sseStart+sseDelta+sseStop, "\n\n"), accounting.Usage{InputTokens: 25, OutputTokens: 12}},
		{"openai json", pathChat, miniBody256, jsonHeaders, chatJSON, []string{chatJSON},
			accounting.Usage{InputTokens: 232, OutputTokens: 50, CacheReadTokens: 768}},
		{"openai sse, usage asked for", pathChat, `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}`,
			sseHeaders, chatStart + chatUsage, strings.SplitAfter(chatStart+chatUsage, "\n\n"),
			accounting.Usage{InputTokens: 232, OutputTokens: 50, CacheReadTokens: 768}},
	}
	for _, r := range resps {
		for _, coding := range append([]string{"identity"}, testCodings...) {
			t.Run(r.name+"/"+coding, func(t *testing.T) {
				h := newHarness(t, baseYAML)
				x, bv := h.admit(post(r.path, tenantHeader("acme")), r.body)
				if _, ok := header(bv.Edits.Set, "accept-encoding"); ok {
					t.Error("a request whose response is not rewritten keeps its accept-encoding")
				}
				body, hdrs := []byte(r.plain), r.headers
				if coding != "identity" {
					body, hdrs = encode(t, coding, r.parts...), withEncoding(r.headers, headerName(coding))
				}
				v := x.ResponseHeaders(hdrs, false)
				if slices.Contains(v.Edits.Remove, "content-encoding") {
					t.Error("content-encoding removed from a response that is not rewritten")
				}
				for _, n := range []int{7} {
					vs := feed(x, body, n)
					for _, cv := range vs {
						if cv.Replace {
							t.Fatal("a chunk was replaced: the client must receive the compressed bytes unchanged")
						}
					}
					if !vs[len(vs)-1].Done {
						t.Fatal("not metered at the end")
					}
				}
				o := h.obs.lastOutcome(t)
				if o.Result != ResultOK || o.Usage != r.want || o.Source != SourceMeasured {
					t.Errorf("outcome %+v, want usage %+v measured", o, r.want)
				}
				if h.logs.count(msgDecodeFail) != 0 {
					t.Error("a decode failure was logged")
				}
			})
		}
	}
}

func TestUnreadableResponsesAreChargedTheEstimate(t *testing.T) {
	gz := encode(t, "gzip", messageJSON)
	corrupt := bytes.Clone(gz)
	for i := 12; i < 20; i++ {
		corrupt[i] ^= 0xff
	}
	bomb := encode(t, "zstd", strings.Repeat("\x00", 4<<20))
	cases := []struct {
		name    string
		coding  string
		headers HeaderList
		body    []byte
	}{
		{"unknown coding", "compress", jsonHeaders, gz},
		{"stacked codings", "gzip, br", jsonHeaders, gz},
		{"corrupt gzip", "gzip", jsonHeaders, corrupt},
		{"truncated gzip", "gzip", jsonHeaders, gz[:len(gz)-6]},
		{"trailing bytes", "gzip", jsonHeaders, append(bytes.Clone(gz), "more"...)},
		{"zstd bomb", "zstd", jsonHeaders, bomb},
		{"decoded JSON over the limit", "zstd", jsonHeaders, encode(t, "zstd", `{"a":"`+strings.Repeat("x", maxResponseJSON)+`"}`)},
		{"unknown coding on a stream", "compress", sseHeaders, []byte(sseStart + sseDelta + sseStop)},
		{"corrupt stream", "br", sseHeaders, []byte(sseStart + sseDelta + sseStop)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, baseYAML)
			x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
			x.ResponseHeaders(withEncoding(tc.headers, tc.coding), false)
			vs := feed(x, tc.body, 1<<16)
			if !vs[len(vs)-1].Done {
				t.Fatal("not metered at the end")
			}
			if slices.ContainsFunc(vs, func(v ChunkVerdict) bool { return v.Replace }) {
				t.Error("an unreadable body still goes to the client as sent")
			}
			o := h.obs.lastOutcome(t)
			if o.Result != ResultUsageMissing || o.Source != SourceEstimated || o.Usage != x.estimate || o.Cost.Total == 0 {
				t.Errorf("outcome %+v, want usage_missing at the estimate %+v", o, x.estimate)
			}
			if h.logs.count(msgDecodeFail) != 1 {
				t.Errorf("logged %d times", h.logs.count(msgDecodeFail))
			}
		})
	}
	t.Run("the log is sampled", func(t *testing.T) {
		h := newHarness(t, baseYAML)
		for range 5 {
			x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
			x.ResponseHeaders(withEncoding(jsonHeaders, "compress"), false)
			x.ResponseBody(gz, true)
		}
		if n := h.logs.count(msgDecodeFail); n != 1 {
			t.Errorf("logged %d times in one second", n)
		}
	})
	t.Run("cut short", func(t *testing.T) {
		h := newHarness(t, baseYAML)
		x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		x.ResponseHeaders(withEncoding(sseHeaders, "compress"), false)
		x.ResponseBody([]byte(sseStart), false)
		x.Abort()
		if o := h.obs.lastOutcome(t); o.Result != ResultEstimated || o.Usage != x.estimate {
			t.Errorf("outcome %+v", o)
		}
	})
}

// TestDecoderEndsWithTheExchange: however a compressed response ends —
// its end, the stream cut, a body left unfinished — its decoder is gone.
func TestDecoderEndsWithTheExchange(t *testing.T) {
	h := newHarness(t, baseYAML)
	z := encode(t, "gzip", strings.SplitAfter(sseStart+sseDelta+sseStop, "\n\n")...)
	base := runtime.NumGoroutine()
	for i := range 30 {
		x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		x.ResponseHeaders(withEncoding(sseHeaders, "gzip"), false)
		x.ResponseBody(z[:len(z)/2], false)
		switch i % 3 {
		case 0:
			x.Abort() // reset or cancel
		case 1:
			x.ResponseBody(z[len(z)/2:], true)
		case 2:
			x.ResponseEnd() // trailers
		}
		x.Abort()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Errorf("%d goroutines after the exchanges ended, %d before", n, base)
	}
}

// The OpenAI stream of chatStart+chatUsage as a client that did not ask
// for usage receives it: no "usage" members, no usage chunk.
var chatWithoutUsage = strings.ReplaceAll(chatStart, `,"usage":null`, "") + "data: [DONE]\n\n"

func TestForcedUsageChunkIsRemoved(t *testing.T) {
	const noOptions = `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello!"}]}`
	const optedOut = `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"Hello!"}]}`
	want := accounting.Usage{InputTokens: 232, OutputTokens: 50, CacheReadTokens: 768}
	stream := chatStart + chatUsage
	for _, body := range []string{noOptions, optedOut} {
		for _, coding := range append([]string{"identity"}, testCodings...) {
			t.Run(body[len(body)-60:len(body)-40]+"/"+coding, func(t *testing.T) {
				h := newHarness(t, baseYAML)
				x, bv := h.admit(post(pathChat, tenantHeader("acme")), body)
				if ae, _ := header(bv.Edits.Set, "accept-encoding"); ae != "identity" {
					t.Errorf("accept-encoding %q: the provider is asked for identity when the stream is rewritten anyway", ae)
				}
				raw, hdrs := []byte(stream), sseHeaders
				if coding != "identity" {
					raw, hdrs = encode(t, coding, strings.SplitAfter(stream, "\n\n")...), withEncoding(sseHeaders, headerName(coding))
				}
				v := x.ResponseHeaders(hdrs, false)
				wantRemove := []string{"content-length"}
				if coding != "identity" {
					wantRemove = append(wantRemove, "content-encoding")
				}
				if !slices.Equal(v.Edits.Remove, wantRemove) {
					t.Errorf("removed %v, want %v", v.Edits.Remove, wantRemove)
				}
				for _, n := range []int{1, 13, 1 << 20} {
					if n != 1 {
						x, _ = h.admit(post(pathChat, tenantHeader("acme")), body)
						x.ResponseHeaders(hdrs, false)
					}
					vs := feed(x, raw, n)
					for i, cv := range vs {
						if !cv.Replace {
							t.Fatalf("chunk %d forwarded as received", i)
						}
					}
					if got := string(forwarded(raw, n, vs)); got != chatWithoutUsage {
						t.Fatalf("%d-byte chunks: the client receives\n%s\nwant\n%s", n, got, chatWithoutUsage)
					}
					if o := h.obs.lastOutcome(t); o.Result != ResultOK || o.Usage != want {
						t.Errorf("outcome %+v: the meter still reads the usage chunk", o)
					}
				}
			})
		}
	}
	t.Run("the client's own include_usage is left alone", func(t *testing.T) {
		h := newHarness(t, baseYAML)
		x, bv := h.admit(post(pathChat, tenantHeader("acme")), `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}`)
		if _, ok := header(bv.Edits.Set, "accept-encoding"); ok {
			t.Error("accept-encoding set for a stream that is not rewritten")
		}
		x.ResponseHeaders(withEncoding(sseHeaders, "gzip"), false)
		if vs := feed(x, encode(t, "gzip", stream), 10); slices.ContainsFunc(vs, func(v ChunkVerdict) bool { return v.Replace }) {
			t.Error("a stream the client asked usage of was rewritten")
		}
	})
	t.Run("an unknown coding cannot be rewritten", func(t *testing.T) {
		h := newHarness(t, baseYAML)
		x, _ := h.admit(post(pathChat, tenantHeader("acme")), noOptions)
		v := x.ResponseHeaders(withEncoding(sseHeaders, "compress"), false)
		if slices.Contains(v.Edits.Remove, "content-encoding") {
			t.Error("content-encoding removed from a body that goes on as sent")
		}
		if vs := feed(x, []byte(stream), 10); slices.ContainsFunc(vs, func(v ChunkVerdict) bool { return v.Replace }) {
			t.Error("an unreadable stream was rewritten")
		}
		if o := h.obs.lastOutcome(t); o.Result != ResultUsageMissing {
			t.Errorf("outcome %+v", o)
		}
	})
	t.Run("a stream that fails to decode stops", func(t *testing.T) {
		h := newHarness(t, baseYAML)
		x, _ := h.admit(post(pathChat, tenantHeader("acme")), noOptions)
		x.ResponseHeaders(withEncoding(sseHeaders, "gzip"), false)
		events := strings.SplitAfter(stream, "\n\n")
		z := encode(t, "gzip", events...)
		// The compressed bytes up to the second event's flush.
		cut := len(encodeUnclosed(t, events[:2]...))
		first := x.ResponseBody(z[:cut], false)
		// A block header of type 3, which DEFLATE reserves: an error at once.
		bad := x.ResponseBody([]byte("garbage that is not deflate at all"), false)
		last := x.ResponseBody(z[cut:], true)
		if want := strings.Join(strings.SplitAfter(chatWithoutUsage, "\n\n")[:2], ""); !first.Replace || string(first.Body) != want {
			t.Errorf("the decodable start was not forwarded: %q", first.Body)
		}
		if !bad.Replace || len(bad.Body) != 0 || !last.Replace || len(last.Body) != 0 {
			t.Error("after a decoding error nothing more can be forwarded: the compressed bytes are no longer what the client expects")
		}
		if o := h.obs.lastOutcome(t); o.Result != ResultUsageMissing || o.Usage != x.estimate {
			t.Errorf("outcome %+v", o)
		}
	})
	t.Run("without response headers, a sniffed stream is rewritten too", func(t *testing.T) {
		h := newHarness(t, baseYAML)
		x, _ := h.admit(post(pathChat, tenantHeader("acme")), noOptions)
		vs := feed(x, []byte(stream), 50)
		if got := string(forwarded([]byte(stream), 50, vs)); got != chatWithoutUsage {
			t.Errorf("client receives\n%s", got)
		}
	})
	t.Run("Anthropic streams are never rewritten", func(t *testing.T) {
		h := newHarness(t, baseYAML)
		x, bv := h.admit(post(pathMessages, tenantHeader("acme")), `{"model":"claude-sonnet-4-5","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Hi"}]}`)
		if _, ok := header(bv.Edits.Set, "accept-encoding"); ok {
			t.Error("accept-encoding set")
		}
		x.ResponseHeaders(sseHeaders, false)
		if vs := feed(x, []byte(sseStart+sseDelta+sseStop), 10); slices.ContainsFunc(vs, func(v ChunkVerdict) bool { return v.Replace }) {
			t.Error("rewritten")
		}
	})
}
