package limiter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// harness is one store implementation under the conformance suite.
type harness struct {
	// store returns the store under test; replica returns another store that
	// shares its state (another replica on the same Redis), or the same one.
	store, replica Store
	// now reads the store's own clock.
	now func(t *testing.T) time.Time
	// advance lets d of the store's time pass: a fake clock jumps, Redis
	// sleeps, so time-dependent cases use short TTLs.
	advance func(d time.Duration)
	// dump is every piece of a tenant's state with its expiry, to prove a
	// denial wrote nothing.
	dump func(t *testing.T, tenant string) string
	// slack is how long a store call may take, for TTLs that must not expire
	// between two calls of one case (zero with a fake clock).
	slack time.Duration
}

var ctxb = context.Background()

// tenantSeq makes every case use its own tenant, so cases share a store
// without sharing state.
var tenantSeq atomic.Int64

func newTenant(name string) string {
	return fmt.Sprintf("%s-%d", name, tenantSeq.Add(1))
}

// dayBudget is a budget whose middle window contains now.
func dayBudget(name string, now time.Time, cap int64, alerts ...int64) Budget {
	start := now.Add(-time.Hour).Truncate(time.Second)
	b := Budget{Name: name, Cap: cap, Alerts: alerts}
	for i := range b.Windows {
		s := start.Add(time.Duration(i-1) * 2 * time.Hour)
		b.Windows[i] = Window{Start: s, End: s.Add(2 * time.Hour)}
	}
	return b
}

func mustAdmit(t *testing.T, s Store, req AdmitRequest) Decision {
	t.Helper()
	d, err := s.Admit(ctxb, req)
	if err != nil {
		t.Fatalf("Admit(%s): %v", req.RequestID, err)
	}
	return d
}

func mustSettle(t *testing.T, s Store, req SettleRequest) SettleResult {
	t.Helper()
	r, err := s.Settle(ctxb, req)
	if err != nil {
		t.Fatalf("Settle(%s): %v", req.RequestID, err)
	}
	return r
}

// gcraModel replays the GCRA of one dimension from the stores' own clock
// readings, so expectations are exact for Redis TIME as for a fake clock.
type gcraModel struct {
	r   rate
	tat int64
}

func (m *gcraModel) admit(now time.Time, cost int64) (allowed bool, retry time.Duration, st RateState) {
	n := unixMicros(now)
	tat := max(m.tat, n)
	inc := increment(cost, m.r.limit)
	if tat+inc-n <= m.r.tolerance {
		m.tat = tat + inc
		return true, 0, m.r.state(n, m.tat)
	}
	return false, micros(tat + inc - m.r.tolerance - n), m.r.state(n, tat)
}

func runConformance(t *testing.T, h harness) {
	runSharedConformance(t, h)
	runLevelsConformance(t, h)
	runLevelLimitsConformance(t, h)
	runDetachedConformance(t, h)
	runNotesConformance(t, h)
	runClampConformance(t, h)
	runCalibrationConformance(t, h)
	runCountConformance(t, h)
	t.Run("RequestsPerMinute", func(t *testing.T) {
		tenant := newTenant("rpm")
		m := gcraModel{r: newRate(3, 0)}
		for i := range 6 {
			d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: fmt.Sprint(i), Limits: Limits{RequestsPerMinute: 3}})
			allowed, retry, st := m.admit(d.Now, 1)
			if d.Allowed != allowed || d.Requests != st || d.RetryAfter != retry {
				t.Fatalf("request %d: got allowed=%v state=%+v retry=%v, want %v %+v %v", i, d.Allowed, d.Requests, d.RetryAfter, allowed, st, retry)
			}
			if want := i < 3; d.Allowed != want {
				t.Fatalf("request %d: allowed=%v, want %v", i, d.Allowed, want)
			}
			if !d.Allowed && (d.Denied != DimensionRequests || d.RetryAfter <= 0 || d.NeverFits) {
				t.Fatalf("request %d: denied=%q retry=%v neverFits=%v", i, d.Denied, d.RetryAfter, d.NeverFits)
			}
		}
	})

	t.Run("TokensPerMinute", func(t *testing.T) {
		tenant := newTenant("tpm")
		lim := Limits{TokensPerMinute: 1000, Burst: 0.5} // tolerance 30s = 500 tokens at once
		m := gcraModel{r: newRate(1000, 0.5)}
		for i, tokens := range []int64{300, 150, 100, 50} {
			d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: fmt.Sprint(i), Limits: lim, Tokens: tokens})
			allowed, retry, st := m.admit(d.Now, tokens)
			if d.Allowed != allowed || d.Tokens != st || d.RetryAfter != retry {
				t.Fatalf("request %d (%d tokens): got allowed=%v state=%+v retry=%v, want %v %+v %v",
					i, tokens, d.Allowed, d.Tokens, d.RetryAfter, allowed, st, retry)
			}
			if want := i != 2; d.Allowed != want { // 300+150 fit in 500, 100 more do not, 50 do
				t.Fatalf("request %d: allowed=%v, want %v (state %+v)", i, d.Allowed, want, d.Tokens)
			}
			if !d.Allowed && d.Denied != DimensionTokens {
				t.Fatalf("request %d: denied=%q", i, d.Denied)
			}
		}
		// 600 tokens exceed the whole 30s tolerance: it can never conform.
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: newTenant("tpm"), RequestID: "big", Limits: lim, Tokens: 600})
		if d.Allowed || d.Denied != DimensionTokens || !d.NeverFits || d.RetryAfter != 0 || d.Tokens.Remaining != 500 {
			t.Fatalf("never-fitting request: %+v", d)
		}
	})

	t.Run("Concurrency", func(t *testing.T) {
		tenant := newTenant("conc")
		lim := Limits{Concurrent: 2, RequestsPerMinute: 1000}
		for i := range 3 {
			d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: fmt.Sprint(i), Limits: lim})
			if d.Allowed != (i < 2) {
				t.Fatalf("request %d: allowed=%v", i, d.Allowed)
			}
			if i == 2 && (d.Denied != DimensionConcurrency || d.RetryAfter != 0) {
				t.Fatalf("third: denied=%q retry=%v", d.Denied, d.RetryAfter)
			}
		}
		if r := mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "0"}); !r.Settled {
			t.Fatal("settle 0: not settled")
		}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "3", Limits: lim}); !d.Allowed {
			t.Fatalf("after a settle: %+v", d)
		}
	})

	t.Run("DenialOrder", func(t *testing.T) {
		tenant := newTenant("order")
		now := h.now(t)
		b := dayBudget("day", now, 100)
		lim := Limits{Concurrent: 1, RequestsPerMinute: 1, TokensPerMinute: 100}
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Limits: lim, Tokens: 100, Cost: 100, Budgets: []Budget{b}})
		// Every dimension is exhausted; concurrency is reported first.
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Limits: lim, Tokens: 100, Cost: 100, Budgets: []Budget{b}})
		if d.Denied != DimensionConcurrency {
			t.Fatalf("denied=%q, want concurrency", d.Denied)
		}
		lim.Concurrent = 0
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Limits: lim, Tokens: 100, Cost: 100, Budgets: []Budget{b}}); d.Denied != DimensionRequests {
			t.Fatalf("denied=%q, want requests", d.Denied)
		}
		lim.RequestsPerMinute = 0
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Limits: lim, Tokens: 100, Cost: 100, Budgets: []Budget{b}}); d.Denied != DimensionTokens {
			t.Fatalf("denied=%q, want tokens", d.Denied)
		}
		lim.TokensPerMinute = 0
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Limits: lim, Tokens: 100, Cost: 100, Budgets: []Budget{b}}); d.Denied != BudgetDimension("day") {
			t.Fatalf("denied=%q, want budget_day", d.Denied)
		}
	})

	t.Run("Budget", func(t *testing.T) {
		tenant := newTenant("budget")
		now := h.now(t)
		day, month := dayBudget("day", now, 1000), dayBudget("month", now, 150)
		bs := []Budget{day, month}
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Cost: 100, Budgets: bs})
		if !d.Allowed || len(d.Budgets) != 2 || d.Budgets[0].Reserved != 100 || d.Budgets[1].Reserved != 100 ||
			d.Budgets[0].Window != day.Windows[1] || d.Budgets[1].Cap != 150 {
			t.Fatalf("first: %+v", d)
		}
		d = mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Cost: 51, Budgets: bs})
		if d.Allowed || d.Denied != BudgetDimension("month") || d.RetryAfter != month.Windows[1].End.Sub(d.Now) {
			t.Fatalf("over the month cap: %+v (window end %v)", d, month.Windows[1].End)
		}
		if d.Budgets[1].Reserved != 100 || d.Budgets[1].Spent != 0 {
			t.Fatalf("denial changed the budget view: %+v", d.Budgets[1])
		}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "c", Cost: 50, Budgets: bs}); !d.Allowed {
			t.Fatalf("exactly the cap: %+v", d)
		}
		got, err := h.store.Budgets(ctxb, tenant, bs)
		if err != nil || len(got) != 2 || got[1].Reserved != 150 || got[1].Spent != 0 || got[1].Used() != 1 {
			t.Fatalf("Budgets = %+v, %v", got, err)
		}
	})

	t.Run("WindowByStoreClock", func(t *testing.T) {
		tenant := newTenant("window")
		now := h.now(t).Truncate(time.Second)
		// The caller's clock is an hour behind: its "current" window is
		// Windows[1], but the store's now is inside Windows[2].
		b := Budget{Name: "day", Cap: 1000, Windows: [3]Window{
			{now.Add(-3 * time.Hour), now.Add(-2 * time.Hour)},
			{now.Add(-2 * time.Hour), now.Add(-time.Minute)},
			{now.Add(-time.Minute), now.Add(time.Hour)},
		}}
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Cost: 10, Budgets: []Budget{b}})
		if d.Budgets[0].Window != b.Windows[2] {
			t.Fatalf("window %+v, want %+v", d.Budgets[0].Window, b.Windows[2])
		}
		r := mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "a", Cost: 7, Budgets: []Budget{b}})
		if len(r.Budgets) != 1 || !r.Budgets[0].Window.Start.Equal(b.Windows[2].Start) || r.Budgets[0].Spent != 7 {
			t.Fatalf("settle: %+v", r)
		}
		// No window contains now: the last one that has started is charged.
		late := Budget{Name: "day", Cap: 1000, Windows: [3]Window{
			{now.Add(-3 * time.Hour), now.Add(-2 * time.Hour)},
			{now.Add(-2 * time.Hour), now.Add(-time.Hour)},
			{now.Add(time.Hour), now.Add(2 * time.Hour)},
		}}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Cost: 1, Budgets: []Budget{late}}); d.Budgets[0].Window != late.Windows[1] {
			t.Fatalf("window %+v, want %+v", d.Budgets[0].Window, late.Windows[1])
		}
	})

	t.Run("DenyWritesNothing", func(t *testing.T) {
		tenant := newTenant("deny")
		now := h.now(t)
		b := dayBudget("day", now, 100, 50)
		lim := Limits{Concurrent: 2, RequestsPerMinute: 2, TokensPerMinute: 1000, LeaseTTL: time.Minute}
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Limits: lim, Tokens: 500, Cost: 60, Budgets: []Budget{b}})
		before := h.dump(t, tenant)
		for _, req := range []AdmitRequest{
			{Tenant: tenant, RequestID: "b", Limits: lim, Tokens: 600, Cost: 10, Budgets: []Budget{b}},                       // tokens
			{Tenant: tenant, RequestID: "b", Limits: lim, Tokens: 100, Cost: 50, Budgets: []Budget{b}},                       // budget
			{Tenant: tenant, RequestID: "b", Limits: Limits{Concurrent: 1}, Tokens: 1, Cost: 1, Budgets: []Budget{b}},        // concurrency
			{Tenant: tenant, RequestID: "b", Limits: Limits{RequestsPerMinute: 1}, Tokens: 1, Cost: 1, Budgets: []Budget{b}}, // requests
			{Tenant: tenant, RequestID: "a", Limits: lim, Tokens: 1, Cost: 1, Budgets: []Budget{b}},                          // duplicate id
		} {
			d, err := h.store.Admit(ctxb, req)
			if err == nil && d.Allowed {
				t.Fatalf("%+v was allowed", req)
			}
			if after := h.dump(t, tenant); after != before {
				t.Fatalf("denial (%v, %v) wrote:\nbefore %s\nafter  %s", d.Denied, err, before, after)
			}
		}
	})

	t.Run("DuplicateRequestID", func(t *testing.T) {
		tenant := newTenant("dup")
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a"})
		if _, err := h.replica.Admit(ctxb, AdmitRequest{Tenant: tenant, RequestID: "a"}); !errors.Is(err, ErrDuplicateRequest) {
			t.Fatalf("second admit of one id: %v, want ErrDuplicateRequest", err)
		}
	})

	t.Run("SettleRefundAndCharge", func(t *testing.T) {
		tenant := newTenant("settle")
		now := h.now(t)
		b := dayBudget("day", now, 10_000)
		lim := Limits{TokensPerMinute: 1000}
		m := gcraModel{r: newRate(1000, 0)}
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Limits: lim, Tokens: 800, Cost: 800, Budgets: []Budget{b}})
		m.admit(d.Now, 800)
		r := mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "a", Tokens: 200, Cost: 250, Budgets: []Budget{b}})
		if !r.Settled || len(r.Budgets) != 1 || r.Budgets[0].Spent != 250 || r.Budgets[0].Reserved != 0 || r.Budgets[0].Cap != 10_000 {
			t.Fatalf("refund settle: %+v", r)
		}
		m.tat -= increment(600, 1000) // the refund
		// 800 more tokens fit only because 600 were refunded.
		d = mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Limits: lim, Tokens: 800, Cost: 100, Budgets: []Budget{b}})
		allowed, _, st := m.admit(d.Now, 800)
		if !d.Allowed || !allowed || d.Tokens != st {
			t.Fatalf("after refund: %+v, model state %+v", d, st)
		}
		// Charging above the estimate pushes TAT beyond the tolerance: debt.
		r = mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "b", Tokens: 1500, Cost: 900, Budgets: []Budget{b}})
		if !r.Settled || r.Budgets[0].Spent != 1150 || r.Budgets[0].Reserved != 0 {
			t.Fatalf("charge settle: %+v", r)
		}
		m.tat += increment(700, 1000)
		d = mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "c", Limits: lim, Tokens: 1})
		allowed, retry, st := m.admit(d.Now, 1)
		if d.Allowed || allowed || d.Denied != DimensionTokens || d.Tokens != st || d.RetryAfter != retry || d.Tokens.Remaining != 0 {
			t.Fatalf("in debt: %+v, model %v %+v %v", d, allowed, st, retry)
		}
	})

	t.Run("FullRefundFreesTheBucket", func(t *testing.T) {
		tenant := newTenant("floor")
		lim := Limits{TokensPerMinute: 600}
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Limits: lim, Tokens: 300})
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Limits: lim, Tokens: 300})
		// Refunding both completely empties the bucket (and, as TAT never
		// goes below now, not more than that).
		mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "a"})
		mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "b"})
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "c", Limits: lim, Tokens: 600})
		if !d.Allowed || d.Tokens.Remaining != 0 {
			t.Fatalf("after full refunds: %+v", d)
		}
	})

	t.Run("SettleIdempotent", func(t *testing.T) {
		tenant := newTenant("idem")
		b := dayBudget("day", h.now(t), 10_000)
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Cost: 500, Budgets: []Budget{b}})
		var wg sync.WaitGroup
		var settled atomic.Int64
		errs := make(chan error, 50)
		for i := range 50 {
			s := h.store
			if i%2 == 1 {
				s = h.replica
			}
			wg.Go(func() {
				r, err := s.Settle(ctxb, SettleRequest{Tenant: tenant, RequestID: "a", Cost: 321, Budgets: []Budget{b}})
				if err != nil {
					errs <- err
					return
				}
				if r.Settled {
					settled.Add(1)
				} else if len(r.Budgets) != 0 || len(r.Crossed) != 0 {
					errs <- fmt.Errorf("a no-op settle reported %+v", r)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if settled.Load() != 1 {
			t.Fatalf("%d of 50 duplicate settles settled, want 1", settled.Load())
		}
		got, err := h.store.Budgets(ctxb, tenant, []Budget{b})
		if err != nil || got[0].Spent != 321 || got[0].Reserved != 0 {
			t.Fatalf("Budgets = %+v, %v", got, err)
		}
		if r := mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "unknown", Cost: 5}); r.Settled {
			t.Fatal("unknown id settled")
		}
	})

	t.Run("LeasesExpire", func(t *testing.T) {
		tenant := newTenant("lease")
		ttl := 200*time.Millisecond + h.slack
		lim := Limits{Concurrent: 1, LeaseTTL: ttl}
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Limits: lim})
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Limits: lim}); d.Allowed {
			t.Fatal("second lease granted while the first is live")
		}
		h.advance(ttl + 50*time.Millisecond)
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "b", Limits: lim})
		if !d.Allowed || len(d.Expired) != 1 || d.Expired[0].RequestID != "a" || d.Expired[0].Tenant != tenant {
			t.Fatalf("after the lease expired: %+v", d)
		}
	})

	t.Run("ExpiryChargedOnceAtEstimate", func(t *testing.T) {
		tenant := newTenant("expiry")
		b := dayBudget("day", h.now(t), 10_000, 100, 150)
		ttl := 200*time.Millisecond + h.slack
		lim := Limits{LeaseTTL: ttl}
		for i := range 3 {
			mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: fmt.Sprint("old", i), Model: "m", Limits: lim, Cost: 70, Budgets: []Budget{b}})
		}
		h.advance(ttl + 50*time.Millisecond)
		// Two replicas sweep concurrently, each through its own admission.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var expired []string
		var crossed []int64
		for i, s := range []Store{h.store, h.replica, h.store, h.replica} {
			wg.Go(func() {
				d, err := s.Admit(ctxb, AdmitRequest{Tenant: tenant, RequestID: fmt.Sprint("new", i), Limits: Limits{LeaseTTL: time.Hour}, Cost: 1, Budgets: []Budget{b}})
				if err != nil || !d.Allowed {
					t.Errorf("admit new%d: %+v %v", i, d, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, e := range d.Expired {
					if e.Model != "m" || e.Cost != 70 {
						t.Errorf("expired %+v", e)
					}
					expired = append(expired, e.RequestID)
				}
				for _, c := range d.Crossed {
					crossed = append(crossed, c.Threshold)
				}
			})
		}
		wg.Wait()
		slices.Sort(expired)
		slices.Sort(crossed)
		if !slices.Equal(expired, []string{"old0", "old1", "old2"}) || !slices.Equal(crossed, []int64{100, 150}) {
			t.Fatalf("expired %v crossed %v; want each old reservation once and alerts 100, 150 once", expired, crossed)
		}
		got, err := h.store.Budgets(ctxb, tenant, []Budget{b})
		if err != nil || got[0].Spent != 210 || got[0].Reserved != 4 {
			t.Fatalf("Budgets = %+v, %v; want spent 210 (3 × 70), reserved 4", got, err)
		}
		// A late settle of an expired reservation is a no-op: it was charged
		// at its estimate already.
		if r := mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "old0", Cost: 5, Budgets: []Budget{b}}); r.Settled {
			t.Fatalf("late settle: %+v", r)
		}
	})

	t.Run("LateSettleSweepsItself", func(t *testing.T) {
		tenant := newTenant("late")
		b := dayBudget("day", h.now(t), 10_000)
		ttl := 200*time.Millisecond + h.slack
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "a", Limits: Limits{LeaseTTL: ttl}, Cost: 40, Budgets: []Budget{b}})
		h.advance(ttl + 50*time.Millisecond)
		r := mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "a", Cost: 5, Budgets: []Budget{b}})
		if r.Settled || len(r.Expired) != 1 || r.Expired[0].Cost != 40 {
			t.Fatalf("settle after expiry: %+v", r)
		}
		got, _ := h.store.Budgets(ctxb, tenant, []Budget{b})
		if got[0].Spent != 40 || got[0].Reserved != 0 {
			t.Fatalf("Budgets = %+v; want spent 40 at the estimate", got)
		}
	})

	t.Run("AlertsOncePerWindowAcrossReplicas", func(t *testing.T) {
		tenant := newTenant("alert")
		b := dayBudget("day", h.now(t), 1000, 500, 900, 1000)
		var got [][]int64
		for i, cost := range []int64{600, 100, 250, 50} {
			s := []Store{h.store, h.replica}[i%2]
			id := fmt.Sprint(i)
			mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: id, Cost: 1, Budgets: []Budget{b}})
			r := mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: id, Cost: cost, Budgets: []Budget{b}})
			var th []int64
			for _, c := range r.Crossed {
				if c.Budget != "day" || c.Cap != 1000 || !c.Window.Start.Equal(b.Windows[1].Start) {
					t.Fatalf("crossing %+v", c)
				}
				th = append(th, c.Threshold)
			}
			got = append(got, th)
		}
		want := [][]int64{{500}, nil, {900}, {1000}}
		for i := range want {
			if !slices.Equal(got[i], want[i]) {
				t.Fatalf("crossings per settle %v, want %v", got, want)
			}
		}
	})

	t.Run("ExactlyFiftyOfFiveHundred", func(t *testing.T) {
		tenant := newTenant("race")
		const est = 1_000_000
		b := dayBudget("day", h.now(t), 50*est)
		var admitted atomic.Int64
		var wg sync.WaitGroup
		var mu sync.Mutex
		var ids []string
		sem := make(chan struct{}, 64)
		for i := range 500 {
			s := []Store{h.store, h.replica}[i%2]
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				id := fmt.Sprint("r", i)
				d, err := s.Admit(ctxb, AdmitRequest{Tenant: tenant, RequestID: id, Cost: est, Budgets: []Budget{b}})
				if err != nil {
					t.Errorf("admit: %v", err)
					return
				}
				if d.Allowed {
					admitted.Add(1)
					mu.Lock()
					ids = append(ids, id)
					mu.Unlock()
				} else if d.Denied != BudgetDimension("day") {
					t.Errorf("denied by %q", d.Denied)
				}
			})
		}
		wg.Wait()
		if admitted.Load() != 50 {
			t.Fatalf("admitted %d of 500, want exactly 50", admitted.Load())
		}
		var sum int64
		for i, id := range ids {
			actual := rand.Int64N(est + 1)
			sum += actual
			s := []Store{h.store, h.replica}[i%2]
			wg.Go(func() {
				if r, err := s.Settle(ctxb, SettleRequest{Tenant: tenant, RequestID: id, Cost: actual}); err != nil || !r.Settled {
					t.Errorf("settle %s: %+v %v", id, r, err)
				}
			})
		}
		wg.Wait()
		got, err := h.store.Budgets(ctxb, tenant, []Budget{b})
		if err != nil || got[0].Spent != sum || got[0].Reserved != 0 {
			t.Fatalf("Budgets = %+v, %v; want spent %d, reserved 0", got, err, sum)
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		bad := dayBudget("d:y", h.now(t), 1)
		for _, req := range []AdmitRequest{
			{RequestID: "a"},
			{Tenant: "t"},
			{Tenant: "t", RequestID: "a", Tokens: -1},
			{Tenant: "t", RequestID: "a", Cost: MaxCost + 1},
			{Tenant: "t", RequestID: "a", Limits: Limits{Burst: 2}},
			{Tenant: "t", RequestID: "a", Budgets: []Budget{bad}},
			{Tenant: "t", RequestID: "a", Budgets: []Budget{{Name: "day", Cap: 1}}},
		} {
			if _, err := h.store.Admit(ctxb, req); !errors.Is(err, ErrInvalid) {
				t.Errorf("Admit(%+v) = %v, want ErrInvalid", req, err)
			}
		}
		if _, err := h.store.Settle(ctxb, SettleRequest{Tenant: "t", RequestID: "a", Cost: -1}); !errors.Is(err, ErrInvalid) {
			t.Errorf("Settle with negative cost = %v, want ErrInvalid", err)
		}
	})
}
