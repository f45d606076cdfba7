package limiter

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lua/respcache_common.lua
	respCacheCommonLua string
	//go:embed lua/respcache_get.lua
	respCacheGetLua string
	//go:embed lua/respcache_put.lua
	respCachePutLua string

	respCacheGetScript = redis.NewScript(respCacheCommonLua + respCacheGetLua)
	respCachePutScript = redis.NewScript(respCacheCommonLua + respCachePutLua)
)

// RedisCacheOptions configure a RedisCache.
type RedisCacheOptions struct {
	// Client is any UniversalClient; the cache does not close it.
	Client redis.UniversalClient
	// Timeout bounds each call on top of the caller's context; zero means
	// DefaultTimeout. A lookup is on the request's path, so it is short:
	// a slow cache is a miss.
	Timeout time.Duration
	// Backoff is how long the cache answers "unavailable" at once after a
	// call found Redis unreachable, so an outage costs each request nothing
	// rather than a timeout; zero means DefaultCacheBackoff.
	Backoff time.Duration
}

// DefaultCacheBackoff is RedisCacheOptions.Backoff when zero.
const DefaultCacheBackoff = time.Second

// ErrCacheSkipped wraps ErrUnavailable for calls not made because Redis was
// found unreachable less than Backoff ago.
var ErrCacheSkipped = fmt.Errorf("%w: response cache backing off", ErrUnavailable)

// RedisCache is the shared ResponseCache: one EVALSHA per Get and per Put,
// all of an org's keys under tw:{org}:rc: (see lua/respcache_common.lua for
// the layout), Redis TIME as the clock of expiries.
//
// The lookup is its own round trip, made only for policies that enable the
// cache; folding it into the admission script (one round trip for both)
// is the next step, once that script's rewrite has landed.
type RedisCache struct {
	backingOff
}

// NewRedisCache returns a RedisCache over o.Client.
func NewRedisCache(o RedisCacheOptions) (*RedisCache, error) {
	if o.Client == nil {
		return nil, errors.New("limiter: RedisCacheOptions.Client is nil")
	}
	return &RedisCache{backingOff{client: o.Client, timeout: cmp.Or(o.Timeout, DefaultTimeout),
		backoff: cmp.Or(o.Backoff, DefaultCacheBackoff), skipped: ErrCacheSkipped}}, nil
}

func cacheKeys(org, key string) (prefix string, keys []string) {
	prefix = cachePrefix(org)
	return prefix, []string{prefix + "m", prefix + "lru", prefix + "exp", prefix + "e:" + key}
}

// Get implements ResponseCache.
func (r *RedisCache) Get(ctx context.Context, org, key string) ([]byte, bool, error) {
	if err := validateCacheGet(org, key); err != nil {
		return nil, false, err
	}
	prefix, keys := cacheKeys(org, key)
	v, err := r.run(ctx, respCacheGetScript, keys, key, prefix)
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("limiter: cache get: %w", err)
	}
	s, ok := v.(string)
	if !ok {
		return nil, false, fmt.Errorf("limiter: cache get: unexpected reply %T", v)
	}
	out, err := decompressValue([]byte(s))
	if err != nil {
		return nil, false, err
	}
	return out, true, nil
}

// Put implements ResponseCache.
func (r *RedisCache) Put(ctx context.Context, org, key string, value []byte, ttl time.Duration, maxEntry, maxOrg int64) (PutResult, error) {
	if err := validateCachePut(org, key, value, ttl, maxEntry, maxOrg); err != nil {
		return PutResult{}, err
	}
	stored := compressValue(value)
	prefix, keys := cacheKeys(org, key)
	v, err := r.run(ctx, respCachePutScript, keys, key, stored, ttl.Milliseconds(), maxEntry, maxOrg,
		StoredSize(len(stored)), prefix, maxEvictions)
	if err != nil {
		return PutResult{}, fmt.Errorf("limiter: cache put: %w", err)
	}
	f, err := asSlice(v, 3)
	if err != nil {
		return PutResult{}, fmt.Errorf("limiter: cache put: %w", err)
	}
	var n [3]int64
	for i := range n {
		if n[i], err = asInt(f[i]); err != nil {
			return PutResult{}, fmt.Errorf("limiter: cache put: %w", err)
		}
	}
	return PutResult{Stored: n[0] == 1, Evicted: int(n[1]), OrgBytes: n[2]}, nil
}

// Close implements ResponseCache; the client belongs to the caller.
func (r *RedisCache) Close() error { return nil }

// OpenResponseCache opens the cache next to the store o names: in memory
// without Redis, else a RedisCache on a client of its own, so a cache
// call (whose values are larger) never waits behind admissions for a
// connection, and an admission never behind it.
func OpenResponseCache(o OpenOptions) (ResponseCache, func() error, error) {
	if !o.Shared() {
		c := NewMemoryCache(MemoryCacheOptions{})
		return c, c.Close, nil
	}
	return onOwnClient(o, func(client redis.UniversalClient, timeout time.Duration) (ResponseCache, error) {
		return NewRedisCache(RedisCacheOptions{Client: client, Timeout: timeout})
	})
}

// onOwnClient builds a store beside admission on a Redis client of its
// own (closed by the returned closer, or at once when build fails).
func onOwnClient[T any](o OpenOptions, build func(redis.UniversalClient, time.Duration) (T, error)) (T, func() error, error) {
	var zero T
	timeout := cmp.Or(o.Timeout, DefaultTimeout)
	client, err := sharedClient(o, timeout)
	if err != nil {
		return zero, nil, err
	}
	v, err := build(client, timeout)
	if err != nil {
		return zero, nil, errors.Join(err, client.Close())
	}
	return v, client.Close, nil
}
