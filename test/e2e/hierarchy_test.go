package e2e

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// TestHierarchyHoldsUnderConcurrency fires 500 requests at once from 10
// users in 2 teams of one org, identified by their verified JWT claims. The
// org's day budget fits 40 reservations, team search's 15 (its users 8
// each), team ads' 40 (its users 6 each), and one ads user sends a third of
// all requests: the search team, that user and the org each refuse some.
// Settled spend stays within every cap at
// every level, and at every level it equals the mock's usage of that
// level's requests priced exactly — with one replica on the memory store,
// three replicas on one Redis, and three on a three-master Redis Cluster
// (one org is one hash tag: no CROSSSLOT).
func TestHierarchyHoldsUnderConcurrency(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server processes and runs 500 exchanges per case")
	}
	res := reservation(t)
	usd := func(n int64) string { return strconv.FormatFloat(float64(n*res+res/2)/1e9, 'f', 9, 64) }
	cfg := fmt.Sprintf(`
identity:
  from:
    - jwt: {org: org_id, team: team, user: sub}
  unknown: deny
  unconfigured: deny
policies:
  default:
    limits: {concurrent: 10000}
orgs:
  acme:
    budgets: [{window: day, usd: %s}]
    teams:
      search:
        budgets: [{window: day, usd: %s}]
        users: {budgets: [{window: day, usd: %s}]}
      ads:
        budgets: [{window: day, usd: %s}]
        users: {budgets: [{window: day, usd: %s}]}
`, usd(40), usd(15), usd(8), usd(40), usd(6))
	type caller struct{ team, user string }
	callers := make([]caller, 10)
	for u := range callers {
		callers[u] = caller{[]string{"search", "ads"}[u%2], fmt.Sprint("user", u)}
	}
	// Each user's answers carry their own number of output tokens, so the
	// mock's ledger tells whose request each entry was.
	outputOf := func(u int) int64 { return int64(60 + u) }

	for _, tc := range storeCases(cfg, true) {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts(t)
			o.filter = func(c *sim.Config) {
				patient(c)
				c.ForwardingNamespaces = []string{policy.JWTNamespace}
			}
			s := newStack(t, o)
			ctx := context.Background()
			var ok, other atomic.Int64
			var denied [3]atomic.Int64 // org, team, user
			parallel(500, 500, func(i int) {
				u := i % len(callers)
				if i%3 == 0 {
					u = 1 // an ads user
				}
				req := anthropicRequest(budgetBody(i%2 == 1),
					sim.Header{Name: "x-mock-output-tokens", Value: strconv.FormatInt(outputOf(u), 10)})
				req.Metadata = map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{
					"org_id": "acme", "team": callers[u].team, "sub": callers[u].user}}}
				x := s.do(ctx, i, req)
				switch {
				case x.err == nil && x.resp.Status == 200:
					ok.Add(1)
				case x.err == nil && x.resp.Status == 429 && x.header(contract.DeniedHeader) == "org/budget_day":
					denied[0].Add(1)
				case x.err == nil && x.resp.Status == 429 && x.header(contract.DeniedHeader) == "team/budget_day":
					denied[1].Add(1)
				case x.err == nil && x.resp.Status == 429 && x.header(contract.DeniedHeader) == "user/budget_day":
					denied[2].Add(1)
				default:
					other.Add(1)
					if x.err != nil {
						t.Errorf("exchange %d: %v", i, x.err)
					} else {
						t.Errorf("exchange %d: %d %v %s", i, x.resp.Status, x.resp.Headers, x.body)
					}
				}
			})

			// Every level's budgets, as the processor admits them.
			levelBudgets := func(c caller) (keys []string, bs []limiter.Budget) {
				r := s.cfg.Resolve(policy.Caller{policy.LevelOrg: "acme", policy.LevelTeam: c.team, policy.LevelUser: c.user}, "")
				var lv []limiter.Level
				for _, l := range r.Levels {
					keys = append(keys, l.Key)
					lv = append(lv, limiter.Level{Key: l.Key, Budgets: policy.LimiterBudgetsOf(l.Budgets, time.Now())})
				}
				return keys, limiter.LevelBudgets(lv)
			}
			read := func(c caller) map[string]limiter.BudgetState {
				keys, bs := levelBudgets(c)
				if len(keys) != 3 {
					t.Fatalf("%+v resolves to levels %v; want org, team, user", c, keys)
				}
				st, err := s.procs[0].store.Budgets(ctx, "acme", bs)
				if err != nil {
					t.Fatal(err)
				}
				out := map[string]limiter.BudgetState{}
				for _, b := range st {
					out[b.Level] = b
				}
				return out
			}
			// The last settles run after the last answers; wait for them.
			deadline := time.Now().Add(10 * time.Second)
			for read(callers[0])[""].Reserved != 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}

			want := map[string]int64{}
			ledger := s.mock.Provider().Ledger()
			for _, e := range ledger {
				u := int(e.Reported.OutputTokens - outputOf(0))
				if !e.Complete || u < 0 || u >= len(callers) {
					t.Fatalf("unexpected ledger entry %+v", e)
				}
				cost := expectedCost(t, "claude-sonnet-4-5", e.Reported)
				c := callers[u]
				want[""] += cost
				want["t:"+c.team] += cost
				want["u:"+c.team+"/"+c.user] += cost
			}
			capOf := func(n int64) int64 { return n*res + res/2 }
			caps := map[string]int64{"": capOf(40), "t:search": capOf(15), "t:ads": capOf(40), "u:search": capOf(8), "u:ads": capOf(6)}
			for _, c := range callers {
				for key, b := range read(c) {
					kind := key
					if len(key) > 2 && key[0] == 'u' {
						kind = "u:" + c.team
					}
					if b.Cap != caps[kind] || b.Reserved != 0 || b.Spent > b.Cap || b.Spent != want[key] {
						t.Errorf("level %q: %+v; want cap %d, nothing reserved, spent %d (the mock's usage priced exactly) within the cap",
							key, b, caps[kind], want[key])
					}
				}
			}
			t.Logf("admitted %d; denied at org %d, team %d, user %d; org spent %d of %d nano-USD (reservation %d)",
				ok.Load(), denied[0].Load(), denied[1].Load(), denied[2].Load(), want[""], caps[""], res)
			if int64(len(ledger)) != ok.Load() || ok.Load() < 30 || other.Load() != 0 {
				t.Errorf("ledger %d, admitted %d, other %d", len(ledger), ok.Load(), other.Load())
			}
			if denied[0].Load()+denied[1].Load()+denied[2].Load() != 500-ok.Load() {
				t.Errorf("denials do not add up")
			}
			if denied[0].Load() == 0 {
				t.Errorf("no request was refused at the org level; the caps are meant to bind at every level")
			}
			// Whether the search team's and ads user1's caps bind before the
			// org's within one burst depends on the order the 500 arrive in
			// (the search team has about a third of them against a cap of 15
			// of the org's 40). A level the burst never refused at is then
			// driven to its cap one request at a time — round-robin over the
			// search users for the team, user1 for the user, both with room
			// left at the org — and must refuse at its own level.
			probe := func(level, want string, users []int) {
				for n := range 60 {
					u := users[n%len(users)]
					req := anthropicRequest(budgetBody(false),
						sim.Header{Name: "x-mock-output-tokens", Value: strconv.FormatInt(outputOf(u), 10)})
					req.Metadata = map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{
						"org_id": "acme", "team": callers[u].team, "sub": callers[u].user}}}
					x := s.do(ctx, 1000+n, req)
					if x.err != nil || x.resp.Status == 200 {
						continue
					}
					if got := x.header(contract.DeniedHeader); x.resp.Status != 429 || got != want {
						t.Errorf("%s probe: request %d answered %d %q, want 429 %q", level, n, x.resp.Status, got, want)
					}
					return
				}
				t.Errorf("%s probe: 60 requests in a row admitted; the %s cap never bound", level, level)
			}
			if denied[1].Load() == 0 {
				probe("team", "team/budget_day", []int{0, 2, 4, 6, 8})
			}
			if denied[2].Load() == 0 {
				probe("user", "user/budget_day", []int{1})
			}
		})
	}
}
