package limiter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis key and channel of the shared upstream view. Every live cool-down
// is a member of one sorted set, upstreamIndexKey: the upstream's id scored
// by the end in unix milliseconds, the ended ones pruned at each write and
// the key expiring with the last end, so a replica that (re)connects reads
// every live cool-down with one ZRANGEBYSCORE. (One key per upstream, found
// by SCAN, made each re-read walk the whole keyspace — every request's
// record included: 1,044 SCAN calls of 237 µs in six seconds of the load
// harness, 5% of redis-server's time.) The change itself is PUBLISHed on
// upstreamChannel, which every replica subscribes to, so the others apply
// it without polling. Both are written after the provider's answer, never
// on a request's path.
const (
	upstreamIndexKey = "tw:up:index"
	upstreamChannel  = "tw:up:cooldown"
)

// Defaults of UpstreamRedisOptions.
const (
	DefaultUpstreamRescan = 10 * time.Second
	maxUpstreamID         = 256
)

// UpstreamRedisOptions configures an UpstreamRedis.
type UpstreamRedisOptions struct {
	// Client is the Redis (or Redis Cluster) client; the view does not
	// close it. Required.
	Client redis.UniversalClient
	// Timeout bounds each write and each re-read; zero means DefaultTimeout.
	Timeout time.Duration
	// Rescan is how often every live cool-down is re-read even when the
	// subscription seems healthy, the bound on a message lost without a
	// disconnect; zero means DefaultUpstreamRescan. Every (re)subscription
	// re-reads at once as well.
	Rescan time.Duration
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// UpstreamRedis is the shared upstream view. Staleness: a cool-down one
// replica learns reaches the others in one PUBLISH (its write plus Redis's
// fan-out, a millisecond on a healthy LAN); a replica that was disconnected
// re-reads every cool-down when its subscription is back, and every Rescan
// in any case. While Redis is down or slow each replica keeps, and acts on,
// what it knows itself: nothing on the request path waits for Redis.
type UpstreamRedis struct {
	opts    UpstreamRedisOptions
	t       *cooldowns
	log     *slog.Logger
	ps      *redis.PubSub
	writing chan struct{} // one write in flight at most
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closeMu sync.Once

	published, publishErrors, skipped, received, rescans atomic.Int64
	// lastFailure is when the last write failed (unix ns), 0 after a success.
	lastFailure atomic.Int64
}

// NewUpstreamRedis starts the view's subscriber and publisher.
func NewUpstreamRedis(o UpstreamRedisOptions) (*UpstreamRedis, error) {
	if o.Client == nil {
		return nil, errors.New("limiter: UpstreamRedisOptions.Client is required")
	}
	o.Timeout = cmp.Or(o.Timeout, DefaultTimeout)
	o.Rescan = cmp.Or(o.Rescan, DefaultUpstreamRescan)
	if o.Now == nil {
		o.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	u := &UpstreamRedis{opts: o, t: newCooldowns(), log: cmp.Or(o.Logger, slog.Default()),
		cancel: cancel, writing: make(chan struct{}, 1)}
	// Subscribe does not wait for Redis: the subscription is made (and
	// remade after every disconnect) by the receiving loop.
	u.ps = o.Client.Subscribe(ctx, upstreamChannel)
	u.wg.Add(1)
	go u.subscribe(ctx)
	return u, nil
}

// Cooldown implements UpstreamView: applied here at once, then written and
// published in one pipelined round trip bounded by Timeout. Only a
// cool-down that extends what this replica knew is written, so a storm of
// 429s writes once; after a failed write the next second's are not tried
// (they stay local, counted as Skipped), so an outage costs a 429's answer
// at most one Timeout per second.
func (u *UpstreamRedis) Cooldown(ctx context.Context, id string, until time.Time) error {
	if len(id) > maxUpstreamID || strings.ContainsAny(id, " \r\n") {
		return nil
	}
	now := u.opts.Now()
	if !u.t.extend(id, until, now) {
		return nil
	}
	if last := u.lastFailure.Load(); last != 0 && now.UnixNano()-last < int64(time.Second) {
		u.skipped.Add(1)
		return errUpstreamSkipped
	}
	if err := u.writeBounded(ctx, id, until); err != nil {
		u.lastFailure.Store(now.UnixNano())
		u.publishErrors.Add(1)
		return fmt.Errorf("limiter: sharing an upstream cool-down: %w", err)
	}
	u.lastFailure.Store(0)
	u.published.Add(1)
	return nil
}

// errUpstreamSkipped: a cool-down kept local because the last write failed
// less than a second ago.
var errUpstreamSkipped = errors.New("limiter: upstream cool-down kept local: the shared store failed within the last second or is still busy with the last write")

// CooldownUntil implements UpstreamView.
func (u *UpstreamRedis) CooldownUntil(id string, now time.Time) time.Time { return u.t.get(id, now) }

// Stats implements UpstreamView.
func (u *UpstreamRedis) Stats() UpstreamStats {
	return UpstreamStats{
		Published: u.published.Load(), PublishErrors: u.publishErrors.Load(), Skipped: u.skipped.Load(),
		Received: u.received.Load(), Refused: u.t.refused.Load(), Rescans: u.rescans.Load(), Active: u.t.active(u.opts.Now()),
	}
}

// Close stops the subscriber.
func (u *UpstreamRedis) Close() error {
	u.closeMu.Do(func() {
		u.cancel()
		_ = u.ps.Close() // interrupts a receive in progress
		u.wg.Wait()
	})
	return nil
}

// extendScript keeps the later end: a replica that learned a shorter
// retry-after never shortens another's cool-down. It prunes the cool-downs
// that have ended (ARGV[3], the writer's now) and keeps the index until
// the last end.
// KEYS: 1 the index. ARGV: 1 end (unix ms), 2 upstream id, 3 now (unix ms).
var extendScript = redis.NewScript(`
local cur = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]) or '0')
if tonumber(ARGV[1]) <= cur then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[1], last[2]) end
return 1`)

// writeBounded runs one write at a time and waits for it at most Timeout,
// whatever the client's own timeouts are (go-redis honours a context's
// deadline only with ContextTimeoutEnabled): a write still running when
// the next cool-down comes makes that one local (skipped), so a stalled
// Redis holds at most one goroutine here.
func (u *UpstreamRedis) writeBounded(ctx context.Context, id string, until time.Time) error {
	select {
	case u.writing <- struct{}{}:
	default:
		u.skipped.Add(1)
		return errUpstreamSkipped
	}
	done := make(chan error, 1)
	go func() {
		err := u.write(ctx, id, until)
		// Free before answering: the caller's next cool-down must find this
		// write finished, not still holding the one slot.
		<-u.writing
		done <- err
	}()
	t := time.NewTimer(u.opts.Timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("no answer within %s", u.opts.Timeout)
	}
}

func (u *UpstreamRedis) write(ctx context.Context, id string, until time.Time) error {
	ttl := until.Sub(u.opts.Now())
	if ttl < time.Millisecond {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), u.opts.Timeout)
	defer cancel()
	ms := strconv.FormatInt(until.UnixMilli(), 10)
	pipe := u.opts.Client.Pipeline()
	extend := extendScript.Eval(ctx, pipe, []string{upstreamIndexKey}, ms, id, u.opts.Now().UnixMilli())
	pub := pipe.Publish(ctx, upstreamChannel, ms+" "+id)
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	return errors.Join(extend.Err(), pub.Err())
}

// subscribe applies what other replicas publish. Every (re)subscription —
// the first, and each after go-redis reconnects — re-reads the keys, since
// messages sent while disconnected are lost; so does every Rescan.
func (u *UpstreamRedis) subscribe(ctx context.Context) {
	defer u.wg.Done()
	ps := u.ps
	lastScan := time.Time{}
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		wait := u.opts.Rescan
		if time.Since(lastScan) >= u.opts.Rescan {
			if u.rescan(ctx) == nil {
				lastScan = time.Now()
			} else {
				// The read failed (a pooled connection from before an outage,
				// a store still coming back): try again soon, not a period on.
				wait = min(wait, 250*time.Millisecond)
			}
		}
		msg, err := ps.ReceiveTimeout(ctx, wait)
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				continue // quiet: time for the periodic re-read
			}
			// Disconnected: go-redis reconnects on the next receive.
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				lastScan = time.Time{} // re-read now: what was missed while away
			}
		case *redis.Message:
			u.apply(m.Payload)
		}
	}
}

// apply reads "<until unix ms> <id>".
func (u *UpstreamRedis) apply(payload string) {
	ms, id, ok := strings.Cut(payload, " ")
	if !ok || id == "" || len(id) > maxUpstreamID {
		return
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return
	}
	if u.t.extend(id, time.UnixMilli(n), u.opts.Now()) {
		u.received.Add(1)
	}
}

// rescan reads every live cool-down: the index's members that end after
// now, at most MaxUpstreams (what the local table holds), latest first.
func (u *UpstreamRedis) rescan(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, u.opts.Timeout)
	defer cancel()
	live, err := u.opts.Client.ZRevRangeByScoreWithScores(ctx, upstreamIndexKey, &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(u.opts.Now().UnixMilli(), 10), Max: "+inf", Count: MaxUpstreams,
	}).Result()
	if err != nil {
		return err
	}
	for _, z := range live {
		id, ok := z.Member.(string)
		if !ok {
			continue
		}
		u.apply(strconv.FormatInt(int64(z.Score), 10) + " " + id)
	}
	u.rescans.Add(1)
	return nil
}

// sharedClient is a client for the store options' Redis or cluster, with
// every timeout explicit and no retries (a caller that times out decides
// itself what a failure means).
func sharedClient(o OpenOptions, timeout time.Duration) (redis.UniversalClient, error) {
	switch {
	case o.Redis != "" && len(o.Cluster) > 0:
		return nil, errors.New("limiter: set a Redis URL or cluster addresses, not both")
	case len(o.Cluster) > 0:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: o.Cluster, DialTimeout: time.Second, ReadTimeout: timeout, WriteTimeout: timeout, MaxRetries: -1,
		}), nil
	}
	opt, err := redis.ParseURL(o.Redis)
	if err != nil {
		return nil, fmt.Errorf("limiter: redis URL: %w", err)
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.MaxRetries = time.Second, timeout, timeout, -1
	return redis.NewClient(opt), nil
}

// OpenUpstreams returns the upstream view the store options name: shared
// through Redis, or local to this replica, and its closer (the client's
// too).
func OpenUpstreams(o OpenOptions) (UpstreamView, func() error, error) {
	if !o.Shared() {
		m := NewUpstreamMemory(nil)
		return m, m.Close, nil
	}
	client, err := sharedClient(o, cmp.Or(o.Timeout, DefaultTimeout))
	if err != nil {
		return nil, nil, err
	}
	u, err := NewUpstreamRedis(UpstreamRedisOptions{Client: client, Timeout: cmp.Or(o.Timeout, DefaultTimeout), Logger: o.Logger})
	if err != nil {
		return nil, nil, errors.Join(err, client.Close())
	}
	return u, func() error { return errors.Join(u.Close(), client.Close()) }, nil
}
