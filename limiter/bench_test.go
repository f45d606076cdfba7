package limiter

import (
	"fmt"
	"regexp"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// benchRequests are an Admit and a Settle with every dimension and two
// budgets per level configured, as a policy with limits and a day and month
// budget at each of the first levels levels (org, team, user, key), every
// level with its own limits.
func benchRequests(now time.Time, levels int, id string) (AdmitRequest, SettleRequest) {
	var lv []Level
	for _, key := range []string{"", "t:eng", "u:eng/ann", "k:eng/k1"}[:levels] {
		lv = append(lv, Level{Key: key, Budgets: []Budget{dayBudget("day", now, 1<<48, 1<<40), dayBudget("month", now, 1<<48)}})
	}
	bs := LevelBudgets(lv)
	id = fmt.Sprint("l", levels, "-", id)
	lim := Limits{RequestsPerMinute: 1 << 30, TokensPerMinute: 1 << 30, Concurrent: 1 << 20}
	var ll []LevelLimits
	for _, l := range lv[1:] { // every level below the org has its own limits too
		ll = append(ll, LevelLimits{Key: l.Key, RequestsPerMinute: 1 << 30, TokensPerMinute: 1 << 30, Concurrent: 1 << 20})
	}
	return AdmitRequest{Tenant: "bench", RequestID: id, Model: "m", Limits: lim, Tokens: 1000, Cost: 5000, Budgets: bs, LevelLimits: ll},
		SettleRequest{Tenant: "bench", RequestID: id, Tokens: 800, Cost: 4000, Budgets: bs}
}

// storeStats resets and reports store-side figures around a measured phase.
type storeStats interface {
	reset(b *testing.B)
	report(b *testing.B)
}

// benchStore measures Admit and Settle apart. Admit runs with every earlier
// reservation still pending (b.N in flight at the end); Settle finishes b.N
// reservations admitted outside the timer. store gives the store each run
// uses: a bounded one (Memory) must be fresh, or the Admit runs' pending
// reservations fill it before Settle's are admitted.
func benchStore(b *testing.B, store func() Store, now time.Time, levels int, stats storeStats) {
	run := 0
	b.Run("Admit", func(b *testing.B) {
		run++
		if stats != nil {
			stats.reset(b)
		}
		// The requests are built outside the timer, as Settle's are: the
		// allocations per op are the store's own.
		b.StopTimer()
		s := store()
		admits := make([]AdmitRequest, b.N)
		for i := range b.N {
			admits[i], _ = benchRequests(now, levels, fmt.Sprintf("a%d-%d", run, i))
		}
		b.ReportAllocs()
		b.StartTimer()
		for _, a := range admits {
			if d, err := s.Admit(ctxb, a); err != nil || !d.Allowed {
				b.Fatalf("admit: %+v %v", d, err)
			}
		}
		b.StopTimer()
		if stats != nil {
			stats.report(b)
		}
	})
	b.Run("Settle", func(b *testing.B) {
		run++
		b.StopTimer()
		s := store()
		settles := make([]SettleRequest, b.N)
		for i := range b.N {
			a, st := benchRequests(now, levels, fmt.Sprintf("s%d-%d", run, i))
			if d, err := s.Admit(ctxb, a); err != nil || !d.Allowed {
				b.Fatalf("admit before settle: %+v %v", d, err)
			}
			settles[i] = st
		}
		if stats != nil {
			stats.reset(b)
		}
		b.ReportAllocs()
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
	benchStore(b, func() Store { return NewMemory(MemoryOptions{}) }, time.Now(), 1, nil)
}

// benchRedis starts a redis-server for b and returns a client, a store over
// it and Redis's clock.
func benchRedis(b *testing.B) (*redis.Client, *Redis, time.Time) {
	srv := redistest.Start(b, redistest.Options{})
	c := newClient(b, srv.Addr())
	now, err := c.Time(ctxb).Result()
	if err != nil {
		b.Fatal(err)
	}
	return c, newRedisStore(b, c), now
}

func BenchmarkRedis(b *testing.B) {
	c, s, now := benchRedis(b)
	for _, n := range []int{1, 4} {
		b.Run(fmt.Sprintf("Levels%d", n), func(b *testing.B) {
			benchStore(b, func() Store { return s }, now, n, &commandStats{c: c})
		})
	}
}

// commandStats reports Redis's own figures for the measured phase: the
// EVALSHA calls and their wall time per call (INFO commandstats), and the
// CPU time of redis-server's main thread per op (INFO cpu), which unlike
// the wall time does not grow when other processes take the cores.
type commandStats struct {
	c       *redis.Client
	cpuFrom float64
}

func (s *commandStats) reset(b *testing.B) {
	if err := s.c.ConfigResetStat(ctxb).Err(); err != nil {
		b.Fatal(err)
	}
	s.cpuFrom = mainThreadCPU(b, s.c)
}

func (s *commandStats) report(b *testing.B) {
	cpu := mainThreadCPU(b, s.c) - s.cpuFrom
	calls, usec := commandStat(b, s.c, "evalsha")
	b.ReportMetric(usec, "redis-µs/call")
	b.ReportMetric(cpu*1e6/float64(b.N), "redis-cpu-µs/op")
	b.ReportMetric(float64(calls)/float64(b.N), "evalsha/op")
}

// mainThreadCPU is redis-server's main thread CPU time (user + system) in
// seconds: the thread that runs every command and script.
func mainThreadCPU(b *testing.B, c *redis.Client) float64 {
	b.Helper()
	info := redisInfo(b, c, "cpu")
	var total float64
	for _, f := range []string{"used_cpu_user_main_thread", "used_cpu_sys_main_thread"} {
		m := regexp.MustCompile(f + `:([\d.]+)`).FindStringSubmatch(info)
		if m == nil {
			b.Fatalf("INFO cpu has no %s", f)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		total += v
	}
	return total
}

// BenchmarkRedisConcurrent is an admit and its settle per op from 16
// goroutines at once (the load harness's small-JSON concurrency), four
// levels, with the calls coalesced into pipelines (Pipelines 2, the
// default) and without (Pipelines 64: every call on its own connection).
// It reports redis-server's CPU and this process's CPU per op, which
// unlike the time per op hold still on a machine other work shares.
func BenchmarkRedisConcurrent(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	c := newClient(b, srv.Addr())
	now, err := c.Time(ctxb).Result()
	if err != nil {
		b.Fatal(err)
	}
	var seq atomic.Int64 // ids unique across the runs of each sub-benchmark
	for _, lanes := range []int{64, DefaultPipelines} {
		b.Run(fmt.Sprintf("Pipelines%d", lanes), func(b *testing.B) {
			s, err := NewRedis(RedisOptions{Client: c, Timeout: testTimeout, Pipelines: lanes})
			if err != nil {
				b.Fatal(err)
			}
			stats := &commandStats{c: c}
			stats.reset(b)
			cpu := processCPU(b)
			b.SetParallelism(8) // 16 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					a, st := benchRequests(now, 4, fmt.Sprint("c", lanes, "-", seq.Add(1)))
					if !benchExchange(b, s, a, st) {
						return
					}
				}
			})
			b.ReportMetric((processCPU(b)-cpu)*1e6/float64(b.N), "client-cpu-µs/op")
			stats.report(b)
		})
	}
}

// processCPU is this process's CPU time (user + system) in seconds.
func processCPU(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// benchExchange admits a and settles st on s; false (b failed) unless the
// admission is allowed and the settle settles.
func benchExchange(b *testing.B, s Store, a AdmitRequest, st SettleRequest) bool {
	if d, err := s.Admit(ctxb, a); err != nil || !d.Allowed {
		b.Errorf("admit: %+v %v", d, err)
		return false
	}
	if r, err := s.Settle(ctxb, st); err != nil || !r.Settled {
		b.Errorf("settle: %+v %v", r, err)
		return false
	}
	return true
}

// BenchmarkRedisShape splits the exact scripts' time inside Redis by what
// a call carries: an admit and a settle per op at four levels (eight
// budgets, three levels with their own limits), with eight reservations
// kept pending as under load, and the same without the budgets, without
// the levels' limits, and without both. It reports the script time per
// call and, apart, the time of the Redis commands the scripts ran: the
// difference is the scripts' own Lua work (argument handling, string
// building, tables, the reply), which is most of a call's cost.
func BenchmarkRedisShape(b *testing.B) {
	c, s, now := benchRedis(b)
	noBudgets := func(a *AdmitRequest, st *SettleRequest) { a.Budgets, st.Budgets = nil, nil }
	noLevels := func(a *AdmitRequest, _ *SettleRequest) { a.LevelLimits = nil }
	for _, shape := range []struct {
		name  string
		strip []func(*AdmitRequest, *SettleRequest)
	}{
		{"Full", nil},
		{"NoBudgets", []func(*AdmitRequest, *SettleRequest){noBudgets}},
		{"NoLevelLimits", []func(*AdmitRequest, *SettleRequest){noLevels}},
		{"OrgLimitsOnly", []func(*AdmitRequest, *SettleRequest){noBudgets, noLevels}},
	} {
		b.Run(shape.name, func(b *testing.B) {
			var pending []SettleRequest
			op := func(id string) {
				a, st := benchRequests(now, 4, id)
				for _, f := range shape.strip {
					f(&a, &st)
				}
				if d, err := s.Admit(ctxb, a); err != nil || !d.Allowed {
					b.Fatalf("admit: %+v %v", d, err)
				}
				if pending = append(pending, st); len(pending) > 8 {
					if r, err := s.Settle(ctxb, pending[0]); err != nil || !r.Settled {
						b.Fatalf("settle: %+v %v", r, err)
					}
					pending = pending[1:]
				}
			}
			tag := fmt.Sprint("shape-", shape.name, "-", b.N, "-")
			for i := range 16 { // the pending reservations and the scripts loaded
				op(fmt.Sprint(tag, "w", i))
			}
			if err := c.ConfigResetStat(ctxb).Err(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				op(fmt.Sprint(tag, i))
			}
			b.StopTimer()
			calls, usec := commandStat(b, c, "evalsha")
			b.ReportMetric(usec, "redis-µs/call")
			b.ReportMetric(commandsUsec(b, c)/float64(calls), "commands-µs/call")
		})
	}
}

// commandsUsec is the time Redis spent in commands other than EVALSHA
// since the last CONFIG RESETSTAT: the commands the scripts ran.
func commandsUsec(b *testing.B, c *redis.Client) float64 {
	b.Helper()
	var total int64
	for name, st := range readCommandStats(b, c) {
		if !clientCommand(name) {
			total += st.usec
		}
	}
	return float64(total)
}
