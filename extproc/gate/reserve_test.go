package gate

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// reservationYAML is a policy with one day budget of usd dollars under the
// given budget_reservation.
func reservationYAML(mode string, usd float64) string {
	return fmt.Sprintf(`
policies:
  default:
    budget_reservation: %s
    default_max_output_tokens: 50000
    budgets: [{window: day, usd: %v}]
prices:
  gpt-4o-mini: {input: 0.15, output: 0.6, cache_read: 0.075}
tenants:
  acme: {}
`, mode, usd)
}

func anthropicBody(maxTokens string) string {
	return `{"model":"claude-sonnet-4-5",` + maxTokens + `"messages":[{"role":"user","content":"Hello, Claude"}]}`
}

// TestReservationAmounts: what each mode reserves, by the request's bound
// and the model's maximum output.
func TestReservationAmounts(t *testing.T) {
	for _, tc := range []struct {
		name, mode, path, body string
		in, out                int64 // nano-USD per token
		wantOutput             int64
	}{
		{"full reserves max_tokens", "full", pathMessages, anthropicBody(`"max_tokens":64000,`), sonnetIn, sonnetOut, 64000},
		{"capped reserves at most output_reservation", "capped", pathMessages, anthropicBody(`"max_tokens":64000,`), sonnetIn, sonnetOut, 4096},
		{"capped below the cap", "capped", pathMessages, anthropicBody(`"max_tokens":100,`), sonnetIn, sonnetOut, 100},
		// gpt-4o-mini's page: 16,384 max output tokens.
		{"full unbounded: the model's maximum", "full", pathChat, miniBody, miniIn, miniOut, 16384},
		{"full null bound: the model's maximum", "full", pathChat,
			`{"model":"gpt-4o-mini","max_completion_tokens":null,"messages":[{"role":"user","content":"Hello!"}]}`, miniIn, miniOut, 16384},
		// An unpriced model (fallback price) has no catalog entry: the
		// policy's default_max_output_tokens.
		{"full unknown model: the policy default", "full", pathChat,
			`{"model":"gpt-unknown","messages":[{"role":"user","content":"Hello!"}]}`, -1, -1, 50000},
		// max_tokens 0 generates nothing: nothing to reserve or clamp.
		{"full max_tokens 0", "full", pathMessages, anthropicBody(`"max_tokens":0,`), sonnetIn, sonnetOut, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, reservationYAML(tc.mode, 1000))
			x, bv := h.admit(post(tc.path, tenantHeader("acme")), tc.body)
			if bv.BodyChanged {
				t.Fatalf("body changed without a clamp:\n%s", bv.Body)
			}
			if x.estimate.OutputTokens != tc.wantOutput {
				t.Fatalf("reserved %d output tokens, want %d", x.estimate.OutputTokens, tc.wantOutput)
			}
			in, out := tc.in, tc.out
			if in < 0 {
				fb := h.cfg.Prices.Fallback()
				in, out = int64(fb.Input), int64(fb.Output)
			}
			want := x.req.InputTokens*in + tc.wantOutput*out
			h.wantBudgets("acme", "", want, 0)
		})
	}
}

// TestClamp: a request asking for 64000 output tokens against a budget
// that holds about 6600 is forwarded with its max_tokens lowered to the
// largest output that fits, the client is told so, and it settles within
// the budget.
func TestClamp(t *testing.T) {
	const capNano = 100_000_000 // $0.10
	h := newHarness(t, reservationYAML("full", 0.1))
	body := anthropicBody(`"max_tokens":64000,`)
	in := inputEstimate(t, pathMessages, body)
	want := (capNano - in*sonnetIn) / sonnetOut
	x, bv := h.admit(post(pathMessages, tenantHeader("acme")), body)
	if !bv.BodyChanged {
		t.Fatal("the clamped request was forwarded unchanged")
	}
	if want := strings.Replace(body, "64000", strconv.FormatInt(want, 10), 1); string(bv.Body) != want {
		t.Fatalf("forwarded\n%s\nwant\n%s", bv.Body, want)
	}
	if cl, _ := header(bv.Edits.Set, "content-length"); cl != strconv.Itoa(len(bv.Body)) {
		t.Fatalf("content-length %q for a body of %d bytes", cl, len(bv.Body))
	}
	req, err := dialect.ForPath(pathMessages).Parse(bv.Body)
	if err != nil || req.MaxTokens != want {
		t.Fatalf("the provider reads max_tokens %d (%v), want %d", req.MaxTokens, err, want)
	}
	reserved := in*sonnetIn + want*sonnetOut
	if reserved > capNano || reserved+sonnetOut <= capNano {
		t.Fatalf("reserved %d of %d: not the largest whole output that fits", reserved, capNano)
	}
	h.wantBudgets("acme", "", reserved, 0)

	rv := x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
	if v, ok := header(rv.Edits.Set, contract.OutputClampedHeader); !ok || v != strconv.FormatInt(want, 10) {
		t.Fatalf("%s = %q (%v), want %d", contract.OutputClampedHeader, v, ok, want)
	}
	// The provider honours the bound: every granted token produced.
	x.ResponseBody([]byte(fmt.Sprintf(`{"type":"message","usage":{"input_tokens":%d,"output_tokens":%d}}`, in, want)), true)
	x.Settle()
	h.wantBudgets("acme", "", 0, reserved)
	if o := h.obs.lastOutcome(t); o.OutputClamped != want || o.Cost.Total.USD() > 0.1 {
		t.Fatalf("outcome %+v; want clamped %d within $0.10", o, want)
	}
}

// TestClampOpenAI: an unbounded Chat Completions request gets the bound it
// did not have, in the member the API reads.
func TestClampOpenAI(t *testing.T) {
	h := newHarness(t, reservationYAML("full", 0.001)) // 1e6 nano-USD: ~1666 output tokens of gpt-4o-mini
	in := inputEstimate(t, pathChat, miniBody)
	want := (1_000_000 - in*miniIn) / miniOut
	_, bv := h.admit(post(pathChat, tenantHeader("acme")), miniBody)
	req, err := dialect.ForPath(pathChat).Parse(bv.Body)
	if err != nil || req.MaxTokens != want || !strings.Contains(string(bv.Body), `"max_completion_tokens":`+strconv.FormatInt(want, 10)) {
		t.Fatalf("forwarded %s (bound %d, %v), want max_completion_tokens %d", bv.Body, req.MaxTokens, err, want)
	}
}

// TestClampBelowMinimum: when less than min_output_tokens fits, the
// request gets the usual budget 429 and reserves nothing.
func TestClampBelowMinimum(t *testing.T) {
	h := newHarness(t, reservationYAML("full", 0.003)) // 3e6 nano-USD: ~198 output tokens, below 256
	_, r := h.refuse(post(pathMessages, tenantHeader("acme")), anthropicBody(`"max_tokens":64000,`))
	if r.Status != 429 {
		t.Fatalf("status %d, want 429", r.Status)
	}
	if v, _ := header(r.Headers, contract.DeniedHeader); v != "org/budget_day" {
		t.Fatalf("%s = %q, want org/budget_day", contract.DeniedHeader, v)
	}
	h.wantBudgets("acme", "", 0, 0)
}

// TestClampDenialMayRetry: a budget spent to the last cent denies a full
// request that a fresh window would clamp and admit: the 429 says when the
// budget resets, not that the request can never fit, which only one whose
// input and minimum output alone exceed the cap is told.
func TestClampDenialMayRetry(t *testing.T) {
	h := newHarness(t, reservationYAML("full", 0.1))
	body := anthropicBody(`"max_tokens":64000,`)
	h.admit(post(pathMessages, tenantHeader("acme")), body) // clamped: reserves all but less than one output token
	_, r := h.refuse(post(pathMessages, tenantHeader("acme")), body)
	if r.Status != 429 {
		t.Fatalf("status %d, want 429", r.Status)
	}
	if !strings.Contains(string(r.Body), "the day budget is exhausted; it resets in") {
		t.Fatalf("a request the next window admits (clamped) is told it can never fit: %s", r.Body)
	}

	h = newHarness(t, reservationYAML("full", 0.003)) // less than 256 output tokens fit at all
	_, r = h.refuse(post(pathMessages, tenantHeader("acme")), body)
	if !strings.Contains(string(r.Body), "more than the whole day budget") {
		t.Fatalf("body %s; want a never-fits denial", r.Body)
	}
}

// TestClampedAnswerIsNotCached: a clamped request's answer is the answer to
// a smaller request than the one sent, so it is not stored; the same flow
// unclamped is (the control).
func TestClampedAnswerIsNotCached(t *testing.T) {
	for _, tc := range []struct {
		name      string
		maxTokens string
		wantHit   bool
	}{
		{"clamped", `"max_tokens":64000,`, false},
		{"whole", `"max_tokens":256,`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, `
policies:
  default:
    budget_reservation: full
    budgets: [{window: day, usd: 0.1}]
    response_cache: {enabled: true}
tenants: {acme: {}}
`)
			h.g.opts.ResponseCache = limiter.NewMemoryCache(limiter.MemoryCacheOptions{Now: h.clock.Now})
			body := `{"model":"claude-sonnet-4-5",` + tc.maxTokens + `"temperature":0,"messages":[{"role":"user","content":"Hello, Claude"}]}`
			hdrs := post(pathMessages, tenantHeader("acme"), Header{"anthropic-version", "2023-06-01"})
			x, _ := h.admit(hdrs, body)
			if clamped := x.clamped > 0; clamped == tc.wantHit {
				t.Fatalf("clamped %d", x.clamped)
			}
			answer(x, "200", "application/json", messageJSON)
			x2, hv := h.g.Begin(context.Background(), Request{Headers: hdrs})
			if hv.Reply != nil {
				t.Fatalf("Begin: %+v", hv)
			}
			r := x2.Body([]byte(body)).Reply
			if hit := r != nil && r.Status == 200; hit != tc.wantHit {
				t.Fatalf("repeat served from the cache: %v, want %v", hit, tc.wantHit)
			}
		})
	}
}

// TestClampAtTheBindingLevel: a caller in a team is clamped to the room the
// tightest level leaves — the team's day, not the org's — and every level
// reserves the same clamped amount.
func TestClampAtTheBindingLevel(t *testing.T) {
	h := newHarness(t, `
identity:
  from: [{jwt: {org: org_id, team: team, user: sub}}]
  unknown: deny
policies:
  default: {budget_reservation: full}
orgs:
  acme:
    budgets: [{window: day, usd: 10}]
    teams:
      search: {budgets: [{window: day, usd: 0.1}]}
`)
	jwt := EnvoyValues{Meta: map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{"org_id": "acme", "team": "search", "sub": "ann"}}}}
	body := anthropicBody(`"max_tokens":64000,`)
	x, hv := h.g.Begin(context.Background(), Request{Headers: post(pathMessages), Envoy: jwt})
	if hv.Reply != nil {
		t.Fatalf("Begin: %d %s", hv.Reply.Status, hv.Reply.Body)
	}
	if bv := x.Body([]byte(body)); bv.Reply != nil || !bv.BodyChanged {
		t.Fatalf("body: %+v", bv)
	}
	in := inputEstimate(t, pathMessages, body)
	want := (100_000_000 - in*sonnetIn) / sonnetOut
	if x.clamped != want {
		t.Fatalf("clamped to %d, want %d (the team's room)", x.clamped, want)
	}
	reserved := in*sonnetIn + want*sonnetOut
	// The store's view of the windows the request was admitted against.
	_, _, windows := x.levelRequest(h.clock.Now())
	states, err := h.mem.Budgets(context.Background(), x.tenant, windows)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range states {
		if b.Reserved != reserved {
			t.Errorf("%s (level %q) reserved %d, want %d", b.Name, b.Level, b.Reserved, reserved)
		}
	}
	if len(states) < 2 {
		t.Fatalf("admitted %d budgets, want the org's and the team's", len(states))
	}
}
