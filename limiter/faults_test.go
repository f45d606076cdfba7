package limiter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestBreakerOpensOnRateNotOneFailure(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	var changes []string
	b := newBreaker(BreakerOptions{Window: 10 * time.Second, MinFailures: 3, FailureRatio: 0.5, OpenFor: time.Second, Probes: 2, Consecutive: 3, MinSpan: -1},
		clock, func(from, to BreakerState) { changes = append(changes, from.String()+">"+to.String()) })
	call := func(fail bool) {
		ok, probe := b.allow()
		if !ok {
			t.Fatalf("call refused in state %v", b.State())
		}
		if fail {
			b.failure(probe)
		} else {
			b.success(probe)
		}
	}
	// One slow reply among many answers is not an outage.
	for i := range 20 {
		call(i == 7)
	}
	// Nor are three failures among 20 successes (15% < 50%).
	call(true)
	call(true)
	if b.State() != BreakerClosed {
		t.Fatalf("state %v after 3 failures in 22 calls", b.State())
	}
	// The window slides: 10 seconds later only the new calls count.
	now = now.Add(11 * time.Second)
	call(false)
	call(true)
	call(false)
	call(true)
	if b.State() != BreakerClosed {
		t.Fatal("opened below MinFailures")
	}
	call(true) // 3 of 5 failed
	if b.State() != BreakerOpen {
		t.Fatalf("state %v after 3 of 4 calls failed", b.State())
	}
	if ok, _ := b.allow(); ok {
		t.Fatal("an open breaker let a call through")
	}
	now = now.Add(time.Second)
	// Half-open: one probe at a time; a failed probe opens it again.
	ok, probe := b.allow()
	if !ok || !probe {
		t.Fatal("no probe after OpenFor")
	}
	if ok, _ := b.allow(); ok {
		t.Fatal("two probes at once")
	}
	b.failure(probe)
	if b.State() != BreakerOpen {
		t.Fatal("a failed probe did not reopen")
	}
	now = now.Add(time.Second)
	for range 2 {
		ok, probe := b.allow()
		if !ok || !probe {
			t.Fatalf("probe refused in %v", b.State())
		}
		b.success(probe)
	}
	if b.State() != BreakerClosed {
		t.Fatalf("state %v after 2 good probes", b.State())
	}
	// A healthy history does not hold it closed against a store that
	// stopped answering: 3 failures in a row (Consecutive) open it.
	for range 50 {
		call(false)
	}
	for range 3 {
		call(true)
	}
	if b.State() != BreakerOpen {
		t.Fatalf("state %v after 3 consecutive failures", b.State())
	}
	want := "closed>open open>half_open half_open>open open>half_open half_open>closed closed>open"
	// Three failed heartbeats in a row open it, whatever the window holds,
	// once the failures span MinSpan.
	b = newBreaker(BreakerOptions{MinSpan: time.Second}, clock, nil)
	for range 30 {
		call(false)
	}
	for i := range 3 {
		ok, probe := b.allow()
		if !ok {
			t.Fatalf("heartbeat %d refused", i)
		}
		b.heartbeatFailed(probe)
		if i < 2 && b.State() != BreakerClosed {
			t.Fatalf("open after %d failed heartbeats", i+1)
		}
		now = now.Add(time.Second)
	}
	if b.State() != BreakerOpen {
		t.Fatalf("state %v after 3 failed heartbeats over 2s", b.State())
	}
	// With MinSpan, failures that all land in one slow moment do not open
	// it, and an answer within MinSpan starts the count again.
	b = newBreaker(BreakerOptions{Consecutive: 3, MinSpan: time.Second}, clock, nil)
	for range 20 {
		call(true)
	}
	now = now.Add(900 * time.Millisecond)
	call(false)
	now = now.Add(500 * time.Millisecond)
	call(true)
	call(true)
	if b.State() != BreakerClosed {
		t.Fatalf("state %v: failures within MinSpan opened the breaker", b.State())
	}
	now = now.Add(time.Second)
	call(true) // failing for over a second with no answer
	if b.State() != BreakerOpen {
		t.Fatalf("state %v after failing for a second", b.State())
	}
	if got := fmt.Sprint(changes); got != "["+want+"]" {
		t.Fatalf("changes %v, want %s", got, want)
	}
}

// shedding is a store that is busy: every call is shed.
type shedding struct{ *Memory }

func (shedding) Admit(context.Context, AdmitRequest) (Decision, error) {
	return Decision{}, fmt.Errorf("limiter: admit: %w", ErrShed)
}

func TestShedIsNotAnOutage(t *testing.T) {
	var ev recordedEvents
	res, err := NewResilient(ResilientOptions{Primary: shedding{NewMemory(MemoryOptions{})}, Logger: quiet, Events: &ev})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	for i := range 50 {
		_, err := res.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: fmt.Sprint("c", i), OnFailure: FailClosed})
		if !errors.Is(err, ErrShed) {
			t.Fatalf("closed policy on a shed call: %v, want ErrShed", err)
		}
		if d, err := res.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: fmt.Sprint("l", i), OnFailure: FailLocal}); err != nil || !d.Allowed || !d.Degraded {
			t.Fatalf("local policy on a shed call: %+v %v", d, err)
		}
	}
	if !res.Up() || res.Pending() != 0 {
		t.Fatalf("up=%v pending=%d: shed calls opened the breaker or were cancelled", res.Up(), res.Pending())
	}
	if got := ev.count("degraded:closed:shed"); got != 50 {
		t.Fatalf("%d closed requests counted as shed, want 50", got)
	}
}

func TestRedisShedsPastMaxInFlight(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ReadTimeout: 5 * time.Second})
	defer c.Close()
	rs, err := NewRedis(RedisOptions{Client: c, MaxInFlight: 1, QueueTimeout: 20 * time.Millisecond, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv.Pause()
	first := make(chan error, 1)
	go func() {
		_, err := rs.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "stuck"})
		first <- err
	}()
	waitFor(t, "the first call to take the only place", func() bool { return rs.InFlight() == 1 })
	_, err = rs.Admit(ctxb, AdmitRequest{Tenant: "t", RequestID: "second"})
	if !errors.Is(err, ErrShed) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("second call with one place taken: %v, want ErrShed (not an outage)", err)
	}
	srv.Resume()
	if err := <-first; err != nil {
		t.Fatalf("the call in flight: %v", err)
	}
}

// TestNoPhantomAfterStall: an admission whose reply times out while Redis
// is stopped still runs when Redis continues; its cancel, applied as soon
// as the store answers, releases it — in whichever order the two reach
// Redis — so the refused request holds no slot and is charged nothing.
func TestNoPhantomAfterStall(t *testing.T) {
	srv, c, rs, res := stallable(t)
	defer res.Close()
	now, _ := c.Time(ctxb).Result()
	b := dayBudget("day", now, 1_000_000)
	lim := Limits{Concurrent: 5, LeaseTTL: time.Hour}

	// Warm the pool: a connection dialled while Redis is stopped never gets
	// its handshake answered, so its command is never sent; the phantoms
	// come from connections already open.
	// The scripts are loaded too: an EVALSHA of a script Redis has not seen
	// is answered NOSCRIPT and never runs.
	mustAdmit(t, rs, AdmitRequest{Tenant: "warm", RequestID: "warm"})
	warm := func() {
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() { _ = c.Ping(ctxb).Err() })
		}
		wg.Wait()
	}
	// First, without cancels: the stall leaves phantoms, leases held and
	// estimates charged by requests that were refused.
	bare, err := NewResilient(ResilientOptions{Primary: storeOnly{rs}, Logger: quiet, ProbeInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	warm()
	srv.Pause()
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			_, _ = bare.Admit(ctxb, AdmitRequest{Tenant: "q", RequestID: fmt.Sprint("r", i), Limits: lim, Cost: 1000, Budgets: []Budget{b}, OnFailure: FailClosed})
		})
	}
	wg.Wait()
	srv.Resume()
	waitFor(t, "the phantoms of a store without cancels", func() bool {
		n, _ := c.ZCard(ctxb, tenantPrefix("q")+"p").Result()
		return n >= 1
	})
	// Then with them: the same stall leaves nothing.
	warm()
	srv.Pause()
	for i := range 5 {
		wg.Go(func() {
			_, err := res.Admit(ctxb, AdmitRequest{Tenant: "p", RequestID: fmt.Sprint("r", i), Limits: lim, Cost: 1000, Budgets: []Budget{b}, OnFailure: FailClosed})
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("admit while stalled: %v", err)
			}
		})
	}
	wg.Wait()
	if res.Pending() != 5 {
		t.Fatalf("%d cancels owed, want 5", res.Pending())
	}
	srv.Resume()
	waitFor(t, "the cancels to be applied", func() bool { return res.Pending() == 0 })
	got, err := rs.Budgets(ctxb, "p", []Budget{b})
	if err != nil || got[0].Reserved != 0 || got[0].Spent != 0 {
		t.Fatalf("after the stall: %+v %v; the refused requests hold their estimates", got, err)
	}
	if n, _ := c.ZCard(ctxb, tenantPrefix("p")+"p").Result(); n != 0 {
		t.Fatalf("%d leases held by refused requests", n)
	}
	for i := range 5 {
		if v, _ := c.Get(ctxb, tenantPrefix("p")+"r:"+fmt.Sprint("r", i)).Result(); v != "c" {
			t.Fatalf("record of r%d is %q, want the tombstone", i, v)
		}
	}
	// The slots are free: five new requests fit.
	for i := range 5 {
		if d, err := res.Admit(ctxb, AdmitRequest{Tenant: "p", RequestID: fmt.Sprint("n", i), Limits: lim}); err != nil || !d.Allowed {
			t.Fatalf("admit after the stall: %+v %v", d, err)
		}
	}
	// A block of requests (a lease's: AdmitRequest.Count) lost the same way
	// gives back every request it counted: four singles fit the minute's
	// four again, where one given back would leave room for one.
	rpm := Limits{RequestsPerMinute: 4}
	warm()
	srv.Pause()
	if _, err := res.Admit(ctxb, AdmitRequest{Tenant: "blk", RequestID: "block", Limits: rpm, Count: 4, Detached: true, OnFailure: FailClosed}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("block admit while stalled: %v", err)
	}
	srv.Resume()
	waitFor(t, "the block's cancel to be applied", func() bool { return res.Pending() == 0 })
	for i := range 4 {
		if d, err := res.Admit(ctxb, AdmitRequest{Tenant: "blk", RequestID: fmt.Sprint("single", i), Limits: rpm}); err != nil || !d.Allowed {
			t.Fatalf("single %d after the block's cancel: %+v %v", i, d, err)
		}
	}
}

// TestJournalReplaysOnce: what was decided while the store was down,
// journaled on disk, is reconciled by the next process exactly once, and a
// request still running when the process ended is charged its estimate.
func TestJournalReplaysOnce(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	c := newClient(t, srv.Addr())
	now, _ := c.Time(ctxb).Result()
	b := dayBudget("day", now, 1_000_000)
	open := func() (*Resilient, *Redis) {
		rs, err := NewRedis(RedisOptions{Client: newClient(t, srv.Addr()), Timeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		res, err := NewResilient(ResilientOptions{Primary: rs, Logger: quiet, JournalDir: dir, ProbeInterval: 50 * time.Millisecond, FlushTimeout: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return res, rs
	}
	res, _ := open()
	waitFor(t, "the epoch", func() bool { return res.Up() })
	srv.Kill()
	for i := range 3 {
		req := AdmitRequest{Tenant: "j", RequestID: fmt.Sprint("o", i), Cost: 100, Budgets: []Budget{b}, OnFailure: FailOpen}
		if d, err := res.Admit(ctxb, req); err != nil || !d.Degraded {
			t.Fatalf("fail-open admit: %+v %v", d, err)
		}
		if i < 2 { // the third is still running when the process ends
			if _, err := res.Settle(ctxb, SettleRequest{Tenant: "j", RequestID: req.RequestID, Cost: 40 + int64(i), Budgets: []Budget{b}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := res.Close(); err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	for range 2 { // the second run finds nothing left to charge
		res, rs := open()
		waitFor(t, "the journal to be applied", func() bool { return res.Pending() == 0 })
		got, err := rs.Budgets(ctxb, "j", []Budget{b})
		if err != nil || got[0].Spent != 40+41+100 || got[0].Degraded != got[0].Spent {
			t.Fatalf("after replay: %+v %v; want 40 + 41 measured + 100 estimated, all degraded", got, err)
		}
		res.Close()
	}
}

func TestLeaseKeeperRenewsLongRequests(t *testing.T) {
	m := NewMemory(MemoryOptions{})
	var renewed sync.Map
	k := NewLeaseKeeper(LeaseKeeperOptions{Store: m, Tick: 20 * time.Millisecond, OnRenew: func(n int, err error) {
		if err == nil {
			renewed.Store(n, true)
		}
	}})
	defer k.Close()
	lim := Limits{Concurrent: 1, LeaseTTL: 900 * time.Millisecond} // renewed every 300ms, polled every 20ms
	if d, _ := k.Admit(ctxb, AdmitRequest{Tenant: "k", RequestID: "long", Limits: lim}); !d.Allowed {
		t.Fatal("first admit denied")
	}
	deadline := time.Now().Add(2 * time.Second) // over two lease times
	for time.Now().Before(deadline) {
		if d, _ := k.Admit(ctxb, AdmitRequest{Tenant: "k", RequestID: fmt.Sprint("x", time.Now().UnixNano()), Limits: lim}); d.Allowed {
			t.Fatal("a renewed lease lost its slot")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, ok := renewed.Load(1); !ok {
		t.Fatal("no renewal call")
	}
	if r, _ := k.Settle(ctxb, SettleRequest{Tenant: "k", RequestID: "long"}); !r.Settled || k.Open() != 0 {
		t.Fatalf("settle: %+v, %d open", r, k.Open())
	}
}

// storeOnly hides a store's Shared operations.
type storeOnly struct{ Store }

// recordedEvents counts Events by name.
type recordedEvents struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *recordedEvents) add(k string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[k]++
}
func (e *recordedEvents) count(k string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[k]
}
func (e *recordedEvents) BreakerChanged(_, to BreakerState) { e.add("breaker:" + to.String()) }
func (e *recordedEvents) Degraded(p FailurePolicy, cause string) {
	e.add("degraded:" + string(p) + ":" + cause)
}
func (e *recordedEvents) JournalDepth(int)     {}
func (e *recordedEvents) Dropped(q string)     { e.add("dropped:" + q) }
func (e *recordedEvents) Reconciled(k string)  { e.add("reconciled:" + k) }
func (e *recordedEvents) StoreReset(time.Time) { e.add("reset") }
func (e *recordedEvents) LiveReplicas(int)     {}

// TestLocalModeDividesByLiveReplicas: two replicas on one Redis, each
// configured with the floor of one, see each other's heartbeats and, when
// Redis goes, each enforce half of a limit.
func TestLocalModeDividesByLiveReplicas(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	var rs [2]*Resilient
	for i := range rs {
		s, err := NewRedis(RedisOptions{Client: newClient(t, srv.Addr()), Timeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if rs[i], err = NewResilient(ResilientOptions{Primary: s, Replicas: 1, Logger: quiet, ProbeInterval: 50 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		defer rs[i].Close()
	}
	waitFor(t, "both replicas to see two live replicas", func() bool { return rs[0].Replicas() == 2 && rs[1].Replicas() == 2 })
	srv.Kill()
	lim := Limits{RequestsPerMinute: 10}
	allowed := 0
	for i := range 10 {
		d, err := rs[0].Admit(ctxb, AdmitRequest{Tenant: "l", RequestID: fmt.Sprint(i), Limits: lim, OnFailure: FailLocal})
		if err != nil || !d.Degraded {
			t.Fatalf("local admit: %+v %v", d, err)
		}
		if d.Allowed {
			allowed++
		}
	}
	if allowed != 5 || rs[0].Replicas() != 2 {
		t.Fatalf("%d of 10 allowed at 10 rpm with %d live replicas, want 5", allowed, rs[0].Replicas())
	}
}

// stallable is a redis-server to stop (SIGSTOP), a client and store that
// give up on it after 100ms (closed by t.Cleanup), and a Resilient over
// them for the caller to close.
func stallable(t *testing.T) (*redistest.Server, *redis.Client, *Redis, *Resilient) {
	srv := redistest.Start(t, redistest.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	rs, err := NewRedis(RedisOptions{Client: c, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	res, err := NewResilient(ResilientOptions{Primary: rs, Logger: quiet, ProbeInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c, rs, res
}
