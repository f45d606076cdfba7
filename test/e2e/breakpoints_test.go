package e2e

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
)

// breakpointConfig is the shipped default's shape: prompt_cache injection
// on with Anthropic's 5m TTL (which OpenAI's one 30m TTL overrules), prices
// from the embedded table.
const breakpointConfig = `
policies:
  default:
    limits: {requests_per_minute: 600, tokens_per_minute: 400000, concurrent: 32}
    budgets: [{window: month, usd: 1000}]
    models:
      allow: ["claude-*", "gpt-*"]
    prompt_cache: {inject: true, ttl: 5m}
tenants:
  cache: {}
`

// cacheWriteMultiplier is what a cache write costs on gpt-5.6-*, as a
// fraction of the input price: 1.25× (the cache-write column of
// https://platform.openai.com/docs/pricing for gpt-5.6-sol, -terra and
// -luna: $2.50 against $2 input on Terra).
var cacheWriteMultiplier = [2]int64{5, 4}

// TestOpenAIBreakpointsInjectedAndSettled: through the gateway, with the
// official Go SDK, a gpt-5.6 chat and a responses request get an explicit
// breakpoint at the end of their system/developer prefix (the mock records
// it); the first one's cache write settles at 1.25× input and the repeat's
// read at the cached price, to the nano-USD.
func TestOpenAIBreakpointsInjectedAndSettled(t *testing.T) {
	s := newStack(t, stackOptions{config: breakpointConfig})
	ctx := context.Background()
	gw, err := gateway.Start(ctx, gateway.Options{Listen: "127.0.0.1:0", Upstream: s.mock.URL(), Processor: s.procs[0].addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	oai := openai.NewClient(oaioption.WithBaseURL("http://"+gw.Addr()+"/v1/"), oaioption.WithAPIKey("sk-test"),
		oaioption.WithMaxRetries(0), oaioption.WithHeader("x-tenant-id", "cache"))
	const model = "gpt-5.6-terra"
	p := nanoPrices[model]
	if p[2] != p[0]*cacheWriteMultiplier[0]/cacheWriteMultiplier[1] {
		t.Fatalf("the test's %s cache-write price %d is not 1.25× its input %d", model, p[2], p[0])
	}
	// A system prompt long enough to cache (OpenAI: 1024 tokens or more).
	system := strings.Repeat("You are a meticulous travel assistant. Answer with the itinerary first, then the costs, then caveats. ", 60)

	chat := func(question string) error {
		_, err := oai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage(system), openai.UserMessage(question)}})
		return err
	}
	respond := func(question string) error {
		_, err := oai.Responses.New(ctx, responses.ResponseNewParams{Model: model,
			Input: responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{
				responses.ResponseInputItemParamOfMessage(system, responses.EasyInputMessageRoleDeveloper),
				responses.ResponseInputItemParamOfMessage(question, responses.EasyInputMessageRoleUser),
			}}})
		return err
	}
	for _, api := range []struct {
		name string
		call func(string) error
	}{{"chat", chat}, {"responses", respond}} {
		t.Run(api.name, func(t *testing.T) {
			var written int64
			for i, question := range []string{"Plan two days in Lisbon.", "Plan three days in Porto."} {
				n := len(s.mock.Provider().Ledger())
				before := s.budget("cache", "month").Spent
				if err := api.call(question); err != nil {
					t.Fatal(err)
				}
				s.waitSettled(t, "cache")
				l := s.ledgerSince(n)
				if len(l) != 1 || l[0].Breakpoints != 1 {
					t.Fatalf("request %d: the provider saw %+v, want one breakpoint", i, l)
				}
				u := l[0].Reported
				var want int64
				switch i {
				case 0: // first sight: the prefix is written, nothing read
					if u.CacheWrite5mTokens < 1024 || u.CacheReadTokens != 0 {
						t.Fatalf("first request: %+v", u)
					}
					written = u.CacheWrite5mTokens
					want = u.InputTokens*p[0] + u.CacheWrite5mTokens*p[0]*cacheWriteMultiplier[0]/cacheWriteMultiplier[1] + u.OutputTokens*p[1]
				case 1: // the repeat reads what the first wrote
					if u.CacheReadTokens != written || u.CacheWrite5mTokens != 0 {
						t.Fatalf("repeat: %+v, want %d read", u, written)
					}
					want = u.InputTokens*p[0] + u.CacheReadTokens*p[4] + u.OutputTokens*p[1]
				}
				if want != expectedCost(t, model, u) {
					t.Fatalf("the test's two prices disagree: %d, %d", want, expectedCost(t, model, u))
				}
				if got := s.budget("cache", "month").Spent - before; got != want {
					t.Errorf("request %d settled %d nano-USD, want %d for %+v", i, got, want, u)
				}
				t.Logf("%s request %d: %+v, %d nano-USD", api.name, i, u, want)
			}
		})
	}
	// An older model gets no breakpoint: it caches by itself.
	n := len(s.mock.Provider().Ledger())
	if _, err := oai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage(system), openai.UserMessage("Hi")}}); err != nil {
		t.Fatal(err)
	}
	if l := s.ledgerSince(n); len(l) != 1 || l[0].Breakpoints != 0 || l[0].Reported.CacheWrite5mTokens != 0 {
		t.Errorf("gpt-4o-mini: %+v", l)
	}
}
