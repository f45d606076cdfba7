package limiter

import (
	"testing"
	"time"
)

func runDetachedConformance(t *testing.T, h harness) {
	t.Run("DetachedHoldsNoSlotAndSettles", func(t *testing.T) {
		org := newTenant("detached")
		now := h.now(t)
		bs := []Budget{dayBudget("day", now, 1000)}
		lim := Limits{Concurrent: 1, LeaseTTL: time.Hour}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "batch", Limits: lim, Cost: 600, Budgets: bs, Detached: true}); !d.Allowed {
			t.Fatalf("batch: %+v", d)
		}
		// The batch holds no slot: one request still fits the limit of 1.
		if d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "a", Limits: lim, Cost: 100, Budgets: bs}); !d.Allowed {
			t.Fatalf("a request beside the batch: %+v", d)
		}
		// But it holds its budget.
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "b", Cost: 400, Budgets: bs}); d.Allowed || d.Denied != BudgetDimension("day") {
			t.Fatalf("over the budget the batch reserves: %+v", d)
		}
		r := mustSettle(t, h.replica, SettleRequest{Tenant: org, RequestID: "batch", Cost: 250, Budgets: bs})
		if !r.Settled || r.Budgets[0].Spent != 250 || r.Budgets[0].Reserved != 100 {
			t.Fatalf("batch settle: %+v", r)
		}
		if r := mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: "batch", Cost: 250, Budgets: bs}); r.Settled {
			t.Fatalf("second settle: %+v", r)
		}
	})

	// Detached holds no slot at the levels below the org either (a batch
	// would hold a team's, user's or key's slot for its whole lease), and
	// so its end, settled, rebound or expired, frees none it never took.
	t.Run("DetachedHoldsNoLevelSlot", func(t *testing.T) {
		org := newTenant("detached-levels")
		now := h.now(t)
		bs := []Budget{dayBudget("day", now, 1000)}
		ttl := 300*time.Millisecond + h.slack
		one := []LevelLimits{{Key: "t:eng", Concurrent: 1}, {Key: "u:eng/ann", Concurrent: 1}}
		req := func(id string, detached bool) AdmitRequest {
			return AdmitRequest{Tenant: org, RequestID: id, Limits: Limits{LeaseTTL: time.Hour}, LevelLimits: one, Cost: 10, Budgets: bs, Detached: detached}
		}
		full := func(s Store, id, when string) {
			t.Helper()
			if d := mustAdmit(t, s, req(id, false)); d.Allowed || d.Denied != DimensionConcurrency || d.Level != "t:eng" {
				t.Fatalf("%s: a second plain request at Concurrent=1: %+v", when, d)
			}
		}
		settled := req("settled", true)
		expiring := req("expiring", true)
		expiring.Limits.LeaseTTL = ttl
		for _, r := range []AdmitRequest{settled, req("rebound", true), expiring} {
			if d := mustAdmit(t, h.store, r); !d.Allowed {
				t.Fatalf("detached %s: %+v", r.RequestID, d)
			}
		}
		if d := mustAdmit(t, h.replica, req("plain", false)); !d.Allowed {
			t.Fatalf("a plain request beside three detached ones at Concurrent=1: %+v", d)
		}
		full(h.store, "second", "while the plain one runs")
		if r := mustSettle(t, h.replica, SettleRequest{Tenant: org, RequestID: "settled", Cost: 5, Budgets: bs}); !r.Settled {
			t.Fatalf("detached settle: %+v", r)
		}
		full(h.replica, "second", "after a detached settle")
		if ok, err := h.store.(Rebinder).Rebind(ctxb, RebindRequest{Tenant: org, From: "rebound", To: "batch:1"}); err != nil || !ok {
			t.Fatalf("rebind: %v %v", ok, err)
		}
		if r := mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: "batch:1", Cost: 5, Budgets: bs}); !r.Settled {
			t.Fatalf("rebound settle: %+v", r)
		}
		full(h.store, "second", "after a rebound detached settle")
		h.advance(ttl + 50*time.Millisecond)
		// An admission of the org outside these levels sweeps the expired
		// detached one; the plain request still holds the slot.
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "sweeper", Limits: Limits{LeaseTTL: time.Hour}, Budgets: bs})
		if !d.Allowed || len(d.Expired) != 1 || d.Expired[0].RequestID != "expiring" {
			t.Fatalf("sweep: %+v", d)
		}
		full(h.store, "third", "after a detached expiry")
		if r := mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: "expiring", Cost: 5, Budgets: bs}); r.Settled {
			t.Fatalf("settled after its expiry: %+v", r)
		}
		mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: "plain", Cost: 5, Budgets: bs})
		if d := mustAdmit(t, h.replica, req("after", false)); !d.Allowed {
			t.Fatalf("the plain request's settle freed its slot: %+v", d)
		}
	})

	t.Run("DetachedRebindThenSettleOnce", func(t *testing.T) {
		org := newTenant("detached-rebind")
		now := h.now(t)
		bs := []Budget{dayBudget("day", now, 1000)}
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "submit", Limits: Limits{LeaseTTL: time.Hour}, Cost: 600, Budgets: bs, Detached: true})
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "plain", Cost: 10, Budgets: bs})
		rb := func(s Store, from, to string) bool {
			ok, err := s.(Rebinder).Rebind(ctxb, RebindRequest{Tenant: org, From: from, To: to})
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if rb(h.store, "plain", "x") || rb(h.store, "nope", "x") || rb(h.replica, "submit", "plain") {
			t.Fatal("rebound what it must not: a lease, an unknown id, onto a taken id")
		}
		if !rb(h.replica, "submit", "batch:1") || rb(h.store, "submit", "batch:2") {
			t.Fatal("the rebind did not move the reservation exactly once")
		}
		if r := mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: "submit", Cost: 1}); r.Settled {
			t.Fatalf("the old id still settles: %+v", r)
		}
		if other := mustSettle(t, h.store, SettleRequest{Tenant: newTenant("someone-else"), RequestID: "batch:1", Cost: 1}); other.Settled {
			t.Fatalf("another tenant settled it: %+v", other)
		}
		r := mustSettle(t, h.replica, SettleRequest{Tenant: org, RequestID: "batch:1", Cost: 250, Budgets: bs})
		if !r.Settled || r.Budgets[0].Spent != 250 || r.Budgets[0].Reserved != 10 {
			t.Fatalf("settle under the new id: %+v", r)
		}
		if r := mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: "batch:1", Cost: 250, Budgets: bs}); r.Settled {
			t.Fatalf("settled twice: %+v", r)
		}
	})

	t.Run("DetachedExpiresChargedAtEstimate", func(t *testing.T) {
		org := newTenant("detached-exp")
		now := h.now(t)
		bs := []Budget{dayBudget("day", now, 1000)}
		ttl := 200*time.Millisecond + h.slack
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "batch", Limits: Limits{LeaseTTL: ttl}, Cost: 300, Budgets: bs, Detached: true})
		h.advance(ttl + 50*time.Millisecond)
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "next", Limits: Limits{LeaseTTL: time.Hour}, Cost: 0, Budgets: bs})
		if !d.Allowed || len(d.Expired) != 1 || d.Expired[0].RequestID != "batch" || d.Expired[0].Cost != 300 {
			t.Fatalf("sweep: %+v", d)
		}
		if d.Budgets[0].Spent != 300 || d.Budgets[0].Reserved != 0 {
			t.Fatalf("after the expiry: %+v; want spent 300 (the estimate)", d.Budgets[0])
		}
		if r := mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: "batch", Cost: 10, Budgets: bs}); r.Settled {
			t.Fatalf("a settle after the expiry charged again: %+v", r)
		}
	})
}
