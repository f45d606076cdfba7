package observe

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

func TestBudgetGaugesAndForecast(t *testing.T) {
	start := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	now := start.Add(6 * time.Hour)
	m := NewMetrics(prometheus.NewRegistry())
	window := limiter.Window{Start: start, End: start.Add(24 * time.Hour)}

	// $4 spent in 6 hours: the $6 left last 9 more hours at that rate, before the day ends.
	org := gate.BudgetLevel{Level: "org", Name: "acme"}
	m.Budgets("acme", []gate.LevelBudget{{BudgetLevel: org, Window: "day", State: limiter.BudgetState{Name: "day", Window: window, Cap: 10e9, Spent: 4e9, Reserved: 1e9}}}, now)
	if got := scrapedBudget(m, m.budgetExhaustion, "acme", "org", "acme", "day"); got != 9*3600 {
		t.Errorf("exhaustion forecast %v s, want %v", got, 9*3600)
	}
	if got := scrapedBudget(m, m.budgetUsed, "acme", "org", "acme", "day"); got != 0.5 {
		t.Errorf("used ratio %v, want spent+reserved = 0.5", got)
	}
	if got := scrapedBudget(m, m.budgetSpent, "acme", "org", "acme", "day"); got != 4 {
		t.Errorf("spent %v USD", got)
	}
	if got := scrapedBudget(m, m.budgetCap, "acme", "org", "acme", "day"); got != 10 {
		t.Errorf("cap %v USD", got)
	}
	// $1 in 6 hours: the rest would take 54 hours, past the day's end.
	m.Budgets("acme", []gate.LevelBudget{{BudgetLevel: org, Window: "day", State: limiter.BudgetState{Name: "day", Window: window, Cap: 10e9, Spent: 1e9}}}, now)
	if got := scrapedBudget(m, m.budgetExhaustion, "acme", "org", "acme", "day"); !math.IsInf(got, 1) {
		t.Errorf("a budget that outlasts its window forecasts %v, want +Inf", got)
	}
}

// Every level has its own series; unnamed members (users, keys) share one
// per level, showing the most used member of the current window.
func TestBudgetGaugesPerLevel(t *testing.T) {
	start := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	now := start.Add(6 * time.Hour)
	day := limiter.Window{Start: start, End: start.Add(24 * time.Hour)}
	next := limiter.Window{Start: day.End, End: day.End.Add(24 * time.Hour)}
	m := NewMetrics(prometheus.NewRegistry())
	team := gate.BudgetLevel{Level: "team", Name: "acme/search"}
	user := gate.BudgetLevel{Level: "user", Name: policy.OtherLabel}
	st := func(name string, w limiter.Window, spent int64) limiter.BudgetState {
		return limiter.BudgetState{Name: name, Window: w, Cap: 10e9, Spent: spent}
	}
	publish := func(now time.Time, userSpent int64, w limiter.Window) {
		m.Budgets("acme", []gate.LevelBudget{
			{BudgetLevel: gate.BudgetLevel{Level: "org", Name: "acme"}, Window: "day", State: st("day", w, 5e9)},
			{BudgetLevel: team, Window: "day", State: st("t:search/day", w, 2e9)},
			{BudgetLevel: user, Window: "day", State: st("u:search%2Fann/day", w, userSpent)},
		}, now)
	}
	spent := func(l gate.BudgetLevel) float64 {
		return scrapedBudget(m, m.budgetSpent, "acme", l.Level, l.Name, "day")
	}
	publish(now, 6e9, day)
	if got := scrapedBudget(m, m.budgetUsed, "acme", "org", "acme", "day"); got != 0.5 {
		t.Errorf("org used %v", got)
	}
	if got := scrapedBudget(m, m.budgetUsed, "acme", "team", "acme/search", "day"); got != 0.2 {
		t.Errorf("team used %v", got)
	}
	if got := spent(user); got != 6 {
		t.Errorf("user spent %v", got)
	}
	publish(now, 1e9, day) // a less used member: the most used one stays
	if got := spent(user); got != 6 {
		t.Errorf("after a less used member, the unnamed series shows %v, want 6", got)
	}
	publish(now, 7e9, day)
	if got := spent(user); got != 7 {
		t.Errorf("a more used member: %v, want 7", got)
	}
	publish(day.End, 1e9, next) // a new window starts over
	if got := spent(user); got != 1 {
		t.Errorf("in the next window: %v, want 1", got)
	}
	publish(day.End, 9e9, day) // a late answer about the old window changes nothing
	if got := spent(user); got != 1 {
		t.Errorf("after a late answer: %v, want 1", got)
	}
	m.BudgetCrossed("acme", team, "day", 0.8)
	if got := testutil.ToFloat64(m.budgetAlerts.WithLabelValues("acme", "team", "acme/search", "day", "0.8")); got != 1 {
		t.Errorf("team alert %v", got)
	}
}

func TestOutcomeCounters(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	o := &gate.Outcome{Dialect: "anthropic", TenantLabel: "acme", Policy: "default", ModelLabel: "claude-sonnet-4-5",
		Result: gate.ResultOK, Metered: true, Source: gate.SourceMeasured, Latency: time.Second,
		Usage: accounting.Usage{InputTokens: 5, OutputTokens: 64, CacheReadTokens: 7, CacheWrite5mTokens: 3},
		Cost:  accounting.Cost{Total: 975_000}}
	m.Outcome(o)
	m.Outcome(&gate.Outcome{Dialect: "anthropic", ModelLabel: "other", Result: gate.ResultDenied})
	checks := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"requests ok", m.requests.WithLabelValues("anthropic", "claude-sonnet-4-5", "ok"), 1},
		{"requests denied", m.requests.WithLabelValues("anthropic", "other", "denied"), 1},
		{"input", m.tokens.WithLabelValues("claude-sonnet-4-5", "input", "measured"), 5},
		{"output", m.tokens.WithLabelValues("claude-sonnet-4-5", "output", "measured"), 64},
		{"cache read", m.tokens.WithLabelValues("claude-sonnet-4-5", "cache_read", "measured"), 7},
		{"cache write", m.tokens.WithLabelValues("claude-sonnet-4-5", "cache_write", "measured"), 3},
		{"prompt cache read", m.promptCache.WithLabelValues("claude-sonnet-4-5", "read"), 7},
		{"cost", m.cost.WithLabelValues("claude-sonnet-4-5"), 0.000975},
		{"spend", m.spend.WithLabelValues("acme", "claude-sonnet-4-5", "measured", "request"), 0.000975},
	}
	for _, c := range checks {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.tokens); n != 4 {
		t.Errorf("a request answered locally adds no token series: %d series", n)
	}
}

func TestStatusLabelIsBounded(t *testing.T) {
	for code, want := range map[int]string{200: "200", 529: "529", 418: "other", 0: "other", 999: "other"} {
		if got := statusLabel(code); got != want {
			t.Errorf("statusLabel(%d) = %q, want %q", code, got, want)
		}
	}
}

func TestAccessLog(t *testing.T) {
	if AccessLog(nil) != nil {
		t.Fatal("no outcome, no metadata")
	}
	local := AccessLog(&gate.Outcome{Tenant: "acme", Policy: "p", Decision: "denied_requests"})
	if len(local) != 5 || local["decision"] != "denied_requests" {
		t.Errorf("a local answer carries who, policy, models and decision: %v", local)
	}
	metered := AccessLog(&gate.Outcome{Tenant: "acme", Metered: true, Source: gate.SourceEstimated, UsageMissing: true,
		Usage: accounting.Usage{InputTokens: 3}, Cost: accounting.Cost{Total: 9000}})
	if metered["usage_source"] != "missing" || metered["cost_nano_usd"] != 9000.0 || metered["input_tokens"] != 3.0 {
		t.Errorf("metered fields: %v", metered)
	}
}

// TestUnpricedRequests: a metered request of a model without a price moves
// tokenwarden_unpriced_requests_total (present at zero from the start, with
// no model label) and is counted and costed under model="other".
func TestUnpricedRequests(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	if n, err := testutil.GatherAndCount(reg, "tokenwarden_unpriced_requests_total"); err != nil || n != 1 || testutil.ToFloat64(m.unpriced) != 0 {
		t.Fatalf("the counter is not exported at zero: %d series, %v", n, err)
	}
	unpriced := &gate.Outcome{Dialect: "openai", TenantLabel: "acme", ModelLabel: "other", Result: gate.ResultOK,
		Metered: true, Source: gate.SourceMeasured, Unpriced: true,
		Usage: accounting.Usage{InputTokens: 1000, OutputTokens: 50}, Cost: accounting.Cost{Total: 73_500_000}}
	m.Outcome(unpriced)
	m.Outcome(unpriced)
	// Priced, and answered locally: neither counts.
	m.Outcome(&gate.Outcome{Dialect: "openai", ModelLabel: "gpt-4o", Result: gate.ResultOK, Metered: true, Source: gate.SourceMeasured})
	m.Outcome(&gate.Outcome{Dialect: "openai", ModelLabel: "other", Result: gate.ResultDenied, Unpriced: true})
	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"unpriced", m.unpriced, 2},
		{"requests", m.requests.WithLabelValues("openai", "other", "ok"), 2},
		{"cost", m.cost.WithLabelValues("other"), 0.147},
		{"tokens", m.tokens.WithLabelValues("other", "input", "measured"), 2000},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestReadinessIgnoresTheStoreButNotTheDrain(t *testing.T) {
	cfg, err := policy.Parse([]byte("store: {on_failure: closed}\npolicies: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	primary := limiter.NewMemory(limiter.MemoryOptions{})
	res, err := limiter.NewResilient(limiter.ResilientOptions{Primary: primary, ProbeInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	var draining atomic.Bool
	ready := Readiness(ReadinessOptions{Draining: &draining, Config: policy.NewHolder(cfg), Store: res})
	detail, err := ready(context.Background())
	if err != nil || !strings.Contains(detail, "breaker closed") || !strings.Contains(detail, "failure policy closed") {
		t.Fatalf("ready = %q, %v", detail, err)
	}
	draining.Store(true)
	if _, err := ready(context.Background()); err == nil {
		t.Fatal("a draining replica reports ready")
	}
}

func TestStoreEventsMetrics(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	m.BreakerChanged(limiter.BreakerClosed, limiter.BreakerOpen)
	m.Degraded(limiter.FailLocal, "shed")
	m.Dropped("journal")
	m.Reconciled(limiter.OpCharge)
	m.StoreReset(time.Unix(100, 0))
	m.LiveReplicas(3)
	m.JournalDepth(7)
	m.LeaseRenewed(2, nil)
	for name, c := range map[string]struct {
		c    prometheus.Collector
		want float64
	}{
		"open":       {m.store.breaker.WithLabelValues("open"), 1},
		"closed":     {m.store.breaker.WithLabelValues("closed"), 0},
		"shed":       {m.store.degraded.WithLabelValues("local", "shed"), 1},
		"dropped":    {m.store.dropped.WithLabelValues("journal"), 1},
		"reconciled": {m.store.reconciled.WithLabelValues("charge"), 1},
		"resets":     {m.store.resets, 1},
		"last reset": {m.store.lastReset, 100},
		"live":       {m.store.liveReplicas, 3},
		"journal":    {m.store.journal, 7},
		"renewals":   {m.store.renewals.WithLabelValues("ok"), 1},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s = %v, want %v", name, got, c.want)
		}
	}
}

// The lease series read the store's counters at the scrape, zero until
// serve wires them.
func TestLeaseSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	want := func(open, taken, served, over float64) {
		t.Helper()
		exp := fmt.Sprintf(`
# HELP tokenwarden_leases_open Leases this replica holds that are not yet settled in the store (policies with leases:).
# TYPE tokenwarden_leases_open gauge
tokenwarden_leases_open %g
# HELP tokenwarden_leases_taken_total Leases the store granted to this replica; each costs one admit and one settle in the store.
# TYPE tokenwarden_leases_taken_total counter
tokenwarden_leases_taken_total %g
# HELP tokenwarden_leased_requests_total Requests admitted from a lease without a store call; served ÷ taken is how many requests a lease stood for.
# TYPE tokenwarden_leased_requests_total counter
tokenwarden_leased_requests_total %g
# HELP tokenwarden_leased_overflows_total Requests of a leased policy admitted exactly because this replica held as many caller chains as it allows.
# TYPE tokenwarden_leased_overflows_total counter
tokenwarden_leased_overflows_total %g
`, open, taken, served, over)
		if err := testutil.GatherAndCompare(reg, strings.NewReader(exp), "tokenwarden_leases_open", "tokenwarden_leases_taken_total",
			"tokenwarden_leased_requests_total", "tokenwarden_leased_overflows_total"); err != nil {
			t.Error(err)
		}
	}
	want(0, 0, 0, 0)
	m.WatchLeases(func() limiter.LeasedStats { return limiter.LeasedStats{Open: 3, Taken: 7, Served: 90, Overflowed: 2} })
	want(3, 7, 90, 2)
}

// scrapedBudget is one budget gauge's value as a scrape would see it.
func scrapedBudget(m *Metrics, vec *prometheus.GaugeVec, labels ...string) float64 {
	m.budgetGauges.publish()
	return testutil.ToFloat64(vec.WithLabelValues(labels...))
}

// A scrape publishes what was observed since the last one, and budget lists
// that share their first and last series but differ in between keep their
// own series.
func TestBudgetGaugesPublishOnScrape(t *testing.T) {
	start := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	window := limiter.Window{Start: start, End: start.Add(24 * time.Hour)}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	lb := func(level, name string, spent int64) gate.LevelBudget {
		return gate.LevelBudget{BudgetLevel: gate.BudgetLevel{Level: level, Name: name}, Window: "day",
			State: limiter.BudgetState{Name: name, Window: window, Cap: 10e9, Spent: spent}}
	}
	scrape := func(level, name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "tokenwarden_budget_spent_usd" {
				continue
			}
			for _, mt := range mf.GetMetric() {
				got := map[string]string{}
				for _, l := range mt.GetLabel() {
					got[l.GetName()] = l.GetValue()
				}
				if got["level"] == level && got["name"] == name {
					return mt.GetGauge().GetValue()
				}
			}
		}
		return -1
	}
	m.Budgets("acme", []gate.LevelBudget{lb("org", "acme", 1e9), lb("team", "acme/a", 2e9), lb("key", "k", 3e9)}, start)
	m.Budgets("acme", []gate.LevelBudget{lb("org", "acme", 4e9), lb("team", "acme/b", 5e9), lb("key", "k", 6e9)}, start)
	for _, c := range []struct {
		level, name string
		want        float64
	}{{"org", "acme", 4}, {"team", "acme/a", 2}, {"team", "acme/b", 5}, {"key", "k", 6}} {
		if got := scrape(c.level, c.name); got != c.want {
			t.Errorf("%s %s: scraped %v USD spent, want %v", c.level, c.name, got, c.want)
		}
	}
	m.Budgets("acme", []gate.LevelBudget{lb("org", "acme", 7e9), lb("team", "acme/a", 8e9), lb("key", "k", 9e9)}, start)
	if got := scrape("team", "acme/a"); got != 8 {
		t.Errorf("after a new observation: scraped %v, want 8", got)
	}
}
