package limiter

import (
	"context"
	"errors"
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
	// raw reads an upstream's stored schedule, nil when the store keeps none
	// to read (memory).
	raw func(id string) map[string]string
}

func memoryPaceHarness() paceHarness {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	p := NewPaceMemory(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	return paceHarness{p: p, advance: func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }}
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
	t.Run("invalid requests are refused", func(t *testing.T) {
		h := newHarness(t)
		for _, req := range []PaceRequest{
			{Upstream: "", Limits: [PaceDims]PaceLimit{{Rate: 1}}},
			{Upstream: "a b", Limits: [PaceDims]PaceLimit{{Rate: 1}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: -1}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1, Period: 2 * time.Hour}}},
			{Upstream: "x", Limits: [PaceDims]PaceLimit{{Rate: 1}}, Cost: [PaceDims]int64{MaxTokens + 1}},
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
