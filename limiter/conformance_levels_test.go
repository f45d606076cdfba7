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
