package limiter

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// paceHarness is one Pacer under the shared suite.
type paceHarness struct {
	p Pacer
	// advance lets d of the pacer's time pass (a fake clock jumps, Redis
	// sleeps).
	advance func(d time.Duration)
	// raw reads an upstream's stored schedule: its fields and their times.
	raw func(id string) map[string]string
}

func memoryPaceHarness() paceHarness {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	p := NewPaceMemory(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	return paceHarness{p: p, advance: func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() },
		raw: func(id string) map[string]string {
			p.mu.Lock()
			defer p.mu.Unlock()
			out := map[string]string{}
			for f, tat := range p.m[id] {
				out[f] = strconv.FormatInt(tat, 10)
			}
			return out
		}}
}

func redisPaceHarness(t *testing.T, c redis.UniversalClient) paceHarness {
	p, err := NewPaceRedis(PaceRedisOptions{Client: c, Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	return paceHarness{p: p, advance: time.Sleep, raw: func(id string) map[string]string {
		m, err := c.HGetAll(context.Background(), paceKey(id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}}
}

func TestMemoryPaceConformance(t *testing.T) {
	runPaceSuite(t, func(t *testing.T) paceHarness { return memoryPaceHarness() })
}

func TestRedisPaceConformance(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	runPaceSuite(t, func(t *testing.T) paceHarness { return redisPaceHarness(t, c) })
	t.Run("the schedule runs on Redis TIME", func(t *testing.T) {
		h := redisPaceHarness(t, c)
		ctx := context.Background()
		// One request a minute: the schedule moves a minute past Redis's
		// now, whatever this process's clock says.
		before, err := c.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		req := PaceRequest{Upstream: "clock#1", Limits: [PaceDims]PaceLimit{PaceRequests: {Rate: 1, Burst: 1}}, Cost: [PaceDims]int64{PaceRequests: 1}}
		if d, err := h.p.Pace(ctx, req); err != nil || !d.Allowed {
			t.Fatalf("first request: %+v, %v", d, err)
		}
		after, err := c.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		tat, err := c.HGet(ctx, paceKey("clock#1"), "0").Int64()
		if err != nil {
			t.Fatal(err)
		}
		lo, hi := before.Add(time.Minute).UnixMicro(), after.Add(time.Minute).UnixMicro()
		if tat < lo || tat > hi {
			t.Fatalf("schedule at %d µs, want Redis TIME + 1m in [%d, %d]", tat, lo, hi)
		}
		ttl, err := c.PTTL(ctx, paceKey("clock#1")).Result()
		if err != nil || ttl <= 0 || ttl > time.Minute+2*time.Second {
			t.Fatalf("schedule expiry %s (%v), want about a minute: it is kept until caught up", ttl, err)
		}
	})
	t.Run("a lane group's schedule survives a script flush and keeps the hash", func(t *testing.T) {
		h := redisPaceHarness(t, c)
		ctx := context.Background()
		id := paceID("flush")
		req := func(groups []PaceGroup) PaceRequest {
			return PaceRequest{Upstream: id, Limits: [PaceDims]PaceLimit{PaceRequests: {Rate: 4, Period: time.Hour, Burst: 4}},
				Cost: [PaceDims]int64{PaceRequests: 1}, Groups: groups}
		}
		// Four an hour; batch's half is two an hour, two at once.
		batch := []PaceGroup{{Name: "batch", Share: 0.5}}
		for range 2 {
			if d, err := h.p.Pace(ctx, req(batch)); err != nil || !d.Allowed {
				t.Fatalf("batch: %+v, %v", d, err)
			}
		}
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		// EVALSHA is answered NOSCRIPT, EVAL runs it: batch's burst is used.
		if d, err := h.p.Pace(ctx, req(batch)); err != nil || d.Allowed || d.DeniedGroup != "batch" {
			t.Fatalf("batch after SCRIPT FLUSH: %+v, %v; want its group's denial", d, err)
		}
		// An interactive grant touches only the whole schedule: the hash
		// still lives as long as batch's field needs (an hour: two grants
		// at 30 minutes), not the 45 minutes of the whole schedule's three.
		if d, err := h.p.Pace(ctx, req(nil)); err != nil || !d.Allowed {
			t.Fatalf("interactive: %+v, %v", d, err)
		}
		ttl, err := c.PTTL(ctx, paceKey(id)).Result()
		if err != nil || ttl < 59*time.Minute {
			t.Fatalf("schedule expiry %s (%v), want batch's hour", ttl, err)
		}
	})
}

func TestRedisClusterPaceConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster")
	}
	cl := redistest.StartCluster(t, 3)
	c := newClusterClient(t, cl.Addrs())
	runPaceSuite(t, func(t *testing.T) paceHarness { return redisPaceHarness(t, c) })
}

var paceSeq atomic.Int64

func paceID(name string) string {
	return name + "#" + time.Now().Format("150405.000000") + "-" + string(rune('a'+paceSeq.Add(1)%26))
}

func runPaceSuite(t *testing.T, newHarness func(t *testing.T) paceHarness) {
	ctx := context.Background()
	one := func(id string, l PaceLimit, cost int64) PaceRequest {
		return PaceRequest{Upstream: id, Limits: [PaceDims]PaceLimit{PaceRequests: l}, Cost: [PaceDims]int64{PaceRequests: cost}}
	}
	t.Run("concurrent callers share the burst exactly", func(t *testing.T) {
		h := newHarness(t)
		id := paceID("burst")
		// One request an hour beyond a burst of 5: however many callers race,
		// five go and the rest wait about an hour.
		req := one(id, PaceLimit{Rate: 1, Period: time.Hour, Burst: 5}, 1)
		var allowed, denied atomic.Int64
		var wg sync.WaitGroup
		for range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := h.p.Pace(ctx, req)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					allowed.Add(1)
				} else {
					denied.Add(1)
					if d.RetryAfter < 59*time.Minute || d.Denied != PaceRequests {
						t.Errorf("denial %+v: want requests, retry about an hour", d)
					}
				}
			}()
		}
		wg.Wait()
		if allowed.Load() != 5 || denied.Load() != 35 {
			t.Fatalf("allowed %d, denied %d; want 5 and 35", allowed.Load(), denied.Load())
		}
	})
	t.Run("the rate holds and the retry is exact", func(t *testing.T) {
		h := newHarness(t)
		id := paceID("rate")
		// 20 a second, one at a time: 50ms apart.
		req := one(id, PaceLimit{Rate: 20, Period: time.Second, Burst: 1}, 1)
		if d, err := h.p.Pace(ctx, req); err != nil || !d.Allowed || d.Slack != 0 {
			t.Fatalf("first: %+v, %v (a burst of one is used up at once: slack 0)", d, err)
		}
		d, err := h.p.Pace(ctx, req)
		if err != nil || d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > 50*time.Millisecond {
			t.Fatalf("second at once: %+v, %v; want a denial with retry in (0, 50ms]", d, err)
		}
		h.advance(d.RetryAfter + time.Millisecond)
		if d, err := h.p.Pace(ctx, req); err != nil || !d.Allowed {
			t.Fatalf("after the retry: %+v, %v", d, err)
		}
	})
	t.Run("a denial writes nothing on any dimension", func(t *testing.T) {
		h := newHarness(t)
		id := paceID("atomic")
		lim := [PaceDims]PaceLimit{
			PaceRequests: {Rate: 1, Period: time.Hour, Burst: 3},
			PaceTokens:   {Rate: 1, Period: time.Hour, Burst: 100},
		}
		req := func(tokens int64) PaceRequest {
			return PaceRequest{Upstream: id, Limits: lim, Cost: [PaceDims]int64{PaceRequests: 1, PaceTokens: tokens}}
		}
		if d, err := h.p.Pace(ctx, req(90)); err != nil || !d.Allowed {
			t.Fatalf("90 tokens: %+v, %v", d, err)
		}
		var before map[string]string
		if h.raw != nil {
			before = h.raw(id)
		}
		d, err := h.p.Pace(ctx, req(50))
		if err != nil || d.Allowed || d.Denied != PaceTokens {
			t.Fatalf("50 more tokens: %+v, %v; want a tokens denial", d, err)
		}
		if h.raw != nil {
			if after := h.raw(id); len(after) != len(before) || after["0"] != before["0"] || after["1"] != before["1"] {
				t.Fatalf("the denial wrote: %v -> %v", before, after)
			}
		}
		// The requests dimension did not count the denied request: two of
		// its burst of three are left.
		for i := range 2 {
			if d, err := h.p.Pace(ctx, req(0)); err != nil || !d.Allowed {
				t.Fatalf("request %d without tokens: %+v, %v", i, d, err)
			}
		}
		if d, err := h.p.Pace(ctx, req(0)); err != nil || d.Allowed || d.Denied != PaceRequests {
			t.Fatalf("a fourth request: %+v, %v; want a requests denial", d, err)
		}
	})
	t.Run("a request larger than the burst goes once the schedule caught up", func(t *testing.T) {
		h := newHarness(t)
		id := paceID("big")
		req := PaceRequest{Upstream: id, Limits: [PaceDims]PaceLimit{PaceTokens: {Rate: 1000, Period: time.Hour, Burst: 10}}, Cost: [PaceDims]int64{PaceTokens: 500}}
		if d, err := h.p.Pace(ctx, req); err != nil || !d.Allowed {
			t.Fatalf("500 tokens on a fresh schedule: %+v, %v", d, err)
		}
		d, err := h.p.Pace(ctx, req)
		if err != nil || d.Allowed || d.RetryAfter < 29*time.Minute {
			t.Fatalf("500 more at once: %+v, %v; want to wait the half hour 500 tokens take", d, err)
		}
	})
	t.Run("slack reports a caught-up schedule", func(t *testing.T) {
		h := newHarness(t)
		id := paceID("slack")
		req := one(id, PaceLimit{Rate: 1, Period: time.Hour, Burst: 4}, 1)
		d, err := h.p.Pace(ctx, req)
		if err != nil || !d.Allowed || d.Slack != 0.75 {
			t.Fatalf("one of four: %+v, %v; want slack 0.75", d, err)
		}
	})
	// Lanes: interactive (the top lane, the whole schedule), batch with 30%.
	// Ten requests an hour, ten at once; batch's group paces 3 an hour, 3
	// at once (20 minutes apart).
	batch := []PaceGroup{{Name: "batch", Share: 0.3}}
	lane := func(id string, groups []PaceGroup) PaceRequest {
		r := one(id, PaceLimit{Rate: 10, Period: time.Hour, Burst: 10}, 1)
		r.Groups = groups
		return r
	}
	// fill sends req until n calls are made, returning how many went and
	// the last denial.
	fill := func(t *testing.T, h paceHarness, req PaceRequest, n int) (allowed int, last PaceDecision) {
		t.Helper()
		for range n {
			d, err := h.p.Pace(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed {
				allowed++
			} else {
				last = d
			}
		}
		return allowed, last
	}
	t.Run("batch saturating the upstream takes its share, interactive still goes", func(t *testing.T) {
		h := newHarness(t)
		id := paceID("lanes")
		n, d := fill(t, h, lane(id, batch), 10)
		if n != 3 || d.Denied != PaceRequests || d.DeniedGroup != "batch" {
			t.Fatalf("batch: %d allowed, last denial %+v; want 3 (30%% of 10) and a batch group denial", n, d)
		}
		// The slack is the whole schedule's: 7 of its 10 are unused.
		if d.Slack < 0.69 || d.Slack > 0.71 {
			t.Errorf("slack %v beside a saturated batch group, want the whole schedule's 0.7", d.Slack)
		}
		// Its turn comes at its group's pace (20 minutes), not the whole
		// schedule's (6 minutes, and 7 of its 10 still free).
		if d.RetryAfter <= 19*time.Minute || d.RetryAfter > 20*time.Minute {
			t.Errorf("batch retry %s, want about 20m", d.RetryAfter)
		}
		before := h.raw(id)
		// Both schedules moved by exactly what the three grants cost: 20
		// minutes each on batch's, 6 on the whole (the same µs in both
		// stores, whatever the clock read).
		whole, err1 := strconv.ParseInt(before["0"], 10, 64)
		group, err2 := strconv.ParseInt(before["0~batch"], 10, 64)
		if err1 != nil || err2 != nil || len(before) != 2 {
			t.Fatalf("schedule %v: want the fields 0 and 0~batch", before)
		}
		if diff := group - whole; diff != 3*(1_200_000_000-360_000_000) {
			t.Errorf("batch - whole = %d µs, want %d", diff, 3*(1_200_000_000-360_000_000))
		}
		if d, err := h.p.Pace(ctx, lane(id, batch)); err != nil || d.Allowed {
			t.Fatalf("another batch request: %+v, %v", d, err)
		}
		if after := h.raw(id); !maps.Equal(before, after) {
			t.Fatalf("a group's denial wrote: %v -> %v", before, after)
		}
		// Every denied batch request left the whole schedule alone: the
		// seven it has left are interactive's.
		n, d = fill(t, h, lane(id, nil), 10)
		if n != 7 || d.DeniedGroup != "" || d.Denied != PaceRequests {
			t.Fatalf("interactive beside saturated batch: %d allowed, last %+v; want 7, denied by the whole schedule", n, d)
		}
	})
	t.Run("interactive may use the share batch leaves unused, never the reverse", func(t *testing.T) {
		h := newHarness(t)
		id := paceID("borrow")
		if n, _ := fill(t, h, lane(id, nil), 12); n != 10 {
			t.Fatalf("interactive alone: %d allowed, want the whole burst of 10", n)
		}
		d, err := h.p.Pace(ctx, lane(id, batch))
		if err != nil || d.Allowed || d.DeniedGroup != "" {
			t.Fatalf("batch after interactive took all: %+v, %v; want the whole schedule's denial", d, err)
		}
	})
	t.Run("each lane fits every group it belongs to", func(t *testing.T) {
		h := newHarness(t)
		id := paceID("three")
		// high (top), mid 0.3, low 0.2: mid's group is mid and low (0.5 of
		// the pace), low's is low alone (0.2).
		mid := []PaceGroup{{Name: "mid", Share: 0.5}}
		low := []PaceGroup{{Name: "mid", Share: 0.5}, {Name: "low", Share: 0.2}}
		if n, d := fill(t, h, lane(id, low), 6); n != 2 || d.DeniedGroup != "low" {
			t.Fatalf("low: %d allowed, last %+v; want 2, denied by its own group", n, d)
		}
		if n, d := fill(t, h, lane(id, mid), 6); n != 3 || d.DeniedGroup != "mid" {
			t.Fatalf("mid beside low: %d allowed, last %+v; want the 3 left of 5", n, d)
		}
		if n, _ := fill(t, h, lane(id, nil), 10); n != 5 {
			t.Fatalf("high beside both: %d allowed, want the 5 left of 10", n)
		}
	})
	t.Run("invalid requests are refused", func(t *testing.T) {
		h := newHarness(t)
		for _, req := range []PaceRequest{
			{Upstream: "", Limits: [PaceDims]PaceLimit{{Rate: 1}}},
			{Upstream: "a b", Limits: [PaceDims]PaceLimit{{Rate: 1}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: -1}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1, Period: 2 * time.Hour}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1}}, Cost: [PaceDims]int64{MaxTokens + 1}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1}}, Groups: []PaceGroup{{Name: "", Share: 0.5}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1}}, Groups: []PaceGroup{{Name: "a~b", Share: 0.5}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1}}, Groups: []PaceGroup{{Name: "b", Share: 0}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1}}, Groups: []PaceGroup{{Name: "b", Share: 1.5}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1}}, Groups: []PaceGroup{{Name: "b", Share: 0.5}, {Name: "b", Share: 0.2}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1}}, Groups: make([]PaceGroup, MaxPaceGroups+1)},
		} {
			if _, err := h.p.Pace(ctx, req); !errors.Is(err, ErrInvalid) {
				t.Errorf("%+v: err %v, want ErrInvalid", req, err)
			}
		}
	})
}

// downPacer is a primary that cannot be reached.
type downPacer struct{ calls atomic.Int64 }

func (p *downPacer) Pace(context.Context, PaceRequest) (PaceDecision, error) {
	p.calls.Add(1)
	return PaceDecision{}, ErrPaceSkipped
}
func (p *downPacer) Close() error { return nil }

func TestPaceResilientPacesLocallyAtItsShare(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	primary := &downPacer{}
	p, err := NewPaceResilient(PaceResilientOptions{Primary: primary, Local: NewPaceMemory(func() time.Time { return now }),
		Replicas: func() int64 { return 3 }})
	if err != nil {
		t.Fatal(err)
	}
	req := PaceRequest{Upstream: "down#1", Limits: [PaceDims]PaceLimit{PaceRequests: {Rate: 60, Burst: 6}}, Cost: [PaceDims]int64{PaceRequests: 1}}
	allowed := 0
	for range 10 {
		d, err := p.Pace(context.Background(), req)
		if err != nil || !d.Degraded {
			t.Fatalf("%+v, %v: want a degraded local decision", d, err)
		}
		if d.Allowed {
			allowed++
		} else if d.RetryAfter != 3*time.Second {
			// 60 a minute over three replicas: 20 a minute each, 3s apart.
			t.Fatalf("local retry %s, want 3s", d.RetryAfter)
		}
	}
	if allowed != 2 || primary.calls.Load() != 10 {
		t.Fatalf("allowed %d (want a third of the burst of 6), primary asked %d times", allowed, primary.calls.Load())
	}
}

// TestPaceResilientKeepsTheGroups: a local decision shares the divided
// rate out to the lane groups as the shared one would.
func TestPaceResilientKeepsTheGroups(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	p, err := NewPaceResilient(PaceResilientOptions{Primary: &downPacer{}, Local: NewPaceMemory(func() time.Time { return now }),
		Replicas: func() int64 { return 2 }})
	if err != nil {
		t.Fatal(err)
	}
	// 60 a minute, 6 at once, over two replicas: 30 and 3 here; batch's
	// half of that is 15 a minute (4 s apart), one at once.
	req := PaceRequest{Upstream: "down#2", Limits: [PaceDims]PaceLimit{PaceRequests: {Rate: 60, Burst: 6}}, Cost: [PaceDims]int64{PaceRequests: 1},
		Groups: []PaceGroup{{Name: "batch", Share: 0.5}}}
	if d, err := p.Pace(context.Background(), req); err != nil || !d.Allowed || !d.Degraded {
		t.Fatalf("first batch request: %+v, %v", d, err)
	}
	d, err := p.Pace(context.Background(), req)
	if err != nil || d.Allowed || d.DeniedGroup != "batch" || d.RetryAfter != 4*time.Second {
		t.Fatalf("second batch request: %+v, %v; want the batch group's denial, 4s", d, err)
	}
}

// TestPaceResilientOverADeadRedis: the shared schedule's Redis is killed;
// every replica then paces on its own schedule at its share of the rate.
func TestPaceResilientOverADeadRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	primary, err := NewPaceRedis(PaceRedisOptions{Client: c, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPaceResilient(PaceResilientOptions{Primary: primary, Replicas: func() int64 { return 2 }})
	if err != nil {
		t.Fatal(err)
	}
	req := PaceRequest{Upstream: "dead#1", Limits: [PaceDims]PaceLimit{PaceRequests: {Rate: 1, Period: time.Hour, Burst: 8}}, Cost: [PaceDims]int64{PaceRequests: 1}}
	if d, err := p.Pace(context.Background(), req); err != nil || !d.Allowed || d.Degraded {
		t.Fatalf("with Redis up: %+v, %v", d, err)
	}
	srv.Kill()
	allowed := 0
	for i := range 10 {
		d, err := p.Pace(context.Background(), req)
		if err != nil || !d.Degraded {
			t.Fatalf("call %d with Redis dead: %+v, %v; want a local decision", i, d, err)
		}
		if d.Allowed {
			allowed++
		}
	}
	// Half the burst of 8 on this replica's own schedule.
	if allowed != 4 {
		t.Fatalf("%d allowed locally, want 4", allowed)
	}
}

// TestOpenPacerSharesTheSchedule: two replicas' pacers opened on one Redis
// keep one schedule; without Redis each is its own.
func TestOpenPacerSharesTheSchedule(t *testing.T) {
	req := PaceRequest{Upstream: "open#1", Limits: [PaceDims]PaceLimit{PaceRequests: {Rate: 1, Period: time.Hour, Burst: 3}}, Cost: [PaceDims]int64{PaceRequests: 1}}
	allowed := func(ps ...Pacer) int {
		n := 0
		for range 4 {
			for _, p := range ps {
				if d, err := p.Pace(context.Background(), req); err != nil {
					t.Fatal(err)
				} else if d.Allowed {
					n++
				}
			}
		}
		return n
	}
	srv := redistest.Start(t, redistest.Options{})
	var shared []Pacer
	for range 2 {
		p, closer, err := OpenPacer(OpenOptions{Redis: "redis://" + srv.Addr()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = closer() })
		shared = append(shared, p)
	}
	if n := allowed(shared...); n != 3 {
		t.Errorf("two pacers on one Redis let %d through, want the one burst of 3", n)
	}
	var local []Pacer
	for range 2 {
		p, closer, err := OpenPacer(OpenOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = closer() })
		local = append(local, p)
	}
	if n := allowed(local...); n != 6 {
		t.Errorf("two in-memory pacers let %d through, want a burst of 3 each", n)
	}
}

// TestPaceGroupHoldsItsShareOverTime: over ten hours of a request of each
// lane every 30 s, batch gets its 30% of 10 an hour (and its burst of 3),
// interactive the rest of the upstream's pace, and together no more than
// the pace.
func TestPaceGroupHoldsItsShareOverTime(t *testing.T) {
	h := memoryPaceHarness()
	ctx := context.Background()
	lim := [PaceDims]PaceLimit{PaceRequests: {Rate: 10, Period: time.Hour, Burst: 10}}
	cost := [PaceDims]int64{PaceRequests: 1}
	batch := PaceRequest{Upstream: "share#1", Limits: lim, Cost: cost, Groups: []PaceGroup{{Name: "batch", Share: 0.3}}}
	inter := PaceRequest{Upstream: "share#1", Limits: lim, Cost: cost}
	var nb, ni int
	for i := 0; i <= 10*120; i++ {
		if i > 0 {
			h.advance(30 * time.Second)
		}
		for _, r := range []struct {
			req PaceRequest
			n   *int
		}{{batch, &nb}, {inter, &ni}} {
			d, err := h.p.Pace(ctx, r.req)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed {
				*r.n++
			}
		}
	}
	if nb != 3+30 || nb+ni != 10+100 {
		t.Fatalf("batch %d, interactive %d; want batch 33 (3 at once, 3 an hour) of the 110 (10 at once, 10 an hour)", nb, ni)
	}
}
