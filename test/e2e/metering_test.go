package e2e

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	anthoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

const meteringConfig = `
policies:
  default:
    limits: {requests_per_minute: 100000, tokens_per_minute: 100000000, concurrent: 1000}
    budgets: [{window: month, usd: 100000}]
tenants:
  sdk: {}
prices:
  gpt-test: {input: 0.05, output: 0.4}
`

// TestSDKMeteringIsExact drives gateway → processor → mock provider with the
// official SDKs, streamed and not, and checks that the tokens metered and the
// nano-USD settled equal the usage the mock reported, priced by hand.
func TestSDKMeteringIsExact(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gw, err := gateway.Start(ctx, gateway.Options{Listen: "127.0.0.1:0", Upstream: s.mock.URL(), Processor: s.procs[0].addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + gw.Addr()
	ant := anthropic.NewClient(anthoption.WithBaseURL(base), anthoption.WithAPIKey("sk-ant-test"),
		anthoption.WithMaxRetries(0), anthoption.WithHeader("x-tenant-id", "sdk"))
	oai := openai.NewClient(oaioption.WithBaseURL(base+"/v1/"), oaioption.WithAPIKey("sk-test"),
		oaioption.WithMaxRetries(0), oaioption.WithHeader("x-tenant-id", "sdk"))

	antParams := anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-5",
		MaxTokens: 200,
		System: []anthropic.TextBlockParam{{
			Text:         strings.Repeat("You are a careful assistant who answers briefly. ", 120),
			CacheControl: anthropic.NewCacheControlEphemeralParam(),
		}},
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello there"))},
	}
	oaiParams := openai.ChatCompletionNewParams{
		Model:    "gpt-test",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Hello there")},
	}

	type call struct {
		name  string
		model string
		run   func() (sdkInput, sdkOutput int64, err error)
		// sdkSeesNoUsage: the client did not ask for usage, so it gets
		// none, though tokenwarden meters it.
		sdkSeesNoUsage bool
	}
	calls := []call{
		{"anthropic json (cache write)", "claude-sonnet-4-5", func() (int64, int64, error) {
			m, err := ant.Messages.New(ctx, antParams)
			return m.Usage.InputTokens, m.Usage.OutputTokens, err
		}, false},
		{"anthropic json (cache read)", "claude-sonnet-4-5", func() (int64, int64, error) {
			m, err := ant.Messages.New(ctx, antParams)
			return m.Usage.InputTokens, m.Usage.OutputTokens, err
		}, false},
		{"anthropic stream", "claude-sonnet-4-5", func() (int64, int64, error) {
			st := ant.Messages.NewStreaming(ctx, antParams, anthoption.WithHeader("x-mock-split", "random"))
			var m anthropic.Message
			for st.Next() {
				if err := m.Accumulate(st.Current()); err != nil {
					return 0, 0, err
				}
			}
			return m.Usage.InputTokens, m.Usage.OutputTokens, st.Err()
		}, false},
		{"anthropic stream, usage only on message_delta", "claude-sonnet-4-5", func() (int64, int64, error) {
			st := ant.Messages.NewStreaming(ctx, antParams, anthoption.WithHeader("x-mock-usage-on-delta-only", "true"))
			var m anthropic.Message
			for st.Next() {
				if err := m.Accumulate(st.Current()); err != nil {
					return 0, 0, err
				}
			}
			return m.Usage.InputTokens, m.Usage.OutputTokens, st.Err()
		}, false},
		{"openai json", "gpt-test", func() (int64, int64, error) {
			c, err := oai.Chat.Completions.New(ctx, oaiParams)
			return c.Usage.PromptTokens, c.Usage.CompletionTokens, err
		}, false},
		{"openai stream without include_usage", "gpt-test", func() (int64, int64, error) {
			// The client does not ask for usage; tokenwarden forces it to
			// meter the stream, and removes the usage chunk again, so the
			// SDK sees the stream it asked for.
			st := oai.Chat.Completions.NewStreaming(ctx, oaiParams, oaioption.WithHeader("x-mock-split", "random"))
			var acc openai.ChatCompletionAccumulator
			for st.Next() {
				acc.AddChunk(st.Current())
			}
			return acc.Usage.PromptTokens, acc.Usage.CompletionTokens, st.Err()
		}, true},
		{"openai stream with include_usage", "gpt-test", func() (int64, int64, error) {
			// The client's own include_usage: its usage chunk, once (the
			// Go SDK adds up every chunk's usage).
			p := oaiParams
			p.StreamOptions.IncludeUsage = openai.Bool(true)
			st := oai.Chat.Completions.NewStreaming(ctx, p, oaioption.WithHeader("x-mock-split", "random"))
			var acc openai.ChatCompletionAccumulator
			for st.Next() {
				acc.AddChunk(st.Current())
			}
			return acc.Usage.PromptTokens, acc.Usage.CompletionTokens, st.Err()
		}, false},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			n := len(s.mock.Provider().Ledger())
			spentBefore := s.budget("sdk", "month").Spent
			tok := func(typ string) float64 { return s.total("tokenwarden_tokens_total", "model", c.model, "type", typ) }
			in0, out0, read0, write0 := tok("input"), tok("output"), tok("cache_read"), tok("cache_write")

			sdkIn, sdkOut, err := c.run()
			if err != nil {
				t.Fatal(err)
			}
			// An SDK may stop reading at [DONE] or message_stop before the
			// mock's handler has written its ledger entry.
			for wait := time.Now().Add(5 * time.Second); len(s.ledgerSince(n)) == 0 && time.Now().Before(wait); {
				time.Sleep(time.Millisecond)
			}
			entries := s.ledgerSince(n)
			if len(entries) != 1 || !entries[0].Complete {
				t.Fatalf("ledger entries %+v", entries)
			}
			u := entries[0].Reported
			if c.sdkSeesNoUsage {
				if sdkIn != 0 || sdkOut != 0 {
					t.Errorf("SDK saw usage %d/%d it did not ask for", sdkIn, sdkOut)
				}
			} else if c.model == "gpt-test" {
				// OpenAI's prompt_tokens include cached tokens.
				if sdkIn != u.InputTokens+u.CacheReadTokens || sdkOut != u.OutputTokens {
					t.Errorf("SDK saw %d/%d, mock reported %+v", sdkIn, sdkOut, u)
				}
			} else if sdkIn != u.InputTokens || sdkOut != u.OutputTokens {
				t.Errorf("SDK saw %d/%d, mock reported %+v", sdkIn, sdkOut, u)
			}
			// The settle follows the last answer on the same stream; wait for it.
			want := expectedCost(t, c.model, u)
			deadline := time.Now().Add(5 * time.Second)
			for s.budget("sdk", "month").Spent-spentBefore != want && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if got := s.budget("sdk", "month").Spent - spentBefore; got != want {
				t.Errorf("settled %d nano-USD, want %d for %+v", got, want, u)
			}
			for typ, want := range map[string]int64{
				"input": u.InputTokens, "output": u.OutputTokens, "cache_read": u.CacheReadTokens,
				"cache_write": u.CacheWrite5mTokens + u.CacheWrite1hTokens,
			} {
				before := map[string]float64{"input": in0, "output": out0, "cache_read": read0, "cache_write": write0}[typ]
				if got := tok(typ) - before; got != float64(want) {
					t.Errorf("tokens_total{type=%q} grew by %v, want %d", typ, got, want)
				}
			}
		})
	}
	if s.total("tokenwarden_tokens_total", "model", "claude-sonnet-4-5", "type", "cache_read") == 0 {
		t.Error("the repeated cached system prompt must have been read from the cache")
	}
	if got := s.total("tokenwarden_requests_total", "outcome", "ok"); got != float64(len(calls)) {
		t.Errorf("requests_total{outcome=ok} = %v, want %d", got, len(calls))
	}
}

func TestMalformedBodyGets400InTheDialect(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig})
	ctx := context.Background()
	cases := []struct {
		name    string
		req     *sim.Request
		errType string
	}{
		{"anthropic not json", anthropicRequest(`{"model": "claude-sonnet-4-5", "messages": [`), "invalid_request_error"},
		{"anthropic no model", anthropicRequest(`{"max_tokens": 10, "messages": []}`), "invalid_request_error"},
		{"openai not an object", openaiRequest(`[1,2,3]`), "invalid_request_error"},
		{"openai messages not an array", openaiRequest(`{"model":"gpt-test","messages":"hi"}`), "invalid_request_error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := len(s.mock.Provider().Ledger())
			x := s.do(ctx, 0, tc.req)
			if x.err != nil {
				t.Fatal(x.err)
			}
			if x.resp.Status != 400 || !x.resp.LocalReply || x.header("content-type") != "application/json" {
				t.Fatalf("status %d local %v headers %v", x.resp.Status, x.resp.LocalReply, x.resp.Headers)
			}
			var body struct {
				Type  string `json:"type"`
				Error struct {
					Type    string `json:"type"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(x.body, &body); err != nil || body.Error.Type != tc.errType || body.Error.Message == "" {
				t.Fatalf("body %s", x.body)
			}
			if strings.HasPrefix(tc.req.Path, "/v1/messages") && body.Type != "error" {
				t.Errorf("an Anthropic error body has type error: %s", x.body)
			}
			if len(s.ledgerSince(n)) != 0 {
				t.Error("a malformed request must not reach the provider")
			}
		})
	}
	if got := s.total("tokenwarden_requests_total", "outcome", "invalid_request"); got != float64(len(cases)) {
		t.Errorf("invalid_request outcomes %v, want %d", got, len(cases))
	}
}

func TestResponseWithoutUsageIsNeverZeroCost(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		req  *sim.Request
	}{
		{"anthropic json", anthropicRequest(`{"model":"claude-sonnet-4-5","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`, sim.Header{Name: "x-mock-no-usage", Value: "true"})},
		{"anthropic stream", anthropicRequest(`{"model":"claude-sonnet-4-5","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, sim.Header{Name: "x-mock-no-usage", Value: "true"})},
		{"openai stream", openaiRequest(`{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}`, sim.Header{Name: "x-mock-no-usage", Value: "true"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.total("tokenwarden_requests_total", "outcome", "usage_missing")
			x := s.do(ctx, 0, tc.req)
			if x.err != nil || x.resp.Status != 200 {
				t.Fatalf("err %v resp %+v", x.err, x.resp)
			}
			if got := s.total("tokenwarden_requests_total", "outcome", "usage_missing") - before; got != 1 {
				t.Fatalf("usage_missing grew by %v", got)
			}
			md := x.resp.DynamicMetadata().GetFields()["tokenwarden"].GetStructValue().GetFields()
			if md["usage_source"].GetStringValue() != "missing" || md["cost_nano_usd"].GetNumberValue() <= 0 {
				t.Fatalf("metadata %v", md)
			}
		})
	}
	if s.total("tokenwarden_spend_usd_total", "source", "estimated") <= 0 {
		t.Error("spend without usage must be recorded as estimated, and above zero")
	}
}

func TestOpenAIStreamUsageForcedWithContentLength(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig})
	body := `{"model":"gpt-test","stream":true,"stream_options":{"include_obfuscation":false},"messages":[{"role":"user","content":"hi"}]}`
	x := s.do(context.Background(), 0, openaiRequest(body, sim.Header{Name: "content-length", Value: strconv.Itoa(len(body))}))
	if x.err != nil || x.resp.Status != 200 {
		t.Fatalf("err %v resp %+v %s", x.err, x.resp, x.body)
	}
	sent := x.resp.UpstreamRequest()
	want := `{"model":"gpt-test","stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
	if string(sent.Body) != want {
		t.Errorf("upstream body\n%s\nwant\n%s", sent.Body, want)
	}
	for _, h := range sent.Headers {
		if h.Name == "content-length" && h.Value != strconv.Itoa(len(want)) {
			t.Errorf("content-length %s for a %d-byte body", h.Value, len(want))
		}
	}
	if strings.Contains(string(x.body), `"usage"`) || !strings.HasSuffix(string(x.body), "data: [DONE]\n\n") {
		t.Errorf("the client did not ask for usage and must receive none:\n%s", x.body)
	}
	if s.total("tokenwarden_requests_total", "dialect", "openai", "outcome", "ok") != 1 {
		t.Error("the stream must be metered from its usage chunk")
	}
}

func TestOtherPathsPassThroughWithoutBodyProcessing(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig})
	x := s.do(context.Background(), 0, &sim.Request{Method: "GET", Path: "/v1/models", Headers: []sim.Header{{Name: "x-api-key", Value: "k"}, {Name: "anthropic-version", Value: "2023-06-01"}}})
	if x.err != nil || x.resp.Status != 200 {
		t.Fatalf("err %v resp %+v", x.err, x.resp)
	}
	var sent []string
	for _, e := range x.resp.Trace() {
		if e.Kind == sim.EventSend {
			sent = append(sent, e.String())
		}
	}
	if len(sent) != 1 || !strings.HasPrefix(sent[0], "send request_headers") {
		t.Fatalf("a pass-through request must cost one message, got %v", sent)
	}
	if s.total("tokenwarden_requests_total", "dialect", "passthrough") != 1 {
		t.Error("pass-through requests are counted")
	}
}

// TestProviderErrorReleasesTheReservation: a provider error is passed to the
// client as is, costs nothing (providers do not bill failed requests) and
// frees the reservation.
func TestProviderErrorReleasesTheReservation(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig})
	x := s.do(context.Background(), 0, anthropicRequest(budgetBody(false),
		sim.Header{Name: "x-tenant-id", Value: "sdk"}, sim.Header{Name: "x-mock-status", Value: "529"}))
	if x.err != nil || x.resp.Status != 529 || x.resp.LocalReply || !strings.Contains(string(x.body), "overloaded_error") {
		t.Fatalf("%v %+v %s", x.err, x.resp, x.body)
	}
	s.waitSettled(t, "sdk")
	if b := s.budget("sdk", "month"); b.Spent != 0 || b.Reserved != 0 {
		t.Errorf("a failed request must cost nothing: %+v", b)
	}
	if s.total("tokenwarden_requests_total", "outcome", "upstream_error") != 1 || s.total("tokenwarden_provider_responses_total", "code", "529") != 1 {
		t.Error("the provider error is counted")
	}
}

// TestJSONResponseInStreamedMode: with the filter streaming response bodies
// (no BUFFERED, no override), a JSON response arrives in chunks and is still
// metered exactly.
func TestJSONResponseInStreamedMode(t *testing.T) {
	s := newStack(t, stackOptions{config: meteringConfig, filter: func(c *sim.Config) {
		c.ProcessingMode.ResponseBodyMode = extprocfilterv3.ProcessingMode_STREAMED
		c.Chunking = sim.Chunking{Size: 50}
	}})
	// The body trickles in after the headers, as a slow upstream's would, so
	// Envoy sends it in several messages rather than one.
	slow := sim.UpstreamFunc(func(ctx context.Context, r *sim.UpstreamRequest) (*sim.UpstreamResponse, error) {
		resp, err := s.upstream.RoundTrip(ctx, r)
		if err == nil && resp.Body != nil {
			resp.Body = &trickle{ReadCloser: resp.Body}
		}
		return resp, err
	})
	resp, err := s.procs[0].filter.Do(context.Background(), anthropicRequest(budgetBody(false), sim.Header{Name: "x-tenant-id", Value: "sdk"}), slow)
	if err != nil || resp.Status != 200 {
		t.Fatalf("%v %+v", err, resp)
	}
	_, _ = io.ReadAll(resp.Body)
	<-resp.Done()
	x := exchange{resp: resp}
	s.waitSettled(t, "sdk")
	e := s.mock.Provider().Ledger()[0]
	if got, want := s.budget("sdk", "month").Spent, expectedCost(t, "claude-sonnet-4-5", e.Reported); got != want {
		t.Errorf("spent %d, want %d", got, want)
	}
	var chunks int
	for _, ev := range x.resp.Trace() {
		if ev.Kind == sim.EventSend && strings.HasPrefix(ev.String(), "send response_body") {
			chunks++
		}
	}
	if chunks < 2 {
		t.Errorf("the JSON body came in %d messages; the test needs several", chunks)
	}
}

// trickle returns at most 50 bytes per read, a millisecond apart.
type trickle struct{ io.ReadCloser }

func (t *trickle) Read(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return t.ReadCloser.Read(p[:min(len(p), 50)])
}
