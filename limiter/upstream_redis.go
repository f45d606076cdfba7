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

// Redis keys and channel of the shared upstream view. A cool-down is one
// key per upstream, tw:up:{<id>} holding the end in unix milliseconds and
// expiring with it (PX), so a replica that (re)connects reads every live
// cool-down; the change itself is PUBLISHed on upstreamChannel, which every
// replica subscribes to, so the others apply it without polling. Both are
// written after the provider's answer, never on a request's path.
const (
	upstreamKeyPrefix = "tw:up:{"
	upstreamChannel   = "tw:up:cooldown"
)

// Defaults of UpstreamRedisOptions.
const (
	DefaultUpstreamRescan = 10 * time.Second
	upstreamQueue         = 256
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
	queue   chan cooldownNote
	ps      *redis.PubSub
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closeMu sync.Once

	published, publishErrors, dropped, received, rescans atomic.Int64
}

type cooldownNote struct {
	id    string
	until time.Time
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
		queue: make(chan cooldownNote, upstreamQueue), cancel: cancel}
	// Subscribe does not wait for Redis: the subscription is made (and
	// remade after every disconnect) by the receiving loop.
	u.ps = o.Client.Subscribe(ctx, upstreamChannel)
	u.wg.Add(2)
	go u.publish(ctx)
	go u.subscribe(ctx)
	return u, nil
}

// Cooldown implements UpstreamView: applied here at once, published by the
// background writer. When its bounded queue is full the cool-down stays
// local and is counted (Stats.Dropped).
func (u *UpstreamRedis) Cooldown(id string, until time.Time) {
	if len(id) > maxUpstreamID || strings.ContainsAny(id, " \r\n") {
		return
	}
	if !u.t.extend(id, until, u.opts.Now()) {
		return
	}
	select {
	case u.queue <- cooldownNote{id, until}:
	default:
		u.dropped.Add(1)
	}
}

// CooldownUntil implements UpstreamView.
func (u *UpstreamRedis) CooldownUntil(id string, now time.Time) time.Time { return u.t.get(id, now) }

// Stats implements UpstreamView.
func (u *UpstreamRedis) Stats() UpstreamStats {
	return UpstreamStats{
		Published: u.published.Load(), PublishErrors: u.publishErrors.Load(), Dropped: u.dropped.Load(),
		Received: u.received.Load(), Refused: u.t.refused.Load(), Rescans: u.rescans.Load(), Active: u.t.active(u.opts.Now()),
	}
}

// Close stops the background work; cool-downs not yet published are
// dropped (they expire on their own).
func (u *UpstreamRedis) Close() error {
	u.closeMu.Do(func() {
		u.cancel()
		_ = u.ps.Close() // interrupts a receive in progress
		u.wg.Wait()
	})
	return nil
}

// extendScript keeps the later end: a replica that learned a shorter
// retry-after never shortens another's cool-down.
var extendScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`)

func (u *UpstreamRedis) publish(ctx context.Context) {
	defer u.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-u.queue:
			if err := u.write(ctx, n); err != nil {
				u.publishErrors.Add(1)
				u.log.Debug("upstream cool-down not shared; it holds on this replica", "err", err)
				continue
			}
			u.published.Add(1)
		}
	}
}

func (u *UpstreamRedis) write(ctx context.Context, n cooldownNote) error {
	ttl := n.until.Sub(u.opts.Now())
	if ttl < time.Millisecond {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, u.opts.Timeout)
	defer cancel()
	ms := strconv.FormatInt(n.until.UnixMilli(), 10)
	if err := extendScript.Run(ctx, u.opts.Client, []string{upstreamKeyPrefix + n.id + "}"}, ms, ttl.Milliseconds()).Err(); err != nil {
		return err
	}
	if err := u.opts.Client.Publish(ctx, upstreamChannel, ms+" "+n.id).Err(); err != nil {
		return err
	}
	return nil
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
		if time.Since(lastScan) >= u.opts.Rescan {
			if u.rescan(ctx) == nil {
				lastScan = time.Now()
			}
		}
		msg, err := ps.ReceiveTimeout(ctx, u.opts.Rescan)
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

// rescan reads every live cool-down key (each master of a cluster).
func (u *UpstreamRedis) rescan(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, u.opts.Timeout)
	defer cancel()
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, upstreamKeyPrefix+"*", 256).Result()
			if err != nil {
				return err
			}
			for _, k := range keys {
				v, err := c.Get(ctx, k).Result()
				if err != nil {
					continue // expired between the scan and the read
				}
				id := strings.TrimSuffix(strings.TrimPrefix(k, upstreamKeyPrefix), "}")
				u.apply(v + " " + id)
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	var err error
	if cc, ok := u.opts.Client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, u.opts.Client)
	}
	if err != nil {
		return err
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
