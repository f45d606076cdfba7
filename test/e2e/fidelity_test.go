package e2e

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/anthropics/anthropic-sdk-go"
	anthoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/klauspost/compress/zstd"
	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/test/mockprovider"
)

// What the client receives is what the provider sent (issue 11, items 3
// and 6): compressed responses settle to the same nano-USD as identity
// ones, reach the client byte for byte as the mock sent them, headers
// included, and a stream whose usage chunk tokenwarden forced reaches the
// client as the mock sends it to a client that did not ask.

// fidelityNow stops the mock's clock: "created" is in seconds, so with
// x-mock-seed a request replayed directly gets byte-identical bytes.
func fidelityNow() time.Time { return time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC) }

// fidelityCase is one request kind of one dialect and mode.
type fidelityCase struct {
	name, model string
	anthropic   bool
	body        string
	sse         bool
	// forced: the client did not ask for usage (no stream_options, or
	// include_usage: false), tokenwarden asks, and removes it again.
	forced bool
}

var fidelityCases = []fidelityCase{
	{name: "anthropic json", model: "claude-sonnet-4-5", anthropic: true,
		body: `{"model":"claude-sonnet-4-5","max_tokens":300,"messages":[{"role":"user","content":"Tell me about compression."}]}`},
	{name: "anthropic sse", model: "claude-sonnet-4-5", anthropic: true, sse: true,
		body: `{"model":"claude-sonnet-4-5","max_tokens":300,"stream":true,"messages":[{"role":"user","content":"Tell me about compression."}]}`},
	{name: "openai json", model: "gpt-test",
		body: `{"model":"gpt-test","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Tell me about compression."}]}`},
	{name: "openai sse, include_usage true", model: "gpt-test", sse: true,
		body: `{"model":"gpt-test","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Tell me about compression."}]}`},
	{name: "openai sse, no stream_options", model: "gpt-test", sse: true, forced: true,
		body: `{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"Tell me about compression."}]}`},
	{name: "openai sse, include_usage false", model: "gpt-test", sse: true, forced: true,
		body: `{"model":"gpt-test","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"Tell me about compression."}]}`},
}

// The x-mock-compress values, and the content-encoding each is sent as.
var fidelityCodings = []struct{ knob, header string }{
	{"identity", ""}, {"gzip", "gzip"}, {"br", "br"}, {"zstd", "zstd"}, {"deflate", "deflate"}, {"deflate-raw", "deflate"},
}

func (c fidelityCase) path() string {
	if c.anthropic {
		return "/v1/messages"
	}
	return "/v1/chat/completions"
}

func (c fidelityCase) requestIDHeader() string {
	if c.anthropic {
		return "request-id"
	}
	return "x-request-id"
}

// headers are the client's request headers, x-mock-* knobs included.
func (c fidelityCase) headers(knobs ...string) http.Header {
	h := http.Header{}
	h.Set("content-type", "application/json")
	h.Set("x-tenant-id", "sdk")
	if c.anthropic {
		h.Set("x-api-key", "sk-ant-test")
		h.Set("anthropic-version", "2023-06-01")
	} else {
		h.Set("authorization", "Bearer sk-test")
	}
	for i := 0; i+1 < len(knobs); i += 2 {
		h.Set(knobs[i], knobs[i+1])
	}
	return h
}

// simRequest is the same request for sim.Filter.
func (c fidelityCase) simRequest(knobs ...string) *sim.Request {
	req := &sim.Request{Method: "POST", Path: c.path(), Authority: "llm.example", Body: []byte(c.body)}
	for name, vs := range c.headers(knobs...) {
		for _, v := range vs {
			req.Headers = append(req.Headers, sim.Header{Name: strings.ToLower(name), Value: v})
		}
	}
	return req
}

// TestCompressedResponsesSettleExactly: gzip, br, zstd and deflate (zlib
// and raw) responses, JSON and SSE, Anthropic and OpenAI, settle to exactly
// the nano-USD of the identity response to the same request, which is the
// usage the mock's ledger says it sent, priced by hand. The mock is
// deterministic: the same request, the same usage.
func TestCompressedResponsesSettleExactly(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig, mock: mockprovider.Options{Now: fidelityNow}})
	ctx := context.Background()
	for _, c := range fidelityCases {
		t.Run(c.name, func(t *testing.T) {
			var identity int64 = -1
			for _, coding := range fidelityCodings {
				n := len(s.mock.Provider().Ledger())
				before := s.budget("sdk", "month").Spent
				x := s.do(ctx, 0, c.simRequest("x-mock-compress", coding.knob))
				if x.err != nil || x.resp.Status != 200 {
					t.Fatalf("%s: %v %+v", coding.knob, x.err, x.resp)
				}
				s.waitSettled(t, "sdk")
				spent := s.budget("sdk", "month").Spent - before
				entries := s.ledgerSince(n)
				if len(entries) != 1 || !entries[0].Complete {
					t.Fatalf("%s: ledger %+v", coding.knob, entries)
				}
				if want := expectedCost(t, c.model, entries[0].Reported); spent != want || want == 0 {
					t.Errorf("%s: settled %d nano-USD, the mock reported %+v = %d", coding.knob, spent, entries[0].Reported, want)
				}
				if identity < 0 {
					identity = spent
				} else if spent != identity {
					t.Errorf("%s: settled %d nano-USD, identity %d", coding.knob, spent, identity)
				}
				md := x.resp.DynamicMetadata().GetFields()["tokenwarden"].GetStructValue().GetFields()
				if src := md["usage_source"].GetStringValue(); src != "measured" {
					t.Errorf("%s: usage_source %q", coding.knob, src)
				}
			}
		})
	}
	if got, want := s.total("tokenwarden_requests_total", "outcome", "ok"), float64(len(fidelityCases)*len(fidelityCodings)); got != want {
		t.Errorf("requests_total{outcome=ok} = %v, want %v", got, want)
	}
	if s.total("tokenwarden_spend_usd_total", "source", "estimated") != 0 {
		t.Error("a compressed response was charged at its estimate")
	}
}

// TestClientReceivesWhatTheProviderSent drives the gateway (envoy/gateway
// over the processor, as Envoy would sit) with a client that neither asks
// for nor undoes compression, so it sees the bytes on the wire, and
// compares them with what the mock recorded sending (x-mock-record):
//
//   - every response the gateway does not rewrite: the body byte for byte,
//     compressed or not, and every header, but tokenwarden's own
//     x-tokenwarden-*. No framing header differs: JSON keeps its
//     content-length (BUFFERED), SSE has none on either side (the mock
//     streams it chunked; Envoy would strip one in STREAMED mode), and
//     transfer-encoding is framing net/http owns on each hop, not a
//     header a Go client is shown;
//   - a stream whose usage tokenwarden forced: the body the mock sends to
//     the client's own request when it comes directly (replayed with the
//     same x-mock-seed), decoded — tokenwarden forwards the rewritten
//     stream decoded — and the recorded headers less content-encoding.
func TestClientReceivesWhatTheProviderSent(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig, mock: mockprovider.Options{Now: fidelityNow}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gw, err := gateway.Start(ctx, gateway.Options{Listen: "127.0.0.1:0", Upstream: s.mock.URL(), Processor: s.procs[0].addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	do := func(t *testing.T, base string, c fidelityCase, h http.Header) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+c.path(), strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h
		resp, err := client.Do(req)
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
	seed := 0
	for _, c := range fidelityCases {
		for _, coding := range fidelityCodings {
			t.Run(c.name+"/"+coding.knob, func(t *testing.T) {
				seed++
				h := c.headers("x-mock-record", "true", "x-mock-seed", strconv.Itoa(seed), "x-mock-compress", coding.knob)
				resp, body := do(t, "http://"+gw.Addr(), c, h)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				sent := recorded(t, s, resp.Header.Get(c.requestIDHeader()))
				if got := sent.Header.Get("content-encoding"); got != coding.header {
					t.Fatalf("the mock sent content-encoding %q, want %q", got, coding.header)
				}
				wantHeader, wantBody := sent.Header.Clone(), sent.Body
				if c.forced {
					// What the client would have received without
					// tokenwarden: its own request, straight to the mock.
					_, direct := do(t, s.mock.URL(), c, c.headers("x-mock-seed", strconv.Itoa(seed), "x-mock-compress", coding.knob))
					wantBody = decode(t, coding.header, direct)
					wantHeader.Del("content-encoding")
					if bytes.Equal(wantBody, decode(t, coding.header, sent.Body)) || bytes.Contains(wantBody, []byte(`"usage"`)) {
						t.Fatal("the replay must be the stream without usage, unlike what tokenwarden asked for")
					}
				}
				if !bytes.Equal(body, wantBody) {
					t.Errorf("the client received %d bytes, the mock sent %d:\n%q\nwant\n%q", len(body), len(wantBody), trim(body), trim(wantBody))
				}
				compareHeaders(t, resp.Header, wantHeader)
				if c.sse && !slices.Equal(resp.TransferEncoding, []string{"chunked"}) {
					t.Errorf("transfer-encoding %v", resp.TransferEncoding)
				}
			})
		}
	}
	// A Go SDK offers gzip by itself; with the mock honouring it, a
	// forced stream is asked for identity, which the mock honours too: no
	// decoding, and the client gets the stream without usage.
	t.Run("forced stream, client offers gzip", func(t *testing.T) {
		c := fidelityCases[4]
		h := c.headers("x-mock-record", "true", "x-mock-seed", "9999", "x-mock-honour-accept-encoding", "1", "accept-encoding", "gzip")
		resp, body := do(t, "http://"+gw.Addr(), c, h)
		sent := recorded(t, s, resp.Header.Get(c.requestIDHeader()))
		if sent.Header.Get("content-encoding") != "" || resp.Header.Get("content-encoding") != "" {
			t.Errorf("upstream content-encoding %q, client %q: tokenwarden asks for identity", sent.Header.Get("content-encoding"), resp.Header.Get("content-encoding"))
		}
		if bytes.Contains(body, []byte(`"usage"`)) || !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) {
			t.Errorf("client received %q", trim(body))
		}
		compareHeaders(t, resp.Header, sent.Header)
	})
	t.Run("not forced, client offers gzip", func(t *testing.T) {
		c := fidelityCases[3]
		h := c.headers("x-mock-record", "true", "x-mock-seed", "9998", "x-mock-honour-accept-encoding", "1", "accept-encoding", "gzip")
		resp, body := do(t, "http://"+gw.Addr(), c, h)
		sent := recorded(t, s, resp.Header.Get(c.requestIDHeader()))
		if resp.Header.Get("content-encoding") != "gzip" || !bytes.Equal(body, sent.Body) {
			t.Errorf("client got %q, %d bytes; the mock sent %d", resp.Header.Get("content-encoding"), len(body), len(sent.Body))
		}
		compareHeaders(t, resp.Header, sent.Header)
	})
}

// recorded waits for the mock's transcript of a response.
func recorded(t *testing.T, s *stack, id string) mockprovider.Transcript {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr, ok := s.mock.Provider().Sent(id)
		if ok && tr.Done {
			return tr
		}
		if time.Now().After(deadline) {
			t.Fatalf("no transcript for request %q", id)
		}
		time.Sleep(time.Millisecond)
	}
}

// compareHeaders: the client's headers are the mock's, plus tokenwarden's
// own x-tokenwarden-* and nothing else.
func compareHeaders(t *testing.T, got, want http.Header) {
	t.Helper()
	for name, vs := range got {
		if strings.HasPrefix(strings.ToLower(name), "x-tokenwarden-") {
			continue
		}
		if w := want.Values(name); !slices.Equal(vs, w) {
			t.Errorf("header %s: client received %q, the mock sent %q", name, vs, w)
		}
	}
	for name, vs := range want {
		if _, ok := got[name]; !ok {
			t.Errorf("header %s: the mock sent %q, the client received none", name, vs)
		}
	}
}

func decode(t *testing.T, coding string, b []byte) []byte {
	t.Helper()
	var r io.Reader = bytes.NewReader(b)
	var err error
	switch coding {
	case "":
		return b
	case "gzip":
		r, err = gzip.NewReader(r)
	case "deflate":
		if r, err = zlib.NewReader(bytes.NewReader(b)); err != nil {
			r, err = flate.NewReader(bytes.NewReader(b)), nil
		}
	case "br":
		r = brotli.NewReader(r)
	case "zstd":
		var z *zstd.Decoder
		if z, err = zstd.NewReader(r); err == nil {
			defer z.Close()
			r = z
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("%s: %v", coding, err)
	}
	return out
}

func trim(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%s … %s", b[:150], b[len(b)-150:])
	}
	return string(b)
}

// TestCompressedRequestBodyRefused: a request body sent compressed is
// answered 415 in the dialect's shape, never reaches the provider, and
// costs nothing.
func TestCompressedRequestBodyRefused(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig})
	for _, c := range []fidelityCase{fidelityCases[0], fidelityCases[2]} {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, _ = zw.Write([]byte(c.body))
		_ = zw.Close()
		req := c.simRequest("content-encoding", "gzip")
		req.Body = buf.Bytes()
		x := s.do(context.Background(), 0, req)
		if x.err != nil || x.resp.Status != 415 || !x.resp.LocalReply || x.header("accept-encoding") != "identity" {
			t.Fatalf("%s: %v %+v", c.name, x.err, x.resp)
		}
		var e struct {
			Error struct{ Type, Message string } `json:"error"`
		}
		if err := json.Unmarshal(x.body, &e); err != nil || e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, "compressed") {
			t.Errorf("%s: %s", c.name, x.body)
		}
	}
	if len(s.mock.Provider().Ledger()) != 0 {
		t.Error("a compressed request reached the provider")
	}
	if b := s.budget("sdk", "month"); b.Spent != 0 || b.Reserved != 0 {
		t.Errorf("budget %+v", b)
	}
}

// TestSDKsReadCompressedResponses: the official SDKs, whose Go transport
// offers gzip and undoes it, get compressed answers (the mock honours
// accept-encoding) through the gateway, read them as from the provider,
// and the settle is exact.
func TestSDKsReadCompressedResponses(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gw, err := gateway.Start(ctx, gateway.Options{Listen: "127.0.0.1:0", Upstream: s.mock.URL(), Processor: s.procs[0].addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + gw.Addr()
	ant := anthropic.NewClient(anthoption.WithBaseURL(base), anthoption.WithAPIKey("sk-ant-test"), anthoption.WithMaxRetries(0),
		anthoption.WithHeader("x-tenant-id", "sdk"), anthoption.WithHeader("x-mock-honour-accept-encoding", "1"), anthoption.WithHeader("x-mock-record", "1"))
	oai := openai.NewClient(oaioption.WithBaseURL(base+"/v1/"), oaioption.WithAPIKey("sk-test"), oaioption.WithMaxRetries(0),
		oaioption.WithHeader("x-tenant-id", "sdk"), oaioption.WithHeader("x-mock-honour-accept-encoding", "1"), oaioption.WithHeader("x-mock-record", "1"))
	antParams := anthropic.MessageNewParams{Model: "claude-sonnet-4-5", MaxTokens: 200,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello there"))}}
	oaiParams := openai.ChatCompletionNewParams{Model: "gpt-test",
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello there")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}}
	calls := []struct {
		name, model string
		run         func() (in, out int64, err error)
	}{
		{"anthropic json", "claude-sonnet-4-5", func() (int64, int64, error) {
			m, err := ant.Messages.New(ctx, antParams)
			return m.Usage.InputTokens, m.Usage.OutputTokens, err
		}},
		{"anthropic stream", "claude-sonnet-4-5", func() (int64, int64, error) {
			st := ant.Messages.NewStreaming(ctx, antParams)
			var m anthropic.Message
			for st.Next() {
				if err := m.Accumulate(st.Current()); err != nil {
					return 0, 0, err
				}
			}
			return m.Usage.InputTokens, m.Usage.OutputTokens, st.Err()
		}},
		{"openai json", "gpt-test", func() (int64, int64, error) {
			p := oaiParams
			p.StreamOptions = openai.ChatCompletionStreamOptionsParam{}
			c, err := oai.Chat.Completions.New(ctx, p)
			return c.Usage.PromptTokens, c.Usage.CompletionTokens, err
		}},
		{"openai stream", "gpt-test", func() (int64, int64, error) {
			st := oai.Chat.Completions.NewStreaming(ctx, oaiParams)
			var acc openai.ChatCompletionAccumulator
			for st.Next() {
				acc.AddChunk(st.Current())
			}
			return acc.Usage.PromptTokens, acc.Usage.CompletionTokens, st.Err()
		}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			n := len(s.mock.Provider().Ledger())
			before := s.budget("sdk", "month").Spent
			in, out, err := c.run()
			if err != nil {
				t.Fatal(err)
			}
			for wait := time.Now().Add(5 * time.Second); len(s.ledgerSince(n)) == 0 && time.Now().Before(wait); {
				time.Sleep(time.Millisecond)
			}
			e := s.ledgerSince(n)
			if len(e) != 1 {
				t.Fatalf("ledger %+v", e)
			}
			if tr := recorded(t, s, e[0].RequestID); tr.Header.Get("content-encoding") != "gzip" {
				t.Errorf("the mock sent content-encoding %q; the SDK offers gzip", tr.Header.Get("content-encoding"))
			}
			u := e[0].Reported
			if in != u.InputTokens+u.CacheReadTokens || out != u.OutputTokens {
				t.Errorf("SDK saw %d/%d, the mock sent %+v", in, out, u)
			}
			s.waitSettled(t, "sdk")
			if got, want := s.budget("sdk", "month").Spent-before, expectedCost(t, c.model, u); got != want {
				t.Errorf("settled %d, want %d", got, want)
			}
		})
	}
	if s.total("tokenwarden_requests_total", "outcome", "ok") != float64(len(calls)) {
		t.Error("every compressed answer is metered from its usage")
	}
}
