package gate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// The denial tests send requests with max_tokens 256 in both dialects, so
// each reserves its input estimate plus 256 output tokens.
const miniBody256 = `{"model":"gpt-4o-mini","max_completion_tokens":256,"messages":[{"role":"user","content":"Hello!"}]}`

func denialYAML(limits, budgets string) string {
	return fmt.Sprintf(`
policies:
  default:
    limits: %s
    budgets: %s
prices:
  gpt-4o-mini: {input: 0.15, output: 0.6, cache_read: 0.075}
tenants:
  acme: {}
`, limits, budgets)
}

const dayBudget = `[{window: day, usd: 50}]`

// finish answers an admitted request with a small JSON response and settles
// it, releasing its concurrency slot.
func finish(x *Exchange) {
	x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
	x.ResponseBody([]byte(`{"usage":{"input_tokens":5,"output_tokens":5,"prompt_tokens":5,"completion_tokens":5}}`), true)
	x.Settle()
}

func TestDenials(t *testing.T) {
	type dialectCase struct {
		path, body       string
		wantType         string // the error type of the 429 body
		wantCode         string // OpenAI's error code; "" for Anthropic
		wantMessageShape string
	}
	dialects := map[string]func(dim string) dialectCase{
		"anthropic": func(string) dialectCase {
			// Anthropic answers every 429 with rate_limit_error
			// (https://docs.anthropic.com/en/api/errors).
			return dialectCase{pathMessages, sonnetBody, "rate_limit_error", "", `"type":"error"`}
		},
		"openai": func(dim string) dialectCase {
			// OpenAI says which limit in "type", and a spent quota is
			// insufficient_quota (https://platform.openai.com/docs/guides/error-codes).
			switch {
			case dim == "tokens":
				return dialectCase{pathChat, miniBody256, "tokens", "rate_limit_exceeded", `"param":null`}
			case strings.HasPrefix(dim, "budget_"):
				return dialectCase{pathChat, miniBody256, "insufficient_quota", "insufficient_quota", `"param":null`}
			}
			return dialectCase{pathChat, miniBody256, "requests", "rate_limit_exceeded", `"param":null`}
		},
	}
	const dayEnd = 12 * time.Hour             // t0 is noon UTC
	const monthEnd = (21*24 + 12) * time.Hour // to April 1st
	cases := []struct {
		name string
		cfg  string
		// pre is how many requests are admitted (and left in flight) before
		// the denied one; for tokens it depends on the request's size.
		pre    func(tokens int64) int
		dim    string
		msg    string
		budget bool // the store keeps a day budget to show what is reserved
		// retry is the wait the denial must announce; 0 means none is real.
		retry      func(tokens int64) time.Duration
		neverFits  bool
		rateHeader map[string]string
		// reopen is what lets a later identical request in.
		reopen func(h *harness, admitted []*Exchange, retry time.Duration)
		// later, when set, is the body of the later request (a smaller one).
		later func(d dialectCase) string
	}{
		{
			name: "requests per minute", cfg: denialYAML(`{requests_per_minute: 2}`, dayBudget), budget: true,
			pre: func(int64) int { return 2 }, dim: "requests", msg: "limit of 2 requests per minute",
			// GCRA: two requests fill the minute; the third conforms once
			// one emission interval (30s) has passed.
			retry:      func(int64) time.Duration { return 30 * time.Second },
			rateHeader: map[string]string{"x-tokenwarden-ratelimit-limit-requests": "2", "x-tokenwarden-ratelimit-remaining-requests": "0", "x-tokenwarden-ratelimit-reset-requests": "1m0s"},
			reopen:     func(h *harness, _ []*Exchange, retry time.Duration) { h.clock.Advance(retry) },
		},
		{
			name: "tokens per minute", cfg: denialYAML(`{tokens_per_minute: 1000}`, dayBudget), budget: true,
			pre: func(tok int64) int { return int(1000 / tok) }, dim: "tokens", msg: "limit of 1000 tokens per minute",
			// Each request pushes the bucket by tokens×60s/1000; the next
			// one conforms when the bucket is back to one minute's worth.
			retry: func(tok int64) time.Duration {
				inc := tok * 60_000_000 / 1000
				return time.Duration((1000/tok+1)*inc-60_000_000) * time.Microsecond
			},
			rateHeader: map[string]string{"x-tokenwarden-ratelimit-limit-tokens": "1000"},
			reopen:     func(h *harness, _ []*Exchange, retry time.Duration) { h.clock.Advance(retry) },
		},
		{
			name: "tokens: a request that can never fit", cfg: denialYAML(`{tokens_per_minute: 50}`, dayBudget), budget: true,
			pre: func(int64) int { return 0 }, dim: "tokens", msg: "reduce the prompt or max_tokens",
			retry: func(int64) time.Duration { return 0 }, neverFits: true,
			rateHeader: map[string]string{"x-tokenwarden-ratelimit-limit-tokens": "50", "x-tokenwarden-ratelimit-remaining-tokens": "50"},
			reopen:     func(*harness, []*Exchange, time.Duration) {},
			later: func(d dialectCase) string {
				return strings.NewReplacer(`"max_tokens":256`, `"max_tokens":1`, `"max_completion_tokens":256`, `"max_completion_tokens":1`).Replace(d.body)
			},
		},
		{
			name: "concurrency", cfg: denialYAML(`{concurrent: 1}`, dayBudget), budget: true,
			pre: func(int64) int { return 1 }, dim: "concurrency", msg: "1 requests already in flight",
			// A slot frees when another request ends: no wait is known.
			retry:  func(int64) time.Duration { return 0 },
			reopen: func(_ *harness, admitted []*Exchange, _ time.Duration) { finish(admitted[0]) },
		},
		{
			name: "day budget", cfg: denialYAML(`{concurrent: 10}`, `[{window: day, usd: 0.0001}, {window: month, usd: 10}]`),
			pre: func(int64) int { return 0 }, dim: "budget_day", msg: "more than the whole day budget of $0.000100",
			retry:  func(int64) time.Duration { return dayEnd },
			reopen: func(h *harness, _ []*Exchange, retry time.Duration) { h.clock.Advance(retry) },
			later: func(d dialectCase) string { // a new day's budget, still only $0.0001
				return strings.NewReplacer(`"max_tokens":256`, `"max_tokens":1`, `"max_completion_tokens":256`, `"max_completion_tokens":1`,
					"claude-sonnet-4-5", "claude-haiku-4-5").Replace(d.body)
			},
		},
		{
			name: "month budget", cfg: denialYAML(`{concurrent: 10}`, `[{window: day, usd: 10}, {window: month, usd: 0.0001}]`),
			pre: func(int64) int { return 0 }, dim: "budget_month", msg: "more than the whole month budget of $0.000100",
			retry:  func(int64) time.Duration { return monthEnd },
			reopen: func(h *harness, _ []*Exchange, retry time.Duration) { h.clock.Advance(retry) },
			later: func(d dialectCase) string {
				return strings.NewReplacer(`"max_tokens":256`, `"max_tokens":1`, `"max_completion_tokens":256`, `"max_completion_tokens":1`,
					"claude-sonnet-4-5", "claude-haiku-4-5").Replace(d.body)
			},
		},
	}
	for _, tc := range cases {
		for dname, dc := range dialects {
			t.Run(tc.name+"/"+dname, func(t *testing.T) {
				d := dc(tc.dim)
				h := newHarness(t, tc.cfg)
				hdrs := post(d.path, tenantHeader("acme"))
				tokens := inputEstimate(t, d.path, d.body) + 256
				var admitted []*Exchange
				for range tc.pre(tokens) {
					x, _ := h.admit(hdrs, d.body)
					admitted = append(admitted, x)
				}
				var reserved int64
				if tc.budget {
					reserved = h.budgets("acme", "")["day"].Reserved
				}

				x, r := h.refuse(hdrs, d.body)
				if r.Status != 429 || r.Details != "tokenwarden_denied" {
					t.Errorf("status %d details %q", r.Status, r.Details)
				}
				checkReplyFraming(t, r)
				typ, code, msg := errorType(t, r.Body)
				if typ != d.wantType || code != d.wantCode || !strings.Contains(msg, tc.msg) || !strings.Contains(string(r.Body), d.wantMessageShape) {
					t.Errorf("429 body %s, want type %q code %q naming %q", r.Body, d.wantType, d.wantCode, tc.msg)
				}

				retry := tc.retry(tokens)
				wantSecs := strconv.Itoa(max(int(math.Ceil(retry.Seconds())), 1))
				if got, _ := header(r.Headers, "retry-after"); got != wantSecs {
					t.Errorf("retry-after = %q, want %q", got, wantSecs)
				}
				// retry-after-ms only for a real wait: the SDKs prefer it to
				// retry-after, so a token 1ms would have them retry at once.
				gotMs, hasMs := header(r.Headers, "retry-after-ms")
				if retry > 0 && (!hasMs || gotMs != strconv.FormatInt(retry.Milliseconds(), 10)) || retry == 0 && hasMs {
					t.Errorf("retry-after-ms = %q (%v) for a wait of %v", gotMs, hasMs, retry)
				}
				if got, _ := header(r.Headers, contract.DeniedHeader); got != "org/"+tc.dim {
					t.Errorf("%s = %q, want %q", contract.DeniedHeader, got, "org/"+tc.dim)
				}
				wantNoRetry := retry > time.Minute || tc.neverFits
				if got, ok := header(r.Headers, "x-should-retry"); wantNoRetry != ok || ok && got != "false" {
					t.Errorf("x-should-retry = %q (%v), want false: %v", got, ok, wantNoRetry)
				}
				for name, want := range tc.rateHeader {
					if got, _ := header(r.Headers, name); got != want {
						t.Errorf("%s = %q, want %q", name, got, want)
					}
				}

				// Observed as the denial it is; nothing was reserved.
				if last := h.obs.admissions[len(h.obs.admissions)-1]; last != (admission{"acme", "denied_" + tc.dim}) {
					t.Errorf("admission %+v", last)
				}
				o := h.obs.lastOutcome(t)
				if o.Result != ResultDenied || o.Decision != "denied_"+tc.dim || o.Metered || o.Dialect != dname {
					t.Errorf("outcome %+v", o)
				}
				if x.reservation != nil {
					t.Error("a denied request holds a reservation")
				}
				for name, b := range h.budgets("acme", "") {
					if tc.budget && name == "day" && b.Reserved != reserved || !tc.budget && b.Reserved != 0 || b.Spent != 0 {
						t.Errorf("after the denial budget %s: %+v, want only the %d admitted before", name, b, reserved)
					}
				}
				// A denied request ends with nothing to settle.
				x.Abort()
				if h.obs.calls("settle") != 0 {
					t.Error("a denied request was settled")
				}

				tc.reopen(h, admitted, retry)
				later := d.body
				if tc.later != nil {
					later = tc.later(d)
				}
				h.admit(hdrs, later)
			})
		}
	}
}

// newResilient is the shared store down, in front of the harness's memory
// store as its Local.
func newResilient(t *testing.T, primary limiter.Store) func(*limiter.Memory) limiter.Store {
	return func(m *limiter.Memory) limiter.Store {
		r, err := limiter.NewResilient(limiter.ResilientOptions{Primary: primary, Local: m, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		return r
	}
}

func TestFailurePolicies(t *testing.T) {
	cfg := func(storePolicy, policyOverride string) string {
		return fmt.Sprintf(`
store: {on_failure: %s}
policies:
  default:
    %s
    limits: {concurrent: 10}
    budgets: [{window: day, usd: 50}]
prices:
  gpt-4o-mini: {input: 0.15, output: 0.6, cache_read: 0.075}
tenants:
  acme: {}
`, storePolicy, policyOverride)
	}
	cases := []struct {
		name, cfg    string
		wantDecision string
		wantReply    bool
		// wantLocal: the replica's own memory store decided and holds the
		// reservation and then the spend.
		wantLocal bool
		wantQueue bool
	}{
		{name: "closed", cfg: cfg("closed", ""), wantDecision: "failed_closed", wantReply: true},
		{name: "open", cfg: cfg("open", ""), wantDecision: "failed_open", wantQueue: true},
		{name: "local", cfg: cfg("local", ""), wantDecision: "local", wantLocal: true},
		{name: "the policy's own choice beats the store's", cfg: cfg("closed", "on_failure: open"), wantDecision: "failed_open", wantQueue: true},
	}
	for _, tc := range cases {
		for _, path := range []string{pathMessages, pathChat} {
			t.Run(tc.name+path, func(t *testing.T) {
				h := newHarnessWith(t, tc.cfg, newResilient(t, unavailable{}))
				body := map[string]string{pathMessages: sonnetBody, pathChat: miniBody256}[path]
				x, _ := h.g.Begin(context.Background(), Request{Headers: post(path, tenantHeader("acme"))})
				bv := x.Body([]byte(body))

				if last := h.obs.admissions[len(h.obs.admissions)-1]; last != (admission{"acme", tc.wantDecision}) {
					t.Errorf("admission %+v, want %s", last, tc.wantDecision)
				}
				if c := h.obs.storeCalls[0]; c.op != "admit" || tc.wantReply != errors.Is(c.err, limiter.ErrUnavailable) {
					t.Errorf("store call %+v", c)
				}
				if tc.wantReply {
					r := bv.Reply
					if r == nil || r.Status != 503 || r.Details != "tokenwarden_store_error" {
						t.Fatalf("reply %+v, want a 503", r)
					}
					checkReplyFraming(t, r)
					typ, code, _ := errorType(t, r.Body)
					if path == pathMessages && typ != "api_error" || path == pathChat && (typ != "server_error" || code != "service_unavailable") {
						t.Errorf("503 body %s", r.Body)
					}
					if o := h.obs.lastOutcome(t); o.Result != ResultStoreError || o.Decision != "failed_closed" || o.Metered {
						t.Errorf("outcome %+v", o)
					}
					h.wantBudgets("acme", "", 0, 0)
					return
				}
				if bv.Reply != nil {
					t.Fatalf("refused: %s", bv.Reply.Body)
				}
				in := inputEstimate(t, path, body)
				est := map[string]int64{pathMessages: in*sonnetIn + 256*sonnetOut, pathChat: in*miniIn + 256*miniOut}[path]
				if tc.wantLocal {
					h.wantBudgets("acme", "", est, 0)
				} else {
					h.wantBudgets("acme", "", 0, 0)
				}
				x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
				x.ResponseBody([]byte(`{"usage":{"input_tokens":10,"output_tokens":20,"prompt_tokens":10,"completion_tokens":20}}`), true)
				x.Settle()
				o := h.obs.lastOutcome(t)
				if o.Result != ResultOK || o.Decision != tc.wantDecision {
					t.Errorf("outcome %+v", o)
				}
				if c := h.obs.storeCalls[len(h.obs.storeCalls)-1]; c.op != "settle" || c.err != nil {
					t.Errorf("settle call %+v", c)
				}
				// A queued settle is the store's journal's to count
				// (tokenwarden_store_journal_entries): no line per request.
				if got := h.logs.count("store unreachable; settle queued until it is back"); got != 0 {
					t.Errorf("%d queued-settle logs, want none per request", got)
				}
				spent := int64(0)
				if tc.wantLocal {
					spent = map[string]int64{pathMessages: 10*sonnetIn + 20*sonnetOut, pathChat: 10*miniIn + 20*miniOut}[path]
				}
				h.wantBudgets("acme", "", 0, spent)
			})
		}
	}
}

// Local mode still enforces the limits, on the replica's own store.
func TestFailLocalStillDenies(t *testing.T) {
	h := newHarnessWith(t, denialYAML(`{concurrent: 1}`, dayBudget)+"store: {on_failure: local}\n", newResilient(t, unavailable{}))
	h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
	_, r := h.refuse(post(pathMessages, tenantHeader("acme")), sonnetBody)
	if got, _ := header(r.Headers, contract.DeniedHeader); r.Status != 429 || got != "org/concurrency" {
		t.Errorf("reply %d %q", r.Status, got)
	}
	if o := h.obs.lastOutcome(t); o.Decision != "denied_concurrency" {
		t.Errorf("outcome %+v", o)
	}
}

// A store that refuses the admission as malformed is tokenwarden's bug, not
// an outage and not the client's fault: a 500, whatever the failure policy.
func TestStoreRejectsAdmissionAsInvalid(t *testing.T) {
	for _, path := range []string{pathMessages, pathChat} {
		h := newHarnessWith(t, denialYAML(`{concurrent: 10}`, dayBudget)+"store: {on_failure: open}\n",
			func(*limiter.Memory) limiter.Store { return invalid{} })
		x, r := h.refuse(post(path, tenantHeader("acme")), map[string]string{pathMessages: sonnetBody, pathChat: miniBody256}[path])
		if r.Status != 500 || r.Details != "tokenwarden_store_error" {
			t.Errorf("%s: reply %d %q", path, r.Status, r.Details)
		}
		checkReplyFraming(t, r)
		typ, _, msg := errorType(t, r.Body)
		if path == pathMessages && typ != "api_error" || path == pathChat && typ != "server_error" || !strings.Contains(msg, "could not be admitted") {
			t.Errorf("%s: 500 body %s", path, r.Body)
		}
		if o := h.obs.lastOutcome(t); o.Result != ResultStoreError || o.Decision != string(ResultStoreError) {
			t.Errorf("%s: outcome %+v", path, o)
		}
		if len(h.obs.admissions) != 0 || x.reservation != nil {
			t.Errorf("%s: admissions %+v", path, h.obs.admissions)
		}
		if !errors.Is(h.obs.storeCalls[0].err, limiter.ErrInvalid) || h.logs.count("the store rejected an admission as invalid") != 1 {
			t.Errorf("%s: store call %+v", path, h.obs.storeCalls)
		}
	}
}

// switchable is a shared store that can go down mid-test.
type switchable struct {
	*limiter.Memory
	down atomic.Bool
}

func (s *switchable) Admit(ctx context.Context, req limiter.AdmitRequest) (limiter.Decision, error) {
	if s.down.Load() {
		return limiter.Decision{}, errDown
	}
	return s.Memory.Admit(ctx, req)
}

func (s *switchable) Settle(ctx context.Context, req limiter.SettleRequest) (limiter.SettleResult, error) {
	if s.down.Load() {
		return limiter.SettleResult{}, errDown
	}
	return s.Memory.Settle(ctx, req)
}

// In local mode the replica decides with its own store, whose budgets start
// from zero (limiter.Resilient: "a replica's local view is not the tenant's
// spend"). That view must not replace what the shared store last said: the
// budget gauges would drop to it, and a tenant downgraded for spending 85%
// of its month would get the expensive model again for as long as the
// store is down.
func TestLocalModeKeepsTheSharedBudgetView(t *testing.T) {
	const cfg = `
store: {on_failure: local}
policies:
  default:
    limits: {concurrent: 10}
    budgets: [{window: month, usd: 1}]
    models:
      downgrade: [{when_budget_used: 0.8, window: month, from: "claude-opus-*", to: claude-sonnet-4-5}]
tenants:
  acme: {}
`
	var primary *switchable
	h := newHarnessWith(t, cfg, func(m *limiter.Memory) limiter.Store {
		primary = &switchable{Memory: m}
		local := limiter.NewMemory(limiter.MemoryOptions{Now: func() time.Time { return t0 }})
		r, err := limiter.NewResilient(limiter.ResilientOptions{Primary: primary, Local: local, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		return r
	})
	const opus = `{"model":"claude-opus-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Plan my week"}]}`
	served := func() (string, *Exchange) {
		t.Helper()
		x, bv := h.admit(post(pathMessages, tenantHeader("acme")), opus)
		m, _ := header(bv.Edits.Set, contract.ModelHeader)
		x.ResponseHeaders(jsonHeaders, false)
		x.ResponseBody([]byte(`{"type":"message","usage":{"input_tokens":10,"output_tokens":34000}}`), true)
		x.Settle()
		return m, x
	}
	if m, _ := served(); m != "claude-opus-4-5" { // $0.85005 of $1 spent on the shared store
		t.Fatalf("served %s before any spend", m)
	}
	if m, _ := served(); m != "claude-sonnet-4-5" {
		t.Fatalf("served %s at 85%% of the month", m)
	}
	shared := len(h.obs.budgets)

	primary.down.Store(true)
	for i := range 2 {
		m, x := served()
		if x.decisionTag != "local" {
			t.Fatalf("request %d: decision %q, want local", i, x.decisionTag)
		}
		if m != "claude-sonnet-4-5" {
			t.Errorf("request %d in local mode: served %s, want the downgrade to hold", i, m)
		}
	}
	if got := h.obs.budgets[shared:]; len(got) != 0 {
		t.Errorf("the local view was published as the tenant's budgets: %+v", got)
	}
}

// A budget that is merely spent says when it resets and may be retried
// then; every local answer carries the request id the dialect's SDKs read,
// and tokenwarden's limits never take the provider's header names.
func TestSpentBudgetAndRequestIDs(t *testing.T) {
	h := newHarness(t, `
policies:
  default:
    limits: {requests_per_minute: 100}
    budgets: [{window: day, usd: 0.01}]
tenants:
  acme: {}
`)
	hdrs := post(pathMessages, tenantHeader("acme"))
	// Each request reserves ~$0.004 (256 output tokens at $15/MTok): two fit.
	for range 2 {
		x, _ := h.admit(hdrs, sonnetBody)
		x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
		x.ResponseBody([]byte(`{"model":"claude-sonnet-4-5","usage":{"input_tokens":10,"output_tokens":256}}`), true)
		x.Settle()
	}
	_, r := h.refuse(hdrs, sonnetBody)
	if r.Status != 429 || !strings.Contains(string(r.Body), "the day budget is exhausted; it resets in") {
		t.Fatalf("a spent budget: %d %s", r.Status, r.Body)
	}
	if strings.Contains(string(r.Body), "more than the whole") {
		t.Error("a request that fits the next window is told it never fits")
	}
	id := headerOf(r.Headers, "request-id")
	if id == "" || !strings.Contains(string(r.Body), `"request_id":"`+id+`"`) {
		t.Errorf("Anthropic SDKs read request-id and request_id: header %q body %s", id, r.Body)
	}
	for _, hd := range r.Headers {
		if strings.HasPrefix(hd.Name, "x-ratelimit-") || strings.HasPrefix(hd.Name, "anthropic-ratelimit-") {
			t.Errorf("tokenwarden set the provider's header %s", hd.Name)
		}
	}
	if headerOf(r.Headers, "x-tokenwarden-ratelimit-limit-requests") != "100" {
		t.Errorf("tokenwarden's own limit headers: %v", r.Headers)
	}

	// OpenAI's SDKs read x-request-id; an early refusal (no body) has one too.
	_, hv := h.g.Begin(context.Background(), Request{Headers: post(pathChat, tenantHeader("acme")), EndOfStream: true})
	if hv.Reply == nil || headerOf(hv.Reply.Headers, "x-request-id") == "" {
		t.Fatalf("OpenAI refusal without x-request-id: %+v", hv.Reply)
	}
}

// TestRefusalsLogSampled: an outage that refuses every request logs one
// line per second, not one per request; the counters have every refusal.
func TestRefusalsLogSampled(t *testing.T) {
	h := newHarnessWith(t, "store: {on_failure: closed}\npolicies: {default: {limits: {concurrent: 10}}}\ntenants: {acme: {}}\n", newResilient(t, unavailable{}))
	for range 50 {
		x, _ := h.g.Begin(context.Background(), Request{Headers: post(pathMessages, tenantHeader("acme"))})
		if bv := x.Body([]byte(sonnetBody)); bv.Reply == nil || bv.Reply.Status != 503 {
			t.Fatalf("want a 503, got %+v", bv.Reply)
		}
	}
	if got := h.logs.count("admission store failed; policy fails closed"); got != 1 {
		t.Fatalf("%d log lines for 50 refusals in well under a second, want 1", got)
	}
}

// An admitted exchange keeps none of its decision's budget windows: they
// were observed during admission, and a slow stream would hold them until
// its response ends. What it reads later (its rate-limit headers) stays.
func TestAdmittedExchangeKeepsNoBudgetWindows(t *testing.T) {
	h := newHarness(t, denialYAML(`{requests_per_minute: 100, concurrent: 10}`, dayBudget))
	x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
	if d := x.decision; d.Budgets != nil || d.Expired != nil || d.Crossed != nil {
		t.Errorf("kept %d budget windows, %d expiries, %d crossings, want none", len(d.Budgets), len(d.Expired), len(d.Crossed))
	}
	if x.decision.Requests.Limit != 100 {
		t.Errorf("kept requests limit %d, want 100 (the rate-limit headers read it)", x.decision.Requests.Limit)
	}
}
