package gate

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
)

// How the gate prices a request: by the price entry in force when it was
// admitted, at the rates the response's usage selects (a long-context tier,
// the service tier), and by the dated snapshot the response says served it
// when that snapshot has its own price. The expected amounts are written out
// from the providers' published prices, not taken from accounting:
// Anthropic (https://platform.claude.com/docs/en/about-claude/pricing) and
// OpenAI (https://platform.openai.com/docs/pricing), $1/MTok = 1000 nano-USD
// per token.

// priceYAML uses the embedded table, plus an own price for one OpenAI
// snapshot: gpt-4o-2024-05-13 was priced above gpt-4o.
const priceYAML = `
policies:
  default:
    limits: {concurrent: 100}
    budgets: [{window: month, usd: 1000}]
    models:
      allow: ["claude-*", "gpt-*"]
prices:
  gpt-4o-2024-05-13: {input: 5, output: 15, cache_read: 5}
tenants:
  acme: {}
`

// messageWith is a Messages API response reporting the given model and usage.
func messageWith(model string, in, read, out int64) string {
	return fmt.Sprintf(`{"id":"msg_01","type":"message","role":"assistant","model":%q,"content":[{"type":"text","text":"Hi"}],`+
		`"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":%d,"cache_creation_input_tokens":0,`+
		`"cache_read_input_tokens":%d,"output_tokens":%d}}`, model, in, read, out)
}

// chatWith is a Chat Completions response reporting the given model and
// usage (prompt_tokens includes the cached ones).
func chatWith(model string, prompt, cached, completion int64) string {
	return fmt.Sprintf(`{"id":"chatcmpl-9","object":"chat.completion","created":1755137921,"model":%q,"service_tier":"default",`+
		`"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],`+
		`"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":%d}}}`,
		model, prompt, completion, prompt+completion, cached)
}

// chatStreamWith is a Chat Completions stream whose chunks report model.
func chatStreamWith(model string, prompt, cached, completion int64) string {
	chunk := func(rest string) string {
		return `data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1755137921,"model":"` + model + `",` + rest + "}\n\n"
	}
	return chunk(`"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}],"usage":null`) +
		chunk(`"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null`) +
		chunk(fmt.Sprintf(`"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":%d}}`,
			prompt, completion, prompt+completion, cached)) +
		"data: [DONE]\n\n"
}

// respondPriced sends a JSON (or, with stream, SSE) response body to x in one
// chunk and settles it.
func respondPriced(t *testing.T, x *Exchange, body string, stream bool) Outcome {
	t.Helper()
	hdrs := jsonHeaders
	if stream {
		hdrs = sseHeaders
	}
	x.ResponseHeaders(hdrs, false)
	if !x.ResponseBody([]byte(body), true).Done {
		t.Fatal("the response was not metered")
	}
	x.Settle()
	return *x.Outcome()
}

func (h *harness) setClock(at time.Time) {
	h.clock.Advance(at.Sub(h.clock.Now()))
}

func (h *harness) spent(tenant string) int64 {
	h.t.Helper()
	return h.budgets(tenant, "")["month"].Spent
}

// TestPricedAtAdmission admits one Sonnet 5 request a second before its
// price change (introductory $2/$10 through 2026-08-31, $3/$15 from
// 2026-09-01) and one a second after; the first answers after the change and
// is still priced, estimate and settlement, by the price it was admitted at.
func TestPricedAtAdmission(t *testing.T) {
	h := newHarness(t, priceYAML)
	change := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	h.setClock(change.Add(-time.Second))
	const body = `{"model":"claude-sonnet-5","max_tokens":256,"messages":[{"role":"user","content":"Hello, Claude"}]}`
	in := inputEstimate(t, pathMessages, body)

	// The month budget's window changes at the same instant (August,
	// September): each estimate is reserved in its admission's window.
	estBefore, estAfter := in*2000+256*10000, in*3000+256*15000
	before, _ := h.admit(post(pathMessages, tenantHeader("acme")), body)
	if got := h.budgets("acme", "")["month"].Reserved; got != estBefore {
		t.Fatalf("reserved %d, want %d: the estimate at the introductory price", got, estBefore)
	}
	h.clock.Advance(2 * time.Second)
	after, _ := h.admit(post(pathMessages, tenantHeader("acme")), body)
	if got := h.budgets("acme", "")["month"].Reserved; got != estAfter {
		t.Fatalf("reserved %d, want %d: the estimate at the new price", got, estAfter)
	}

	// 1000 in + 1000 out: $0.012 at the introductory price, $0.018 after.
	// The first answers after the change and is still priced as admitted.
	o := respondPriced(t, before, messageWith("claude-sonnet-5", 1000, 0, 1000), false)
	if o.Cost.Total != 12_000_000 {
		t.Errorf("admitted before the change: cost %d, want 12000000 (introductory)", o.Cost.Total)
	}
	o = respondPriced(t, after, messageWith("claude-sonnet-5", 1000, 0, 1000), false)
	if o.Cost.Total != 18_000_000 {
		t.Errorf("admitted after the change: cost %d, want 18000000", o.Cost.Total)
	}
	// What each settle charged its reservation (which window that lands in
	// is the limiter's business).
	if before.charge.Cost != 12_000_000 || after.charge.Cost != 18_000_000 {
		t.Errorf("settled %d and %d, want 12000000 and 18000000", before.charge.Cost, after.charge.Cost)
	}
	if got := h.budgets("acme", "")["month"]; got.Reserved != 0 || got.Spent < 18_000_000 {
		t.Errorf("September after both settled: %+v", got)
	}
	if o.ModelLabel != "claude-sonnet-5" || o.Unpriced {
		t.Errorf("outcome %+v", o)
	}
}

// TestLongContextCliff: Sonnet 4.5 past 200K total input tokens — cache
// reads count — bills every class of the request at $6 / $0.60 / $22.50.
func TestLongContextCliff(t *testing.T) {
	cases := []struct {
		name      string
		in, read  int64
		wantTotal int64
	}{
		// 150,000·$3 + 50,000·$0.30 + 100·$15 per MTok.
		{"exactly 200K: base rates", 150_000, 50_000, 450_000_000 + 15_000_000 + 1_500_000},
		// 150,000·$6 + 50,001·$0.60 + 100·$22.50 per MTok.
		{"one token past: every class at the tier", 150_000, 50_001, 900_000_000 + 30_000_600 + 2_250_000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, priceYAML)
			x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
			o := respondPriced(t, x, messageWith("claude-sonnet-4-5-20250929", tc.in, tc.read, 100), false)
			if o.Cost.Total != accounting.NanoUSD(tc.wantTotal) || h.spent("acme") != tc.wantTotal {
				t.Errorf("cost %d, spent %d, want %d", o.Cost.Total, h.spent("acme"), tc.wantTotal)
			}
		})
	}
}

// TestServiceTierFromResponse prices the usage a dialect reports with the
// response's service tier (Anthropic's usage.service_tier, OpenAI's
// service_tier). The dialects fill Usage.ServiceTier; here the gate is given
// such usage directly.
func TestServiceTierFromResponse(t *testing.T) {
	cases := []struct {
		name, path, body string
		u                accounting.Usage
		want             int64
	}{
		{"anthropic standard", pathMessages, sonnetBody,
			accounting.Usage{InputTokens: 1000, OutputTokens: 1000, ServiceTier: "standard"}, 18_000_000},
		// Batch is half of every class: $1.50 / $7.50.
		{"anthropic batch", pathMessages, sonnetBody,
			accounting.Usage{InputTokens: 1000, OutputTokens: 1000, ServiceTier: "batch"}, 9_000_000},
		// Priority Tier is not priced apart: standard.
		{"anthropic priority", pathMessages, sonnetBody,
			accounting.Usage{InputTokens: 1000, OutputTokens: 1000, ServiceTier: "priority"}, 18_000_000},
		// Flex halves gpt-4o-mini's $0.075 cached input: 3 tokens are 112.5 nano-USD, charged 113.
		{"openai flex rounds up", pathChat, miniBody,
			accounting.Usage{InputTokens: 10, CacheReadTokens: 3, OutputTokens: 10, ServiceTier: "flex"}, 750 + 113 + 3000},
		{"openai default", pathChat, miniBody,
			accounting.Usage{InputTokens: 10, CacheReadTokens: 3, OutputTokens: 10, ServiceTier: "default"}, 1500 + 225 + 6000},
		{"unknown tier: standard", pathChat, miniBody,
			accounting.Usage{InputTokens: 10, CacheReadTokens: 3, OutputTokens: 10, ServiceTier: "ultrafast"}, 1500 + 225 + 6000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, priceYAML)
			x, _ := h.admit(post(tc.path, tenantHeader("acme")), tc.body)
			x.ResponseHeaders(jsonHeaders, false)
			x.measured(tc.u)
			x.Settle()
			o := h.obs.lastOutcome(t)
			if o.Cost.Total != accounting.NanoUSD(tc.want) || h.spent("acme") != tc.want || o.Usage.ServiceTier != tc.u.ServiceTier {
				t.Errorf("cost %d, spent %d, want %d (outcome %+v)", o.Cost.Total, h.spent("acme"), tc.want, o)
			}
		})
	}
}

// TestServedSnapshot prices a response by the dated snapshot it says served
// it, when that snapshot has its own price, and never by a model that is not
// a snapshot of the one forwarded. The label stays the forwarded model's.
func TestServedSnapshot(t *testing.T) {
	const gpt4o = `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hello!"}]}`
	// 1000 prompt tokens of which 768 cached, 50 out.
	atSnapshot := int64(232*5000 + 768*5000 + 50*15000) // gpt-4o-2024-05-13: $5 / $5 / $15
	atFamily := int64(232*2500 + 768*1250 + 50*10000)   // gpt-4o: $2.50 / $1.25 / $10
	cases := []struct {
		name   string
		served string
		stream bool
		want   int64
	}{
		{"JSON: a snapshot with its own price", "gpt-4o-2024-05-13", false, atSnapshot},
		{"SSE: a snapshot with its own price", "gpt-4o-2024-05-13", true, atSnapshot},
		{"a snapshot priced as its family", "gpt-4o-2024-08-06", false, atFamily},
		{"a snapshot the table does not know", "gpt-4o-2099-01-01", true, atFamily},
		{"not a snapshot of the request", "gpt-4o-mini", false, atFamily},
		{"not a snapshot of the request, streamed", "gpt-4o-mini-2024-07-18", true, atFamily},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, priceYAML)
			x, _ := h.admit(post(pathChat, tenantHeader("acme")), gpt4o)
			body := chatWith(tc.served, 1000, 768, 50)
			if tc.stream {
				body = chatStreamWith(tc.served, 1000, 768, 50)
			}
			o := respondPriced(t, x, body, tc.stream)
			if o.Cost.Total != accounting.NanoUSD(tc.want) || h.spent("acme") != tc.want {
				t.Errorf("cost %d, spent %d, want %d", o.Cost.Total, h.spent("acme"), tc.want)
			}
			if o.ModelLabel != "gpt-4o" || o.Model != "gpt-4o" || o.Unpriced {
				t.Errorf("outcome labels %q / %q, unpriced %v", o.Model, o.ModelLabel, o.Unpriced)
			}
		})
	}
}

// TestUnpricedModel: a model without a price is labelled "other", flagged
// Unpriced on its outcome (tokenwarden_unpriced_requests_total), counted as
// unconfigured, warned about once per name, and charged the fallback — never
// zero.
func TestUnpricedModel(t *testing.T) {
	h := newHarness(t, priceYAML)
	const body = `{"model":"gpt-unreleased-9","messages":[{"role":"user","content":"Hello!"}]}`
	for i := range 2 {
		x, _ := h.admit(post(pathChat, tenantHeader("acme")), body)
		o := respondPriced(t, x, chatWith("gpt-unreleased-9", 1000, 768, 50), false)
		// The fallback: $60 per MTok of every input class, $270 out.
		want := int64(1000*60_000 + 50*270_000)
		if o.Cost.Total != accounting.NanoUSD(want) || !o.Unpriced || o.ModelLabel != "other" {
			t.Errorf("request %d: cost %d (want %d), unpriced %v, label %q", i, o.Cost.Total, want, o.Unpriced, o.ModelLabel)
		}
	}
	if n := h.logs.count("model has no price; charged at the fallback price"); n != 1 {
		t.Errorf("warned %d times, want once per model name", n)
	}
	if len(h.obs.unknown) != 2 || h.obs.unknown[0] != UnconfiguredModel {
		t.Errorf("unconfigured %v", h.obs.unknown)
	}
	// An unpriced model answered by a dated snapshot that has a price is
	// priced, and labelled, by the snapshot.
	h2 := newHarness(t, strings.Replace(priceYAML, "prices:\n", "prices:\n  gpt-9o-2027-01-15: {input: 1, output: 2}\n", 1))
	x, _ := h2.admit(post(pathChat, tenantHeader("acme")), `{"model":"gpt-9o","messages":[{"role":"user","content":"Hello!"}]}`)
	if o := respondPriced(t, x, chatWith("gpt-9o-2027-01-15", 1000, 0, 50), false); o.Unpriced || o.ModelLabel != "gpt-9o-2027-01-15" || o.Cost.Total != 1000*1000+50*2000 {
		t.Errorf("snapshot of an unpriced model: %+v", o)
	}

	// A priced model is not flagged.
	x, _ = h.admit(post(pathChat, tenantHeader("acme")), miniBody)
	if o := respondPriced(t, x, chatWith("gpt-4o-mini", 10, 0, 10), false); o.Unpriced || o.ModelLabel != "gpt-4o-mini" {
		t.Errorf("priced model: %+v", o)
	}
}
