package e2e

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// TestDefaultConfigMetersOpenAIAtListPrice runs the configuration tokenwarden
// ships (the embedded default.yaml: callers identified by their API key, no
// prices: section) and meters gpt-4o and gpt-4o-mini — JSON and SSE, with
// prompt-cache hits — under their own model names, at OpenAI's list price to
// the nano-USD: the embedded table prices them, nothing is "other" or
// unpriced.
func TestDefaultConfigMetersOpenAIAtListPrice(t *testing.T) {
	s := newStack(t, stackOptions{config: string(policy.DefaultYAML())})
	// The README's API key "test": a tenant of default.yaml, by its fingerprint.
	tenant := policy.Fingerprint("test")
	if tenant != "key-9f86d081884c7d65" {
		t.Fatalf("the key test is %s", tenant)
	}
	ctx := context.Background()
	// A system prompt of 1200 tokens (plus 3 for its message) by the mock's
	// token rule: past OpenAI's 1024-token caching minimum, so every request
	// after the first reads it from the prompt cache.
	system := strings.Repeat("You are a careful assistant. ", 166)[:4800]

	type call struct {
		model, user string
		stream      bool
		cached      bool // a cache hit is expected
	}
	var calls []call
	for _, model := range []string{"gpt-4o", "gpt-4o-mini"} {
		calls = append(calls,
			call{model, "What is the capital of France?", false, false}, // cold: warms the cache
			call{model, "And of Italy?", false, true},
			call{model, "And of Spain?", true, true}, // tokenwarden adds include_usage
		)
	}
	for _, c := range calls {
		name := c.model + map[bool]string{false: " json", true: " sse"}[c.stream] + map[bool]string{false: " cold", true: " cached"}[c.cached]
		t.Run(name, func(t *testing.T) {
			n := len(s.mock.Provider().Ledger())
			spent0 := s.budget(tenant, "month").Spent
			tok := func(typ string) float64 {
				return s.total("tokenwarden_tokens_total", "model", c.model, "type", typ, "source", "measured")
			}
			in0, out0, read0 := tok("input"), tok("output"), tok("cache_read")
			cost0 := s.total("tokenwarden_cost_usd_total", "model", c.model)

			body, err := json.Marshal(map[string]any{"model": c.model, "stream": c.stream, "messages": []map[string]string{
				{"role": "system", "content": system}, {"role": "user", "content": c.user}}})
			if err != nil {
				t.Fatal(err)
			}
			x := s.do(ctx, 0, &sim.Request{
				Method: "POST", Path: "/v1/chat/completions", Authority: "api.openai.com",
				Headers: []sim.Header{{Name: "content-type", Value: "application/json"}, {Name: "authorization", Value: "Bearer test"}},
				Body:    body,
			})
			if x.err != nil || x.resp.Status != 200 {
				t.Fatalf("exchange: %v %+v %s", x.err, x.resp, x.body)
			}
			for wait := time.Now().Add(5 * time.Second); len(s.ledgerSince(n)) == 0 && time.Now().Before(wait); {
				time.Sleep(time.Millisecond)
			}
			entries := s.ledgerSince(n)
			if len(entries) != 1 || !entries[0].Complete || entries[0].Model != c.model || entries[0].Stream != c.stream {
				t.Fatalf("ledger entries %+v", entries)
			}
			u := entries[0].Reported // the mock's own account: cached tokens moved out of prompt_tokens
			if got := u.CacheReadTokens > 0; got != c.cached {
				t.Fatalf("cache read %d tokens, want a hit: %v", u.CacheReadTokens, c.cached)
			}

			want := expectedCost(t, c.model, u)
			t.Logf("%s: %d input, %d cached, %d output tokens: %d nano-USD", c.model, u.InputTokens, u.CacheReadTokens, u.OutputTokens, want)
			s.waitSettled(t, tenant)
			if got := s.budget(tenant, "month").Spent - spent0; got != want {
				t.Errorf("settled %d nano-USD, want %d for %+v", got, want, u)
			}
			for typ, d := range map[string]struct {
				before float64
				want   int64
			}{"input": {in0, u.InputTokens}, "output": {out0, u.OutputTokens}, "cache_read": {read0, u.CacheReadTokens}} {
				if got := tok(typ) - d.before; got != float64(d.want) {
					t.Errorf("tokens_total{model=%q,type=%q} grew by %v, want %d", c.model, typ, got, d.want)
				}
			}
			// The counter is in USD (float); the nano-USD behind it are exact.
			if got := s.total("tokenwarden_cost_usd_total", "model", c.model) - cost0; math.Abs(got*1e9-float64(want)) > 0.5 {
				t.Errorf("cost_usd_total{model=%q} grew by %v USD, want %d nano-USD", c.model, got, want)
			}
		})
	}
	if got := s.total("tokenwarden_requests_total", "model", "other"); got != 0 {
		t.Errorf("%v requests counted as model=\"other\"", got)
	}
	if got := s.total("tokenwarden_unpriced_requests_total"); got != 0 {
		t.Errorf("%v requests unpriced", got)
	}
	for _, model := range []string{"gpt-4o", "gpt-4o-mini"} {
		if got := s.total("tokenwarden_requests_total", "model", model, "outcome", "ok"); got != 3 {
			t.Errorf("requests_total{model=%q,outcome=ok} = %v, want 3", model, got)
		}
	}
}

// TestUnpricedModelEndToEnd: under the default configuration a model the
// table does not know is metered as model="other" at the fallback price —
// never zero — and moves tokenwarden_unpriced_requests_total, which the
// TokenwardenUnpricedModel alert watches.
func TestUnpricedModelEndToEnd(t *testing.T) {
	s := newStack(t, stackOptions{config: string(policy.DefaultYAML())})
	tenant := policy.Fingerprint("test")
	ctx := context.Background()
	n := len(s.mock.Provider().Ledger())
	x := s.do(ctx, 0, &sim.Request{
		Method: "POST", Path: "/v1/chat/completions", Authority: "api.openai.com",
		Headers: []sim.Header{{Name: "content-type", Value: "application/json"}, {Name: "authorization", Value: "Bearer test"}},
		Body:    []byte(`{"model":"gpt-unreleased-9","messages":[{"role":"user","content":"Hello!"}]}`),
	})
	if x.err != nil || x.resp.Status != 200 {
		t.Fatalf("exchange: %v %+v %s", x.err, x.resp, x.body)
	}
	s.waitSettled(t, tenant)
	entries := s.ledgerSince(n)
	if len(entries) != 1 {
		t.Fatalf("ledger %+v", entries)
	}
	u := entries[0].Reported
	// The fallback is the dearest rate of the embedded table: $60 per MTok of input, $270 out
	// (GPT-5.4 Pro past 272K tokens).
	want := u.InputTokens*60_000 + u.OutputTokens*270_000
	if got := s.budget(tenant, "month").Spent; got != want || want == 0 {
		t.Errorf("settled %d nano-USD, want %d", got, want)
	}
	if got := s.total("tokenwarden_unpriced_requests_total"); got != 1 {
		t.Errorf("unpriced_requests_total = %v, want 1", got)
	}
	if got := s.total("tokenwarden_requests_total", "model", "other", "outcome", "ok"); got != 1 {
		t.Errorf("requests_total{model=other} = %v", got)
	}
	if got := s.total("tokenwarden_unconfigured_total", "kind", "model"); got != 1 {
		t.Errorf("unconfigured_total{kind=model} = %v", got)
	}
}
