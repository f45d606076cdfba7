package limiter

import (
	"cmp"
	"container/list"
	"context"
	"sync"
	"time"
)

// MemoryCacheOptions configure a MemoryCache.
type MemoryCacheOptions struct {
	// Now is the cache's clock; nil means time.Now.
	Now func() time.Time
	// MaxBytes bounds the StoredSize of every org's entries together, the
	// stand-in for Redis's maxmemory: a Put that would pass it (after its
	// org's own evictions) is not stored. Zero means DefaultMemoryCacheBytes.
	MaxBytes int64
}

// DefaultMemoryCacheBytes is MemoryCacheOptions.MaxBytes when zero.
const DefaultMemoryCacheBytes = 256 << 20

// maxEvictions bounds the entries one Put evicts, in both stores, so one
// large entry cannot make one call walk a whole org; when that is not
// enough room the entry is not stored.
const maxEvictions = 256

// MemoryCache is the ResponseCache of a single replica, with the Redis
// cache's semantics: the same sizes (StoredSize), least recently used out
// first, entries expired by TTL and dropped when met. Orgs whose entries
// all expired are dropped by a pass over all orgs at most once a minute.
type MemoryCache struct {
	now      func() time.Time
	maxBytes int64

	mu     sync.Mutex
	orgs   map[string]*memCacheOrg
	total  int64
	nextGC time.Time
}

type memCacheOrg struct {
	entries map[string]*memCacheEntry
	lru     list.List  // of *memCacheEntry, most recently used first
	byExp   pendingSet // key by expiry (unix ns), like the Redis exp zset
	bytes   int64
}

type memCacheEntry struct {
	key     string
	value   []byte // compressed, as Redis keeps it
	size    int64
	expires time.Time
	elem    *list.Element
}

// NewMemoryCache returns an empty MemoryCache.
func NewMemoryCache(o MemoryCacheOptions) *MemoryCache {
	m := &MemoryCache{now: o.Now, maxBytes: cmp.Or(o.MaxBytes, DefaultMemoryCacheBytes), orgs: map[string]*memCacheOrg{}}
	if m.now == nil {
		m.now = time.Now
	}
	return m
}

// Get implements ResponseCache.
func (m *MemoryCache) Get(_ context.Context, org, key string) ([]byte, bool, error) {
	if err := validateCacheGet(org, key); err != nil {
		return nil, false, err
	}
	m.mu.Lock()
	now := m.now()
	o := m.orgs[org]
	var e *memCacheEntry
	if o != nil {
		e = o.entries[key]
	}
	if e != nil && !now.Before(e.expires) {
		m.forget(o, e)
		m.dropIfEmpty(org, o)
		e = nil
	}
	if e == nil {
		m.mu.Unlock()
		return nil, false, nil
	}
	o.lru.MoveToFront(e.elem)
	stored := e.value
	m.mu.Unlock()
	v, err := decompressValue(stored)
	if err != nil {
		return nil, false, err
	}
	return v, true, nil
}

// Put implements ResponseCache.
func (m *MemoryCache) Put(_ context.Context, org, key string, value []byte, ttl time.Duration, maxEntry, maxOrg int64) (PutResult, error) {
	if err := validateCachePut(org, key, value, ttl, maxEntry, maxOrg); err != nil {
		return PutResult{}, err
	}
	stored := compressValue(value) // outside the lock: it is the slow part
	size := StoredSize(len(stored))
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.gc(now)
	o := m.orgs[org]
	if size > maxEntry || size > maxOrg {
		var have int64
		if o != nil {
			have = o.bytes
		}
		return PutResult{OrgBytes: have}, nil
	}
	if o == nil {
		o = &memCacheOrg{entries: map[string]*memCacheEntry{}, byExp: newPendingSet()}
		m.orgs[org] = o
	}
	defer m.dropIfEmpty(org, o)
	m.expire(o, now)
	if old := o.entries[key]; old != nil {
		m.forget(o, old)
	}
	var res PutResult
	for o.bytes+size > maxOrg && res.Evicted < maxEvictions && o.lru.Len() > 0 {
		m.forget(o, o.lru.Back().Value.(*memCacheEntry))
		res.Evicted++
	}
	if o.bytes+size > maxOrg || m.total+size > m.maxBytes {
		res.OrgBytes = o.bytes
		return res, nil
	}
	e := &memCacheEntry{key: key, value: stored, size: size, expires: now.Add(ttl)}
	e.elem = o.lru.PushFront(e)
	o.byExp.add(key, e.expires.UnixNano())
	o.entries[key] = e
	o.bytes += size
	m.total += size
	res.Stored, res.OrgBytes = true, o.bytes
	return res, nil
}

// Close implements ResponseCache.
func (m *MemoryCache) Close() error { return nil }

// forget removes e from its org.
func (m *MemoryCache) forget(o *memCacheOrg, e *memCacheEntry) {
	delete(o.entries, e.key)
	o.lru.Remove(e.elem)
	o.byExp.remove(e.key)
	o.bytes -= e.size
	m.total -= e.size
}

// expire forgets the org's entries whose TTL has passed, soonest first.
func (m *MemoryCache) expire(o *memCacheOrg, now time.Time) {
	for {
		key, ok := o.byExp.popExpired(now.UnixNano())
		if !ok {
			return
		}
		m.forget(o, o.entries[key])
	}
}

func (m *MemoryCache) dropIfEmpty(org string, o *memCacheOrg) {
	if len(o.entries) == 0 {
		delete(m.orgs, org)
	}
}

// gc drops every expired entry, at most once a minute, so orgs that stopped
// calling do not keep their memory.
func (m *MemoryCache) gc(now time.Time) {
	if now.Before(m.nextGC) {
		return
	}
	m.nextGC = now.Add(time.Minute)
	for name, o := range m.orgs {
		m.expire(o, now)
		m.dropIfEmpty(name, o)
	}
}
