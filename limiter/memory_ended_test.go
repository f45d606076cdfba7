package limiter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestEndedSetAnswersUntilEachDeadline adds ids at random times with random
// TTLs up to the span and checks, after every step, that each id answers
// exactly while its deadline is ahead and that the set holds nothing added
// more than two spans ago.
func TestEndedSetAnswersUntilEachDeadline(t *testing.T) {
	const span = 1000
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 17))
		s := endedSet{span: span}
		type added struct {
			at, deadline int64
			state        byte
		}
		all := map[string]added{}
		var adds []int64
		now := int64(1_000_000)
		for step := range 400 {
			now += rng.Int64N(span / 3)
			if rng.IntN(40) == 0 {
				now += 3 * span // a quiet spell: everything expires
			}
			if rng.IntN(4) != 0 {
				id := fmt.Sprint("req-", rng.IntN(300))
				e := added{at: now, deadline: now + 1 + rng.Int64N(span), state: "sxc"[rng.IntN(3)]}
				if prev, ok := all[id]; ok && prev.deadline > now {
					continue // the store never ends a known id again
				}
				s.add(id, now, e.deadline, e.state)
				all[id] = e
				adds = append(adds, now)
			} else {
				s.age(now)
			}
			for id, e := range all {
				got := s.state(id, now)
				want := byte(0)
				if e.deadline > now {
					want = e.state
				}
				if got != want {
					t.Fatalf("seed %d step %d: %s (added %d, deadline %d) at %d: state %q, want %q", seed, step, id, e.at, e.deadline, now, got, want)
				}
			}
			recent := 0
			for _, at := range adds {
				if at > now-2*span {
					recent++
				}
			}
			if s.len() > recent {
				t.Fatalf("seed %d step %d: %d entries held, only %d added in the last two spans", seed, step, s.len(), recent)
			}
		}
	}
}

// TestMemoryForgetsEndedReservations: a settled request answers its
// duplicate for settledTTL, then its tenant holds nothing.
func TestMemoryForgetsEndedReservations(t *testing.T) {
	_, m, clock := newMemoryHarness()
	req := AdmitRequest{Tenant: "t", RequestID: "a", Tokens: 10, Limits: Limits{TokensPerMinute: 1000}}
	mustAdmit(t, m, req)
	mustSettle(t, m, SettleRequest{Tenant: "t", RequestID: "a", Tokens: 5})
	clock.Advance(DefaultSettledTTL - time.Second)
	if _, err := m.Admit(context.Background(), req); !errors.Is(err, ErrDuplicateRequest) {
		t.Fatalf("admit of a settled id within settledTTL: %v, want ErrDuplicateRequest", err)
	}
	if r := mustSettle(t, m, SettleRequest{Tenant: "t", RequestID: "a", Tokens: 5}); r.Unknown || r.Settled {
		t.Fatalf("second settle within settledTTL: %+v, want known and not applied", r)
	}
	clock.Advance(2 * time.Second)
	if r := mustSettle(t, m, SettleRequest{Tenant: "t", RequestID: "a", Tokens: 5}); !r.Unknown {
		t.Fatalf("settle after settledTTL: %+v, want unknown", r)
	}
	clock.Advance(2*DefaultSettledTTL + time.Minute)
	mustAdmit(t, m, AdmitRequest{Tenant: "other", RequestID: "x"})
	if n := m.memTenantCount(); n != 1 {
		t.Fatalf("%d tenants two TTLs after the last settle, want 1 (the active one)", n)
	}
}
