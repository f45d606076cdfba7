package mockprovider

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"time"
)

// maxBreakpoints and lookback are the documented Anthropic limits.
const (
	maxBreakpoints = 4
	lookback       = 20
)

// cacheUsage is the input split of one request; the three fields always sum
// to the request's uncached input count.
type cacheUsage struct {
	input, read, write5m, write1h int64
}

// cachePlan is the outcome of a lookup, applied by promptCache.commit once the
// request is admitted (a rejected request must not warm the cache).
type cachePlan struct {
	usage  cacheUsage
	hit    *[32]byte
	writes []cacheWrite
}

type cacheWrite struct {
	key [32]byte
	ttl time.Duration
}

type cacheEntry struct {
	expires time.Time
	ttl     time.Duration
}

// promptCache is the per-instance simulated prompt cache, keyed by prefix
// hash, bounded to max entries.
type promptCache struct {
	mu      sync.Mutex
	max     int
	entries map[[32]byte]cacheEntry
}

func newPromptCache(max int) *promptCache {
	return &promptCache{max: max, entries: make(map[[32]byte]cacheEntry)}
}

func (c *promptCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.entries)
}

// breakpoint is a resolved cache_control position.
type breakpoint struct {
	pos int
	ttl string
}

// resolveBreakpoints applies the 4-slot limit, automatic caching and the
// TTL ordering rule, returning breakpoints in prompt order (one per position,
// the longest TTL winning where a tool_result nests several).
func resolveBreakpoints(f *flatPrompt) ([]breakpoint, error) {
	n := f.explicit
	if f.autoTTL != "" {
		n++
	}
	if n > maxBreakpoints {
		return nil, badRequest("A maximum of %d blocks with cache_control may be provided. Found %d.", maxBreakpoints, n)
	}
	var bps []breakpoint
	seen5m := false
	for i, b := range f.blocks {
		if len(b.marks) == 0 {
			continue
		}
		ttl := "5m"
		for _, t := range b.marks {
			if t == "1h" && seen5m {
				return nil, badRequest("cache_control with ttl='1h' must not come after cache_control with ttl='5m'; " +
					"a longer TTL must appear before shorter TTLs")
			}
			if t == "5m" {
				seen5m = true
			} else {
				ttl = "1h"
			}
		}
		bps = append(bps, breakpoint{pos: i, ttl: ttl})
	}
	if f.autoTTL == "" {
		return bps, nil
	}
	last := -1
	for i := len(f.blocks) - 1; i >= 0; i-- {
		if f.blocks[i].cacheable {
			last = i
			break
		}
	}
	if last < 0 {
		return bps, nil // nothing eligible: automatic caching silently does nothing
	}
	if len(bps) > 0 && bps[len(bps)-1].pos == last {
		if bps[len(bps)-1].ttl != f.autoTTL {
			return nil, badRequest("top-level cache_control ttl '%s' conflicts with the cache_control ttl '%s' on the last cacheable block",
				f.autoTTL, bps[len(bps)-1].ttl)
		}
		return bps, nil
	}
	if f.autoTTL == "1h" && seen5m {
		return nil, badRequest("top-level cache_control with ttl='1h' must not come after cache_control with ttl='5m'")
	}
	return append(bps, breakpoint{pos: last, ttl: f.autoTTL}), nil
}

// minCacheTokens is the minimum cacheable prefix for a model.
func minCacheTokens(model string, opts Options) int64 {
	best, bestLen := opts.DefaultMinCache, -1
	for _, table := range []map[string]int64{DefaultMinCacheTokens, opts.MinCacheTokens} {
		for k, v := range table {
			// >= so that Options entries override defaults with the same key.
			if strings.Contains(model, k) && len(k) >= bestLen {
				best, bestLen = v, len(k)
			}
		}
	}
	return best
}

func ttlDuration(ttl string) time.Duration {
	if ttl == "1h" {
		return time.Hour
	}
	return 5 * time.Minute
}

// plan computes the usage split for f at now without changing the cache.
func (c *promptCache) plan(f *flatPrompt, now time.Time, opts Options) (cachePlan, error) {
	bps, err := resolveBreakpoints(f)
	if err != nil {
		return cachePlan{}, err
	}
	total := f.total()
	if len(bps) == 0 {
		return cachePlan{usage: cacheUsage{input: total}}, nil
	}
	prefix := make([]int64, len(f.blocks)) // prefix[i]: tokens of blocks 0..i
	chain := make([][32]byte, len(f.blocks))
	h := sha256.Sum256([]byte("model\x00" + f.model))
	var run int64
	for i, b := range f.blocks {
		run += b.tokens
		prefix[i] = run
		h = sha256.Sum256(append(h[:], b.key...))
		chain[i] = h
	}
	minTokens := minCacheTokens(f.model, opts)
	valid := bps[:0:0]
	for _, bp := range bps {
		if prefix[bp.pos] >= minTokens {
			valid = append(valid, bp)
		}
	}
	if len(valid) == 0 {
		return cachePlan{usage: cacheUsage{input: total}}, nil
	}

	c.mu.Lock()
	hitPos := -1
	for _, bp := range valid {
		for q := bp.pos; q >= 0 && q > bp.pos-lookback; q-- {
			if e, ok := c.entries[chain[q]]; ok && now.Before(e.expires) {
				hitPos = max(hitPos, q)
				break
			}
		}
	}
	c.mu.Unlock()

	at := func(pos int) int64 {
		if pos < 0 {
			return 0
		}
		return prefix[pos]
	}
	var p cachePlan
	last1h, last := -1, -1
	for _, bp := range valid {
		if bp.pos <= hitPos {
			continue
		}
		p.writes = append(p.writes, cacheWrite{key: chain[bp.pos], ttl: ttlDuration(bp.ttl)})
		last = bp.pos
		if bp.ttl == "1h" {
			last1h = bp.pos
		}
	}
	if hitPos >= 0 {
		k := chain[hitPos]
		p.hit = &k
	}
	p.usage.read = at(hitPos)
	if last1h > hitPos {
		p.usage.write1h = at(last1h) - at(hitPos)
	}
	base := max(hitPos, last1h)
	if last > base {
		p.usage.write5m = at(last) - at(base)
	}
	p.usage.input = total - at(max(base, last))
	return p, nil
}

// commit records the plan's writes and refreshes the hit entry's TTL, which
// counts from the start of the request that reads it.
func (c *promptCache) commit(p cachePlan, now time.Time) {
	if p.hit == nil && len(p.writes) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.hit != nil {
		if e, ok := c.entries[*p.hit]; ok {
			e.expires = now.Add(e.ttl)
			c.entries[*p.hit] = e
		}
	}
	for _, w := range p.writes {
		if _, ok := c.entries[w.key]; !ok && len(c.entries) >= c.max {
			c.evict(now)
		}
		c.entries[w.key] = cacheEntry{expires: now.Add(w.ttl), ttl: w.ttl}
	}
}

// evict drops expired entries, or failing that the one expiring first.
func (c *promptCache) evict(now time.Time) {
	var oldest [32]byte
	var oldestAt time.Time
	found := false
	for k, e := range c.entries {
		if !now.Before(e.expires) {
			delete(c.entries, k)
			continue
		}
		if !found || e.expires.Before(oldestAt) {
			oldest, oldestAt, found = k, e.expires, true
		}
	}
	if len(c.entries) >= c.max && found {
		delete(c.entries, oldest)
	}
}

func (u cacheUsage) String() string {
	return fmt.Sprintf("input=%d read=%d write5m=%d write1h=%d", u.input, u.read, u.write5m, u.write1h)
}
