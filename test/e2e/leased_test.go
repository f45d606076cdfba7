package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/limiter"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// TestLeasedAdmissionAcrossReplicas: three serve replicas on one Redis, a
// policy with leases and 60 requests a minute, 200 requests 50 at a time.
// Admissions stay within what exact GCRA admits, at least 60 − 3 × 8 are
// admitted, the spend ends at the mock's usage priced exactly, and Redis
// runs fewer script calls than two per admitted exchange.
func TestLeasedAdmissionAcrossReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server and three replicas")
	}
	srv := redistest.Start(t, redistest.Options{})
	leased := func(st limiter.Store) limiter.Store {
		l := limiter.NewLeased(limiter.LeasedOptions{Inner: st, Replicas: func() int64 { return 3 }})
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
	s := newStack(t, stackOptions{processors: 3, redis: srv.Addr(), filter: patient, wrap: leased, config: `
policies:
  default:
    limits: {requests_per_minute: 60, concurrent: 10000}
    budgets: [{window: month, usd: 1000}]
    leases: {max_age: 1s, max_requests: 8}
tenants:
  team: {}
`})
	probe := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer probe.Close()
	before := commandCalls(t, probe)
	var tl tally
	ok, denied, other := &tl.ok, &tl.denied, &tl.other
	start := time.Now()
	parallel(200, 50, func(i int) {
		tl.count(t, i, "org/requests", s.do(context.Background(), i, anthropicRequest(budgetBody(i%2 == 1),
			sim.Header{Name: "x-tenant-id", Value: "team"}, sim.Header{Name: "x-mock-output-tokens", Value: "100"})))
	})
	elapsed := time.Since(start)
	// The leases settle once their last request has and they are max_age
	// old.
	deadline := time.Now().Add(10 * time.Second)
	for s.budget("team", "month").Reserved != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	b := s.budget("team", "month")
	var want int64
	for _, e := range s.mock.Provider().Ledger() {
		want += expectedCost(t, "claude-sonnet-4-5", e.Reported)
	}
	n := ok.Load()
	// GCRA at 60 a minute: 60 at once, then one a second (+1 for the
	// clocks' granularity).
	if bound := 60 + int64(elapsed/time.Second) + 1; n > bound {
		t.Errorf("admitted %d in %v, above exact mode's %d", n, elapsed, bound)
	}
	if n < 60-3*8 || other.Load() != 0 || n+denied.Load() != 200 {
		t.Errorf("admitted %d (want ≥ %d), denied %d, other %d", n, 60-3*8, denied.Load(), other.Load())
	}
	if b.Reserved != 0 || b.Spent != want {
		t.Errorf("spent %d reserved %d; the mock's usage priced exactly is %d", b.Spent, b.Reserved, want)
	}
	delta := diffCalls(before, commandCalls(t, probe))
	calls := delta["evalsha"] + delta["eval"]
	if calls >= 2*n {
		t.Errorf("%d script calls for %d admitted exchanges, not fewer than exact mode's 2 each", calls, n)
	}
	t.Logf("admitted %d, denied %d in %v; %d script calls; spent %d", n, denied.Load(), elapsed, calls, b.Spent)
}
