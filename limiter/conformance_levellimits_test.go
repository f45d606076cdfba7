package limiter

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// userLimits are the limits of a team and one of its users below the org.
func userLimits(team, user string, teamL, userL LevelLimits) []LevelLimits {
	teamL.Key, userL.Key = "t:"+team, "u:"+team+"/"+user
	return []LevelLimits{teamL, userL}
}

func runLevelLimitsConformance(t *testing.T, h harness) {
	// The gate's lane groups are level limits under keys of their own
	// ("<level>~lane:<name>", "~lane:<name>" for the org): every store keeps
	// them apart from the level's own and names them in a denial.
	t.Run("LaneGroupKeys", func(t *testing.T) {
		org := newTenant("ll-lane")
		req := func(id string) AdmitRequest {
			return AdmitRequest{Tenant: org, RequestID: id, Limits: Limits{Concurrent: 3}, LevelLimits: []LevelLimits{
				{Key: "t:eng", Concurrent: 3}, {Key: "~lane:batch", Concurrent: 2}, {Key: "t:eng~lane:batch", Concurrent: 1}}}
		}
		if d := mustAdmit(t, h.store, req("l0")); !d.Allowed {
			t.Fatalf("first: %+v", d)
		}
		d := mustAdmit(t, h.replica, req("l1"))
		if d.Allowed || d.Denied != DimensionConcurrency || d.Level != "t:eng~lane:batch" {
			t.Fatalf("second: %+v; want concurrency denied at t:eng~lane:batch", d)
		}
		// The level's own limit is another key: a request outside the lane
		// group still fits the team's 3.
		top := AdmitRequest{Tenant: org, RequestID: "top", Limits: Limits{Concurrent: 3}, LevelLimits: []LevelLimits{{Key: "t:eng", Concurrent: 3}}}
		if d := mustAdmit(t, h.replica, top); !d.Allowed {
			t.Fatalf("outside the lane group: %+v", d)
		}
		if r, err := h.store.Settle(ctxb, SettleRequest{Tenant: org, RequestID: "l0"}); err != nil || !r.Settled {
			t.Fatalf("settle: %+v %v", r, err)
		}
		if d := mustAdmit(t, h.store, req("l2")); !d.Allowed {
			t.Fatalf("after the settle: %+v", d)
		}
	})
	t.Run("LevelRequestsPerMinuteAtEachLevel", func(t *testing.T) {
		org := newTenant("ll-rpm")
		ann := userLimits("eng", "ann", LevelLimits{RequestsPerMinute: 5}, LevelLimits{RequestsPerMinute: 3})
		bob := userLimits("eng", "bob", LevelLimits{RequestsPerMinute: 5}, LevelLimits{RequestsPerMinute: 3})
		for i := range 3 {
			if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: fmt.Sprint("a", i), LevelLimits: ann}); !d.Allowed {
				t.Fatalf("ann %d: %+v", i, d)
			}
		}
		before := h.dump(t, org)
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "a3", LevelLimits: ann})
		if d.Allowed || d.Denied != DimensionRequests || d.Level != "u:eng/ann" || d.RetryAfter <= 0 {
			t.Fatalf("ann's 4th: %+v; want requests denied at u:eng/ann with a wait", d)
		}
		if d.Requests.Limit != 3 || d.Requests.Remaining != 0 {
			t.Fatalf("ann's rate state %+v; want the user's limit 3, none remaining", d.Requests)
		}
		if after := h.dump(t, org); after != before {
			t.Fatalf("a user-level denial wrote:\nbefore %s\nafter  %s", before, after)
		}
		for i := range 2 {
			if d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: fmt.Sprint("b", i), LevelLimits: bob}); !d.Allowed {
				t.Fatalf("bob %d: %+v", i, d)
			}
		}
		d = mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "b2", LevelLimits: bob})
		if d.Allowed || d.Denied != DimensionRequests || d.Level != "t:eng" {
			t.Fatalf("bob's 3rd (team at 5): %+v; want requests denied at t:eng", d)
		}
		// A cancelled admission gives its request back at every level.
		if r, err := h.replica.(Shared).Cancel(ctxb, CancelRequest{Tenant: org, RequestID: "b1"}); err != nil || !r.Released {
			t.Fatalf("cancel: %+v %v", r, err)
		}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "b3", LevelLimits: bob}); !d.Allowed {
			t.Fatalf("after the cancel: %+v", d)
		}
	})

	t.Run("LevelConcurrencyReleasedBySettleCancelAndExpiry", func(t *testing.T) {
		org := newTenant("ll-conc")
		ttl := 200*time.Millisecond + h.slack
		lim := func(user string) []LevelLimits {
			return userLimits("eng", user, LevelLimits{Concurrent: 2}, LevelLimits{})
		}
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "s", LevelLimits: lim("ann")})
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "x", Limits: Limits{LeaseTTL: ttl}, LevelLimits: lim("bob")})
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "c1", LevelLimits: lim("cat")})
		if d.Allowed || d.Denied != DimensionConcurrency || d.Level != "t:eng" {
			t.Fatalf("third in flight: %+v; want concurrency denied at t:eng", d)
		}
		mustSettle(t, h.replica, SettleRequest{Tenant: org, RequestID: "s"})
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "c2", LevelLimits: lim("cat")}); !d.Allowed {
			t.Fatalf("after a settle: %+v", d)
		}
		if r, err := h.replica.(Shared).Cancel(ctxb, CancelRequest{Tenant: org, RequestID: "c2"}); err != nil || !r.Released {
			t.Fatalf("cancel: %+v %v", r, err)
		}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "c3", LevelLimits: lim("cat")}); !d.Allowed {
			t.Fatalf("after a cancel: %+v", d)
		}
		// Now x (expiring) and c3 hold both slots; once x's lease ends its
		// slot is free again at the team.
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "c4", LevelLimits: lim("cat")}); d.Allowed {
			t.Fatalf("three in flight: %+v", d)
		}
		h.advance(ttl + 50*time.Millisecond)
		if d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "c5", LevelLimits: lim("cat")}); !d.Allowed || len(d.Expired) != 1 {
			t.Fatalf("after the expiry: %+v", d)
		}
	})

	t.Run("LevelTokensPerMinuteCorrectedBySettle", func(t *testing.T) {
		org := newTenant("ll-tpm")
		lim := userLimits("eng", "ann", LevelLimits{}, LevelLimits{TokensPerMinute: 1000})
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "a", Tokens: 900, LevelLimits: lim})
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "b", Tokens: 800, LevelLimits: lim})
		if d.Allowed || d.Denied != DimensionTokens || d.Level != "u:eng/ann" {
			t.Fatalf("over the user's tpm: %+v", d)
		}
		mustSettle(t, h.replica, SettleRequest{Tenant: org, RequestID: "a", Tokens: 100})
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "c", Tokens: 800, LevelLimits: lim}); !d.Allowed {
			t.Fatalf("after the settle gave 800 back: %+v", d)
		}
	})

	t.Run("LevelRateRaceExact", func(t *testing.T) {
		// 300 requests from 10 users in 2 teams at once: users may send 8 a
		// minute, teams 40, the org 60. Every level binds somewhere and
		// the org ends exactly full.
		org := newTenant("ll-race")
		var mu sync.Mutex
		count := map[string]int{}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for i := range 300 {
			team, user := fmt.Sprint("team", i%2), fmt.Sprint("user", i%10)
			s := []Store{h.store, h.replica}[i%2]
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				d, err := s.Admit(ctxb, AdmitRequest{Tenant: org, RequestID: fmt.Sprint("r", i),
					Limits:      Limits{RequestsPerMinute: 60},
					LevelLimits: userLimits(team, user, LevelLimits{RequestsPerMinute: 40}, LevelLimits{RequestsPerMinute: 8})})
				if err != nil {
					t.Errorf("admit: %v", err)
					return
				}
				if d.Allowed {
					mu.Lock()
					count[""]++
					count[team]++
					count[user]++
					mu.Unlock()
				} else if d.Denied != DimensionRequests {
					t.Errorf("denied by %q", d.Denied)
				}
			})
		}
		wg.Wait()
		if count[""] != 60 {
			t.Fatalf("org admitted %d; want exactly 60", count[""])
		}
		for k, n := range count {
			if k != "" && n > map[bool]int{true: 40, false: 8}[len(k) > 4 && k[:4] == "team"] {
				t.Fatalf("%s admitted %d, over its limit", k, n)
			}
		}
	})

	t.Run("LevelLimitsValidated", func(t *testing.T) {
		for _, ls := range [][]LevelLimits{
			{{Key: "", RequestsPerMinute: 1}},
			{{Key: "t:a", Concurrent: -1}},
			{{Key: "t:a"}, {Key: "t:a"}},
		} {
			if _, err := h.store.Admit(ctxb, AdmitRequest{Tenant: newTenant("ll-bad"), RequestID: "a", LevelLimits: ls}); err == nil {
				t.Fatalf("%+v accepted", ls)
			}
		}
	})
}
