package gate

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/limiter"
)

func TestBodyRefused(t *testing.T) {
	cases := []struct {
		name, path, body string
		wantMsg          string
		wantRequested    string
	}{
		{"anthropic: not JSON", pathMessages, `{"model":`, "not valid JSON", ""},
		{"anthropic: no model", pathMessages, `{"max_tokens":10,"messages":[]}`, "model: field required", ""},
		{"anthropic: model not allowed", pathMessages, `{"model":"llama-3-70b","max_tokens":10,"messages":[]}`, `model "llama-3-70b" is not allowed by policy "default"`, "llama-3-70b"},
		{"openai: not JSON", pathChat, `{"model":"gpt-4o-mini","messages":[`, "not valid JSON", ""},
		{"openai: no model", pathChat, `{"messages":[{"role":"user","content":"hi"}]}`, "model: field required", ""},
		{"openai: model not allowed", pathChat, `{"model":"o3-mini","messages":[]}`, `model "o3-mini" is not allowed`, "o3-mini"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, baseYAML)
			x, r := h.refuse(post(tc.path, tenantHeader("acme")), tc.body)
			if r.Status != 400 || r.Details != "tokenwarden_invalid_request" {
				t.Errorf("status %d details %q", r.Status, r.Details)
			}
			checkReplyFraming(t, r)
			typ, _, msg := errorType(t, r.Body)
			if typ != "invalid_request_error" || !strings.Contains(msg, tc.wantMsg) || !strings.HasPrefix(msg, "tokenwarden: ") {
				t.Errorf("error %q %q, want invalid_request_error naming %q", typ, msg, tc.wantMsg)
			}
			o := h.obs.lastOutcome(t)
			if o.Result != ResultInvalidRequest || o.Metered || o.RequestedModel != tc.wantRequested || o.ModelLabel != "other" || o.TenantLabel != "acme" {
				t.Errorf("outcome %+v", o)
			}
			// Nothing was asked of the store, and nothing is reserved.
			if len(h.obs.storeCalls) != 0 || !x.Done() {
				t.Errorf("store calls %+v done %v", h.obs.storeCalls, x.Done())
			}
			h.wantBudgets("acme", "", 0, 0)
		})
	}
}

// The reservation is the input estimate plus the output the request may
// produce, capped by the policy's output_reservation, priced at the served
// model's price; the store shows exactly that amount reserved in every
// budget window, and tokens-per-minute is charged the same token count.
func TestEstimateReserved(t *testing.T) {
	const cfg = baseYAML + `
  tight:
    policy: tight
`
	const tightPolicy = `
  tight:
    output_reservation: 1000
    limits: {tokens_per_minute: 6000000}
    budgets: [{window: day, usd: 50}]
`
	yaml := strings.Replace(cfg, "  free: {}\n", "  free: {}\n"+tightPolicy, 1)
	long := func(maxTokens int) string {
		return fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":%d,"messages":[{"role":"user","content":"Write me an essay"}]}`, maxTokens)
	}
	cases := []struct {
		name, tenant, path, body string
		wantOut                  int64
		priceIn, priceOut        int64
	}{
		{"max_tokens below the reservation", "acme", pathMessages, sonnetBody, 256, sonnetIn, sonnetOut},
		{"max_tokens above the reservation", "acme", pathMessages, long(100_000), 4096, sonnetIn, sonnetOut},
		{"max_tokens equal to the reservation", "acme", pathMessages, long(4096), 4096, sonnetIn, sonnetOut},
		{"no max_tokens: the reservation", "acme", pathChat, miniBody, 4096, miniIn, miniOut},
		{"max_completion_tokens below it", "acme", pathChat, `{"model":"gpt-4o-mini","max_completion_tokens":300,"messages":[{"role":"user","content":"Hello!"}]}`, 300, miniIn, miniOut},
		{"the policy's own output_reservation", "tight", pathMessages, long(2000), 1000, sonnetIn, sonnetOut},
		{"an alias is priced as its target", "acme", pathMessages, `{"model":"fast","max_tokens":256,"messages":[{"role":"user","content":"Hello, Claude"}]}`, 256, haikuIn, haikuOut},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, yaml)
			x, _ := h.admit(post(tc.path, tenantHeader(tc.tenant)), tc.body)
			in := inputEstimate(t, tc.path, tc.body)
			wantCost := in*tc.priceIn + tc.wantOut*tc.priceOut
			h.wantBudgets(tc.tenant, "", wantCost, 0)
			// tokens_per_minute is 6,000,000: the remaining count is exact.
			rv := x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
			if got, _ := header(rv.Edits.Set, "x-tokenwarden-ratelimit-remaining-tokens"); got != strconv.FormatInt(6_000_000-in-tc.wantOut, 10) {
				t.Errorf("x-tokenwarden-ratelimit-remaining-tokens = %s, want 6000000-%d-%d", got, in, tc.wantOut)
			}
		})
	}
}

func TestModelRules(t *testing.T) {
	cases := []struct {
		name       string
		model      string
		monthUsed  float64 // seeded in the budget cache, as a previous answer of the store would
		want       string
		wantReason string
		wantLabel  string
	}{
		{name: "as asked", model: "claude-sonnet-4-5", want: "claude-sonnet-4-5", wantLabel: "claude-sonnet-4-5"},
		{name: "a dated ID keeps its canonical label", model: "claude-sonnet-4-5-20250929", want: "claude-sonnet-4-5-20250929", wantLabel: "claude-sonnet-4-5"},
		{name: "alias", model: "fast", want: "claude-haiku-4-5", wantReason: "alias", wantLabel: "claude-haiku-4-5"},
		{name: "tier: small and tool-free", model: "auto", want: "claude-haiku-4-5", wantReason: "tier", wantLabel: "claude-haiku-4-5"},
		{name: "below the downgrade threshold", model: "claude-opus-4-5", monthUsed: 0.79, want: "claude-opus-4-5", wantLabel: "claude-opus-4-5"},
		{name: "downgrade by budget use", model: "claude-opus-4-5", monthUsed: 0.8, want: "claude-sonnet-4-5", wantReason: "downgrade", wantLabel: "claude-sonnet-4-5"},
		{name: "the strongest downgrade", model: "claude-opus-4-5", monthUsed: 0.97, want: "claude-haiku-4-5", wantReason: "downgrade", wantLabel: "claude-haiku-4-5"},
		{name: "an unpriced model is labelled other", model: "gpt-unreleased-9", want: "gpt-unreleased-9", wantLabel: "other"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, modelPolicyYAML)
			h.g.budgets.store("acme", []limiter.BudgetState{{Name: "month", Cap: 1_000_000, Spent: int64(tc.monthUsed * 1_000_000)}})
			body := `{"model":"` + tc.model + `","max_tokens":256,"messages":[{"role":"user","content":"Hello, Claude"}]}`
			x, bv := h.admit(post(pathMessages, tenantHeader("acme")), body)

			var sent struct{ Model string }
			if err := json.Unmarshal(bv.Body, &sent); err != nil || sent.Model != tc.want {
				t.Errorf("forwarded model %q (%v), want %q", sent.Model, err, tc.want)
			}
			if bv.BodyChanged != (tc.wantReason != "") {
				t.Errorf("BodyChanged = %v", bv.BodyChanged)
			}
			if got, _ := header(bv.Edits.Set, contract.ModelHeader); got != tc.want {
				t.Errorf("%s = %q, want %q", contract.ModelHeader, got, tc.want)
			}
			var wantRewrites []rewrite
			if tc.wantReason != "" {
				wantRewrites = []rewrite{{"default", tc.wantReason}}
			}
			if !reflect.DeepEqual(h.obs.rewrites, wantRewrites) {
				t.Errorf("rewrites observed %+v, want %+v", h.obs.rewrites, wantRewrites)
			}
			// The client learns of the rewrite on the response.
			rv := x.ResponseHeaders(HeaderList{{":status", "200"}}, false)
			got, ok := header(rv.Edits.Set, contract.ModelRewrittenHeader)
			if tc.wantReason == "" && ok || tc.wantReason != "" && got != tc.model+" -> "+tc.want {
				t.Errorf("%s = %q (%v)", contract.ModelRewrittenHeader, got, ok)
			}
			x.Abort()
			o := h.obs.lastOutcome(t)
			if o.RequestedModel != tc.model || o.Model != tc.want || o.ModelLabel != tc.wantLabel {
				t.Errorf("outcome models %q -> %q (%q), want %q -> %q (%q)", o.RequestedModel, o.Model, o.ModelLabel, tc.model, tc.want, tc.wantLabel)
			}
		})
	}
}

// Size tiers route by input size, max_tokens and tools; the first tier that
// matches wins, and a tier without "from" applies to every model.
func TestTiers(t *testing.T) {
	const cfg = `
policies:
  default:
    limits: {concurrent: 10}
    models:
      tiers:
        - {from: auto, max_input_tokens: 1000, max_output_tokens: 1024, tools: false, model: claude-haiku-4-5}
        - {from: auto, min_input_tokens: 1001, model: claude-opus-4-5}
        - {from: auto, model: claude-sonnet-4-5}
        - {model: claude-sonnet-4-5}
`
	big := strings.Repeat("Summarise the quarterly report section by section. ", 120)
	tool := `,"tools":[{"name":"get_weather","description":"Get the weather","input_schema":{"type":"object"}}]`
	req := func(model string, maxTokens int, content, extra string) string {
		return fmt.Sprintf(`{"model":%q,"max_tokens":%d,"messages":[{"role":"user","content":%q}]%s}`, model, maxTokens, content, extra)
	}
	cases := []struct {
		name, body, want, wantReason string
	}{
		{"small, short, no tools", req("auto", 256, "hi", ""), "claude-haiku-4-5", "tier"},
		{"small but a long answer", req("auto", 2048, "hi", ""), "claude-sonnet-4-5", "tier"},
		{"small with tools", req("auto", 256, "hi", tool), "claude-sonnet-4-5", "tier"},
		{"a large prompt", req("auto", 256, big, ""), "claude-opus-4-5", "tier"},
		{"a tier without from", req("claude-haiku-4-5", 256, "hi", ""), "claude-sonnet-4-5", "tier"},
		{"a tier naming the model asked for", req("claude-sonnet-4-5", 256, "hi", ""), "claude-sonnet-4-5", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, cfg)
			_, bv := h.admit(post(pathMessages), tc.body)
			if got, _ := header(bv.Edits.Set, contract.ModelHeader); got != tc.want || bv.BodyChanged != (tc.wantReason != "") {
				t.Errorf("served %q (changed %v), want %q", got, bv.BodyChanged, tc.want)
			}
			var wantRewrites []rewrite
			if tc.wantReason != "" {
				wantRewrites = []rewrite{{"default", tc.wantReason}}
			}
			if !reflect.DeepEqual(h.obs.rewrites, wantRewrites) {
				t.Errorf("rewrites %+v", h.obs.rewrites)
			}
		})
	}
}

// A downgrade is driven by what the store reports after real spend: the
// budget cache learns each settle's answer, so no extra round trip is made.
func TestDowngradeAfterRealSpend(t *testing.T) {
	const cfg = `
policies:
  default:
    limits: {concurrent: 10}
    budgets: [{window: month, usd: 1}]
    models:
      downgrade: [{when_budget_used: 0.8, window: month, from: "claude-opus-*", to: claude-sonnet-4-5}]
`
	h := newHarness(t, cfg)
	const opus = `{"model":"claude-opus-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Plan my week"}]}`
	spend := func(outputTokens int64) {
		t.Helper()
		x, bv := h.admit(post(pathMessages), opus)
		if !strings.Contains(string(bv.Body), `"claude-opus-4-5"`) {
			t.Fatalf("opus rewritten too early: %s", bv.Body)
		}
		x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
		x.ResponseBody(fmt.Appendf(nil, `{"type":"message","model":"claude-opus-4-5","usage":{"input_tokens":10,"output_tokens":%d}}`, outputTokens), true)
		x.Settle()
	}
	spend(20_000)                                             // $0.50005 of $1
	spend(14_000)                                             // $0.85010 of $1
	h.wantBudgets("guest", "", 0, 2*10*opusIn+34_000*opusOut) // no identity: the test identity's default caller

	x, bv := h.admit(post(pathMessages), opus)
	var sent struct{ Model string }
	if err := json.Unmarshal(bv.Body, &sent); err != nil || sent.Model != "claude-sonnet-4-5" {
		t.Fatalf("after 85%% of the month: forwarded %q (%v), want claude-sonnet-4-5", sent.Model, err)
	}
	if got, _ := header(bv.Edits.Set, "content-length"); got != strconv.Itoa(len(bv.Body)) {
		t.Errorf("content-length %q for a %d-byte body", got, len(bv.Body))
	}
	if len(h.obs.rewrites) != 1 || h.obs.rewrites[0] != (rewrite{"default", "downgrade"}) {
		t.Errorf("rewrites %+v", h.obs.rewrites)
	}
	// The reservation is priced as the model actually served.
	in := inputEstimate(t, pathMessages, opus)
	spent := 2*10*opusIn + int64(34_000*opusOut)
	h.wantBudgets("guest", "", in*sonnetIn+1024*sonnetOut, spent)
	x.Abort()
}

func TestBodyEdits(t *testing.T) {
	const cfg = baseYAML + `
  cached: {policy: cached}
  cached1h: {policy: cached1h}
`
	const cachePolicies = `
  cached:
    limits: {concurrent: 10}
    prompt_cache: {inject: true}
  cached1h:
    limits: {concurrent: 10}
    prompt_cache: {inject: true, ttl: 1h}
`
	yaml := strings.Replace(cfg, "  free: {}\n", "  free: {}\n"+cachePolicies, 1)
	// A system prompt above claude-sonnet-4-5's 1024-token minimum for a
	// cache breakpoint (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching).
	system := strings.Repeat("You are the support assistant of ACME Corporation. Answer briefly and politely. ", 80)
	longSystem := `{"model":"claude-sonnet-4-5","max_tokens":256,"system":"` + system + `","messages":[{"role":"user","content":"Where is my order?"}]}`

	type check func(t *testing.T, sent map[string]any)
	modelIs := func(m string) check {
		return func(t *testing.T, sent map[string]any) {
			if sent["model"] != m {
				t.Errorf("model %v, want %s", sent["model"], m)
			}
		}
	}
	includeUsage := func(t *testing.T, sent map[string]any) {
		so, _ := sent["stream_options"].(map[string]any)
		if so["include_usage"] != true {
			t.Errorf("stream_options %v, want include_usage true", sent["stream_options"])
		}
	}
	cacheMarker := func(ttl string) check {
		return func(t *testing.T, sent map[string]any) {
			blocks, _ := sent["system"].([]any)
			if len(blocks) != 1 {
				t.Fatalf("system %v, want one text block", sent["system"])
			}
			b, _ := blocks[0].(map[string]any)
			want := map[string]any{"type": "ephemeral"}
			if ttl != "" {
				want["ttl"] = ttl
			}
			if b["text"] != system || !reflect.DeepEqual(b["cache_control"], want) {
				t.Errorf("system block %v, want the prompt with cache_control %v", b, want)
			}
		}
	}
	cases := []struct {
		name, tenant, path, body string
		wantChanged              bool
		wantModel                string
		checks                   []check
		// wantIdentity: the stream's forced usage chunk is removed again,
		// so the provider is asked for identity (the client gets plain
		// bytes anyway).
		wantIdentity bool
	}{
		{name: "nothing to change", tenant: "acme", path: pathMessages, body: sonnetBody, wantModel: "claude-sonnet-4-5"},
		{name: "model rewrite", tenant: "acme", path: pathMessages, body: strings.Replace(sonnetBody, "claude-sonnet-4-5", "fast", 1),
			wantChanged: true, wantModel: "claude-haiku-4-5", checks: []check{modelIs("claude-haiku-4-5")}},
		{name: "openai model rewrite", tenant: "acme", path: pathChat, body: strings.Replace(miniBody, "gpt-4o-mini", "fast", 1),
			wantChanged: true, wantModel: "claude-haiku-4-5", checks: []check{modelIs("claude-haiku-4-5")}},
		{name: "openai stream: usage forced", tenant: "acme", path: pathChat, body: `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello!"}]}`,
			wantChanged: true, wantModel: "gpt-4o-mini", wantIdentity: true, checks: []check{includeUsage}},
		{name: "openai stream: include_usage false forced", tenant: "acme", path: pathChat, body: `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":false},"messages":[]}`,
			wantChanged: true, wantModel: "gpt-4o-mini", wantIdentity: true, checks: []check{includeUsage}},
		{name: "openai stream: usage already asked for", tenant: "acme", path: pathChat, body: `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}`,
			wantModel: "gpt-4o-mini"},
		{name: "openai stream: rewrite and usage at once", tenant: "acme", path: pathChat, body: `{"model":"fast","stream":true,"messages":[]}`,
			wantChanged: true, wantModel: "claude-haiku-4-5", wantIdentity: true, checks: []check{modelIs("claude-haiku-4-5"), includeUsage}},
		{name: "prompt cache injected", tenant: "cached", path: pathMessages, body: longSystem,
			wantChanged: true, wantModel: "claude-sonnet-4-5", checks: []check{cacheMarker("")}},
		{name: "prompt cache injected with a 1h TTL", tenant: "cached1h", path: pathMessages, body: longSystem,
			wantChanged: true, wantModel: "claude-sonnet-4-5", checks: []check{cacheMarker("1h")}},
		{name: "prompt cache not enabled", tenant: "acme", path: pathMessages, body: longSystem, wantModel: "claude-sonnet-4-5"},
		{name: "prompt cache: a prefix below the minimum", tenant: "cached", path: pathMessages, body: sonnetBody, wantModel: "claude-sonnet-4-5"},
		{name: "prompt cache: OpenAI caches by itself", tenant: "cached", path: pathChat, body: miniBody, wantModel: "gpt-4o-mini"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, yaml)
			_, bv := h.admit(post(tc.path, tenantHeader(tc.tenant)), tc.body)
			if bv.BodyChanged != tc.wantChanged {
				t.Fatalf("BodyChanged = %v, want %v: %s", bv.BodyChanged, tc.wantChanged, bv.Body)
			}
			wantSet := []Header{{contract.ModelHeader, tc.wantModel}}
			if tc.wantChanged {
				wantSet = []Header{{"content-length", strconv.Itoa(len(bv.Body))}, {contract.ModelHeader, tc.wantModel}}
			} else if string(bv.Body) != tc.body {
				t.Errorf("unchanged body differs: %s", bv.Body)
			}
			if tc.wantIdentity {
				wantSet = append(wantSet, Header{"accept-encoding", "identity"})
			}
			if !reflect.DeepEqual(bv.Edits.Set, wantSet) || len(bv.Edits.Remove) != 0 {
				t.Errorf("edits %+v, want set %+v", bv.Edits, wantSet)
			}
			var sent, orig map[string]any
			if err := json.Unmarshal(bv.Body, &sent); err != nil {
				t.Fatalf("forwarded body is not JSON: %v\n%s", err, bv.Body)
			}
			_ = json.Unmarshal([]byte(tc.body), &orig)
			for _, c := range tc.checks {
				c(t, sent)
			}
			// Every member the edits do not own arrives as the client sent it.
			for k, v := range orig {
				if k == "model" || k == "stream_options" || k == "system" {
					continue
				}
				if !reflect.DeepEqual(sent[k], v) {
					t.Errorf("member %q changed: %v -> %v", k, v, sent[k])
				}
			}
		})
	}
}

// Envoy has been seen to send a final request body twice: the second one
// changes nothing — no second admission, no second reservation, no edits.
func TestRepeatedBody(t *testing.T) {
	h := newHarness(t, baseYAML)
	body := strings.Replace(sonnetBody, "claude-sonnet-4-5", "fast", 1)
	x, first := h.admit(post(pathMessages, tenantHeader("acme")), body)
	if !first.BodyChanged {
		t.Fatal("the first body must be rewritten")
	}
	reserved := h.budgets("acme", "")["day"].Reserved
	second := x.Body([]byte(body))
	if second.Reply != nil || second.BodyChanged || !second.Edits.Empty() || string(second.Body) != body {
		t.Errorf("second Body: %+v", second)
	}
	if h.obs.calls("admit") != 1 || len(h.obs.admissions) != 1 || len(h.obs.rewrites) != 1 {
		t.Errorf("admits %d, admissions %+v, rewrites %+v", h.obs.calls("admit"), h.obs.admissions, h.obs.rewrites)
	}
	h.wantBudgets("acme", "", reserved, 0)
}

// A body Envoy could not deliver as configured ends the request before
// admission, with a reply in the dialect; once the body was admitted there
// is nothing left to end.
func TestBodyTooLargeAndUnsupported(t *testing.T) {
	h := newHarness(t, baseYAML)
	x, _ := h.g.Begin(context.Background(), Request{Headers: post(pathMessages)})
	r := x.BodyTooLarge()
	if r == nil || r.Status != 413 {
		t.Fatalf("BodyTooLarge = %+v", r)
	}
	checkReplyFraming(t, r)
	if typ, _, _ := errorType(t, r.Body); typ != "invalid_request_error" {
		t.Errorf("413 body %s", r.Body)
	}
	if x.BodyTooLarge() != nil || x.Unsupported("again") != nil {
		t.Error("a finished request was ended twice")
	}

	x, _ = h.g.Begin(context.Background(), Request{Headers: post(pathChat)})
	r = x.Unsupported("a streamed request body that ends in trailers cannot be forwarded")
	if r == nil || r.Status != 500 {
		t.Fatalf("Unsupported = %+v", r)
	}
	if typ, _, msg := errorType(t, r.Body); typ != "server_error" || !strings.Contains(msg, "trailers") {
		t.Errorf("500 body %s", r.Body)
	}
	if o := h.obs.lastOutcome(t); o.Result != ResultInvalidRequest || o.Dialect != "openai" {
		t.Errorf("outcome %+v", o)
	}

	x, _ = h.admit(post(pathMessages), sonnetBody)
	if x.BodyTooLarge() != nil || x.Unsupported("late") != nil {
		t.Error("an admitted request was ended by BodyTooLarge or Unsupported")
	}
	if len(h.obs.storeCalls) != 1 {
		t.Errorf("store calls %+v, want the one admission", h.obs.storeCalls)
	}
}

// FuzzRefusedBodiesAreNeverCharged: whatever body a client sends, the gate
// either refuses it having reserved nothing, or admits it and its
// reservation ends when the exchange does. No body leaves the store holding
// anything.
func FuzzRefusedBodiesAreNeverCharged(f *testing.F) {
	for _, s := range []string{sonnetBody, miniBody, `{"model":"claude-sonnet-4-5","Model":"claude-opus-4-1","max_tokens":1,"messages":[]}`,
		`{"model":"claude-\u0007","max_tokens":1,"messages":[]}`, `{}`, `[`, "{\"model\":\"\xff\",\"messages\":[]}"} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, openai bool) {
		h := newHarness(t, baseYAML)
		path := pathMessages
		if openai {
			path = pathChat
		}
		x, hv := h.g.Begin(context.Background(), Request{Headers: post(path, tenantHeader("acme"))})
		if hv.Reply != nil || hv.PassThrough {
			t.Fatalf("Begin: %+v", hv)
		}
		v := x.Body(body)
		if v.Reply == nil {
			x.Abort() // the stream ends: the admitted request is settled
		} else if v.Reply.Status/100 != 4 {
			t.Fatalf("a client's body answered %d: %s", v.Reply.Status, v.Reply.Body)
		}
		for name, b := range h.budgets("acme", "") {
			if b.Reserved != 0 {
				t.Fatalf("%s budget holds %d after the exchange (refused: %v)", name, b.Reserved, v.Reply != nil)
			}
			if v.Reply != nil && b.Spent != 0 {
				t.Fatalf("a refused body was charged %d", b.Spent)
			}
		}
	})
}
