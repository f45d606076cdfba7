package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

// TestModelRewriteReachesTheProviderIntact: an alias is rewritten in place —
// every other byte of the client's JSON kept, content-length matching — the
// request is routed by x-tokenwarden-model, priced at the resolved model, and
// the client is told.
func TestModelRewriteReachesTheProviderIntact(t *testing.T) {
	s := newStack(t, stackOptions{config: `
policies:
  default:
    models:
      aliases: {fast: claude-haiku-4-5}
    budgets: [{window: month, usd: 100}]
tenants:
  r: {}
`})
	body := "{\n  \"model\" : \"fast\",\n  \"max_tokens\": 64, \"temperature\": 1.0,\n  \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9 \\ud83d\\ude00 1e3\"}]\n}"
	want := "{\n  \"model\" : \"claude-haiku-4-5\",\n  \"max_tokens\": 64, \"temperature\": 1.0,\n  \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9 \\ud83d\\ude00 1e3\"}]\n}"
	x := s.do(context.Background(), 0, anthropicRequest(body,
		sim.Header{Name: "content-length", Value: strconv.Itoa(len(body))},
		sim.Header{Name: "x-tenant-id", Value: "r"},
		sim.Header{Name: "x-tokenwarden-model", Value: "claude-opus-4-5"})) // a client cannot pick its route
	if x.err != nil || x.resp.Status != 200 {
		t.Fatalf("%v %+v %s", x.err, x.resp, x.body)
	}
	sent := x.resp.UpstreamRequest()
	if string(sent.Body) != want {
		t.Fatalf("upstream body\n%q\nwant\n%q", sent.Body, want)
	}
	headers := map[string]string{}
	for _, h := range sent.Headers {
		headers[h.Name] = h.Value
	}
	if headers["content-length"] != strconv.Itoa(len(want)) || headers["x-tokenwarden-model"] != "claude-haiku-4-5" {
		t.Errorf("upstream headers %v", headers)
	}
	if got := x.header("x-tokenwarden-model-rewritten"); got != "fast -> claude-haiku-4-5" {
		t.Errorf("x-tokenwarden-model-rewritten = %q", got)
	}
	var routed bool
	for _, e := range x.resp.Trace() {
		routed = routed || e.Kind == sim.EventClearRouteCache
	}
	if !routed {
		t.Error("the route must be picked again after setting x-tokenwarden-model")
	}
	s.waitSettled(t, "r")
	e := s.mock.Provider().Ledger()[0]
	if e.Model != "claude-haiku-4-5" {
		t.Errorf("the provider saw model %q", e.Model)
	}
	if got, want := s.budget("r", "month").Spent, expectedCost(t, "claude-haiku-4-5", e.Reported); got != want {
		t.Errorf("charged %d nano-USD, want %d at Haiku prices", got, want)
	}
	if s.total("tokenwarden_model_rewrites_total", "reason", "alias") != 1 {
		t.Error("the rewrite is counted")
	}
}

// TestDowngradeAtTheConfiguredRatioAndNotBefore sends Opus requests until
// the month budget is well past the downgrade threshold: every request sent
// while less than half the budget was spent goes to Opus, every later one to
// Sonnet.
func TestDowngradeAtTheConfiguredRatioAndNotBefore(t *testing.T) {
	s := newStack(t, stackOptions{config: `
policies:
  default:
    budgets: [{window: month, usd: 0.05}]
    models:
      downgrade:
        - {when_budget_used: 0.5, window: month, from: "claude-opus-*", to: claude-sonnet-4-5}
tenants:
  d: {}
`})
	capNano := int64(50_000_000)
	var downgraded int
	for i := range 12 {
		spentBefore := s.budget("d", "month").Spent
		x := s.do(context.Background(), 0, anthropicRequest(
			`{"model":"claude-opus-4-5","max_tokens":100,"messages":[{"role":"user","content":"Quarterly numbers, briefly."}]}`,
			sim.Header{Name: "x-tenant-id", Value: "d"}, sim.Header{Name: "x-mock-output-tokens", Value: "100"}))
		if x.resp.Status == 429 {
			break // the budget itself ran out
		}
		if x.err != nil || x.resp.Status != 200 {
			t.Fatalf("request %d: %v %+v", i, x.err, x.resp)
		}
		s.waitSettled(t, "d")
		var resp struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(x.body, &resp); err != nil {
			t.Fatal(err)
		}
		wantDowngrade := float64(spentBefore)/float64(capNano) >= 0.5
		if (resp.Model == "claude-sonnet-4-5") != wantDowngrade {
			t.Fatalf("request %d with %.3f of the budget spent went to %s", i, float64(spentBefore)/float64(capNano), resp.Model)
		}
		if wantDowngrade {
			downgraded++
			if x.header("x-tokenwarden-model-rewritten") != "claude-opus-4-5 -> claude-sonnet-4-5" {
				t.Errorf("request %d: rewritten header %q", i, x.header("x-tokenwarden-model-rewritten"))
			}
		}
	}
	if downgraded == 0 {
		t.Fatal("the budget never reached the downgrade ratio; the test proves nothing")
	}
	t.Logf("%d requests downgraded once half the budget was spent", downgraded)
}

// TestPromptCacheInjection: with injection on, breakpoints reach the
// provider in a body whose content-length matches, the provider caches the
// stable prefix, and the cache reads are priced at the cache-read price.
func TestPromptCacheInjection(t *testing.T) {
	s := newStack(t, stackOptions{config: `
policies:
  default:
    prompt_cache: {inject: true, ttl: 5m}
    budgets: [{window: month, usd: 100}]
tenants:
  c: {}
`})
	system := strings.Repeat("You are the support assistant of a hardware store. Answer with care. ", 120)
	body := func(question string) string {
		return fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":50,"system":%q,"messages":[{"role":"user","content":"Do you sell drills?"},{"role":"assistant","content":"Yes."},{"role":"user","content":%q}]}`, system, question)
	}
	var costs []int64
	for i, q := range []string{"Which brands?", "Any cordless ones?"} {
		before := s.budget("c", "month").Spent
		n := len(s.mock.Provider().Ledger())
		b := body(q)
		x := s.do(context.Background(), 0, anthropicRequest(b, sim.Header{Name: "content-length", Value: strconv.Itoa(len(b))}, sim.Header{Name: "x-tenant-id", Value: "c"}))
		if x.err != nil || x.resp.Status != 200 {
			t.Fatalf("request %d: %v %+v %s", i, x.err, x.resp, x.body)
		}
		sent := x.resp.UpstreamRequest()
		if got := strings.Count(string(sent.Body), `"cache_control"`); got != 2 {
			t.Fatalf("request %d: %d breakpoints sent (system and the previous user turn expected):\n%s", i, got, sent.Body)
		}
		if !json.Valid(sent.Body) {
			t.Fatal("the injected body is not JSON")
		}
		for _, h := range sent.Headers {
			if h.Name == "content-length" && h.Value != strconv.Itoa(len(sent.Body)) {
				t.Fatalf("content-length %s for %d bytes", h.Value, len(sent.Body))
			}
		}
		s.waitSettled(t, "c")
		e := s.ledgerSince(n)[0]
		if i == 0 && e.Reported.CacheWrite5mTokens == 0 || i == 1 && e.Reported.CacheReadTokens == 0 {
			t.Fatalf("request %d: the provider's usage %+v shows no cache write/read", i, e.Reported)
		}
		want := expectedCost(t, "claude-sonnet-4-5", e.Reported)
		if got := s.budget("c", "month").Spent - before; got != want {
			t.Fatalf("request %d charged %d, want %d for %+v", i, got, want, e.Reported)
		}
		costs = append(costs, want)
	}
	if costs[1] >= costs[0] {
		t.Errorf("a cache read (%d nano-USD) must cost less than the write (%d)", costs[1], costs[0])
	}
	if s.total("tokenwarden_prompt_cache_tokens_total", "type", "read") == 0 || s.total("tokenwarden_prompt_cache_tokens_total", "type", "write") == 0 {
		t.Error("prompt-cache tokens are counted by type")
	}
}

// TestPromptPrefixChangesAreCounted: a system prompt that changes on every
// request (a leaked timestamp) shows up in the metric; a stable one does not.
func TestPromptPrefixChangesAreCounted(t *testing.T) {
	s := newStack(t, stackOptions{config: "policies: {default: {}}\n"})
	send := func(system string) {
		b := fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":10,"system":%q,"messages":[{"role":"user","content":"hi"}]}`, system)
		if x := s.do(context.Background(), 0, anthropicRequest(b, sim.Header{Name: "x-tenant-id", Value: "p"})); x.err != nil || x.resp.Status != 200 {
			t.Fatalf("%v %+v", x.err, x.resp)
		}
	}
	for range 3 {
		send("You are helpful.")
	}
	if got := s.total("tokenwarden_prompt_prefix_changes_total", "policy", "default"); got != 0 {
		t.Fatalf("a stable prefix counted %v changes", got)
	}
	for i := range 3 {
		send(fmt.Sprintf("You are helpful. Now: 2026-11-21T09:00:0%dZ", i))
	}
	if got := s.total("tokenwarden_prompt_prefix_changes_total", "policy", "default"); got != 3 {
		t.Fatalf("three changed prefixes counted %v", got)
	}
}

// TestStreamedRequestBodyModes: with an Envoy filter configured to stream
// request bodies, tokenwarden either asks for them whole (mode_override) or,
// where overrides are not allowed, holds every chunk back and sends the whole
// rewritten body with the last one — the provider gets the same bytes.
func TestStreamedRequestBodyModes(t *testing.T) {
	for _, allowOverride := range []bool{true, false} {
		t.Run(fmt.Sprintf("allow_mode_override=%v", allowOverride), func(t *testing.T) {
			s := newStack(t, stackOptions{
				config: "policies: {default: {models: {aliases: {fast: claude-haiku-4-5}}}}\n",
				filter: func(c *sim.Config) {
					c.ProcessingMode.RequestBodyMode = extprocfilterv3.ProcessingMode_STREAMED
					c.AllowModeOverride = allowOverride
					c.Chunking = sim.Chunking{Size: 64} // many request chunks
				},
			})
			body := `{"model":"fast","max_tokens":20,"messages":[{"role":"user","content":"` + strings.Repeat("a long question ", 40) + `"}]}`
			req := anthropicRequest(body)
			// The body trickles in after the headers, so Envoy streams it in
			// several messages instead of coalescing it into one.
			req.BodyStream = &trickle{io.NopCloser(strings.NewReader(body))}
			x := s.do(context.Background(), 0, req)
			if x.err != nil || x.resp.Status != 200 {
				t.Fatalf("%v %+v %s", x.err, x.resp, x.body)
			}
			want := strings.Replace(body, `"model":"fast"`, `"model":"claude-haiku-4-5"`, 1)
			if got := string(x.resp.UpstreamRequest().Body); got != want {
				t.Fatalf("the provider got\n%s\nwant\n%s", got, want)
			}
			var chunks int
			for _, e := range x.resp.Trace() {
				if e.Kind == sim.EventSend && strings.HasPrefix(e.String(), "send request_body") {
					chunks++
				}
			}
			if allowOverride && chunks != 1 || !allowOverride && chunks < 2 {
				t.Errorf("%d request body messages", chunks)
			}
			if e := s.mock.Provider().Ledger()[0]; e.Model != "claude-haiku-4-5" || !e.Complete {
				t.Errorf("ledger %+v", e)
			}
		})
	}
}
