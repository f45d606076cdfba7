package limiter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// testTimeout replaces the 25ms production default in tests: the two-core CI
// machine runs 500 goroutines against one redis-server, and a slow call must
// not turn into an ErrUnavailable that would hide a real failure.
const testTimeout = 5 * time.Second

func newRedisStore(t testing.TB, c redis.UniversalClient) *Redis {
	t.Helper()
	s, err := NewRedis(RedisOptions{Client: c, Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 64, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newClusterClient(t testing.TB, addrs []string) *redis.ClusterClient {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, PoolSize: 64})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// redisHarness runs the suite on two stores (two replicas) over two clients
// of one Redis; Redis TIME stays the only clock, so time passes by sleeping.
func redisHarness(c1, c2 redis.UniversalClient) harness {
	s1, _ := NewRedis(RedisOptions{Client: c1, Timeout: testTimeout})
	s2, _ := NewRedis(RedisOptions{Client: c2, Timeout: testTimeout})
	return harness{
		store:   s1,
		replica: s2,
		now: func(t *testing.T) time.Time {
			now, err := c1.Time(ctxb).Result()
			if err != nil {
				t.Fatalf("TIME: %v", err)
			}
			return now
		},
		advance: time.Sleep,
		dump:    func(t *testing.T, tenant string) string { return dumpKeys(t, c1, tenantPrefix(tenant)+"*") },
		slack:   200 * time.Millisecond,
	}
}

// dumpKeys renders every key matching pattern with its serialized value and
// absolute expiry (PEXPIRETIME, which does not tick like PTTL).
func dumpKeys(t *testing.T, c redis.UniversalClient, pattern string) string {
	t.Helper()
	var mu sync.Mutex
	var lines []string
	each := func(ctx context.Context, n *redis.Client) error {
		iter := n.Scan(ctx, 0, pattern, 100).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			v, err := n.Dump(ctx, k).Result()
			if err != nil {
				return err
			}
			exp, err := n.PExpireTime(ctx, k).Result()
			if err != nil {
				return err
			}
			mu.Lock()
			lines = append(lines, fmt.Sprintf("%s exp=%d %q", k, exp.Milliseconds(), v))
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	switch c := c.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctxb, each)
	case *redis.Client:
		err = each(ctxb, c)
	}
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func TestRedisConformance(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	runConformance(t, redisHarness(newClient(t, srv.Addr()), newClient(t, srv.Addr())))
}

func TestRedisClusterConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node Redis Cluster; skipped with -short")
	}
	cl := redistest.StartCluster(t, 3)
	runConformance(t, redisHarness(newClusterClient(t, cl.Addrs()), newClusterClient(t, cl.Addrs())))
}

// TestRedisKeys checks the key layout: one hash tag per tenant (braces in
// the tenant escaped), every key with a TTL.
func TestRedisKeys(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	s := newRedisStore(t, c)
	now, _ := c.Time(ctxb).Result()
	b := dayBudget("day", now, 1000, 1)
	for _, tenant := range []string{"plain", "we{ir}d", "%7B"} {
		mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "a", Tokens: 5, Cost: 5, Budgets: []Budget{b},
			Limits: Limits{RequestsPerMinute: 10, TokensPerMinute: 100, Concurrent: 3}})
		mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: "b", Cost: 5, Budgets: []Budget{b}})
		mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: "a", Tokens: 5, Cost: 3, Budgets: []Budget{b}})
	}
	keys, err := c.Keys(ctxb, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	want := []string{}
	for _, p := range []string{"tw:{%257B}:", "tw:{plain}:", "tw:{we%7Bir%7Dd}:"} {
		start := strconv.FormatInt(b.Windows[1].Start.Unix(), 10)
		want = append(want, p+"a:day:"+start, p+"b:day:"+start, p+"p", p+"r:a", p+"r:b", p+"s")
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("keys\n%v\nwant\n%v", keys, want)
	}
	for _, k := range keys {
		if ttl, err := c.PTTL(ctxb, k).Result(); err != nil || ttl <= 0 {
			t.Errorf("key %s has PTTL %v, %v; every key needs a TTL", k, ttl, err)
		}
		if strings.Count(k, "{") != 1 || strings.Count(k, "}") != 1 {
			t.Errorf("key %s has more than one hash tag", k)
		}
	}
}

// commandCounter counts the commands a client sends, pipelines included.
type commandCounter struct{ n atomic.Int64 }

func (h *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// commandStat reads calls and microseconds per call of one command from
// INFO commandstats.
func commandStat(t testing.TB, c *redis.Client, name string) (calls int64, usecPerCall float64) {
	t.Helper()
	st := readCommandStats(t, c)[name]
	if st.calls == 0 {
		return 0, 0
	}
	return st.calls, float64(st.usec) / float64(st.calls)
}

// cmdStat is one command's line of INFO commandstats.
type cmdStat struct{ calls, usec int64 }

// readCommandStats is INFO commandstats by command: what redis-server ran
// since its stats were last reset, the commands scripts ran included.
func readCommandStats(t testing.TB, c *redis.Client) map[string]cmdStat {
	t.Helper()
	out := map[string]cmdStat{}
	for _, m := range regexp.MustCompile(`cmdstat_([a-z|]+):calls=(\d+),usec=(\d+),`).FindAllStringSubmatch(redisInfo(t, c, "commandstats"), -1) {
		calls, _ := strconv.ParseInt(m[2], 10, 64)
		usec, _ := strconv.ParseInt(m[3], 10, 64)
		out[m[1]] = cmdStat{calls: calls, usec: usec}
	}
	return out
}

// readsStats reports the commands that read or reset the stats themselves
// (INFO, CONFIG), which no store call sends.
func readsStats(name string) bool { return name == "info" || strings.HasPrefix(name, "config") }

// clientCommand reports a command the client sends itself — a script call,
// or one that reads the stats — rather than one a script ran.
func clientCommand(name string) bool { return name == "evalsha" || name == "eval" || readsStats(name) }

// redisInfo is the INFO section of c's server.
func redisInfo(t testing.TB, c *redis.Client, section string) string {
	t.Helper()
	info, err := c.Info(ctxb, section).Result()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func TestRedisOneRoundTripEach(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	counter := &commandCounter{}
	c.AddHook(counter)
	s := newRedisStore(t, c)
	now, _ := c.Time(ctxb).Result()
	bs := []Budget{dayBudget("day", now, 1<<40, 1<<30), dayBudget("month", now, 1<<40)}
	lim := Limits{RequestsPerMinute: 1 << 30, TokensPerMinute: 1 << 30, Concurrent: 1000}
	// Warm up: the first call of each script falls back from NOSCRIPT to EVAL.
	mustAdmit(t, s, AdmitRequest{Tenant: "t", RequestID: "warm", Limits: lim, Tokens: 100, Cost: 10, Budgets: bs})
	mustSettle(t, s, SettleRequest{Tenant: "t", RequestID: "warm", Tokens: 50, Cost: 5, Budgets: bs})
	if _, err := c.ConfigResetStat(ctxb).Result(); err != nil {
		t.Fatal(err)
	}
	const n = 200
	start := counter.n.Load()
	for i := range n {
		id := fmt.Sprint(i)
		if d := mustAdmit(t, s, AdmitRequest{Tenant: "t", RequestID: id, Limits: lim, Tokens: 100, Cost: 10, Budgets: bs}); !d.Allowed {
			t.Fatalf("admit %d denied: %+v", i, d)
		}
		if after := counter.n.Load(); after-start != int64(2*i+1) {
			t.Fatalf("admit %d sent %d commands, want 1", i, after-start-int64(2*i))
		}
		if r := mustSettle(t, s, SettleRequest{Tenant: "t", RequestID: id, Tokens: 50, Cost: 5, Budgets: bs}); !r.Settled {
			t.Fatalf("settle %d: %+v", i, r)
		}
		if after := counter.n.Load(); after-start != int64(2*i+2) {
			t.Fatalf("settle %d sent %d commands, want 1", i, after-start-int64(2*i+1))
		}
	}
	calls, usec := commandStat(t, c, "evalsha")
	if calls != 2*n {
		t.Fatalf("redis saw %d EVALSHA for %d admits and %d settles", calls, n, n)
	}
	if evals, _ := commandStat(t, c, "eval"); evals != 0 {
		t.Fatalf("redis saw %d EVAL in the steady state", evals)
	}
	t.Logf("redis-side: %d EVALSHA, %.2f µs per call (admit and settle, 2 budgets)", calls, usec)

	// The commands the scripts run inside Redis, per call: n admits, then
	// their n settles. The bounds are the steady state of this layout (one
	// state hash, expiries refreshed only when they would lapse); a script
	// that goes back to a command per field or an expiry per call fails.
	for _, phase := range []struct {
		name string
		max  float64
		call func(i int)
	}{
		{"admit", 10.5, func(i int) {
			mustAdmit(t, s, AdmitRequest{Tenant: "t", RequestID: fmt.Sprint("c", i), Limits: lim, Tokens: 100, Cost: 10, Budgets: bs})
		}},
		{"settle", 10.5, func(i int) {
			mustSettle(t, s, SettleRequest{Tenant: "t", RequestID: fmt.Sprint("c", i), Tokens: 50, Cost: 5, Budgets: bs})
		}},
	} {
		if err := c.ConfigResetStat(ctxb).Err(); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			phase.call(i)
		}
		inner, byName := scriptCommands(t, c)
		per := float64(inner) / n
		t.Logf("%s: %.2f commands inside the script per call %v", phase.name, per, byName)
		if per > phase.max {
			t.Errorf("%s runs %.2f commands per call inside Redis, want at most %.1f", phase.name, per, phase.max)
		}
	}
}

// scriptCommands sums INFO commandstats calls of every command but the
// client's own (clientCommand): the commands scripts ran.
func scriptCommands(t testing.TB, c *redis.Client) (int64, map[string]int64) {
	t.Helper()
	var total int64
	by := map[string]int64{}
	for name, st := range readCommandStats(t, c) {
		if !clientCommand(name) {
			by[name] = st.calls
			total += st.calls
		}
	}
	return total, by
}

func TestRedisNoScriptFallback(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	s := newRedisStore(t, c)
	for i := range 3 {
		if err := c.ScriptFlush(ctxb).Err(); err != nil {
			t.Fatal(err)
		}
		evals, _ := commandStat(t, c, "eval")
		id := fmt.Sprint(i)
		if d := mustAdmit(t, s, AdmitRequest{Tenant: "t", RequestID: id, Cost: 1}); !d.Allowed {
			t.Fatalf("admit after SCRIPT FLUSH: %+v", d)
		}
		if r := mustSettle(t, s, SettleRequest{Tenant: "t", RequestID: id}); !r.Settled {
			t.Fatalf("settle after SCRIPT FLUSH: %+v", r)
		}
		if after, _ := commandStat(t, c, "eval"); after != evals+2 {
			t.Fatalf("EVAL calls %d → %d; want one fallback per script", evals, after)
		}
	}
}

func TestRedisUnavailable(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	s, err := NewRedis(RedisOptions{Client: c, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	mustAdmit(t, s, AdmitRequest{Tenant: "t", RequestID: "a"})
	srv.Kill()
	if _, err := s.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "b"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Admit with redis down: %v, want ErrUnavailable", err)
	}
	if _, err := s.Settle(ctxb, SettleRequest{Tenant: "t", RequestID: "a"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Settle with redis down: %v, want ErrUnavailable", err)
	}
	if err := s.Ping(ctxb); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ping with redis down: %v, want ErrUnavailable", err)
	}
	srv.Restart()
	if d := mustAdmit(t, s, AdmitRequest{Tenant: "t", RequestID: "b"}); !d.Allowed {
		t.Fatalf("after restart: %+v", d)
	}
	// A server that accepts but never answers: the timeout bounds the call.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	silent, _ := NewRedis(RedisOptions{Client: newClient(t, l.Addr().String()), Timeout: 50 * time.Millisecond})
	if _, err := silent.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "c"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Admit against a silent server: %v, want ErrUnavailable", err)
	}
}

// A caller that gives up is not an outage.
func TestRedisCallerCancelIsNotUnavailable(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := newRedisStore(t, newClient(t, srv.Addr()))
	ctx, cancel := context.WithCancel(ctxb)
	cancel()
	_, err := s.Admit(ctx, AdmitRequest{Tenant: "t", RequestID: "a"})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Admit with a cancelled context: %v; want context.Canceled, not ErrUnavailable", err)
	}
}

// A script error is a bug, not an outage: it must not be reported as
// ErrUnavailable (which would trigger the failure policy and hide it).
func TestRedisErrorReplyIsNotUnavailable(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	s := newRedisStore(t, c)
	// A key of the wrong type where the script expects a hash.
	if err := c.Set(ctxb, tenantPrefix("t")+"s", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "a", Limits: Limits{RequestsPerMinute: 5}})
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Admit over a corrupt key: %v; want a plain error", err)
	}
}

// TestParseFlatReplies: the scripts answer budgets (window, spent,
// reserved), levels (rpm TAT, tpm TAT) and settled windows (name, start,
// end, spent, reserved) as flat lists; a list that is not a whole number of
// entries is an error, not a misread.
func TestParseFlatReplies(t *testing.T) {
	admit := func(budgets, levels []any) any {
		return []any{int64(1), int64(codeAllowed), int64(2), int64(3), budgets, []any{}, []any{}, int64(0), int64(0), levels}
	}
	settle := func(windows []any) any {
		return []any{int64(1), int64(1), windows, []any{}, []any{}}
	}
	o, err := parseAdmit(admit([]any{int64(1), int64(10), int64(20), int64(0), int64(30), int64(40)},
		[]any{int64(5), int64(6), int64(7), int64(8)}), 2)
	if err != nil || len(o.budgets) != 2 || o.budgets[0] != (budgetOutcome{window: 1, spent: 10, reserved: 20}) ||
		o.budgets[1] != (budgetOutcome{window: 0, spent: 30, reserved: 40}) ||
		len(o.levelTATs) != 2 || o.levelTATs[0] != [2]int64{5, 6} || o.levelTATs[1] != [2]int64{7, 8} {
		t.Fatalf("parseAdmit = %+v, %v", o, err)
	}
	for name, v := range map[string]any{
		"a budget short":   admit([]any{int64(1), int64(10), int64(20), int64(0), int64(30)}, []any{}),
		"a budget extra":   admit([]any{int64(1), int64(10), int64(20), int64(0), int64(30), int64(40), int64(0)}, []any{}),
		"a level short":    admit([]any{int64(1), int64(10), int64(20), int64(0), int64(30), int64(40)}, []any{int64(5), int64(6), int64(7)}),
		"a window index 3": admit([]any{int64(3), int64(10), int64(20), int64(0), int64(30), int64(40)}, []any{}),
	} {
		if _, err := parseAdmit(v, 2); err == nil {
			t.Errorf("parseAdmit accepted %s: %v", name, v)
		}
	}
	s, err := parseSettle(settle([]any{"day", "100", "200", int64(7), int64(8), "month", "100", "300", int64(9), int64(10)}))
	if err != nil || len(s.budgets) != 2 || s.budgets[1] != (windowOutcome{name: "month", start: 100, end: 300, spent: 9, reserved: 10}) {
		t.Fatalf("parseSettle = %+v, %v", s, err)
	}
	if _, err := parseSettle(settle([]any{"day", "100", "200", int64(7)})); err == nil {
		t.Error("parseSettle accepted a window short of a field")
	}
}
