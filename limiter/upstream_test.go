package limiter

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

func TestCooldownTable(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	cases := []struct {
		name  string
		steps []struct {
			id    string
			until time.Duration
		}
		want map[string]time.Duration // id → end after now; 0: none
	}{
		{"later wins", []struct {
			id    string
			until time.Duration
		}{{"a", 20 * time.Second}, {"a", 5 * time.Second}, {"a", 30 * time.Second}},
			map[string]time.Duration{"a": 30 * time.Second}},
		{"a past end is nothing", []struct {
			id    string
			until time.Duration
		}{{"a", -time.Second}, {"b", 0}},
			map[string]time.Duration{"a": 0, "b": 0}},
		{"upstreams are apart", []struct {
			id    string
			until time.Duration
		}{{"a", time.Second}, {"b", 2 * time.Second}},
			map[string]time.Duration{"a": time.Second, "b": 2 * time.Second, "c": 0}},
		{"an empty id is nothing", []struct {
			id    string
			until time.Duration
		}{{"", time.Second}}, map[string]time.Duration{"": 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := newCooldowns()
			for _, s := range c.steps {
				tb.extend(s.id, now.Add(s.until), now)
			}
			for id, d := range c.want {
				got := tb.get(id, now)
				if d == 0 && !got.IsZero() || d != 0 && !got.Equal(now.Add(d)) {
					t.Errorf("%q: %v, want +%s", id, got, d)
				}
			}
		})
	}
}

func TestCooldownTableBound(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	tb := newCooldowns()
	for i := range MaxUpstreams {
		if !tb.extend(strconv.Itoa(i), now.Add(time.Second), now) {
			t.Fatalf("entry %d refused below the bound", i)
		}
	}
	if tb.extend("one-more", now.Add(time.Second), now) || tb.refused.Load() != 1 {
		t.Fatalf("past the bound an entry is refused and counted (refused %d)", tb.refused.Load())
	}
	later := now.Add(2 * time.Second) // every entry has expired: room again
	if !tb.extend("one-more", later.Add(time.Second), later) || len(tb.until) != 1 {
		t.Fatalf("expired entries make room: %d held", len(tb.until))
	}
}

// upstreamConformance is what every view does on the replica that learns
// a cool-down.
func upstreamConformance(t *testing.T, v UpstreamView) {
	ctx := context.Background()
	now := time.Now()
	v.Cooldown(ctx, "api.example.com#k1", now.Add(20*time.Second))
	if got := v.CooldownUntil("api.example.com#k1", now); !got.Equal(now.Add(20 * time.Second)) {
		t.Fatalf("local cool-down %v", got)
	}
	v.Cooldown(ctx, "api.example.com#k1", now.Add(time.Second))
	if got := v.CooldownUntil("api.example.com#k1", now); got.Sub(now) < 19*time.Second {
		t.Fatalf("a shorter cool-down shortened it to %v", got.Sub(now))
	}
	if !v.CooldownUntil("api.example.com#k2", now).IsZero() {
		t.Fatal("another credential's upstream is not in cool-down")
	}
	if !v.CooldownUntil("api.example.com#k1", now.Add(21*time.Second)).IsZero() {
		t.Fatal("a cool-down ends")
	}
	if s := v.Stats(); s.Active != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestUpstreamMemory(t *testing.T) { upstreamConformance(t, NewUpstreamMemory(nil)) }

func newUpstreamRedis(t *testing.T, c redis.UniversalClient, rescan time.Duration) *UpstreamRedis {
	t.Helper()
	u, err := NewUpstreamRedis(UpstreamRedisOptions{Client: c, Timeout: 300 * time.Millisecond, Rescan: rescan})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = u.Close() })
	return u
}

func TestUpstreamRedisConformance(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	upstreamConformance(t, newUpstreamRedis(t, newClient(t, srv.Addr()), 0))
}

// TestUpstreamRedisShared: a cool-down one replica learns reaches a replica
// already running (the publish) and one that starts later (the re-read at
// subscription), and the key expires with it.
func TestUpstreamRedisShared(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{})
	a := newUpstreamRedis(t, newClient(t, srv.Addr()), 0)
	b := newUpstreamRedis(t, newClient(t, srv.Addr()), 0)
	waitFor(t, "b subscribed", func() bool { return b.Stats().Rescans > 0 })
	until := time.Now().Add(20 * time.Second).Truncate(time.Millisecond)
	start := time.Now()
	a.Cooldown(ctx, "up1", until)
	wrote := time.Since(start)
	waitFor(t, "b learns the cool-down", func() bool { return b.CooldownUntil("up1", time.Now()).Equal(until) })
	t.Logf("cool-down written in %s, held by the other replica %s after it was learned", wrote, time.Since(start))
	if s := b.Stats(); s.Received != 1 {
		t.Errorf("b stats %+v", s)
	}
	c := newUpstreamRedis(t, newClient(t, srv.Addr()), 0)
	waitFor(t, "a replica started later reads it", func() bool { return c.CooldownUntil("up1", time.Now()).Equal(until) })
	rc := newClient(t, srv.Addr())
	pttl, err := rc.PTTL(ctx, upstreamIndexKey).Result()
	if err != nil || pttl <= 0 || pttl > 20*time.Second {
		t.Fatalf("the index expires with the last cool-down: pttl %s %v", pttl, err)
	}
	// A shorter cool-down from another replica changes nothing anywhere.
	b.Cooldown(ctx, "up1", time.Now().Add(time.Second))
	if got, _ := rc.ZScore(ctx, upstreamIndexKey, "up1").Result(); int64(got) != until.UnixMilli() {
		t.Fatalf("stored end %v, want %d", got, until.UnixMilli())
	}
}

// TestUpstreamRedisIndex: the re-read is one read of the index whatever
// else the keyspace holds (no SCAN: each request's record is a key), an
// ended cool-down is pruned by the next write and never re-read, and the
// index lives exactly as long as its last cool-down.
func TestUpstreamRedisIndex(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{})
	rc := newClient(t, srv.Addr())
	pipe := rc.Pipeline()
	for i := range 5000 { // other keys, as a busy limiter's records
		pipe.Set(ctx, "tw:{org}:r:"+strconv.Itoa(i), "s", time.Minute)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rc.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	a := newUpstreamRedis(t, newClient(t, srv.Addr()), 0)
	short := time.Now().Add(150 * time.Millisecond)
	if err := a.Cooldown(ctx, "brief", short); err != nil {
		t.Fatal(err)
	}
	long := time.Now().Add(20 * time.Second).Truncate(time.Millisecond)
	if err := a.Cooldown(ctx, "long", long); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(short) + 50*time.Millisecond)
	if err := a.Cooldown(ctx, "other", time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	members, err := rc.ZRange(ctx, upstreamIndexKey, 0, -1).Result()
	if err != nil || !slices.Equal(members, []string{"other", "long"}) {
		t.Fatalf("index %v %v: the ended cool-down is pruned by the next write", members, err)
	}
	c := newUpstreamRedis(t, newClient(t, srv.Addr()), 0)
	waitFor(t, "a replica started later reads the live ones", func() bool { return c.Stats().Active == 2 })
	if got := c.CooldownUntil("long", time.Now()); !got.Equal(long) {
		t.Fatalf("re-read end %s, want %s", got, long)
	}
	stats, err := rc.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stats, "cmdstat_scan:") {
		t.Fatalf("a re-read walked the keyspace:\n%s", stats)
	}
	pttl, err := rc.PTTL(ctx, upstreamIndexKey).Result()
	if err != nil || pttl < 19*time.Second || pttl > 20*time.Second {
		t.Fatalf("the index expires with its last cool-down (20s): pttl %s %v", pttl, err)
	}
}

// TestUpstreamRedisFaults: with Redis stalled or killed, learning and
// reading a cool-down never waits for it (the calls return while Redis
// answers nothing), the cool-down holds on the replica that learned it, and
// once Redis is back a reconnected replica learns what is published again.
func TestUpstreamRedisFaults(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{})
	a := newUpstreamRedis(t, newClient(t, srv.Addr()), 0)
	b := newUpstreamRedis(t, newClient(t, srv.Addr()), 0)
	waitFor(t, "b subscribed", func() bool { return b.Stats().Rescans > 0 })

	srv.Pause()
	a.Cooldown(ctx, "stalled", time.Now().Add(30*time.Second))
	if a.CooldownUntil("stalled", time.Now()).IsZero() {
		t.Fatal("the learning replica holds the cool-down while Redis is stalled")
	}
	srv.Resume()

	rescans := b.Stats().Rescans
	srv.Kill()
	a.Cooldown(ctx, "down", time.Now().Add(30*time.Second))
	if a.CooldownUntil("down", time.Now()).IsZero() {
		t.Fatal("the learning replica holds the cool-down while Redis is down")
	}
	if s := a.Stats(); s.PublishErrors+s.Skipped != 2 {
		t.Fatalf("both writes failed or were skipped: %+v", s)
	}
	if err := a.Cooldown(ctx, "down2", time.Now().Add(30*time.Second)); err == nil {
		t.Fatal("a cool-down that could not be shared says so")
	}
	if !b.CooldownUntil("down", time.Now()).IsZero() {
		t.Fatal("b cannot know what was never shared")
	}

	srv.Restart()
	time.Sleep(time.Second) // past the second in which failed writes are not retried
	waitFor(t, "b re-reads after reconnecting", func() bool { return b.Stats().Rescans > rescans })
	until := time.Now().Add(20 * time.Second).Truncate(time.Millisecond)
	a.Cooldown(ctx, "after", until)
	waitFor(t, "b learns a cool-down published after the restart", func() bool { return b.CooldownUntil("after", time.Now()).Equal(until) })
}

func TestUpstreamRedisCluster(t *testing.T) {
	ctx := context.Background()
	cl := redistest.StartCluster(t, 3)
	a := newUpstreamRedis(t, newClusterClient(t, cl.Addrs()), 0)
	b := newUpstreamRedis(t, newClusterClient(t, cl.Addrs()), 0)
	waitFor(t, "b subscribed", func() bool { return b.Stats().Rescans > 0 })
	until := time.Now().Add(20 * time.Second).Truncate(time.Millisecond)
	for i := range 8 { // spread over the masters' slots
		a.Cooldown(ctx, "up"+strconv.Itoa(i), until)
	}
	waitFor(t, "b learns every cool-down", func() bool { return b.Stats().Received == 8 })
	c := newUpstreamRedis(t, newClusterClient(t, cl.Addrs()), 0)
	waitFor(t, "a later replica reads every master", func() bool { return c.Stats().Active == 8 })
}

// TestUpstreamRedisBackToBack: a cool-down learned right after another was
// written is written too, not kept local as if the last write were still
// in flight (one write at a time is the bound, a finished one holds none).
func TestUpstreamRedisBackToBack(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{})
	u := newUpstreamRedis(t, newClient(t, srv.Addr()), 0)
	until := time.Now().Add(20 * time.Second)
	for i := range 300 {
		if err := u.Cooldown(ctx, "up"+strconv.Itoa(i), until); err != nil {
			t.Fatalf("cool-down %d, right after the one before it: %v", i, err)
		}
	}
	if s := u.Stats(); s.Published != 300 || s.Skipped != 0 {
		t.Fatalf("stats %+v: every cool-down written", s)
	}
}
