package gate

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// respond answers x with messageJSON, leaving it done but unsettled.
func respond(t *testing.T, x *Exchange) {
	t.Helper()
	x.ResponseHeaders(jsonHeaders, false)
	if !x.ResponseBody([]byte(messageJSON), true).Done {
		t.Fatal("not done")
	}
}

// messageCost is messageJSON's usage at claude-sonnet-4-5's prices.
var messageCost = sonnetCost(accounting.Usage{InputTokens: 25, OutputTokens: 150, CacheReadTokens: 1000, CacheWrite5mTokens: 200})

func TestSettleExactlyOnce(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, x *Exchange)
		// wantSpent is what the store shows spent in the end; wantSettles
		// how many settles reached it.
		wantSpent   func(estimate int64) int64
		wantSettles int
	}{
		{
			name:      "Settle twice",
			run:       func(t *testing.T, x *Exchange) { respond(t, x); x.Settle(); x.Settle() },
			wantSpent: func(int64) int64 { return messageCost }, wantSettles: 1,
		},
		{
			name:      "Abort after Settle",
			run:       func(t *testing.T, x *Exchange) { respond(t, x); x.Settle(); x.Abort() },
			wantSpent: func(int64) int64 { return messageCost }, wantSettles: 1,
		},
		{
			name:      "Abort after the end settles what Settle has not",
			run:       func(t *testing.T, x *Exchange) { respond(t, x); x.Abort(); x.Settle() },
			wantSpent: func(int64) int64 { return messageCost }, wantSettles: 1,
		},
		{
			name: "Abort twice mid-stream",
			run: func(t *testing.T, x *Exchange) {
				x.ResponseHeaders(sseHeaders, false)
				x.ResponseBody([]byte(sseStart), false)
				x.Abort()
				x.Abort()
				x.Settle()
			},
			wantSpent:   func(int64) int64 { return sonnetCost(accounting.Usage{InputTokens: 25, OutputTokens: 8}) },
			wantSettles: 1,
		},
		{
			name: "Settle before the end does nothing",
			run: func(t *testing.T, x *Exchange) {
				x.ResponseHeaders(sseHeaders, false)
				x.Settle()
				x.ResponseBody([]byte(sseStart+sseDelta+sseStop), true)
				x.Settle()
			},
			wantSpent:   func(int64) int64 { return sonnetCost(accounting.Usage{InputTokens: 25, OutputTokens: 12}) },
			wantSettles: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, baseYAML)
			x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
			est := sonnetCost(accounting.Usage{InputTokens: inputEstimate(t, pathMessages, sonnetBody), OutputTokens: 256})
			tc.run(t, x)
			if got := h.obs.calls("settle"); got != tc.wantSettles {
				t.Errorf("%d settles, want %d", got, tc.wantSettles)
			}
			// One outcome per request, however many times it is ended.
			if len(h.obs.outcomes) != 1 {
				t.Errorf("%d outcomes: %+v", len(h.obs.outcomes), h.obs.outcomes)
			}
			h.wantBudgets("acme", "", 0, tc.wantSpent(est))
		})
	}
}

// A stream that ends after its headers, before any body, has nothing to
// settle and no outcome to report: nothing was admitted.
func TestAbortBeforeBody(t *testing.T) {
	h := newHarness(t, baseYAML)
	x, _ := h.g.Begin(context.Background(), Request{Headers: post(pathMessages, tenantHeader("acme"))})
	x.Abort()
	x.Abort()
	x.Settle()
	if x.Outcome() != nil || len(h.obs.outcomes)+len(h.obs.storeCalls) != 0 {
		t.Errorf("outcome %+v, observed %+v %+v", x.Outcome(), h.obs.outcomes, h.obs.storeCalls)
	}
	var nilExchange *Exchange
	nilExchange.Abort() // an adapter that failed before Begin
	nilExchange.Settle()
}

// A settle the store refuses is reported and not retried: the reservation
// stays charged at its estimate until it expires in the store.
func TestSettleFails(t *testing.T) {
	h := newHarnessWith(t, baseYAML, func(m *limiter.Memory) limiter.Store { return settleFails{m} })
	x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
	respond(t, x)
	x.Settle()
	x.Abort()
	var settles []storeCall
	for _, c := range h.obs.storeCalls {
		if c.op == "settle" {
			settles = append(settles, c)
		}
	}
	if len(settles) != 1 || !errors.Is(settles[0].err, errSettle) {
		t.Errorf("settle calls %+v, want one failing", settles)
	}
	if h.logs.count("settle failed; the reservation stays charged at its estimate until it expires") != 1 {
		t.Error("the failed settle was not logged")
	}
	est := sonnetCost(accounting.Usage{InputTokens: inputEstimate(t, pathMessages, sonnetBody), OutputTokens: 256})
	h.wantBudgets("acme", "", est, 0)
}

// Envoy cancels the stream right after the last answer; the settle that
// follows runs on a context of its own.
func TestSettleOutlivesTheStream(t *testing.T) {
	h := newHarnessWith(t, baseYAML, func(m *limiter.Memory) limiter.Store { return ctxBound{m} })
	ctx, cancel := context.WithCancel(context.Background())
	x, _ := h.g.Begin(ctx, Request{Headers: post(pathMessages, tenantHeader("acme"))})
	if bv := x.Body([]byte(sonnetBody)); bv.Reply != nil {
		t.Fatalf("refused: %s", bv.Reply.Body)
	}
	respond(t, x)
	cancel()
	x.Settle()
	if c := h.obs.storeCalls[len(h.obs.storeCalls)-1]; c.op != "settle" || c.err != nil {
		t.Fatalf("settle call %+v", c)
	}
	h.wantBudgets("acme", "", 0, messageCost)
}

// The store's view of the budgets reaches the observer for configured
// tenants only (others would share one meaningless series).
func TestBudgetObservations(t *testing.T) {
	h := newHarness(t, baseYAML)
	est := sonnetCost(accounting.Usage{InputTokens: inputEstimate(t, pathMessages, sonnetBody), OutputTokens: 256})
	x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
	h.clock.Advance(time.Second)
	respond(t, x)
	x.Settle()

	if len(h.obs.budgets) != 2 {
		t.Fatalf("budget observations %+v, want one per store answer", h.obs.budgets)
	}
	for i, want := range []struct {
		reserved, spent int64
		now             time.Time
	}{{est, 0, t0}, {0, messageCost, t0.Add(time.Second)}} {
		b := h.obs.budgets[i]
		if b.tenant != "acme" || !b.now.Equal(want.now) || len(b.states) != 2 {
			t.Errorf("observation %d: %+v", i, b)
			continue
		}
		caps := map[string]int64{"day": 50e9, "month": 1000e9}
		for _, s := range b.states {
			if s.Reserved != want.reserved || s.Spent != want.spent || s.Cap != caps[s.Name] {
				t.Errorf("observation %d: window %+v, want reserved %d spent %d cap %d", i, s, want.reserved, want.spent, caps[s.Name])
			}
		}
	}

	x, _ = h.admit(post(pathMessages, tenantHeader("zeta")), sonnetBody)
	respond(t, x)
	x.Settle()
	if len(h.obs.budgets) != 2 {
		t.Errorf("an unconfigured tenant's budgets were published: %+v", h.obs.budgets[2:])
	}
	if got := h.g.budgets.ratio("zeta", "", accounting.Day, h.clock.Now()); got != 0 {
		t.Errorf("no policy downgrades by budget use, yet the cache remembered zeta's day use as %v", got)
	}
}

// With a downgrade rule configured, the cache learns every tenant's use
// from the answers, configured or not.
func TestDowngradeCacheLearnsEveryTenant(t *testing.T) {
	const cfg = `
policies:
  default:
    budgets: [{window: day, usd: 50}]
    models:
      downgrade: [{when_budget_used: 0.8, window: day, from: "claude-opus-*", to: claude-sonnet-4-5}]
tenants:
  acme: {}
`
	h := newHarness(t, cfg)
	x, _ := h.admit(post(pathMessages, tenantHeader("zeta")), sonnetBody)
	respond(t, x)
	x.Settle()
	if got, want := h.g.budgets.ratio("zeta", "", accounting.Day, h.clock.Now()), float64(messageCost)/50e9; got != want {
		t.Errorf("zeta's day use in the downgrade cache = %v, want %v", got, want)
	}
}

// Alert thresholds are reported once per window, across all requests.
func TestBudgetCrossings(t *testing.T) {
	const cfg = `
policies:
  default:
    limits: {concurrent: 10}
    budgets: [{window: day, usd: 0.02, alert_at: [0.25]}]
tenants:
  acme: {}
`
	h := newHarness(t, cfg)
	spend := func(outputTokens int) {
		t.Helper()
		x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		x.ResponseHeaders(jsonHeaders, false)
		x.ResponseBody(fmt.Appendf(nil, `{"type":"message","usage":{"input_tokens":10,"output_tokens":%d}}`, outputTokens), true)
		x.Settle()
	}
	spend(400) // $0.00603 of $0.02: past 25%
	if want := []crossing{{"acme", orgLevel("acme"), "day", 0.25}}; !reflect.DeepEqual(h.obs.crossed, want) {
		t.Fatalf("crossings %+v, want %+v", h.obs.crossed, want)
	}
	spend(400) // $0.01206: no new threshold
	if len(h.obs.crossed) != 1 {
		t.Fatalf("crossings %+v, want still one", h.obs.crossed)
	}
	// A new day is a new window: 25% is crossed again, and a settle above
	// the estimate may cross the cap itself in the same stroke.
	h.clock.Advance(12 * time.Hour)
	spend(1400) // $0.02103
	want := []crossing{{"acme", orgLevel("acme"), "day", 0.25}, {"acme", orgLevel("acme"), "day", 0.25}, {"acme", orgLevel("acme"), "day", 1}}
	if !reflect.DeepEqual(h.obs.crossed, want) {
		t.Fatalf("crossings %+v, want %+v", h.obs.crossed, want)
	}
}

// An expired reservation charged by the sweep of an admission may cross a
// threshold too; the admission reports it.
func TestBudgetCrossedByAnExpiry(t *testing.T) {
	const cfg = `
policies:
  default:
    limits: {concurrent: 10, lease_ttl: 1m}
    budgets: [{window: day, usd: 0.02, alert_at: [0.1]}]
tenants:
  acme: {}
`
	h := newHarness(t, cfg)
	h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody) // ~$0.0039 reserved, never settled
	h.clock.Advance(2 * time.Minute)
	h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
	if want := []crossing{{"acme", orgLevel("acme"), "day", 0.1}}; !reflect.DeepEqual(h.obs.crossed, want) || len(h.obs.expired) != 1 {
		t.Fatalf("crossings %+v (want %+v), expired %+v", h.obs.crossed, want, h.obs.expired)
	}
}

// A reservation never settled (its replica died) is charged at its estimate
// once its lease passes, by the next call of its tenant, and reported once;
// a late settle of it changes nothing.
func TestExpiredReservations(t *testing.T) {
	const cfg = `
policies:
  default:
    limits: {concurrent: 10, lease_ttl: 1m}
    budgets: [{window: day, usd: 50}]
tenants:
  acme: {}
`
	est := func(t *testing.T) int64 {
		return sonnetCost(accounting.Usage{InputTokens: inputEstimate(t, pathMessages, sonnetBody), OutputTokens: 256})
	}
	t.Run("swept by an admission", func(t *testing.T) {
		h := newHarness(t, cfg)
		e := est(t)
		lost, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		h.clock.Advance(59 * time.Second)
		h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		if len(h.obs.expired) != 0 {
			t.Fatalf("expired before its lease: %+v", h.obs.expired)
		}
		h.clock.Advance(2 * time.Second)
		next, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		if want := []expiredSeen{{"acme", "claude-sonnet-4-5", accounting.NanoUSD(e)}}; !reflect.DeepEqual(h.obs.expired, want) {
			t.Fatalf("expired %+v, want %+v", h.obs.expired, want)
		}
		h.wantBudgets("acme", "", 2*e, e)

		// The lost request's own settle arrives too late: no second charge.
		respond(t, lost)
		lost.Settle()
		h.wantBudgets("acme", "", 2*e, e)
		respond(t, next)
		next.Settle()
		h.wantBudgets("acme", "", e, e+messageCost)
		if len(h.obs.expired) != 1 {
			t.Errorf("reported again: %+v", h.obs.expired)
		}
	})
	t.Run("swept by a settle", func(t *testing.T) {
		h := newHarness(t, cfg)
		e := est(t)
		h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		h.clock.Advance(30 * time.Second)
		x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		h.clock.Advance(40 * time.Second)
		respond(t, x)
		x.Settle()
		if want := []expiredSeen{{"acme", "claude-sonnet-4-5", accounting.NanoUSD(e)}}; !reflect.DeepEqual(h.obs.expired, want) {
			t.Fatalf("expired %+v, want %+v", h.obs.expired, want)
		}
		h.wantBudgets("acme", "", 0, e+messageCost)
	})
}

// modelless is the memory store reporting, on each admission, an expired
// reservation whose record lacks its model, as a record written before the
// model was kept would.
type modelless struct{ *limiter.Memory }

func (s modelless) Admit(ctx context.Context, req limiter.AdmitRequest) (limiter.Decision, error) {
	d, err := s.Memory.Admit(ctx, req)
	d.Expired = append(d.Expired, limiter.Expired{Tenant: req.Tenant, RequestID: "gone-1", Cost: 42})
	return d, err
}

// An expired reservation without a model is reported under "other", so the
// metric's model label stays bounded.
func TestExpiredWithoutModel(t *testing.T) {
	h := newHarnessWith(t, baseYAML, func(m *limiter.Memory) limiter.Store { return modelless{m} })
	h.admit(post(pathMessages, tenantHeader("zeta")), sonnetBody)
	if want := []expiredSeen{{"other", "other", 42}}; !reflect.DeepEqual(h.obs.expired, want) {
		t.Errorf("expired %+v, want %+v", h.obs.expired, want)
	}
}

func TestPrefixChanges(t *testing.T) {
	h := newHarness(t, baseYAML)
	const tool = `{"name":"get_weather","description":"Get the current weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}}}}`
	body := func(system, tools string) string {
		b := `{"model":"claude-sonnet-4-5","max_tokens":256,`
		if system != "" {
			b += `"system":"` + system + `",`
		}
		if tools != "" {
			b += `"tools":[` + tools + `],`
		}
		return b + `"messages":[{"role":"user","content":"What is the weather in Paris?"}]}`
	}
	steps := []struct {
		tenant, system, tools string
		wantChanges           int // changes observed so far
	}{
		{"acme", "You are terse.", "", 0}, // the first request of a tenant sets the prefix
		{"acme", "You are terse.", "", 0},
		{"acme", "You are terse. It is 2026-03-10T12:00:01Z.", "", 1}, // a leaked timestamp
		{"acme", "You are terse. It is 2026-03-10T12:00:01Z.", tool, 2},
		{"zeta", "You are terse.", "", 2}, // another tenant starts its own
		{"acme", "", "", 2},               // no prefix at all: nothing to compare
		{"acme", "You are terse. It is 2026-03-10T12:00:01Z.", tool, 2},
		{"beta", "Other.", "", 2}, // another policy
		{"acme", "You are terse.", tool, 3},
	}
	for i, s := range steps {
		x, _ := h.admit(post(pathMessages, tenantHeader(s.tenant)), body(s.system, s.tools))
		respond(t, x)
		x.Settle()
		if len(h.obs.prefixes) != s.wantChanges {
			t.Fatalf("step %d: %d prefix changes, want %d", i, len(h.obs.prefixes), s.wantChanges)
		}
	}
	for _, p := range h.obs.prefixes {
		if p != "default" {
			t.Errorf("prefix change of policy %q", p)
		}
	}
}

// A request keeps the configuration it started with to its end; the next
// one sees a reload.
func TestConfigLoadedOncePerRequest(t *testing.T) {
	h := newHarness(t, baseYAML)
	reloaded, err := policy.Parse([]byte(strings.Replace(baseYAML, "aliases: {fast: claude-haiku-4-5}", "aliases: {fast: claude-opus-4-5}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Replace(sonnetBody, "claude-sonnet-4-5", "fast", 1)
	x, _ := h.g.Begin(context.Background(), Request{Headers: post(pathMessages)})
	h.g.opts.Config.Store(reloaded)
	if bv := x.Body([]byte(body)); !strings.Contains(string(bv.Body), "claude-haiku-4-5") {
		t.Errorf("a reload changed a request in flight: %s", bv.Body)
	}
	if _, bv := h.admit(post(pathMessages), body); !strings.Contains(string(bv.Body), "claude-opus-4-5") {
		t.Errorf("the next request missed the reload: %s", bv.Body)
	}
}

func TestNew(t *testing.T) {
	cfg, err := policy.Parse([]byte(baseYAML))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{{}, {Config: policy.NewHolder(cfg)}, {Store: limiter.NewMemory(limiter.MemoryOptions{})}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) without Config or Store succeeded", o)
		}
	}
	// Without Observer, Logger or clock: a whole request on the defaults.
	g, err := New(Options{Config: policy.NewHolder(cfg), Store: limiter.NewMemory(limiter.MemoryOptions{})})
	if err != nil {
		t.Fatal(err)
	}
	x, _ := g.Begin(context.Background(), Request{Headers: post(pathMessages, tenantHeader("acme"))})
	if bv := x.Body([]byte(sonnetBody)); bv.Reply != nil {
		t.Fatalf("refused: %s", bv.Reply.Body)
	}
	respond(t, x)
	x.Settle()
	if o := x.Outcome(); o == nil || o.Result != ResultOK || o.Cost.Total != accounting.NanoUSD(messageCost) {
		t.Errorf("outcome %+v", o)
	}
	// Request ids are unique within a process: settle idempotency keys on them.
	if a, b := g.nextRequestID(), g.nextRequestID(); a == b || !strings.HasPrefix(a, g.idPrefix+"-") {
		t.Errorf("request ids %q, %q", a, b)
	}
}
