package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// The gate's tests drive a real Gate over a real limiter.Memory, both on one
// fake clock, so every limit, window and lease is deterministic: nothing
// sleeps and nothing reaches a network.

// t0 is mid-day and mid-month, so the day window ends 12h later and the
// month window on April 1st.
var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func newClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock and fires the timers that are then due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	keep := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			keep = append(keep, t)
			continue
		}
		t.c <- c.now
	}
	c.timers = keep
	c.mu.Unlock()
}

// Timer is a gate Options.Timer on the fake clock.
func (c *fakeClock) Timer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		t.c <- c.now
		return Timer{C: t.c, Stop: func() bool { return false }}
	}
	c.timers = append(c.timers, t)
	return Timer{C: t.c, Stop: func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.Index(c.timers, t)
		if i < 0 {
			return false
		}
		c.timers = slices.Delete(c.timers, i, i+1)
		return true
	}}
}

// pending is the number of timers not yet fired or stopped.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Published per-token prices in nano-USD, written out here rather than taken
// from accounting so that a wrong price table fails the tests
// (https://docs.anthropic.com/en/docs/about-claude/pricing; $1/MTok is 1000
// nano-USD per token).
const (
	sonnetIn, sonnetOut, sonnetWrite5m, sonnetRead = 3000, 15000, 3750, 300 // claude-sonnet-4-5: $3 / $15, 5m write $3.75, read $0.30
	opusIn, opusOut                                = 5000, 25000            // claude-opus-4-5: $5 / $25
	haikuIn, haikuOut                              = 1000, 5000             // claude-haiku-4-5: $1 / $5
	// gpt-4o-mini is priced in the test config below from
	// https://openai.com/api/pricing: $0.15 in, $0.60 out, $0.075 cached.
	miniIn, miniOut, miniRead = 150, 600, 75
)

// baseYAML is the configuration most tests run with. tokens_per_minute is
// 6,000,000 so that a request of T tokens leaves exactly 6,000,000-T in
// x-ratelimit-remaining-tokens (the GCRA increment, T×60s/limit, is then a
// whole number of microseconds).
const baseYAML = `
identity:
  from:
    - header: x-tenant-id
      trusted: true
    - api_key_of: x-api-key
    - api_key_of: authorization
  unknown: default:guest
  unconfigured: own
policies:
  default:
    limits: {requests_per_minute: 1000, tokens_per_minute: 6000000, concurrent: 100}
    budgets:
      - {window: day, usd: 50}
      - {window: month, usd: 1000}
    models:
      allow: ["claude-*", "gpt-*"]
      aliases: {fast: claude-haiku-4-5}
  batch:
    limits: {concurrent: 5}
  free: {}
prices:
  gpt-4o-mini: {input: 0.15, output: 0.6, cache_read: 0.075}
tenants:
  acme: {}
  beta: {policy: batch}
`

// testIdentity is prepended to a test's configuration that states no
// identity: the test plays the mesh, which sets x-tenant-id.
const testIdentity = `
identity:
  from:
    - header: x-tenant-id
      trusted: true
    - api_key_of: x-api-key
  unknown: default:guest
  unconfigured: own
`

// recorder is an Observer that keeps everything it is told.
type recorder struct {
	mu         sync.Mutex
	outcomes   []Outcome
	admissions []admission
	storeCalls []storeCall
	providers  []providerResponse
	rewrites   []rewrite
	prefixes   []string
	budgets    []budgetsSeen
	crossed    []crossing
	expired    []expiredSeen
	batches    []batchSeen
	unknown    []string
	estimates  []estimateSeen
	factors    []factorSeen
	waits      []string // results of queue waits
	overflows  []string // lane/reason
}

func (r *recorder) QueueWait(lane, result string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits = append(r.waits, result)
}

func (r *recorder) QueueOverflow(lane, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.overflows = append(r.overflows, lane+"/"+reason)
}

func (r *recorder) ProviderHeaders(string, string, time.Duration) {}

type estimateSeen struct {
	model               string
	estimated, measured int64
}

type factorSeen struct {
	model  string
	factor float64
}

type admission struct{ tenant, result string }

type storeCall struct {
	op  string
	err error
}

type providerResponse struct {
	dialect string
	status  int
}

type rewrite struct{ policy, reason string }

type budgetsSeen struct {
	tenant string
	states []limiter.BudgetState
	levels []LevelBudget // the states with their level labels
	now    time.Time
}

type crossing struct {
	tenant    string
	level     BudgetLevel
	window    string
	threshold float64
}

// orgLevel is the level of a configured org (or flat tenant) itself.
func orgLevel(name string) BudgetLevel { return BudgetLevel{Level: "org", Name: name} }

type expiredSeen struct {
	tenant, model string
	cost          accounting.NanoUSD
}

func (r *recorder) Outcome(o *Outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes = append(r.outcomes, *o)
}

func (r *recorder) Admission(tenant, result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.admissions = append(r.admissions, admission{tenant, result})
}

func (r *recorder) StoreCall(op string, _ time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.storeCalls = append(r.storeCalls, storeCall{op, err})
}

func (r *recorder) ProviderResponse(d string, status int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.providers = append(r.providers, providerResponse{d, status})
}

func (r *recorder) ModelRewrite(p, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rewrites = append(r.rewrites, rewrite{p, reason})
}

func (r *recorder) PrefixChange(p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prefixes = append(r.prefixes, p)
}

func (r *recorder) Budgets(tenant string, budgets []LevelBudget, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := budgetsSeen{tenant: tenant, levels: slices.Clone(budgets), now: now}
	for _, b := range budgets {
		seen.states = append(seen.states, b.State)
	}
	r.budgets = append(r.budgets, seen)
}

func (r *recorder) BudgetCrossed(tenant string, level BudgetLevel, window string, threshold float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.crossed = append(r.crossed, crossing{tenant, level, window, threshold})
}

func (r *recorder) BatchReserved(tenant, dialect string, cost accounting.NanoUSD) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, batchSeen{tenant, dialect, "reserved", cost})
}

func (r *recorder) BatchExpired(tenant, _, dialect string, cost accounting.NanoUSD) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, batchSeen{tenant, dialect, "expired", cost})
}

type batchSeen struct {
	tenant, dialect, stage string
	cost                   accounting.NanoUSD
}

func (r *recorder) ExpiredCharged(tenant, model string, cost accounting.NanoUSD) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expired = append(r.expired, expiredSeen{tenant, model, cost})
}

func (r *recorder) InputEstimate(model string, estimated, measured int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.estimates = append(r.estimates, estimateSeen{model, estimated, measured})
}

func (r *recorder) EstimatorFactor(model string, factor float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.factors = append(r.factors, factorSeen{model, factor})
}

func (r *recorder) Unconfigured(kind string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unknown = append(r.unknown, kind)
}

// calls counts the store calls of one operation.
func (r *recorder) calls(op string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.storeCalls {
		if c.op == op {
			n++
		}
	}
	return n
}

func (r *recorder) lastOutcome(t *testing.T) Outcome {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.outcomes) == 0 {
		t.Fatal("no outcome recorded")
	}
	return r.outcomes[len(r.outcomes)-1]
}

// logRecorder is a slog.Handler that keeps every record's message.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}

func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

type harness struct {
	t     *testing.T
	cfg   *policy.Config
	clock *fakeClock
	mem   *limiter.Memory // the memory store (for a Resilient, its Local)
	obs   *recorder
	logs  *logRecorder
	g     *Gate
}

// newHarness builds a Gate on cfgYAML over a memory store on the fake clock.
func newHarness(t *testing.T, cfgYAML string) *harness {
	return newHarnessWith(t, cfgYAML, func(m *limiter.Memory) limiter.Store { return m })
}

// newHarnessWith lets a test put its own store in front of the memory store.
func newHarnessWith(t *testing.T, cfgYAML string, store func(*limiter.Memory) limiter.Store) *harness {
	t.Helper()
	if !strings.Contains(cfgYAML, "identity:") {
		cfgYAML = testIdentity + cfgYAML
	}
	cfg, err := policy.Parse([]byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, cfg: cfg, clock: newClock(), obs: &recorder{}, logs: &logRecorder{}}
	h.mem = limiter.NewMemory(limiter.MemoryOptions{Now: h.clock.Now})
	h.g, err = New(Options{
		Config:   policy.NewHolder(cfg),
		Store:    store(h.mem),
		Pacer:    limiter.NewPaceMemory(h.clock.Now),
		Observer: h.obs,
		Logger:   slog.New(h.logs),
		Now:      h.clock.Now,
		Timer:    h.clock.Timer,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

const (
	pathMessages = "/v1/messages"
	pathChat     = "/v1/chat/completions"
)

// post is the request headers of a POST to path, as Envoy reports them.
func post(path string, extra ...Header) HeaderList {
	return append(HeaderList{{":method", "POST"}, {":path", path}, {"content-type", "application/json"}}, extra...)
}

func tenantHeader(tenant string) Header { return Header{"x-tenant-id", tenant} }

// A minimal Messages API request (https://docs.anthropic.com/en/api/messages).
const sonnetBody = `{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Hello, Claude"}]}`

// A minimal Chat Completions request (https://platform.openai.com/docs/api-reference/chat/create).
const miniBody = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}`

// admit runs Begin and Body and fails the test unless the request is
// forwarded.
func (h *harness) admit(hdrs HeaderList, body string) (*Exchange, BodyVerdict) {
	h.t.Helper()
	x, hv := h.g.Begin(context.Background(), Request{Headers: hdrs})
	if hv.PassThrough || hv.Reply != nil {
		h.t.Fatalf("Begin: %+v", hv)
	}
	bv := x.Body([]byte(body))
	if bv.Reply != nil {
		h.t.Fatalf("Body refused: %d %s", bv.Reply.Status, bv.Reply.Body)
	}
	return x, bv
}

// refuse runs Begin and Body and fails the test unless Body replies.
func (h *harness) refuse(hdrs HeaderList, body string) (*Exchange, *Reply) {
	h.t.Helper()
	x, hv := h.g.Begin(context.Background(), Request{Headers: hdrs})
	if hv.PassThrough || hv.Reply != nil {
		h.t.Fatalf("Begin: %+v", hv)
	}
	bv := x.Body([]byte(body))
	if bv.Reply == nil {
		h.t.Fatalf("Body forwarded a request that must be refused")
	}
	return x, bv.Reply
}

// budgets is the store's view of a tenant's budgets under a policy.
func (h *harness) budgets(tenant, pol string) map[string]limiter.BudgetState {
	h.t.Helper()
	p, _ := h.cfg.Policy(tenant, pol)
	states, err := h.mem.Budgets(context.Background(), tenant, p.LimiterBudgets(h.clock.Now()))
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]limiter.BudgetState{}
	for _, s := range states {
		out[s.Name] = s
	}
	return out
}

// wantBudgets checks reserved and spent of every window of a tenant.
func (h *harness) wantBudgets(tenant, pol string, reserved, spent int64) {
	h.t.Helper()
	bs := h.budgets(tenant, pol)
	if len(bs) == 0 {
		h.t.Fatalf("tenant %q has no budgets under policy %q", tenant, pol)
	}
	for name, b := range bs {
		if b.Reserved != reserved || b.Spent != spent {
			h.t.Errorf("tenant %q budget %s: reserved %d spent %d, want reserved %d spent %d", tenant, name, b.Reserved, b.Spent, reserved, spent)
		}
	}
}

// inputEstimate is the dialect's own input estimate of body, which the gate
// is expected to reserve as is.
func inputEstimate(t *testing.T, path, body string) int64 {
	t.Helper()
	req, err := dialect.ForPath(path).Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return req.InputTokens
}

// header returns the value of the last header named name (sets overwrite).
func header(hs []Header, name string) (string, bool) {
	v, ok := "", false
	for _, h := range hs {
		if h.Name == name {
			v, ok = h.Value, true
		}
	}
	return v, ok
}

// errorType reads the error type of a reply body in either dialect's shape:
// Anthropic {"type":"error","error":{"type":..}}, OpenAI {"error":{"type":..,"code":..}}.
func errorType(t *testing.T, body []byte) (typ, code, message string) {
	t.Helper()
	var e struct {
		Error struct {
			Type    string  `json:"type"`
			Code    *string `json:"code"`
			Message string  `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("reply body %q is not JSON: %v", body, err)
	}
	if e.Error.Code != nil {
		code = *e.Error.Code
	}
	return e.Error.Type, code, e.Error.Message
}

// checkReplyFraming checks that a local reply says it is JSON and how long
// it is, as Envoy needs for an ImmediateResponse body.
func checkReplyFraming(t *testing.T, r *Reply) {
	t.Helper()
	if ct, _ := header(r.Headers, "content-type"); ct != "application/json" {
		t.Errorf("reply content-type = %q", ct)
	}
	if cl, _ := header(r.Headers, "content-length"); cl != fmt.Sprint(len(r.Body)) {
		t.Errorf("reply content-length = %q, body is %d bytes", cl, len(r.Body))
	}
}

// unavailable is a limiter.Store that is down: every call fails with an
// error wrapping limiter.ErrUnavailable, as a Redis timeout does.
type unavailable struct{}

var errDown = fmt.Errorf("%w: dial tcp 127.0.0.1:6379: connection refused", limiter.ErrUnavailable)

func (unavailable) Admit(context.Context, limiter.AdmitRequest) (limiter.Decision, error) {
	return limiter.Decision{}, errDown
}
func (unavailable) Settle(context.Context, limiter.SettleRequest) (limiter.SettleResult, error) {
	return limiter.SettleResult{}, errDown
}
func (unavailable) Budgets(context.Context, string, []limiter.Budget) ([]limiter.BudgetState, error) {
	return nil, errDown
}
func (unavailable) Ping(context.Context) error { return errDown }
func (unavailable) Close() error               { return nil }

// invalid is a limiter.Store that refuses every admission as malformed.
type invalid struct{ unavailable }

func (invalid) Admit(context.Context, limiter.AdmitRequest) (limiter.Decision, error) {
	return limiter.Decision{}, fmt.Errorf("%w: cost -1 outside [0, 1000000000000000]", limiter.ErrInvalid)
}

// settleFails is the memory store with a Settle that fails.
type settleFails struct{ *limiter.Memory }

var errSettle = errors.New("settle: connection reset by peer")

func (settleFails) Settle(context.Context, limiter.SettleRequest) (limiter.SettleResult, error) {
	return limiter.SettleResult{}, errSettle
}

// ctxBound is the memory store with a Settle that honours its context, as
// the Redis client does.
type ctxBound struct{ *limiter.Memory }

func (s ctxBound) Settle(ctx context.Context, req limiter.SettleRequest) (limiter.SettleResult, error) {
	if err := ctx.Err(); err != nil {
		return limiter.SettleResult{}, err
	}
	return s.Memory.Settle(ctx, req)
}
