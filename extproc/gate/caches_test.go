package gate

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

func TestBudgetUseRatio(t *testing.T) {
	c := newBudgetCache()
	end := t0.Add(time.Hour)
	c.store("t", []limiter.BudgetState{
		{Name: "day", Cap: 100, Spent: 30, Reserved: 60, Window: limiter.Window{End: end}}, // reservations are not use yet
		{Name: "month", Cap: 1000, Spent: 500},
		{Name: "week"}, // no cap: no ratio
		{Name: limiter.LevelBudgetName("t:search", "day"), Cap: 100, Spent: 90, Window: limiter.Window{End: end}},
	})
	// Another caller's answer adds its own level and updates the shared ones.
	c.store("t", []limiter.BudgetState{
		{Name: "month", Cap: 1000, Spent: 600},
		{Name: limiter.LevelBudgetName("u:search/ann", "day"), Cap: 10, Spent: 2},
	})
	cases := []struct {
		level  string
		window accounting.WindowKind
		now    time.Time
		want   float64
	}{
		{"", accounting.Day, t0, 0.3},
		{"", accounting.Month, t0, 0.6},
		{"", accounting.Week, t0, 0},
		{"", "", t0, 0.6}, // no window named: the level's most used one
		{"t:search", "", t0, 0.9},
		{"t:search", accounting.Day, t0, 0.9},
		{"u:search/ann", accounting.Day, t0, 0.2},
		{"u:search/bob", "", t0, 0},
		{"t:search", accounting.Day, end, 0}, // the window has ended
		{"", "", end, 0.6},
	}
	for _, tc := range cases {
		if got := c.ratio("t", tc.level, tc.window, tc.now); got != tc.want {
			t.Errorf("ratio(%q, %q, %v) = %v, want %v", tc.level, tc.window, tc.now, got, tc.want)
		}
	}
	if got := c.ratio("unknown", "", "", t0); got != 0 {
		t.Errorf("an unknown tenant's use = %v", got)
	}
}

// A downgrade without a window follows the most used one.
func TestDowngradeOnTheMostUsedWindow(t *testing.T) {
	const cfg = `
policies:
  default:
    budgets: [{window: day, usd: 10}, {window: month, usd: 100}]
    models:
      downgrade: [{when_budget_used: 0.5, from: "claude-opus-*", to: claude-haiku-4-5}]
`
	h := newHarness(t, cfg)
	body := `{"model":"claude-opus-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`
	h.g.budgets.store("guest", []limiter.BudgetState{{Name: "day", Cap: 100, Spent: 49}, {Name: "month", Cap: 100, Spent: 10}})
	if _, bv := h.admit(post(pathMessages), body); bv.BodyChanged {
		t.Fatalf("downgraded below the threshold: %s", bv.Body)
	}
	h.g.budgets.store("guest", []limiter.BudgetState{{Name: "day", Cap: 100, Spent: 50}, {Name: "month", Cap: 100, Spent: 10}})
	if _, bv := h.admit(post(pathMessages), body); !bv.BodyChanged {
		t.Fatalf("not downgraded with the day at 50%%: %s", bv.Body)
	}
}

// The caches bound their memory by starting over; what that costs is one
// more answer from the store (budgets) or one uncounted change (prefixes).
func TestCacheBounds(t *testing.T) {
	c := newBudgetCache()
	states := []limiter.BudgetState{{Name: "day", Cap: 10, Spent: 5}}
	for i := range maxTenants {
		c.store(fmt.Sprint("t", i), states)
	}
	if c.ratio("t0", "", "", t0) != 0.5 || len(c.tenants) != maxTenants {
		t.Fatalf("%d tenants before the bound", len(c.tenants))
	}
	c.store("one-more", states)
	if len(c.tenants) != 1 || c.ratio("t0", "", "", t0) != 0 || c.ratio("one-more", "", "", t0) != 0.5 {
		t.Fatalf("past the bound: %d tenants", len(c.tenants))
	}
	for i := range maxLevelWindows - 1 { // "day" is the first
		c.store("one-more", []limiter.BudgetState{{Name: limiter.LevelBudgetName(fmt.Sprint("u:/", i), "day"), Cap: 10, Spent: 1}})
	}
	if len(c.tenants["one-more"]) != maxLevelWindows {
		t.Fatalf("%d windows in one org before its bound", len(c.tenants["one-more"]))
	}
	c.store("one-more", states)
	if len(c.tenants["one-more"]) != 1 || c.ratio("one-more", "", "", t0) != 0.5 {
		t.Fatalf("past an org's bound: %d windows", len(c.tenants["one-more"]))
	}

	p := newPrefixTracker()
	if p.observe("pol", "a", 1) || p.observe("pol", "a", 1) || !p.observe("pol", "a", 2) || p.observe("other", "a", 3) {
		t.Fatal("prefix tracker: a change is reported exactly when the fingerprint of a key changes")
	}
	for i := range maxPrefixKeys - 2 {
		p.observe("pol", fmt.Sprint("t", i), 1)
	}
	if len(p.last) != maxPrefixKeys {
		t.Fatalf("%d keys", len(p.last))
	}
	if p.observe("pol", "a", 9) != true || len(p.last) != maxPrefixKeys {
		t.Fatal("a known key is still tracked at the bound")
	}
	if p.observe("pol", "new", 1) || len(p.last) != 1 {
		t.Fatalf("past the bound: %d keys", len(p.last))
	}
	if p.observe("pol", "a", 10) {
		t.Fatal("after starting over, the first fingerprint of a key is not a change")
	}

	b := newBoundedSet(2)
	if !b.add("x") || b.add("x") || !b.add("y") || b.add("z") || b.add("z") {
		t.Fatal("boundedSet: new names until the limit, none after")
	}
}

func TestHeadersHelpers(t *testing.T) {
	l := HeaderList{{"a", "1"}, {"a", "2"}}
	if v, ok := l.Get("a"); !ok || v != "1" {
		t.Errorf("Get returns the first value, got %q %v", v, ok)
	}
	if _, ok := l.Get("b"); ok {
		t.Error("Get of a missing header")
	}
	var e HeaderEdits
	if !e.Empty() {
		t.Error("zero edits not empty")
	}
	e.remove("x")
	if e.Empty() {
		t.Error("a removal is an edit")
	}
	for s, want := range map[string]int{"200": 200, "529": 529, "": 0, "20x": 0, "-1": 0, "99999": 9999} {
		if got := atoiStatus(s); got != want {
			t.Errorf("atoiStatus(%q) = %d, want %d", s, got, want)
		}
	}
	for ct, want := range map[string]bool{"text/event-stream": true, " Text/Event-Stream; charset=utf-8": true, "application/json": false, "": false} {
		if got := isEventStream(ct); got != want {
			t.Errorf("isEventStream(%q) = %v", ct, got)
		}
	}
	for b, want := range map[string]bool{"event: x\n": true, "\r\ndata: {}": true, ": ping\n": true, `{"id":1}`: false, "": false} {
		if got := looksLikeSSE([]byte(b)); got != want {
			t.Errorf("looksLikeSSE(%q) = %v", b, got)
		}
	}
}

// A downgrade rule reads the level it names; a caller without that level is
// never downgraded by it. A flat tenant is a one-level org.
func TestDowngradeByLevel(t *testing.T) {
	const cfg = `
policies:
  default:
    budgets: [{window: month, usd: 100}]
    models:
      downgrade:
        - {when_budget_used: 0.9, level: team, from: "claude-opus-*", to: claude-haiku-4-5}
        - {when_budget_used: 0.5, level: org, from: "claude-opus-*", to: claude-sonnet-4-5}
tenants:
  acme: {}
`
	h := newHarness(t, cfg)
	body := `{"model":"claude-opus-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`
	model := func() string {
		t.Helper()
		x, _ := h.admit(post(pathMessages, tenantHeader("acme")), body)
		defer x.Abort()
		return x.model
	}
	h.g.budgets.store("acme", []limiter.BudgetState{{Name: "month", Cap: 100, Spent: 40}})
	if got := model(); got != "claude-opus-4-5" {
		t.Fatalf("the org at 40%%: %s", got)
	}
	// The org at 95%: the org rule applies; the team rule does not, since a
	// flat tenant has no team.
	h.g.budgets.store("acme", []limiter.BudgetState{{Name: "month", Cap: 100, Spent: 95}})
	if got := model(); got != "claude-sonnet-4-5" {
		t.Fatalf("the org at 95%%: %s, want the org rule's claude-sonnet-4-5", got)
	}
	// Budget observations name the level.
	h.obs.mu.Lock()
	defer h.obs.mu.Unlock()
	last := h.obs.budgets[len(h.obs.budgets)-1]
	if len(last.levels) != 1 || last.levels[0].BudgetLevel != orgLevel("acme") || last.levels[0].Window != "month" {
		t.Errorf("budget observation %+v, want the org level acme's month", last.levels)
	}
}

// A rule's level is found among the caller's resolved levels, and the
// cache reads that level's use: the org's pool for an org rule, the team's
// for a team rule, the caller's own for a rule naming none.
func TestDowngradeKeyReadsTheNamedLevel(t *testing.T) {
	cfg, err := policy.Parse([]byte(`
policies: {default: {}}
orgs:
  acme:
    budgets: [{window: month, usd: 100}]
    users: {budgets: [{window: day, usd: 5}]}
    teams:
      search:
        budgets: [{window: day, usd: 20}]
`))
	if err != nil {
		t.Fatal(err)
	}
	inTeam := cfg.Resolve(policy.Caller{"acme", "search", "ann", ""}, "").Levels
	noTeam := cfg.Resolve(policy.Caller{"acme", "", "bob", ""}, "").Levels
	c := newBudgetCache()
	c.store("acme", []limiter.BudgetState{
		{Name: "month", Cap: 100, Spent: 85},
		{Name: limiter.LevelBudgetName("t:search", "day"), Cap: 100, Spent: 40},
		{Name: limiter.LevelBudgetName("u:search/ann", "day"), Cap: 100, Spent: 95},
		{Name: limiter.LevelBudgetName("u:/bob", "day"), Cap: 100, Spent: 10},
	})
	rule := func(l policy.Level) policy.Downgrade { return policy.Downgrade{Level: l, HasLevel: true} }
	for _, tc := range []struct {
		name   string
		levels []policy.ResolvedLevel
		rule   policy.Downgrade
		ok     bool
		ratio  float64
	}{
		{"org rule", inTeam, rule(policy.LevelOrg), true, 0.85},
		{"team rule", inTeam, rule(policy.LevelTeam), true, 0.40},
		{"user rule", inTeam, rule(policy.LevelUser), true, 0.95},
		{"own level", inTeam, policy.Downgrade{}, true, 0.95},
		{"key rule, no key", inTeam, rule(policy.LevelKey), false, 0},
		{"team rule, no team", noTeam, rule(policy.LevelTeam), false, 0},
		{"own level, no team", noTeam, policy.Downgrade{}, true, 0.10},
		{"org rule, no team", noTeam, rule(policy.LevelOrg), true, 0.85},
		{"no levels", nil, policy.Downgrade{}, false, 0},
	} {
		key, ok := downgradeKey(tc.levels, tc.rule)
		if ok != tc.ok {
			t.Errorf("%s: ok %v, want %v (key %q)", tc.name, ok, tc.ok, key)
			continue
		}
		if !ok {
			continue
		}
		if got := c.ratio("acme", key, "", t0); math.Abs(got-tc.ratio) > 1e-9 {
			t.Errorf("%s: key %q reads %.2f, want %.2f", tc.name, key, got, tc.ratio)
		}
	}
}
