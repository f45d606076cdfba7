package limiter

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// countingStore counts the calls that reach the primary.
type countingStore struct {
	*Redis
	admits atomic.Int64
}

func (c *countingStore) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	c.admits.Add(1)
	return c.Redis.Admit(ctx, req)
}

// waitFor polls cond until it holds; the deadline only bounds a broken test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestResilientAgainstKilledRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	rs, err := NewRedis(RedisOptions{Client: c, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	primary := &countingStore{Redis: rs}
	var degraded [3]atomic.Int64
	res, err := NewResilient(ResilientOptions{
		Primary: primary, Replicas: 2, ProbeInterval: 100 * time.Millisecond,
		OnFailure: func(p FailurePolicy) {
			degraded[map[FailurePolicy]int{FailClosed: 0, FailOpen: 1, FailLocal: 2}[p]].Add(1)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	now, _ := c.Time(ctxb).Result()
	b := dayBudget("day", now, 1000)

	d, err := res.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "before", Cost: 100, Budgets: []Budget{b}})
	if err != nil || !d.Allowed || d.Degraded || !res.Up() {
		t.Fatalf("healthy admit: %+v %v up=%v", d, err, res.Up())
	}

	waitFor(t, "the store's epoch", func() bool { return res.Epoch() != "" })
	srv.Kill()
	// Closed: a typed error. The breaker opens on the failure rate, never
	// on one failure: the first calls (and the background heartbeat) find
	// the outage, the next ones skip the primary instead of waiting for it.
	for range 8 {
		if _, err := res.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "closed", OnFailure: FailClosed}); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("fail-closed admit: %v, want ErrUnavailable", err)
		}
	}
	if res.Up() || res.Ping(ctxb) == nil {
		t.Fatal("Up() or Ping still report a killed redis as up")
	}
	if n := primary.admits.Load(); n > 1+DefaultBreakerMinFailures+1 { // 1 healthy + the failures that open it + at most one probe
		t.Fatalf("%d admits reached the primary; the open circuit must skip it", n)
	}

	// Open: admitted unchecked, its settle queued.
	d, err = res.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "open", Cost: 5000, Budgets: []Budget{b}, OnFailure: FailOpen})
	if err != nil || !d.Allowed || !d.Degraded {
		t.Fatalf("fail-open admit: %+v %v", d, err)
	}
	if r, err := res.Settle(ctxb, SettleRequest{Tenant: "t", RequestID: "open", Cost: 300, Budgets: []Budget{b}}); err != nil || !r.Queued {
		t.Fatalf("fail-open settle: %+v %v", r, err)
	}
	// The settle of a request the primary admitted is queued too.
	if r, err := res.Settle(ctxb, SettleRequest{Tenant: "t", RequestID: "before", Cost: 40, Budgets: []Budget{b}}); err != nil || !r.Queued {
		t.Fatalf("settle while down: %+v %v", r, err)
	}

	// Local: limits divided by 2 replicas: 4 rpm → 2 here.
	lim := Limits{RequestsPerMinute: 4}
	for i, want := range []bool{true, true, false} {
		d, err := res.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "local" + string(rune('0'+i)), Limits: lim, OnFailure: FailLocal})
		if err != nil || d.Allowed != want || !d.Degraded {
			t.Fatalf("fail-local admit %d: %+v %v, want allowed=%v", i, d, err, want)
		}
	}
	// A budget of 1000 allows 500 per replica.
	if d, _ := res.Admit(ctxb, AdmitRequest{Tenant: "u", RequestID: "l", Cost: 501, Budgets: []Budget{b}, OnFailure: FailLocal}); d.Allowed || d.Denied != BudgetDimension("day") {
		t.Fatalf("local budget: %+v", d)
	}
	if r, err := res.Settle(ctxb, SettleRequest{Tenant: "t", RequestID: "local0", Cost: 1}); err != nil || !r.Settled || r.Queued {
		t.Fatalf("local settle: %+v %v", r, err)
	}
	if degraded[0].Load() != 8 || degraded[1].Load() != 1 || degraded[2].Load() != 4 {
		t.Fatalf("OnFailure counts closed/open/local = %d/%d/%d, want 8/1/4", degraded[0].Load(), degraded[1].Load(), degraded[2].Load())
	}

	// Redis comes back empty (nothing persists): the heartbeat notices,
	// the journal drains, and requests use it again. The fail-open spend is
	// reconciled (marked degraded), and so is the settle of "before", whose
	// reservation the restart lost.
	srv.Restart()
	waitFor(t, "the store to be up again", res.Up)
	waitFor(t, "the journal to drain", func() bool { return res.queueLen() == 0 })
	got, err := res.Budgets(ctxb, "t", []Budget{b})
	if err != nil || got[0].Spent != 340 || got[0].Degraded != 300 || got[0].Reserved != 0 {
		t.Fatalf("after recovery Budgets = %+v, %v; want the fail-open 300 and the lost settle's 40 reconciled", got, err)
	}
	if res.ResetAt().IsZero() {
		t.Fatal("the restart without persistence was not detected as a store reset")
	}
	d, err = res.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "after", Cost: 1, Budgets: []Budget{b}})
	if err != nil || !d.Allowed || d.Degraded {
		t.Fatalf("after recovery: %+v %v", d, err)
	}
}

func TestResilientScaled(t *testing.T) {
	r := &Resilient{floor: 3}
	req := AdmitRequest{
		Limits:  Limits{RequestsPerMinute: 10, TokensPerMinute: 2, Concurrent: 0},
		Budgets: []Budget{{Name: "day", Cap: 1000, Alerts: []int64{600, 1000}}},
	}
	got := r.scaled(req)
	if got.Limits.RequestsPerMinute != 3 || got.Limits.TokensPerMinute != 1 || got.Limits.Concurrent != 0 {
		t.Fatalf("scaled limits %+v", got.Limits)
	}
	if got.Budgets[0].Cap != 333 || got.Budgets[0].Alerts[0] != 200 || got.Budgets[0].Alerts[1] != 333 {
		t.Fatalf("scaled budget %+v", got.Budgets[0])
	}
	if req.Budgets[0].Cap != 1000 || req.Budgets[0].Alerts[0] != 600 {
		t.Fatalf("scaling changed the caller's request: %+v", req.Budgets[0])
	}
}
