package limiter

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// runSharedConformance runs the cases of the Shared operations: cancel in
// both orders, lease renewal, reconciliation and the heartbeat.
func runSharedConformance(t *testing.T, h harness) {
	shared := func(s Store) Shared { return s.(Shared) }
	s, replica := shared(h.store), shared(h.replica)

	t.Run("CancelAfterAdmitReleasesEverything", func(t *testing.T) {
		tenant := newTenant("cancel-after")
		b := dayBudget("day", h.now(t), 1000)
		lim := Limits{Concurrent: 1, RequestsPerMinute: 2, TokensPerMinute: 1000}
		// The admission whose reply was lost ran in the store.
		if d := mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "lost", Limits: lim, Tokens: 900, Cost: 600, Budgets: []Budget{b}}); !d.Allowed {
			t.Fatalf("admit: %+v", d)
		}
		r, err := replica.Cancel(ctxb, CancelRequest{Tenant: tenant, RequestID: "lost", RequestsPerMinute: 2})
		if err != nil || !r.Released {
			t.Fatalf("cancel: %+v %v", r, err)
		}
		// Nothing stays: the slot, the budget, the tokens and the request.
		d := mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "next", Limits: lim, Tokens: 1000, Cost: 1000, Budgets: []Budget{b}})
		if !d.Allowed || d.Budgets[0].Spent != 0 || d.Budgets[0].Reserved != 1000 || d.Requests.Remaining != 1 {
			t.Fatalf("after the cancel: %+v", d)
		}
		if r := mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: "lost", Cost: 5}); r.Settled || r.Unknown {
			t.Fatalf("settle of a cancelled reservation: %+v", r)
		}
		if r, err := s.Cancel(ctxb, CancelRequest{Tenant: tenant, RequestID: "lost"}); err != nil || r.Released {
			t.Fatalf("second cancel: %+v %v", r, err)
		}
	})

	// A lease's block of requests (AdmitRequest.Count) cancelled gives back
	// every request it counted, at the org and at the levels below: with one
	// back instead, the two singles after it would not fit the rpm of 4.
	t.Run("CancelGivesBackEveryRequestOfABlock", func(t *testing.T) {
		tenant := newTenant("cancel-block")
		for _, c := range []struct {
			name   string
			limits Limits
			levels []LevelLimits
		}{
			{"org", Limits{RequestsPerMinute: 4}, nil},
			{"user", Limits{}, userLimits("eng", "ann", LevelLimits{}, LevelLimits{RequestsPerMinute: 4})},
		} {
			admit := func(id string, count int64) Decision {
				return mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: c.name + id, Limits: c.limits, LevelLimits: c.levels, Count: count, Detached: count > 1})
			}
			if d := admit("block", 3); !d.Allowed {
				t.Fatalf("%s: the block of 3: %+v", c.name, d)
			}
			if d := admit("over", 2); d.Allowed {
				t.Fatalf("%s: 2 more beside the block of 3 under 4 a minute: %+v", c.name, d)
			}
			r, err := replica.Cancel(ctxb, CancelRequest{Tenant: tenant, RequestID: c.name + "block", RequestsPerMinute: c.limits.RequestsPerMinute, Requests: 3})
			if err != nil || !r.Released {
				t.Fatalf("%s: cancel: %+v %v", c.name, r, err)
			}
			for i := range 4 {
				if d := admit(fmt.Sprint("single", i), 1); !d.Allowed {
					t.Fatalf("%s: single %d after the cancel: %+v", c.name, i, d)
				}
			}
			if d := admit("fifth", 1); d.Allowed {
				t.Fatalf("%s: a fifth in the minute: %+v", c.name, d)
			}
		}
	})

	t.Run("CancelBeforeAdmitMakesItANoOp", func(t *testing.T) {
		tenant := newTenant("cancel-before")
		b := dayBudget("day", h.now(t), 1000)
		// The cancel overtook the admission on another connection.
		if r, err := s.Cancel(ctxb, CancelRequest{Tenant: tenant, RequestID: "late"}); err != nil || r.Released {
			t.Fatalf("cancel of an unknown id: %+v %v", r, err)
		}
		before := h.dump(t, tenant)
		_, err := replica.Admit(ctxb, AdmitRequest{Tenant: tenant, RequestID: "late", Limits: Limits{Concurrent: 1}, Cost: 10, Budgets: []Budget{b}})
		if !errors.Is(err, ErrDuplicateRequest) {
			t.Fatalf("late admission after its cancel: %v, want ErrDuplicateRequest", err)
		}
		if after := h.dump(t, tenant); after != before {
			t.Fatalf("the late admission wrote:\nbefore %s\nafter  %s", before, after)
		}
		got, err := s.Budgets(ctxb, tenant, []Budget{b})
		if err != nil || got[0].Spent != 0 || got[0].Reserved != 0 {
			t.Fatalf("Budgets = %+v, %v", got, err)
		}
	})

	t.Run("RenewKeepsTheLease", func(t *testing.T) {
		tenant := newTenant("renew")
		ttl := 600*time.Millisecond + 2*h.slack
		lim := Limits{Concurrent: 1, LeaseTTL: ttl}
		mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "long", Limits: lim})
		mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "short", Limits: Limits{LeaseTTL: ttl}})
		h.advance(ttl / 2)
		n, err := replica.Renew(ctxb, RenewRequest{Tenant: tenant, RequestIDs: []string{"long", "unknown"}, LeaseTTL: ttl})
		if err != nil || n != 1 {
			t.Fatalf("renew: %d %v", n, err)
		}
		h.advance(ttl/2 + 50*time.Millisecond)
		// "short" expired, "long" was renewed and still holds the slot.
		d := mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "other", Limits: lim})
		if d.Allowed || d.Denied != DimensionConcurrency {
			t.Fatalf("a renewed lease was not held: %+v", d)
		}
		if n, err := s.Renew(ctxb, RenewRequest{Tenant: tenant, RequestIDs: []string{"short"}, LeaseTTL: ttl}); err != nil || n != 0 {
			t.Fatalf("renewing an expired lease: %d %v", n, err)
		}
		if r := mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: "long"}); !r.Settled {
			t.Fatalf("settle after renewals: %+v", r)
		}
	})

	t.Run("RenewDetached", func(t *testing.T) {
		// A detached reservation (a lease Leased holds) is renewed only by a
		// Detached renew, and then outlives its first TTL: settled, not
		// expired at its estimate.
		tenant := newTenant("renew-detached")
		ttl := 600*time.Millisecond + 2*h.slack
		b := dayBudget("day", h.now(t), 1000)
		mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "lease", Count: 4, Cost: 400, Budgets: []Budget{b}, Limits: Limits{LeaseTTL: ttl}, Detached: true})
		h.advance(ttl / 2)
		if n, err := replica.Renew(ctxb, RenewRequest{Tenant: tenant, RequestIDs: []string{"lease"}, LeaseTTL: ttl}); err != nil || n != 0 {
			t.Fatalf("a pending renew of a detached reservation: %d %v", n, err)
		}
		if n, err := replica.Renew(ctxb, RenewRequest{Tenant: tenant, RequestIDs: []string{"lease", "unknown"}, LeaseTTL: ttl, Detached: true}); err != nil || n != 1 {
			t.Fatalf("detached renew: %d %v", n, err)
		}
		h.advance(ttl/2 + 50*time.Millisecond)
		// Any writing call sweeps what expired: the lease must not be among it.
		if d := mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "other", Budgets: []Budget{b}}); len(d.Expired) != 0 {
			t.Fatalf("a renewed detached reservation expired: %+v", d.Expired)
		}
		if r := mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: "lease", Cost: 150, Budgets: []Budget{b}}); !r.Settled || r.Budgets[0].Spent != 150 {
			t.Fatalf("settle after the renewal: %+v", r)
		}
	})

	t.Run("ReconcileOnce", func(t *testing.T) {
		tenant := newTenant("reconcile")
		b := dayBudget("day", h.now(t), 1000, 500)
		ws := ChargeWindows([]Budget{b}, h.now(t))
		req := ReconcileRequest{Tenant: tenant, RequestID: "x~d", Cost: 600, Degraded: true, Windows: ws, Budgets: []Budget{b}}
		r, err := s.Reconcile(ctxb, req)
		if err != nil || !r.Applied || len(r.Budgets) != 1 || r.Budgets[0].Spent != 600 || len(r.Crossed) != 1 || r.Crossed[0].Threshold != 500 {
			t.Fatalf("reconcile: %+v %v", r, err)
		}
		if r, err := replica.Reconcile(ctxb, req); err != nil || r.Applied {
			t.Fatalf("second reconcile: %+v %v", r, err)
		}
		// Unless: a request whose own record exists is already charged.
		mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "y", Cost: 1, Budgets: []Budget{b}})
		mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: "y", Cost: 7})
		if r, err := s.Reconcile(ctxb, ReconcileRequest{Tenant: tenant, RequestID: "y~r", Unless: "y", Cost: 7, Windows: ws}); err != nil || r.Applied {
			t.Fatalf("reconcile of a settled id: %+v %v", r, err)
		}
		got, err := s.Budgets(ctxb, tenant, []Budget{b})
		if err != nil || got[0].Spent != 607 || got[0].Degraded != 600 || got[0].Reserved != 0 {
			t.Fatalf("Budgets = %+v, %v; want spent 607 of which 600 degraded", got, err)
		}
		if _, err := s.Reconcile(ctxb, ReconcileRequest{Tenant: tenant, RequestID: "z", Cost: -1}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("negative cost: %v", err)
		}
	})

	t.Run("SettleUnknown", func(t *testing.T) {
		tenant := newTenant("unknown")
		if r := mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: "never"}); r.Settled || !r.Unknown {
			t.Fatalf("settle of an id never admitted: %+v", r)
		}
		mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "a"})
		mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: "a"})
		if r := mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: "a"}); r.Settled || r.Unknown {
			t.Fatalf("second settle: %+v", r)
		}
	})

	t.Run("HeartbeatEpoch", func(t *testing.T) {
		a, err := s.Heartbeat(ctxb, HeartbeatRequest{Replica: newTenant("replica"), TTL: time.Minute, Epoch: newTenant("epoch")})
		if err != nil || a.Epoch == "" || a.Live < 1 {
			t.Fatalf("heartbeat: %+v %v", a, err)
		}
		b, err := replica.Heartbeat(ctxb, HeartbeatRequest{Replica: newTenant("replica"), TTL: time.Minute, Epoch: newTenant("epoch")})
		if err != nil || b.Epoch != a.Epoch || b.Created || b.Live < 2 {
			t.Fatalf("second replica's heartbeat: %+v %v (first %+v)", b, err, a)
		}
	})
}
