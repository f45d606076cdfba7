package e2e

import (
	"context"
	"testing"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/test/mockprovider"
)

// tierConfig prices with the embedded table, except gpt-4.1-nano, which it
// gives a priority multiplier the embedded table does not have for OpenAI
// (it could not be confirmed on OpenAI's page).
const tierConfig = `
policies:
  default:
    limits: {requests_per_minute: 100000, tokens_per_minute: 100000000, concurrent: 1000}
    budgets: [{window: month, usd: 100000}]
tenants:
  tiers: {}
prices:
  gpt-4.1-nano: {input: 0.1, output: 0.4, cache_read: 0.025, tiers: {priority: 2}}
`

// tierMultipliers are the service-tier multipliers as fractions, written
// out independently of the accounting package: OpenAI's Flex at half the
// standard price (https://platform.openai.com/docs/guides/flex-processing,
// the Flex column of https://platform.openai.com/docs/pricing); Anthropic's
// Batch at 50% (https://docs.anthropic.com/en/docs/build-with-claude/batch-processing#pricing),
// its Priority Tier not a per-token multiplier (committed capacity:
// https://docs.anthropic.com/en/api/service-tiers), so ×1; Gemini's Flex at
// 50% and Priority at 180% (https://ai.google.dev/gemini-api/docs/pricing);
// and the priority ×2 tierConfig sets for gpt-4.1-nano.
var tierMultipliers = map[string]map[string][2]int64{
	"gpt-4o-mini":      {"flex": {1, 2}},
	"gpt-5.6-terra":    {"flex": {1, 2}},
	"gpt-4.1-nano":     {"priority": {2, 1}},
	"claude-haiku-4-5": {"batch": {1, 2}, "priority": {1, 1}},
	"gemini-2.5-flash": {"priority": {9, 5}, "flex": {1, 2}},
}

// tierCost is expectedCost on a service tier: each class's total times the
// tier's multiplier, a fraction of a nano-USD rounded up per class.
func tierCost(t testing.TB, model, tier string, u mockprovider.Tokens) int64 {
	t.Helper()
	p, ok := nanoPrices[model]
	if !ok {
		t.Fatalf("no test price for %s", model)
	}
	m, ok := tierMultipliers[model][tier]
	if !ok {
		t.Fatalf("no test multiplier for %s on %s", model, tier)
	}
	class := func(n, price int64) int64 { return (n*price*m[0] + m[1] - 1) / m[1] }
	return class(u.InputTokens, p[0]) + class(u.OutputTokens, p[1]) + class(u.CacheWrite5mTokens, p[2]) +
		class(u.CacheWrite1hTokens, p[3]) + class(u.CacheReadTokens, p[4])
}

// TestServiceTierPricedFromTheResponse: whatever tier the client asked for,
// the tier each provider's response reports (the mock's
// x-mock-service-tier) prices the request: every dialect, JSON and SSE,
// settled to the nano-USD.
func TestServiceTierPricedFromTheResponse(t *testing.T) {
	s := newStack(t, stackOptions{config: tierConfig})
	tenant := sim.Header{Name: "x-tenant-id", Value: "tiers"}
	gemini := func(method, body string, headers ...sim.Header) *sim.Request {
		return &sim.Request{Method: "POST", Path: "/v1beta/models/gemini-2.5-flash:" + method, Authority: "generativelanguage.googleapis.com",
			Headers: append([]sim.Header{{Name: "content-type", Value: "application/json"}, {Name: "x-goog-api-key", Value: "gm-test"}}, headers...),
			Body:    []byte(body)}
	}
	responses := func(body string, headers ...sim.Header) *sim.Request {
		r := openaiRequest(body, headers...)
		r.Path = "/v1/responses"
		return r
	}
	const gemBody = `{"contents":[{"role":"user","parts":[{"text":"Explain how AI works in a few words"}]}]}`
	for _, tc := range []struct {
		name, model, tier string
		req               func(...sim.Header) *sim.Request
	}{
		{"chat json, flex", "gpt-4o-mini", "flex", func(h ...sim.Header) *sim.Request {
			return openaiRequest(`{"model":"gpt-4o-mini","service_tier":"flex","messages":[{"role":"user","content":"Tell me a story about a lighthouse keeper."}]}`, h...)
		}},
		{"chat sse, priority (every chunk)", "gpt-4.1-nano", "priority", func(h ...sim.Header) *sim.Request {
			return openaiRequest(`{"model":"gpt-4.1-nano","service_tier":"auto","stream":true,"messages":[{"role":"user","content":"Tell me a story about a lighthouse keeper."}]}`,
				append(h, sim.Header{Name: "x-mock-split", Value: "random"})...)
		}},
		{"responses json, flex", "gpt-5.6-terra", "flex", func(h ...sim.Header) *sim.Request {
			return responses(`{"model":"gpt-5.6-terra","service_tier":"flex","input":"Write a haiku about tides."}`, h...)
		}},
		{"responses sse, priority", "gpt-4.1-nano", "priority", func(h ...sim.Header) *sim.Request {
			return responses(`{"model":"gpt-4.1-nano","stream":true,"input":"Write a haiku about tides."}`, h...)
		}},
		{"anthropic json, batch", "claude-haiku-4-5", "batch", func(h ...sim.Header) *sim.Request {
			return anthropicRequest(`{"model":"claude-haiku-4-5","max_tokens":300,"messages":[{"role":"user","content":"Tell me a story about a lighthouse keeper."}]}`, h...)
		}},
		{"anthropic sse, priority (standard price)", "claude-haiku-4-5", "priority", func(h ...sim.Header) *sim.Request {
			return anthropicRequest(`{"model":"claude-haiku-4-5","max_tokens":300,"stream":true,"messages":[{"role":"user","content":"Tell me a story about a lighthouse keeper."}]}`, h...)
		}},
		{"gemini json, Vertex priority traffic", "gemini-2.5-flash", "priority", func(h ...sim.Header) *sim.Request {
			return gemini("generateContent", gemBody, append(h, sim.Header{Name: "x-mock-service-tier", Value: "ON_DEMAND_PRIORITY"})...)
		}},
		{"gemini sse, Vertex flex traffic", "gemini-2.5-flash", "flex", func(h ...sim.Header) *sim.Request {
			r := gemini("streamGenerateContent", gemBody, append(h, sim.Header{Name: "x-mock-service-tier", Value: "ON_DEMAND_FLEX"})...)
			r.Path += "?alt=sse"
			return r
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(s.mock.Provider().Ledger())
			before := s.budget("tiers", "month").Spent
			h := []sim.Header{tenant}
			if tc.model != "gemini-2.5-flash" {
				h = append(h, sim.Header{Name: "x-mock-service-tier", Value: tc.tier})
			}
			x := s.do(context.Background(), 0, tc.req(h...))
			if x.err != nil || x.resp.Status != 200 {
				t.Fatalf("%v %+v %s", x.err, x.resp, x.body)
			}
			s.waitSettled(t, "tiers")
			l := s.ledgerSince(n)
			if len(l) != 1 || !l[0].Complete || l[0].ServiceTier == "" {
				t.Fatalf("ledger %+v", l)
			}
			u := l[0].Reported
			want := tierCost(t, tc.model, tc.tier, u)
			if got := s.budget("tiers", "month").Spent - before; got != want {
				t.Errorf("settled %d nano-USD, want %d (%s tier %q, %+v; standard would be %d)", got, want, tc.model, l[0].ServiceTier, u, expectedCost(t, tc.model, u))
			}
			t.Logf("%s on %s: %+v, %d nano-USD (standard %d)", tc.model, l[0].ServiceTier, u, want, expectedCost(t, tc.model, u))
		})
	}
	if got := s.total("tokenwarden_requests_total", "outcome", "ok"); got != 8 {
		t.Errorf("requests_total{outcome=ok} = %v, want 8", got)
	}
}
