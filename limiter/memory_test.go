package limiter

import (
	"fmt"
	"maps"
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
	fmt.Fprintf(&b, "rpm=%d tpm=%d pending=%v", t.rpm, t.tpm, t.pending)
	for _, id := range slices.Sorted(maps.Keys(t.records)) {
		fmt.Fprintf(&b, " r:%s=%+v", id, *t.records[id])
	}
	for _, k := range slices.Sorted(maps.Keys(t.budgets)) {
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
