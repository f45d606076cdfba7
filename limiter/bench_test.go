package limiter

import (
	"fmt"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// benchRequests are an Admit and a Settle with every dimension and two
// budgets configured, as a policy with limits and a day and month budget.
func benchRequests(now time.Time, id string) (AdmitRequest, SettleRequest) {
	bs := []Budget{dayBudget("day", now, 1<<48, 1<<40), dayBudget("month", now, 1<<48)}
	lim := Limits{RequestsPerMinute: 1 << 30, TokensPerMinute: 1 << 30, Concurrent: 1 << 20}
	return AdmitRequest{Tenant: "bench", RequestID: id, Model: "m", Limits: lim, Tokens: 1000, Cost: 5000, Budgets: bs},
		SettleRequest{Tenant: "bench", RequestID: id, Tokens: 800, Cost: 4000, Budgets: bs}
}

// storeStats resets and reports store-side figures around a measured phase.
type storeStats interface {
	reset(b *testing.B)
	report(b *testing.B)
}

// benchStore measures Admit and Settle apart. Admit runs with every earlier
// reservation still pending (b.N in flight at the end); Settle finishes b.N
// reservations admitted outside the timer.
func benchStore(b *testing.B, s Store, now time.Time, stats storeStats) {
	run := 0
	b.Run("Admit", func(b *testing.B) {
		run++
		if stats != nil {
			stats.reset(b)
		}
		for i := range b.N {
			a, _ := benchRequests(now, fmt.Sprintf("a%d-%d", run, i))
			if d, err := s.Admit(ctxb, a); err != nil || !d.Allowed {
				b.Fatalf("admit: %+v %v", d, err)
			}
		}
		if stats != nil {
			stats.report(b)
		}
	})
	b.Run("Settle", func(b *testing.B) {
		run++
		b.StopTimer()
		settles := make([]SettleRequest, b.N)
		for i := range b.N {
			a, st := benchRequests(now, fmt.Sprintf("s%d-%d", run, i))
			if _, err := s.Admit(ctxb, a); err != nil {
				b.Fatal(err)
			}
			settles[i] = st
		}
		if stats != nil {
			stats.reset(b)
		}
		b.StartTimer()
		for _, st := range settles {
			if r, err := s.Settle(ctxb, st); err != nil || !r.Settled {
				b.Fatalf("settle: %+v %v", r, err)
			}
		}
		b.StopTimer()
		if stats != nil {
			stats.report(b)
		}
	})
}

func BenchmarkMemory(b *testing.B) {
	benchStore(b, NewMemory(MemoryOptions{}), time.Now(), nil)
}

func BenchmarkRedis(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	c := newClient(b, srv.Addr())
	s := newRedisStore(b, c)
	now, err := c.Time(ctxb).Result()
	if err != nil {
		b.Fatal(err)
	}
	benchStore(b, s, now, commandStats{func(b *testing.B) (int64, float64) {
		return commandStat(b, c, "evalsha")
	}, func(b *testing.B) {
		if err := c.ConfigResetStat(ctxb).Err(); err != nil {
			b.Fatal(err)
		}
	}})
}

type commandStats struct {
	read  func(b *testing.B) (calls int64, usecPerCall float64)
	clear func(b *testing.B)
}

func (s commandStats) reset(b *testing.B) { s.clear(b) }

func (s commandStats) report(b *testing.B) {
	calls, usec := s.read(b)
	b.ReportMetric(usec, "redis-µs/call")
	b.ReportMetric(float64(calls)/float64(b.N), "evalsha/op")
}
