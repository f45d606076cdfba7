package gate

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// uncachedLevelRequest is levelRequest without levelCache: the limits
// built afresh, the budgets as policy.LimiterBudgetsOf and
// limiter.LevelBudgets build them at now.
func uncachedLevelRequest(x *Exchange, now time.Time) (limiter.Limits, []limiter.LevelLimits, []limiter.Budget) {
	t := x.levelTemplate()
	if len(x.levels) == 0 {
		return t.limits, t.levelLimits, x.policy.LimiterBudgets(now)
	}
	var lv []limiter.Level
	for _, l := range x.levels {
		lv = append(lv, limiter.Level{Key: l.Key, Budgets: policy.LimiterBudgetsOf(l.Budgets, now)})
	}
	return t.limits, t.levelLimits, limiter.LevelBudgets(lv)
}

// The cached resolution and admission request are the ones built afresh: for callers at
// several levels, after budget windows end (day and month, in a zone), and
// after a reload that changes a cap, which the very next request sees.
func TestLevelCacheMatchesFreshBuild(t *testing.T) {
	yaml := strings.Replace(levelsYAML, "budgets: [{window: day, usd: 100}]",
		"budgets: [{window: day, usd: 100}, {window: month, usd: 900, timezone: America/New_York}]", 1)
	h := newHarness(t, yaml)
	check := func(team, user string) *Exchange {
		t.Helper()
		x, hv := h.g.Begin(context.Background(), Request{Headers: post(pathMessages), Envoy: jwtCaller("acme", team, user)})
		if hv.PassThrough || hv.Reply != nil {
			t.Fatalf("Begin: %+v", hv)
		}
		if res := x.cfg.Resolve(x.caller, ""); !reflect.DeepEqual(res.Levels, x.levels) || res.Policy != x.policy {
			t.Fatalf("%s/%s: cached levels %+v, fresh %+v", team, user, x.levels, res.Levels)
		}
		now := h.clock.Now()
		l, ll, bs := x.levelRequest(now)
		wl, wll, wbs := uncachedLevelRequest(x, now)
		if l != wl || !reflect.DeepEqual(ll, wll) || !reflect.DeepEqual(bs, wbs) {
			t.Fatalf("%s/%s at %v:\n cached %+v %+v %+v\n fresh  %+v %+v %+v", team, user, now, l, ll, bs, wl, wll, wbs)
		}
		return x
	}
	for _, step := range []time.Duration{0, time.Hour, 23 * time.Hour, 24 * time.Hour * 31, time.Minute} {
		h.clock.Advance(step)
		for _, c := range [][2]string{{"ads", "bob"}, {"ads", "cat"}, {"search", "ann"}, {"", "eve"}, {"ads", "bob"}} {
			check(c[0], c[1])
		}
	}
	reloaded, err := policy.Parse([]byte(strings.Replace(yaml, "usd: 100}", "usd: 7}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	h.g.opts.Config.Store(reloaded)
	x := check("ads", "bob")
	if _, _, bs := x.levelRequest(h.clock.Now()); bs[0].Cap != 7_000_000_000 {
		t.Fatalf("after the reload the org's day cap is %d", bs[0].Cap)
	}
}
