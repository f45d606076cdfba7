package limiter

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for the memory store.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newMemoryHarness() (harness, *Memory, *fakeClock) {
	clock := &fakeClock{t: time.Date(2026, 11, 21, 12, 0, 0, 123456000, time.UTC)}
	m := NewMemory(MemoryOptions{Now: clock.Now})
	return harness{
		store:   m,
		replica: m,
		now:     func(*testing.T) time.Time { return clock.Now() },
		advance: clock.Advance,
		dump:    func(_ *testing.T, tenant string) string { return m.dump(tenant) },
	}, m, clock
}

func TestMemoryConformance(t *testing.T) {
	h, _, _ := newMemoryHarness()
	runConformance(t, h)
}

// dump renders one tenant's state deterministically.
func (m *Memory) dump(tenant string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tenants[tenant]
	if t == nil {
		return "<none>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "rpm=%d tpm=%d", t.rpm, t.tpm)
	for _, id := range slices.Sorted(maps.Keys(t.pending.byID)) {
		fmt.Fprintf(&b, " p:%s=%d", id, t.pending.byID[id].exp)
	}
	for _, id := range slices.Sorted(maps.Keys(t.records)) {
		fmt.Fprintf(&b, " r:%s=%+v", id, *t.records[id])
	}
	for _, g := range []endedGen{t.ended.prev, t.ended.cur} {
		ended := slices.SortedFunc(maps.Keys(g.entries), func(x, y endedKey) int { return cmp.Compare(x[0], y[0])*2 + cmp.Compare(x[1], y[1]) })
		for _, k := range ended {
			fmt.Fprintf(&b, " e:%x=%+v", k, g.entries[k])
		}
	}
	keys := slices.SortedFunc(maps.Keys(t.budgets), func(x, y budgetKey) int { return strings.Compare(x.String(), y.String()) })
	for _, k := range keys {
		fmt.Fprintf(&b, " b:%s=%+v", k, *t.budgets[k])
	}
	return b.String()
}

func TestMemoryForgetsIdleTenants(t *testing.T) {
	_, m, clock := newMemoryHarness()
	b := dayBudget("day", clock.Now(), 1000)
	for i := range 10 {
		tenant := fmt.Sprint("idle", i)
		d := mustAdmit(t, m, AdmitRequest{Tenant: tenant, RequestID: "a", Cost: 10, Tokens: 10,
			Limits: Limits{TokensPerMinute: 100, RequestsPerMinute: 10}, Budgets: []Budget{b}})
		if !d.Allowed {
			t.Fatalf("admit %s: %+v", tenant, d)
		}
		mustSettle(t, m, SettleRequest{Tenant: tenant, RequestID: "a", Cost: 5, Budgets: []Budget{b}})
	}
	if n := m.memTenantCount(); n != 10 {
		t.Fatalf("%d tenants, want 10", n)
	}
	// A day past the budget window's end plus its retention, every key of
	// these tenants has expired; the next call's pass drops them.
	clock.Advance(2*time.Hour + DefaultRetention + time.Minute)
	mustAdmit(t, m, AdmitRequest{Tenant: "active", RequestID: "x"})
	if n := m.memTenantCount(); n != 1 {
		t.Fatalf("%d tenants after they went idle, want 1 (the active one)", n)
	}
}

func TestMemoryKeepsUnsweptReservations(t *testing.T) {
	_, m, clock := newMemoryHarness()
	b := dayBudget("day", clock.Now(), 1000)
	mustAdmit(t, m, AdmitRequest{Tenant: "t", RequestID: "a", Cost: 10, Limits: Limits{LeaseTTL: time.Minute}, Budgets: []Budget{b}})
	// Long past the lease but within the window's retention: the unswept
	// reservation must still be charged at its estimate by the next write.
	clock.Advance(30 * time.Minute)
	mustAdmit(t, m, AdmitRequest{Tenant: "other", RequestID: "x"}) // runs the idle pass
	d := mustAdmit(t, m, AdmitRequest{Tenant: "t", RequestID: "b", Cost: 1, Budgets: []Budget{b}})
	if len(d.Expired) != 1 || d.Budgets[0].Spent != 10 || d.Budgets[0].Reserved != 1 {
		t.Fatalf("after half an hour: %+v", d)
	}
}

// TestPendingSet checks the heap against a brute-force count and order.
func TestPendingSet(t *testing.T) {
	s := newPendingSet()
	want := map[string]int64{}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 2000 {
		id := fmt.Sprint(rng.IntN(300))
		switch rng.IntN(3) {
		case 0, 1:
			exp := rng.Int64N(1000)
			s.add(id, exp)
			want[id] = exp
		case 2:
			s.remove(id)
			delete(want, id)
		}
		now := rng.Int64N(1000)
		var live int64
		for _, exp := range want {
			if exp > now {
				live++
			}
		}
		if got := s.live(now); got != live || s.len() != len(want) {
			t.Fatalf("step %d: live(%d) = %d (len %d), want %d (len %d)", step, now, got, s.len(), live, len(want))
		}
	}
	// Popping yields the expired members in (expiry, id) order, then stops.
	type member struct {
		id  string
		exp int64
	}
	var expired []member
	for id, exp := range want {
		if exp <= 500 {
			expired = append(expired, member{id, exp})
		}
	}
	slices.SortFunc(expired, func(a, b member) int {
		if a.exp != b.exp {
			return int(a.exp - b.exp)
		}
		return strings.Compare(a.id, b.id)
	})
	for i, m := range expired {
		id, ok := s.popExpired(500)
		if !ok || id != m.id {
			t.Fatalf("pop %d = %q, %v; want %q", i, id, ok, m.id)
		}
	}
	if id, ok := s.popExpired(500); ok {
		t.Fatalf("popped live member %q", id)
	}
}
