package e2e

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"google.golang.org/genai"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
)

// surfacesConfig prices the models of these tests itself, so the test does
// not depend on the embedded table (see nanoPrices for the sources).
const surfacesConfig = `
policies:
  default:
    limits: {requests_per_minute: 100000, tokens_per_minute: 100000000, concurrent: 1000}
    budgets: [{window: month, usd: 100000}]
    models:
      aliases: {gemini-fast: gemini-2.5-flash}
tenants:
  sdk: {}
prices:
  gpt-test: {input: 0.05, output: 0.4}
  gpt-5.6-terra: {input: 2, output: 12, cache_write_5m: 2.5, cache_read: 0.2}
  text-embedding-3-small: {input: 0.02, output: 0}
  gemini-2.5-flash: {input: 0.3, output: 2.5, cache_read: 0.03}
`

// TestSurfacesMeteredExactly drives the official OpenAI Go SDK (chat,
// responses JSON and SSE, an incomplete response, embeddings) and the
// genai SDK (generate and stream-generate) through gateway → processor →
// mock provider, and checks that the tokens metered per class and the
// nano-USD settled equal the usage the mock reported, priced by hand.
func TestSurfacesMeteredExactly(t *testing.T) {
	s := newStack(t, stackOptions{config: surfacesConfig})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gw, err := gateway.Start(ctx, gateway.Options{Listen: "127.0.0.1:0", Upstream: s.mock.URL(), Processor: s.procs[0].addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + gw.Addr()
	oai := openai.NewClient(oaioption.WithBaseURL(base+"/v1/"), oaioption.WithAPIKey("sk-test"),
		oaioption.WithMaxRetries(0), oaioption.WithHeader("x-tenant-id", "sdk"))
	gem, err := genai.NewClient(ctx, &genai.ClientConfig{APIKey: "gm-test", Backend: genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: base, Headers: http.Header{"X-Tenant-Id": {"sdk"}}}})
	if err != nil {
		t.Fatal(err)
	}

	long := strings.Repeat("You are a careful assistant who answers briefly. ", 40)
	respParams := responses.ResponseNewParams{
		Model:        "gpt-5.6-terra",
		Instructions: openai.String(long),
		Input:        responses.ResponseNewParamsInputUnion{OfString: openai.String("Tell me a three sentence bedtime story about a unicorn.")},
	}
	cacheHeaders := []oaioption.RequestOption{oaioption.WithHeader("x-mock-cached-tokens", "256"),
		oaioption.WithHeader("x-mock-cache-write-tokens", "128"), oaioption.WithHeader("x-mock-reasoning-tokens", "64")}
	gemContents := []*genai.Content{genai.NewContentFromText("Explain how AI works in a few words", genai.RoleUser)}
	gemConfig := &genai.GenerateContentConfig{
		SystemInstruction: genai.NewContentFromText(long, ""),
		HTTPOptions:       &genai.HTTPOptions{Headers: http.Header{"X-Mock-Cached-Tokens": {"100"}, "X-Mock-Reasoning-Tokens": {"40"}, "X-Mock-Split": {"random"}}},
	}

	// sdkUsage is the usage as the SDK reports it, in the provider's own
	// terms: total input (cached included) and total output.
	type sdkUsage struct{ input, output int64 }
	type call struct {
		name, model string
		wantStatus  string // the Responses status, when it matters
		run         func() (sdkUsage, string, error)
	}
	calls := []call{
		{"openai chat", "gpt-test", "", func() (sdkUsage, string, error) {
			c, err := oai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-test",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello there")}})
			return sdkUsage{c.Usage.PromptTokens, c.Usage.CompletionTokens}, "", err
		}},
		{"responses json (cached, cache write, reasoning)", "gpt-5.6-terra", "completed", func() (sdkUsage, string, error) {
			r, err := oai.Responses.New(ctx, respParams, cacheHeaders...)
			if err != nil {
				return sdkUsage{}, "", err
			}
			if r.Usage.InputTokensDetails.CachedTokens != 256 || r.Usage.InputTokensDetails.CacheWriteTokens != 128 || r.Usage.OutputTokensDetails.ReasoningTokens != 64 {
				t.Errorf("usage details %+v", r.Usage)
			}
			return sdkUsage{r.Usage.InputTokens, r.Usage.OutputTokens}, string(r.Status), nil
		}},
		{"responses stream", "gpt-5.6-terra", "completed", func() (sdkUsage, string, error) {
			st := oai.Responses.NewStreaming(ctx, respParams, append(cacheHeaders, oaioption.WithHeader("x-mock-split", "random"))...)
			var done responses.Response
			var text strings.Builder
			for st.Next() {
				ev := st.Current()
				switch ev.Type {
				case "response.output_text.delta":
					text.WriteString(ev.Delta)
				case "response.completed":
					done = ev.AsResponseCompleted().Response
				}
			}
			if done.OutputText() != text.String() || text.Len() == 0 {
				t.Errorf("streamed text %q, final %q", text.String(), done.OutputText())
			}
			return sdkUsage{done.Usage.InputTokens, done.Usage.OutputTokens}, string(done.Status), st.Err()
		}},
		{"responses stream, incomplete at max_output_tokens", "gpt-5.6-terra", "incomplete", func() (sdkUsage, string, error) {
			p := respParams
			p.MaxOutputTokens = openai.Int(20)
			st := oai.Responses.NewStreaming(ctx, p, oaioption.WithHeader("x-mock-output-tokens", "150"), oaioption.WithHeader("x-mock-reasoning-tokens", "12"))
			var done responses.Response
			for st.Next() {
				if ev := st.Current(); ev.Type == "response.incomplete" {
					done = ev.AsResponseIncomplete().Response
				}
			}
			if done.IncompleteDetails.Reason != "max_output_tokens" {
				t.Errorf("incomplete details %+v", done.IncompleteDetails)
			}
			return sdkUsage{done.Usage.InputTokens, done.Usage.OutputTokens}, string(done.Status), st.Err()
		}},
		{"responses json, incomplete (content filter)", "gpt-5.6-terra", "incomplete", func() (sdkUsage, string, error) {
			r, err := oai.Responses.New(ctx, respParams, oaioption.WithHeader("x-mock-incomplete", "content_filter"))
			if err != nil {
				return sdkUsage{}, "", err
			}
			return sdkUsage{r.Usage.InputTokens, r.Usage.OutputTokens}, string(r.Status), nil
		}},
		{"embeddings", "text-embedding-3-small", "", func() (sdkUsage, string, error) {
			e, err := oai.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "text-embedding-3-small",
				Input:          openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"The food was delicious", "and the waiter was kind"}},
				EncodingFormat: openai.EmbeddingNewParamsEncodingFormatBase64})
			if err == nil && (len(e.Data) != 2 || len(e.Data[0].Embedding) != 16) {
				t.Errorf("embeddings %+v", e.Data)
			}
			return sdkUsage{e.Usage.PromptTokens, 0}, "", err
		}},
		{"gemini generate (model rewritten in the path)", "gemini-2.5-flash", "", func() (sdkUsage, string, error) {
			r, err := gem.Models.GenerateContent(ctx, "gemini-fast", gemContents, gemConfig)
			if err != nil {
				return sdkUsage{}, "", err
			}
			if r.ModelVersion != "gemini-2.5-flash" {
				t.Errorf("the provider served %q", r.ModelVersion)
			}
			u := r.UsageMetadata
			return sdkUsage{int64(u.PromptTokenCount), int64(u.CandidatesTokenCount + u.ThoughtsTokenCount)}, "", nil
		}},
		{"gemini stream-generate", "gemini-2.5-flash", "", func() (sdkUsage, string, error) {
			var last *genai.GenerateContentResponseUsageMetadata
			for r, err := range gem.Models.GenerateContentStream(ctx, "gemini-2.5-flash", gemContents, gemConfig) {
				if err != nil {
					return sdkUsage{}, "", err
				}
				if r.UsageMetadata != nil {
					last = r.UsageMetadata
				}
			}
			if last == nil {
				return sdkUsage{}, "", nil
			}
			return sdkUsage{int64(last.PromptTokenCount), int64(last.CandidatesTokenCount + last.ThoughtsTokenCount)}, "", nil
		}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			n := len(s.mock.Provider().Ledger())
			spentBefore := s.budget("sdk", "month").Spent
			tok := func(typ string) float64 { return s.total("tokenwarden_tokens_total", "model", c.model, "type", typ) }
			classes := []string{"input", "output", "cache_read", "cache_write"}
			before := map[string]float64{}
			for _, typ := range classes {
				before[typ] = tok(typ)
			}

			got, status, err := c.run()
			if err != nil {
				t.Fatal(err)
			}
			if status != c.wantStatus {
				t.Errorf("status %q, want %q", status, c.wantStatus)
			}
			for wait := time.Now().Add(5 * time.Second); len(s.ledgerSince(n)) == 0 && time.Now().Before(wait); {
				time.Sleep(time.Millisecond)
			}
			entries := s.ledgerSince(n)
			if len(entries) != 1 || !entries[0].Complete || entries[0].Model != c.model {
				t.Fatalf("ledger entries %+v", entries)
			}
			u := entries[0].Reported
			if want := (sdkUsage{u.InputTokens + u.CacheReadTokens + u.CacheWrite5mTokens, u.OutputTokens}); got != want {
				t.Errorf("SDK saw %+v, mock reported %+v", got, u)
			}
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
				if got := tok(typ) - before[typ]; got != float64(want) {
					t.Errorf("tokens_total{type=%q} grew by %v, want %d", typ, got, want)
				}
			}
			t.Logf("%s: %+v, %d nano-USD", c.model, u, want)
		})
	}
	if got := s.total("tokenwarden_requests_total", "outcome", "ok"); got != float64(len(calls)) {
		t.Errorf("requests_total{outcome=ok} = %v, want %d", got, len(calls))
	}
}

// TestBackgroundResponseChargedAtItsEstimate: a background response is
// answered queued, without usage; it is charged its whole reservation,
// labelled estimated, and polling it (GET /v1/responses/{id}) passes
// through.
func TestBackgroundResponseChargedAtItsEstimate(t *testing.T) {
	s := newStack(t, stackOptions{config: surfacesConfig})
	ctx := context.Background()
	gw, err := gateway.Start(ctx, gateway.Options{Listen: "127.0.0.1:0", Upstream: s.mock.URL(), Processor: s.procs[0].addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	oai := openai.NewClient(oaioption.WithBaseURL("http://"+gw.Addr()+"/v1/"), oaioption.WithAPIKey("sk-test"),
		oaioption.WithMaxRetries(0), oaioption.WithHeader("x-tenant-id", "sdk"))
	r, err := oai.Responses.New(ctx, responses.ResponseNewParams{Model: "gpt-5.6-terra", Background: openai.Bool(true),
		MaxOutputTokens: openai.Int(500), Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Write an essay.")}})
	if err != nil || r.Status != "queued" {
		t.Fatalf("%v %+v", err, r)
	}
	s.waitSettled(t, "sdk")
	if got := s.total("tokenwarden_requests_total", "outcome", "background"); got != 1 {
		t.Errorf("requests_total{outcome=background} = %v", got)
	}
	spent := s.budget("sdk", "month").Spent
	if p := nanoPrices["gpt-5.6-terra"]; spent <= 500*p[1] {
		t.Errorf("spent %d: the reserved output (500 tokens) is charged, and the input", spent)
	}
	done, err := oai.Responses.Get(ctx, r.ID, responses.ResponseGetParams{})
	if err != nil || done.Status != "completed" || done.Usage.OutputTokens == 0 {
		t.Fatalf("%v %+v", err, done)
	}
	if got := s.total("tokenwarden_requests_total", "dialect", "passthrough"); got != 1 {
		t.Errorf("the GET passes through: %v", got)
	}
	if l := s.mock.Provider().Ledger(); len(l) != 2 || !l[0].Deferred || l[1].ResponseID != r.ID {
		t.Errorf("ledger %+v", l)
	}
}
