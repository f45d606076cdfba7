package limiter

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// levelsOf is a three-level hierarchy (org, team, user) with one day budget
// per level.
func levelsOf(now time.Time, team, user string, org, teamCap, userCap int64) []Level {
	return []Level{
		{Key: "", Budgets: []Budget{dayBudget("day", now, org)}},
		{Key: "t:" + team, Budgets: []Budget{dayBudget("day", now, teamCap)}},
		{Key: "u:" + team + "/" + user, Budgets: []Budget{dayBudget("day", now, userCap)}},
	}
}

func runLevelsConformance(t *testing.T, h harness) {
	runLevelLimitsConformance(t, h)
	t.Run("LevelDenyAtTeamWritesNothingAtOrg", func(t *testing.T) {
		org := newTenant("lvl-deny")
		now := h.now(t)
		lv := levelsOf(now, "eng", "ann", 1000, 100, 1000)
		bs := LevelBudgets(lv)
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "a", Cost: 60, Budgets: bs})
		before := h.dump(t, org)
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "b", Cost: 50, Budgets: bs})
		if d.Allowed || d.Denied != BudgetDimension("day") || d.Level != "t:eng" {
			t.Fatalf("decision %+v; want denied budget_day at t:eng", d)
		}
		if after := h.dump(t, org); after != before {
			t.Fatalf("team denial wrote:\nbefore %s\nafter  %s", before, after)
		}
		d = mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "c", Cost: 40, Budgets: bs})
		if !d.Allowed || len(d.Budgets) != 3 {
			t.Fatalf("decision %+v", d)
		}
		for i, b := range d.Budgets {
			if b.Reserved != 100 || b.Level != lv[i].Key {
				t.Fatalf("level %d: %+v; want reserved 100 at %q", i, b, lv[i].Key)
			}
		}
		r := mustSettle(t, h.replica, SettleRequest{Tenant: org, RequestID: "a", Cost: 10, Budgets: bs})
		if !r.Settled || len(r.Budgets) != 3 {
			t.Fatalf("settle %+v", r)
		}
		got, err := h.store.Budgets(ctxb, org, bs)
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range got {
			if b.Spent != 10 || b.Reserved != 40 || b.Level != lv[i].Key {
				t.Fatalf("level %d after settle: %+v; want spent 10 reserved 40", i, b)
			}
		}
	})

	t.Run("LevelCancelAndExpiryReleaseEveryLevel", func(t *testing.T) {
		org := newTenant("lvl-release")
		now := h.now(t)
		bs := LevelBudgets(levelsOf(now, "eng", "ann", 1000, 500, 300))
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "lost", Cost: 300, Budgets: bs})
		if r, err := h.replica.(Shared).Cancel(ctxb, CancelRequest{Tenant: org, RequestID: "lost"}); err != nil || !r.Released {
			t.Fatalf("cancel: %+v %v", r, err)
		}
		ttl := 200*time.Millisecond + h.slack
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "old", Limits: Limits{LeaseTTL: ttl}, Cost: 300, Budgets: bs})
		for _, b := range d.Budgets {
			if !d.Allowed || b.Spent != 0 || b.Reserved != 300 {
				t.Fatalf("after the cancel: %+v", d)
			}
		}
		h.advance(ttl + 50*time.Millisecond)
		d = mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "new", Limits: Limits{LeaseTTL: time.Hour}, Cost: 0, Budgets: bs})
		if !d.Allowed || len(d.Expired) != 1 {
			t.Fatalf("sweep: %+v", d)
		}
		got, err := h.store.Budgets(ctxb, org, bs)
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range got {
			if b.Spent != 300 || b.Reserved != 0 {
				t.Fatalf("level %d after expiry: %+v; want spent 300 (the estimate), reserved 0", i, b)
			}
		}
	})

	t.Run("LevelRaceNeverExceedsAnyCap", func(t *testing.T) {
		org := newTenant("lvl-race")
		const est = 1_000_000
		now := h.now(t)
		// One org that fits 50, two teams that fit 30 each, ten users that
		// fit 8 each: every level binds somewhere.
		type caller struct{ team, user string }
		var callers []caller
		for u := range 10 {
			callers = append(callers, caller{fmt.Sprint("team", u%2), fmt.Sprint("user", u)})
		}
		budgets := func(c caller) []Budget {
			return LevelBudgets(levelsOf(now, c.team, c.user, 50*est, 30*est, 8*est))
		}
		var mu sync.Mutex
		admitted := map[string][]string{} // level key → ids
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for i := range 500 {
			s := []Store{h.store, h.replica}[i%2]
			c := callers[i%len(callers)]
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				id := fmt.Sprint("r", i)
				d, err := s.Admit(ctxb, AdmitRequest{Tenant: org, RequestID: id, Cost: est, Budgets: budgets(c)})
				if err != nil {
					t.Errorf("admit: %v", err)
					return
				}
				if !d.Allowed {
					if d.Denied != BudgetDimension("day") {
						t.Errorf("denied by %q", d.Denied)
					}
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, k := range []string{"", "t:" + c.team, "u:" + c.team + "/" + c.user} {
					admitted[k] = append(admitted[k], id)
				}
			})
		}
		wg.Wait()
		if n := len(admitted[""]); n != 50 {
			t.Fatalf("org admitted %d, want exactly 50", n)
		}
		for k, ids := range admitted {
			capN := map[byte]int{0: 50, 't': 30, 'u': 8}[func() byte {
				if k == "" {
					return 0
				}
				return k[0]
			}()]
			if len(ids) > capN {
				t.Fatalf("level %q admitted %d > cap %d", k, len(ids), capN)
			}
		}
		spent := map[string]int64{}
		for i := range 500 {
			c := callers[i%len(callers)]
			id := fmt.Sprint("r", i)
			found := false
			for _, x := range admitted["u:"+c.team+"/"+c.user] {
				found = found || x == id
			}
			if !found {
				continue
			}
			actual := rand.Int64N(est + 1)
			for _, k := range []string{"", "t:" + c.team, "u:" + c.team + "/" + c.user} {
				spent[k] += actual
			}
			s := []Store{h.store, h.replica}[i%2]
			wg.Go(func() {
				if r, err := s.Settle(ctxb, SettleRequest{Tenant: org, RequestID: id, Cost: actual}); err != nil || !r.Settled {
					t.Errorf("settle %s: %+v %v", id, r, err)
				}
			})
		}
		wg.Wait()
		for _, c := range callers {
			got, err := h.store.Budgets(ctxb, org, budgets(c))
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range got {
				if b.Spent != spent[b.Level] || b.Reserved != 0 || b.Spent > b.Cap {
					t.Fatalf("level %q: %+v; want spent %d ≤ cap, reserved 0", b.Level, b, spent[b.Level])
				}
			}
		}
	})
}

// levelLimits gives each level of a three-level hierarchy its own limits.
func levelLimits(team, user string, teamL, userL Limits) []LevelLimits {
	return []LevelLimits{{Key: "t:" + team, Limits: teamL}, {Key: "u:" + team + "/" + user, Limits: userL}}
}

func runLevelLimitsConformance(t *testing.T, h harness) {
	t.Run("LevelRequestsPerMinuteDeniesAtUserWritingNothing", func(t *testing.T) {
		org := newTenant("lvl-rpm")
		now := h.now(t)
		bs := LevelBudgets(levelsOf(now, "eng", "ann", 1000, 1000, 1000))
		ann := levelLimits("eng", "ann", Limits{RequestsPerMinute: 600}, Limits{RequestsPerMinute: 2})
		bob := levelLimits("eng", "bob", Limits{RequestsPerMinute: 600}, Limits{RequestsPerMinute: 2})
		for _, id := range []string{"a1", "a2"} {
			if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: id, Levels: ann, Cost: 10, Budgets: bs}); !d.Allowed {
				t.Fatalf("%s: %+v", id, d)
			}
		}
		before := h.dump(t, org)
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "a3", Levels: ann, Cost: 10, Budgets: bs})
		if d.Allowed || d.Denied != DimensionRequests || d.Level != "u:eng/ann" || d.RetryAfter <= 0 || d.RetryAfter > 30*time.Second {
			t.Fatalf("third of ann's: %+v; want requests at u:eng/ann, retry within the user's 30s interval", d)
		}
		if d.Requests.Limit != 2 || d.Requests.Remaining != 0 {
			t.Fatalf("rate state %+v; want the user's (limit 2, none left)", d.Requests)
		}
		if after := h.dump(t, org); after != before {
			t.Fatalf("user denial wrote:\nbefore %s\nafter  %s", before, after)
		}
		if d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "b1", Levels: bob, Cost: 10, Budgets: bs}); !d.Allowed {
			t.Fatalf("bob: %+v", d)
		}
		// A cancel gives the request back at every level.
		if r, err := h.replica.(Shared).Cancel(ctxb, CancelRequest{Tenant: org, RequestID: "a2"}); err != nil || !r.Released {
			t.Fatalf("cancel: %+v %v", r, err)
		}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "a4", Levels: ann, Cost: 10, Budgets: bs}); !d.Allowed {
			t.Fatalf("after the cancel: %+v", d)
		}
	})

	t.Run("LevelTokensPerMinuteSettleCorrects", func(t *testing.T) {
		org := newTenant("lvl-tpm")
		lv := []LevelLimits{{Key: "t:eng", Limits: Limits{TokensPerMinute: 100}}}
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "a", Limits: Limits{TokensPerMinute: 100000}, Levels: lv, Tokens: 60})
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "b", Limits: Limits{TokensPerMinute: 100000}, Levels: lv, Tokens: 60})
		if d.Allowed || d.Denied != DimensionTokens || d.Level != "t:eng" || d.NeverFits {
			t.Fatalf("b: %+v; want tokens at t:eng", d)
		}
		if d.Tokens.Limit != 100 {
			t.Fatalf("rate state %+v; want the team's", d.Tokens)
		}
		mustSettle(t, h.replica, SettleRequest{Tenant: org, RequestID: "a", Tokens: 10})
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "b", Limits: Limits{TokensPerMinute: 100000}, Levels: lv, Tokens: 60}); !d.Allowed {
			t.Fatalf("after settling a at 10 tokens: %+v", d)
		}
		d = mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "c", Levels: lv, Tokens: 101})
		if d.Allowed || d.Level != "t:eng" || !d.NeverFits {
			t.Fatalf("101 tokens against a 100 tpm team: %+v; want never fits", d)
		}
	})

	t.Run("LevelConcurrencyReleasedBySettleCancelExpiry", func(t *testing.T) {
		org := newTenant("lvl-conc")
		ttl := 200*time.Millisecond + h.slack
		team := Limits{Concurrent: 2}
		lv := func(user string) []LevelLimits {
			return levelLimits("eng", user, team, Limits{Concurrent: 1})
		}
		admit := func(s Store, id, user string, lease time.Duration) Decision {
			return mustAdmit(t, s, AdmitRequest{Tenant: org, RequestID: id, Limits: Limits{LeaseTTL: lease}, Levels: lv(user)})
		}
		if d := admit(h.store, "a", "ann", time.Hour); !d.Allowed {
			t.Fatalf("a: %+v", d)
		}
		if d := admit(h.replica, "a2", "ann", time.Hour); d.Allowed || d.Denied != DimensionConcurrency || d.Level != "u:eng/ann" {
			t.Fatalf("ann's second: %+v; want concurrency at u:eng/ann", d)
		}
		if d := admit(h.store, "b", "bob", time.Hour); !d.Allowed {
			t.Fatalf("b: %+v", d)
		}
		before := h.dump(t, org)
		d := admit(h.replica, "c", "cat", time.Hour)
		if d.Allowed || d.Denied != DimensionConcurrency || d.Level != "t:eng" {
			t.Fatalf("cat: %+v; want concurrency at t:eng", d)
		}
		if after := h.dump(t, org); after != before {
			t.Fatalf("team denial wrote:\nbefore %s\nafter  %s", before, after)
		}
		mustSettle(t, h.replica, SettleRequest{Tenant: org, RequestID: "a"})
		if d := admit(h.store, "c", "cat", time.Hour); !d.Allowed {
			t.Fatalf("after a settled: %+v", d)
		}
		if r, err := h.replica.(Shared).Cancel(ctxb, CancelRequest{Tenant: org, RequestID: "c"}); err != nil || !r.Released {
			t.Fatalf("cancel: %+v %v", r, err)
		}
		if d := admit(h.store, "d", "dan", ttl); !d.Allowed {
			t.Fatalf("after c cancelled: %+v", d)
		}
		if d := admit(h.store, "e", "eve", time.Hour); d.Allowed || d.Level != "t:eng" {
			t.Fatalf("eve with b and d held: %+v", d)
		}
		// d's lease expires unsettled: its team slot frees for the next
		// admission, which sweeps it.
		h.advance(ttl + 50*time.Millisecond)
		d = admit(h.replica, "e", "eve", time.Hour)
		if !d.Allowed || len(d.Expired) != 1 || d.Expired[0].RequestID != "d" {
			t.Fatalf("after d expired: %+v", d)
		}
		if d := admit(h.store, "f", "fay", time.Hour); d.Allowed || d.Level != "t:eng" {
			t.Fatalf("fay with b and e held: %+v", d)
		}
		for _, id := range []string{"b", "e"} {
			mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: id})
		}
		for _, u := range []string{"f", "g"} {
			if d := admit(h.replica, u, u, time.Hour); !d.Allowed {
				t.Fatalf("%s with every slot free: %+v", u, d)
			}
		}
	})

	t.Run("LevelLimitsRaceNeverExceedsAnyCap", func(t *testing.T) {
		org := newTenant("lvl-limits-race")
		const est = 1_000
		now := h.now(t)
		// The org's budget fits 40, each team holds 25 at once, each user 6:
		// five users of a team could hold 30, two teams 50.
		bs := LevelBudgets([]Level{{Key: "", Budgets: []Budget{dayBudget("day", now, 40*est)}}})
		type caller struct{ team, user string }
		var mu sync.Mutex
		held := map[string]int{}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for i := range 500 {
			s := []Store{h.store, h.replica}[i%2]
			c := caller{fmt.Sprint("team", i%2), fmt.Sprint("user", i%10)}
			lv := levelLimits(c.team, c.user, Limits{Concurrent: 25}, Limits{Concurrent: 6})
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				d, err := s.Admit(ctxb, AdmitRequest{Tenant: org, RequestID: fmt.Sprint("r", i),
					Limits: Limits{LeaseTTL: time.Hour}, Levels: lv, Cost: est, Budgets: bs})
				if err != nil {
					t.Errorf("admit: %v", err)
					return
				}
				if !d.Allowed {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, k := range []string{"", "t:" + c.team, "u:" + c.team + "/" + c.user} {
					held[k]++
				}
			})
		}
		wg.Wait()
		if held[""] != 40 {
			t.Fatalf("org admitted %d, want exactly 40 (%v)", held[""], held)
		}
		for k, n := range held {
			if k != "" && n > map[byte]int{'t': 25, 'u': 6}[k[0]] {
				t.Fatalf("level %q holds %d slots over its cap (%v)", k, n, held)
			}
		}
	})
}

func TestLevelBudgetNames(t *testing.T) {
	for _, key := range []string{"", "t:eng", "u:eng/ann", "k:a%2F/b{c}:d"} {
		n := LevelBudgetName(key, "day")
		if k, w := SplitBudgetName(n); k != key || w != "day" {
			t.Fatalf("%q → %q → %q, %q", key, n, k, w)
		}
		if err := validateBudgets([]Budget{{Name: n}}, false); err != nil {
			t.Fatalf("%q: %v", n, err)
		}
	}
}
