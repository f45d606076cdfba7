package limiter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// leasedChain is one four-level caller: an org, a team, a user and a key,
// each with a day and a month budget (eight budgets), the requests limits of
// every level and a lane group, as the gate builds them.
type leasedChain struct {
	org     string
	limits  Limits
	levels  []LevelLimits
	budgets []Budget
	terms   LeaseTerms
}

func newLeasedChain(now time.Time, orgRPM, keyRPM, userConc int64, terms LeaseTerms) leasedChain {
	org := newTenant("leased")
	var lv []Level
	for _, key := range []string{"", "t:eng", "u:eng/ann", "k:eng/k1"} {
		day := dayBudget("day", now, 1_000_000_000_000)
		month := dayBudget("month", now, 1_000_000_000_000)
		month.Windows[1].End = month.Windows[1].End.Add(24 * time.Hour)
		month.Windows[2].Start = month.Windows[1].End
		month.Windows[2].End = month.Windows[2].Start.Add(48 * time.Hour)
		lv = append(lv, Level{Key: key, Budgets: []Budget{day, month}})
	}
	return leasedChain{
		org: org,
		// 60e6 tokens a minute: one token is one µs of the TAT, so the
		// org's tokens TAT moves by exactly the tokens charged.
		limits: Limits{RequestsPerMinute: orgRPM, TokensPerMinute: 60_000_000, Concurrent: 1000, LeaseTTL: 2 * time.Second},
		levels: []LevelLimits{{Key: "t:eng", RequestsPerMinute: orgRPM}, {Key: "u:eng/ann", RequestsPerMinute: orgRPM, Concurrent: userConc},
			{Key: "k:eng/k1", RequestsPerMinute: keyRPM}, {Key: "~lane:interactive", RequestsPerMinute: orgRPM}},
		budgets: LevelBudgets(lv),
		terms:   terms,
	}
}

func (c *leasedChain) request(id string, tokens, cost int64) AdmitRequest {
	return AdmitRequest{Tenant: c.org, RequestID: id, Model: "m", Limits: c.limits, LevelLimits: c.levels,
		Tokens: tokens, Cost: cost, Budgets: c.budgets, OnFailure: FailClosed, Lease: c.terms}
}

func startLeasedRedis(t *testing.T) (*redistest.Server, func() *redis.Client) {
	srv := redistest.Start(t, redistest.Options{})
	return srv, func() *redis.Client { return newClient(t, srv.Addr()) }
}

// tokensTAT reads the org's tokens-per-minute TAT (µs) from its state hash.
func tokensTAT(t *testing.T, c *redis.Client, tenant string) int64 {
	t.Helper()
	v, err := c.HGet(ctxb, tenantPrefix(tenant)+"s", "t").Result()
	if err != nil {
		t.Fatalf("tokens TAT: %v", err)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLeasedReplicasOverOneRedis: three replicas, 200 goroutines, four
// levels and eight budgets on one redis-server. Requests per minute are
// never above what GCRA admits exactly; at least limit − replicas ×
// MaxRequests are admitted; each level's concurrency stays within the
// replicas' shares; tokens and every budget end at the sums of the actuals.
func TestLeasedReplicasOverOneRedis(t *testing.T) {
	_, client := startLeasedRedis(t)
	admin := client()
	now, err := admin.Time(ctxb).Result()
	if err != nil {
		t.Fatal(err)
	}
	const replicas, maxReq, keyRPM, userConc = 3, 16, 120, 7
	ch := newLeasedChain(now, 100_000, keyRPM, userConc, LeaseTerms{MaxAge: 500 * time.Millisecond, MaxRequests: maxReq})
	var ls [replicas]*Leased
	for i := range ls {
		ls[i] = NewLeased(LeasedOptions{Inner: newRedisStore(t, client()), Replicas: func() int64 { return replicas }, Logger: quiet})
	}
	// The seed: the org's tokens TAT 30 s ahead of now, so that it never
	// falls back to now during the run and its end is start + the tokens
	// charged, exactly.
	seed := mustAdmit(t, ls[0], AdmitRequest{Tenant: ch.org, RequestID: "seed", Limits: ch.limits, Tokens: 30_000_000})
	tat0 := unixMicros(seed.Now) + seed.Tokens.Reset.Microseconds()
	mustSettle(t, ls[0], SettleRequest{Tenant: ch.org, RequestID: "seed", Tokens: 30_000_000})
	start := seed.Now

	var admitted, inflight, peak, tokens, cost atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(1500 * time.Millisecond)
	for g := range 200 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			s := ls[g%replicas]
			for i := 0; time.Now().Before(deadline); i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				d, err := s.Admit(ctxb, ch.request(id, 1000, 5000))
				if err != nil {
					t.Errorf("admit %s: %v", id, err)
					return
				}
				if !d.Allowed {
					time.Sleep(time.Millisecond)
					continue
				}
				admitted.Add(1)
				if n := inflight.Add(1); n > peak.Load() {
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
				}
				time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
				inflight.Add(-1)
				tk, c := rng.Int64N(1001), rng.Int64N(5001)
				r, err := s.Settle(ctxb, SettleRequest{Tenant: ch.org, RequestID: id, Tokens: tk, Cost: c, Budgets: ch.budgets})
				if err != nil || !r.Settled {
					t.Errorf("settle %s: %+v %v", id, r, err)
					return
				}
				tokens.Add(tk)
				cost.Add(c)
			}
		})
	}
	wg.Wait()
	for _, l := range ls {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := admin.Time(ctxb).Result()

	// (a) GCRA charged in advance: n ≤ limit + elapsed / emission interval.
	n := admitted.Load()
	bound := keyRPM + end.Sub(start).Microseconds()/increment(1, keyRPM)
	if n > bound {
		t.Errorf("admitted %d, above the key's exact bound %d", n, bound)
	}
	// (b) Under-admission: the other replicas' open leases hold at most
	// replicas × MaxRequests.
	if n < keyRPM-replicas*maxReq {
		t.Errorf("admitted %d, below limit − replicas × MaxRequests = %d", n, keyRPM-replicas*maxReq)
	}
	// (c) Concurrency: each replica holds at most max(1, 7/3) = 2 at the
	// user's level.
	if p := peak.Load(); p > replicas*max(1, userConc/replicas) {
		t.Errorf("peak concurrency %d above the replicas' shares %d", p, replicas*max(1, userConc/replicas))
	}
	// Tokens and budgets end exact: the TAT moved by the actual tokens,
	// every budget spent the actual cost and reserves nothing.
	if got := tokensTAT(t, admin, ch.org) - tat0; got != tokens.Load() {
		t.Errorf("the org's tokens TAT moved %d µs, want the %d tokens settled", got, tokens.Load())
	}
	st, err := newRedisStore(t, admin).Budgets(ctxb, ch.org, ch.budgets)
	if err != nil || len(st) != 8 {
		t.Fatalf("budgets: %+v %v", st, err)
	}
	for _, b := range st {
		if b.Spent != cost.Load() || b.Reserved != 0 {
			t.Errorf("budget %s: spent %d reserved %d, want %d and 0", b.Name, b.Spent, b.Reserved, cost.Load())
		}
	}
	t.Logf("admitted %d (bound %d, floor %d), peak concurrency %d, tokens %d, cost %d", n, bound, keyRPM-replicas*maxReq, peak.Load(), tokens.Load(), cost.Load())
}

// commandsCalled is every command redis-server ran since its stats were
// reset (INFO commandstats), less the INFO and CONFIG calls that read and
// reset them.
func commandsCalled(b *testing.B, c *redis.Client) int64 {
	var n int64
	for name, st := range readCommandStats(b, c) {
		if !readsStats(name) {
			n += st.calls
		}
	}
	return n
}

// kill stops l as a dead replica stops: no more renewals or settles, and
// nothing is settled on the way out.
func (l *Leased) kill() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
}

// TestLeasedDeadReplicaOvercharge: a replica that dies with an open lease
// leaves it to expire; it is charged at its estimate, k × the estimate of
// the request that took it, and the over-charge stays within that.
func TestLeasedDeadReplicaOvercharge(t *testing.T) {
	_, client := startLeasedRedis(t)
	admin := client()
	now, _ := admin.Time(ctxb).Result()
	ch := newLeasedChain(now, 1000, 1000, 0, LeaseTerms{MaxAge: 300 * time.Millisecond, MaxRequests: 8})
	ch.limits.LeaseTTL = 300 * time.Millisecond
	dead := NewLeased(LeasedOptions{Inner: newRedisStore(t, client()), Logger: quiet})
	const est = int64(100)
	for i := range 3 {
		if d := mustAdmit(t, dead, ch.request(fmt.Sprint("d", i), 10, est)); !d.Allowed {
			t.Fatalf("d%d: %+v", i, d)
		}
	}
	mustSettle(t, dead, SettleRequest{Tenant: ch.org, RequestID: "d0", Tokens: 5, Cost: 50})
	dead.kill()
	time.Sleep(ch.limits.LeaseTTL + ch.terms.MaxAge + 300*time.Millisecond)
	// Any writing call of the org sweeps the expired lease.
	live := newRedisStore(t, client())
	d := mustAdmit(t, live, AdmitRequest{Tenant: ch.org, RequestID: "after", Budgets: ch.budgets})
	if len(d.Expired) != 1 || d.Expired[0].Cost != firstBlock*est {
		t.Fatalf("expired: %+v; want the lease of %d at its estimate %d", d.Expired, firstBlock, firstBlock*est)
	}
	mustSettle(t, live, SettleRequest{Tenant: ch.org, RequestID: "after"})
	st, err := live.Budgets(ctxb, ch.org, ch.budgets)
	if err != nil {
		t.Fatal(err)
	}
	// Exact mode would have charged d0's 50 and d1, d2 at their estimates.
	exact := 50 + 2*est
	for _, b := range st {
		if over := b.Spent - exact; b.Reserved != 0 || over < 0 || over > firstBlock*est {
			t.Errorf("budget %s: spent %d reserved %d; over-charge %d outside [0, k × estimate %d]", b.Name, b.Spent, b.Reserved, over, firstBlock*est)
		}
	}
}

// TestLeasedSettleIsIdempotent: a local settle settles once; repeats, before
// and after the lease itself settled in the store, change nothing.
func TestLeasedSettleIsIdempotent(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	mem := NewMemory(MemoryOptions{Now: func() time.Time { return now }})
	l := NewLeased(LeasedOptions{Inner: mem, Logger: quiet})
	defer l.Close()
	ch := newLeasedChain(now, 100, 100, 0, LeaseTerms{MaxAge: time.Second, MaxRequests: 4})
	for i := range 4 {
		mustAdmit(t, l, ch.request(fmt.Sprint("r", i), 10, 100))
	}
	if l.Open() != 1 {
		t.Fatalf("open leases %d, want 1 for 4 requests", l.Open())
	}
	settle := func(id string, cost int64) SettleResult {
		return mustSettle(t, l, SettleRequest{Tenant: ch.org, RequestID: id, Tokens: 1, Cost: cost, Budgets: ch.budgets})
	}
	if r := settle("r0", 40); !r.Settled {
		t.Fatalf("first settle: %+v", r)
	}
	if r := settle("r0", 40); r.Settled {
		t.Fatalf("second settle: %+v", r)
	}
	for _, id := range []string{"r1", "r2", "r3"} {
		settle(id, 10)
	}
	// The lease ran out (4 of 4) and its last request settled: it settled
	// in the store with the actuals, 40 + 3 × 10.
	if l.Open() != 0 {
		t.Fatalf("open leases %d after its last settle", l.Open())
	}
	if r := settle("r0", 40); r.Settled {
		t.Fatalf("a settle after the lease's: %+v", r)
	}
	st, _ := mem.Budgets(ctxb, ch.org, ch.budgets)
	for _, b := range st {
		if b.Spent != 70 || b.Reserved != 0 {
			t.Fatalf("budget %s: spent %d reserved %d, want 70 and 0", b.Name, b.Spent, b.Reserved)
		}
	}
}

// callCounter counts the calls that reach a store.
type callCounter struct {
	*Memory
	admits, settles atomic.Int64
}

func (c *callCounter) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	c.admits.Add(1)
	return c.Memory.Admit(ctx, req)
}

func (c *callCounter) Settle(ctx context.Context, req SettleRequest) (SettleResult, error) {
	c.settles.Add(1)
	return c.Memory.Settle(ctx, req)
}

// TestLeasedBlocksAndPassThrough: without terms everything passes through;
// with them one store admission serves a block that doubles while it runs
// out, and a block that does not fit degrades to exact admission.
func TestLeasedBlocksAndPassThrough(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	cs := &callCounter{Memory: NewMemory(MemoryOptions{Now: func() time.Time { return now }})}
	l := NewLeased(LeasedOptions{Inner: cs, Logger: quiet, Now: func() time.Time { return now }})
	defer l.Close()
	ch := newLeasedChain(now, 100, 30, 0, LeaseTerms{MaxAge: time.Second, MaxRequests: 8})
	plain := ch.request("plain", 1, 1)
	plain.Lease = LeaseTerms{}
	mustAdmit(t, l, plain)
	mustSettle(t, l, SettleRequest{Tenant: ch.org, RequestID: "plain"})
	if cs.admits.Load() != 1 || cs.settles.Load() != 1 {
		t.Fatalf("pass-through: %d admits %d settles", cs.admits.Load(), cs.settles.Load())
	}
	// Blocks of 4, 8, 8, 8: 28 requests in 4 leases; the plain one took 1
	// of the key's 30, so a 5th block of 8 does not fit and the last one
	// is admitted exactly.
	allowed := 0
	for i := range 40 {
		d := mustAdmit(t, l, ch.request(fmt.Sprint("r", i), 1, 1))
		if d.Allowed {
			allowed++
		} else if d.Denied != DimensionRequests || d.Level != "k:eng/k1" || d.RetryAfter <= 0 {
			t.Fatalf("r%d: %+v; want requests denied at the key with a wait", i, d)
		}
	}
	if allowed != 29 {
		t.Fatalf("allowed %d of 40 under a limit of 30 with 1 used, want exactly 29", allowed)
	}
	// 1 plain + 4 leases + 1 denied block + 1 exact admitted + 1 exact
	// denied: the other 10 are denied locally until that denial's
	// RetryAfter, as exact mode would deny them.
	if got := cs.admits.Load(); got != 1+4+1+1+1 {
		t.Fatalf("%d store admissions for 40 requests", got)
	}
	t.Logf("%d store admissions for 40 requests", cs.admits.Load())
	// 28 of the 29 came from the 4 leases; the plain and the exact one did not.
	if st := l.Stats(); st.Taken != 4 || st.Served != 28 || st.Overflowed != 0 || st.Open != 4 {
		t.Errorf("stats %+v, want 4 leases taken, 28 served from them, 4 open (none settled)", st)
	}
}

// TestLeasedStallDuringAcquisition: Redis stopped (SIGSTOP) while a lease is
// taken: the request gets the inner store's failure policy and no lease is
// kept, in this replica or in Redis.
func TestLeasedStallDuringAcquisition(t *testing.T) {
	srv, c, rs, res := stallable(t)
	l := NewLeased(LeasedOptions{Inner: res, Up: res.Up, Logger: quiet})
	defer l.Close()
	now, _ := c.Time(ctxb).Result()
	ch := newLeasedChain(now, 1000, 1000, 0, LeaseTerms{MaxAge: time.Second, MaxRequests: 8})
	mustAdmit(t, rs, AdmitRequest{Tenant: "warm", RequestID: "warm"}) // scripts loaded
	srv.Pause()
	local := ch.request("local", 10, 100)
	local.OnFailure = FailLocal
	d, err := l.Admit(ctxb, local)
	if err != nil || !d.Allowed || !d.Degraded {
		t.Fatalf("local policy during the stall: %+v %v", d, err)
	}
	closed := ch.request("closed", 10, 100)
	if _, err := l.Admit(ctxb, closed); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("closed policy during the stall: %v", err)
	}
	if l.Open() != 0 {
		t.Fatalf("%d leases kept from a stalled store", l.Open())
	}
	srv.Resume()
	mustSettle(t, l, SettleRequest{Tenant: ch.org, RequestID: "local", Cost: 100, Budgets: ch.budgets})
	// The lease that reached Redis late is cancelled by Resilient.
	waitFor(t, "no lease left in Redis", func() bool {
		n, err := c.ZCard(ctxb, tenantPrefix(ch.org)+"d").Result()
		return err == nil && n == 0
	})
}

// BenchmarkLeased is an admit and its settle per op from 16 goroutines on
// Redis, four levels and eight budgets, exact (no lease terms: Leased passes
// through) and leased (max_age 2s, max_requests 64). Besides time and
// allocations it reports the script calls per exchange (INFO commandstats
// delta over exchanges, the leases' settles at Close included) and
// redis-server's main-thread CPU per exchange.
func BenchmarkLeased(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	c := newClient(b, srv.Addr())
	now, err := c.Time(ctxb).Result()
	if err != nil {
		b.Fatal(err)
	}
	var seq atomic.Int64
	for _, mode := range []struct {
		name  string
		terms LeaseTerms
	}{{"Exact", LeaseTerms{}}, {"Leased", LeaseTerms{MaxAge: 2 * time.Second, MaxRequests: 64}}} {
		b.Run(mode.name, func(b *testing.B) {
			l := NewLeased(LeasedOptions{Inner: newRedisStore(b, c), Logger: quiet})
			stats := &commandStats{c: c}
			stats.reset(b)
			cpu := processCPU(b)
			b.ReportAllocs()
			defer func() { b.ReportMetric(float64(commandsCalled(b, c))/float64(b.N), "cmds/op") }()
			b.SetParallelism(8) // 16 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					a, st := benchRequests(now, 4, fmt.Sprint("x", mode.name, "-", seq.Add(1)))
					a.Lease = mode.terms
					if !benchExchange(b, l, a, st) {
						return
					}
				}
			})
			b.StopTimer()
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric((processCPU(b)-cpu)*1e6/float64(b.N), "client-cpu-µs/op")
			stats.report(b)
		})
	}
}

// TestLeasedRenewedThroughTheKeeper: in Open's stack a request served from
// a lease that runs past its LeaseTTL keeps the lease alive (the keeper
// renews the request, Leased its lease), so it settles at its actual cost
// instead of expiring at the block's estimate.
func TestLeasedRenewedThroughTheKeeper(t *testing.T) {
	op, err := Open(OpenOptions{LeaseTick: 20 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	ch := newLeasedChain(time.Now(), 1000, 1000, 0, LeaseTerms{MaxAge: 100 * time.Millisecond, MaxRequests: 8})
	ch.limits.LeaseTTL = 300 * time.Millisecond
	mustAdmit(t, op.Store, ch.request("long", 10, 100))
	time.Sleep(1200 * time.Millisecond) // four lease TTLs
	// Another chain's admission sweeps whatever expired in the tenant.
	other := ch.request("other", 10, 100)
	other.Lease = LeaseTerms{}
	if d := mustAdmit(t, op.Store, other); len(d.Expired) != 0 {
		t.Fatalf("the lease of a running request expired: %+v", d.Expired)
	}
	if r := mustSettle(t, op.Store, SettleRequest{Tenant: ch.org, RequestID: "long", Cost: 30, Budgets: ch.budgets}); !r.Settled || r.Budgets[0].Spent != 30 {
		t.Fatalf("settle: %+v", r)
	}
}

// TestLeasedChainsAreBounded: past MaxChains an idle chain (no lease open)
// is evicted for a new one; with every chain busy a request is admitted
// exactly and counted.
func TestLeasedChainsAreBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	mem := NewMemory(MemoryOptions{Now: func() time.Time { return now }})
	l := NewLeased(LeasedOptions{Inner: mem, MaxChains: 2, Logger: quiet, Now: func() time.Time { return now }})
	defer l.Close()
	terms := LeaseTerms{MaxAge: time.Minute, MaxRequests: 2}
	a, b, c, d := newLeasedChain(now, 100, 100, 0, terms), newLeasedChain(now, 100, 100, 0, terms),
		newLeasedChain(now, 100, 100, 0, terms), newLeasedChain(now, 100, 100, 0, terms)
	for i := range 2 { // a's lease of 2 runs out and settles: a is idle
		mustAdmit(t, l, a.request(fmt.Sprint("a", i), 1, 1))
		mustSettle(t, l, SettleRequest{Tenant: a.org, RequestID: fmt.Sprint("a", i), Cost: 1})
	}
	mustAdmit(t, l, b.request("b", 1, 1))
	mustAdmit(t, l, c.request("c", 1, 1)) // evicts a
	if l.Open() != 2 || l.Overflowed() != 0 {
		t.Fatalf("open %d overflowed %d, want b's and c's leases and no overflow", l.Open(), l.Overflowed())
	}
	if dd := mustAdmit(t, l, d.request("d", 1, 1)); !dd.Allowed || l.Overflowed() != 1 || l.Open() != 2 {
		t.Fatalf("d with two busy chains: %+v, overflowed %d, open %d", dd, l.Overflowed(), l.Open())
	}
	// d was admitted exactly: it settles in the store.
	if r := mustSettle(t, l, SettleRequest{Tenant: d.org, RequestID: "d", Cost: 1, Budgets: d.budgets}); !r.Settled || r.Budgets[0].Spent != 1 {
		t.Fatalf("d's settle: %+v", r)
	}
}

// TestLeasedBlockAdapts: a chain's block doubles when a lease runs out
// before MaxAge and halves when one closes more than half unused.
func TestLeasedBlockAdapts(t *testing.T) {
	var clk atomic.Int64
	clk.Store(1_800_000_000_000_000)
	now := func() time.Time { return time.UnixMicro(clk.Load()) }
	l := NewLeased(LeasedOptions{Inner: NewMemory(MemoryOptions{Now: now}), Logger: quiet, Now: now, Tick: time.Hour})
	defer l.Close()
	ch := newLeasedChain(now(), 1000, 1000, 0, LeaseTerms{MaxAge: time.Second, MaxRequests: 16})
	n := 0
	admit := func() {
		mustAdmit(t, l, ch.request(fmt.Sprint("r", n), 1, 1))
		n++
	}
	block := func() (cur, next int64) {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, c := range l.chains {
			if c.cur != nil {
				cur = c.cur.k
			}
			return cur, c.block
		}
		return 0, 0
	}
	for range 4 {
		admit()
	}
	if cur, next := block(); cur != 0 || next != 8 {
		t.Fatalf("after a lease of 4 ran out: current %d next %d, want none and 8", cur, next)
	}
	admit()
	if cur, _ := block(); cur != 8 {
		t.Fatalf("the next lease: %d, want 8", cur)
	}
	clk.Add(time.Second.Microseconds())
	l.sweep(false) // aged, 1 of 8 used
	if cur, next := block(); cur != 0 || next != 4 {
		t.Fatalf("after a lease closed 7 of 8 unused: current %d next %d, want none and 4", cur, next)
	}
}
