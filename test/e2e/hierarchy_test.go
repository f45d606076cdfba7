package e2e

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// TestHierarchyHoldsUnderConcurrency fires 500 requests at once from 10
// users in 2 teams of one org, the callers named by JWT claims that Envoy's
// jwt_authn verified (forwarded metadata, never a client header). The org's
// month fits 50 reservations; team t0's fits 15; every user's own fits 8,
// and user u1 (in t1) sends more than half the requests, so the org, a team
// and a user each refuse some. At every level the settled spend stays within
// its cap and equals the mock provider's usage of that level's requests
// priced exactly — one replica on the memory store, three replicas on one
// Redis, three replicas on a three-master Redis Cluster (one script per
// request in the org's slot: a CROSSSLOT would fail the exchange).
func TestHierarchyHoldsUnderConcurrency(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server processes and runs 500 exchanges per case")
	}
	res := reservation(t)
	usd := func(n int64) string { return strconv.FormatFloat(float64(n*res+res/2)/1e9, 'f', 9, 64) }
	caps := map[string]int64{"": 50*res + res/2, "t:t0": 15*res + res/2, "t:t1": 45*res + res/2}
	userCap := 8*res + res/2
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
    budgets: [{window: month, usd: %s}]
    users: {budgets: [{window: month, usd: %s}]}
    teams:
      t0: {budgets: [{window: month, usd: %s}]}
      t1: {budgets: [{window: month, usd: %s}]}
`, usd(50), usd(8), usd(15), usd(45))

	// Users u0..u9; even ones in t0, odd ones in t1.
	type caller struct{ team, user string }
	callerOf := func(i int) caller {
		u := i % 20
		if u >= 10 {
			u = 1 // the heavy user
		}
		return caller{fmt.Sprint("t", u%2), fmt.Sprint("u", u)}
	}
	forward := func(c *sim.Config) { c.ForwardingNamespaces = []string{policy.JWTNamespace} }

	cases := []struct {
		name string
		opts func(t *testing.T) stackOptions
	}{
		{"memory, one replica", func(t *testing.T) stackOptions { return stackOptions{config: cfg, filter: forward} }},
		{"redis, three replicas", func(t *testing.T) stackOptions {
			return stackOptions{config: cfg, filter: forward, processors: 3, redis: redistest.Start(t, redistest.Options{}).Addr()}
		}},
		{"redis cluster, three replicas", func(t *testing.T) stackOptions {
			return stackOptions{config: cfg, filter: forward, processors: 3, cluster: redistest.StartCluster(t, 3).Addrs()}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, tc.opts(t))
			ctx := context.Background()
			var mu sync.Mutex
			byRequestID := map[string]caller{} // the provider's request id → who sent it
			denials := map[string]int{}
			parallel(500, 500, func(i int) {
				c := callerOf(i)
				req := anthropicRequest(budgetBody(i%2 == 1), sim.Header{Name: "x-mock-output-tokens", Value: "100"},
					// A client's own tenant header changes nothing: identity is the JWT's.
					sim.Header{Name: "x-tenant-id", Value: "someone-else"})
				req.Metadata = map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{
					"org_id": "acme", "team": c.team, "sub": c.user, "iss": "https://idp"}}}
				x := s.do(ctx, i, req)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case x.err == nil && x.resp.Status == 200:
					byRequestID[x.header("request-id")] = c
				case x.err == nil && x.resp.Status == 429:
					denials[x.header(contract.DeniedHeader)]++
				case x.err != nil:
					t.Errorf("exchange %d: %v", i, x.err)
				default:
					t.Errorf("exchange %d: %d %v %s", i, x.resp.Status, x.resp.Headers, x.body)
				}
			})

			// What each level should have spent: the mock's usage of the
			// requests of its members, priced exactly.
			want := map[string]int64{}
			admitted := map[string]int{}
			ledger := s.mock.Provider().Ledger()
			for _, e := range ledger {
				c, ok := byRequestID[e.RequestID]
				if !ok || !e.Complete {
					t.Errorf("ledger entry %s: sent by %+v, complete %v", e.RequestID, c, e.Complete)
					continue
				}
				cost := expectedCost(t, "claude-sonnet-4-5", e.Reported)
				for _, k := range []string{"", "t:" + c.team, "u:" + c.team + "/" + c.user} {
					want[k] += cost
					admitted[k]++
				}
			}
			budgetsOf := func(c caller) []limiter.Budget {
				r := s.cfg.Resolve(policy.Caller{policy.LevelOrg: "acme", policy.LevelTeam: c.team, policy.LevelUser: c.user}, "")
				var lv []limiter.Level
				for _, l := range r.Levels {
					lv = append(lv, limiter.Level{Key: l.Key, Budgets: policy.LimiterBudgetsOf(l.Budgets, time.Now())})
				}
				return limiter.LevelBudgets(lv)
			}
			// The last settles run after the last answers; wait for them.
			states := map[string]limiter.BudgetState{}
			deadline := time.Now().Add(15 * time.Second)
			for {
				outstanding := int64(0)
				for u := range 10 {
					got, err := s.procs[0].store.Budgets(ctx, "acme", budgetsOf(callerOf(u)))
					if err != nil {
						t.Fatal(err)
					}
					for _, b := range got {
						states[b.Level] = b
						outstanding += b.Reserved
					}
				}
				if outstanding == 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if len(states) != 13 {
				t.Fatalf("levels read: %d (%v), want the org, 2 teams and 10 users", len(states), states)
			}
			t.Logf("admitted %d of 500; denials %v; org spent %d of %d nano-USD (reservation %d)",
				len(ledger), denials, states[""].Spent, caps[""], res)
			for k, b := range states {
				capN, ok := caps[k]
				if !ok {
					capN = userCap
				}
				if b.Cap != capN || b.Reserved != 0 || b.Spent > b.Cap || b.Spent != want[k] {
					t.Errorf("level %q: cap %d (want %d), spent %d, reserved %d; the mock's usage priced is %d",
						k, b.Cap, capN, b.Spent, b.Reserved, want[k])
				}
			}
			// The binding caps bound: t0 and u1 hold exactly as many whole
			// reservations as fit (the calibrated estimate only tightens
			// toward the measured input, never by a whole request here).
			if admitted["t:t0"] != 15 || admitted["u:t1/u1"] != 8 {
				t.Errorf("admitted %v; want 15 in t0 and 8 for u1", admitted)
			}
			// Every level refused somewhere: the org once full, team t0 before
			// it, and the heavy user u1 from its ninth request.
			for _, d := range []string{"org/budget_month", "team/budget_month", "user/budget_month"} {
				if denials[d] == 0 {
					t.Errorf("no %s denial among %v", d, denials)
				}
			}
			if n := len(ledger); n < 45 || n+sum(denials) != 500 || len(denials) != 3 {
				t.Errorf("admitted %d, denials %v: every request should be one or the other, by a budget", n, denials)
			}
		})
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
