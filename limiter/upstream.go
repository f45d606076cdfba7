package limiter

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// UpstreamView is what every replica knows about the provider upstreams it
// forwards to: which of them are in a cool-down the provider asked for (a
// 429 or 529 with retry-after). Reading it never does I/O, so it costs the
// request path nothing; what one replica learns reaches the others off the
// request path (UpstreamRedis: SET + PUBLISH once the provider answered,
// applied by every replica's subscriber). An upstream is an opaque id: the gate
// names it by provider host and a fingerprint of the credential, never the
// credential itself.
type UpstreamView interface {
	// Cooldown puts upstream id in cool-down until until: on this replica at
	// once, then on every other (UpstreamRedis: one round trip bounded by its
	// own timeout, after the provider's answer, never on a request's path).
	// A cool-down only ever extends (the later end wins). An error means the
	// cool-down holds on this replica only.
	Cooldown(ctx context.Context, id string, until time.Time) error
	// CooldownUntil returns when upstream id's cool-down ends, or the zero
	// time when it is not in one at now. Local memory only.
	CooldownUntil(id string, now time.Time) time.Time
	// Stats counts what the view did, for metrics.
	Stats() UpstreamStats
	Close() error
}

// UpstreamStats are counters since the view started.
type UpstreamStats struct {
	Published     int64 // cool-downs written to the shared store
	PublishErrors int64 // writes that failed (the cool-down stayed local)
	Skipped       int64 // cool-downs kept local: the last write had failed within a second
	Received      int64 // cool-downs learned from other replicas
	Refused       int64 // cool-downs not kept because the table was full
	Rescans       int64 // full re-reads of the shared store (start, reconnect, period)
	Active        int   // upstreams in cool-down now
}

// MaxUpstreams bounds the cool-down table of one replica. Upstream ids come
// from the provider hosts and credentials that actually saw a 429, so the
// table is small; the bound stops a client that sprays hosts or keys from
// growing it without limit. A cool-down past it is not kept and counted.
const MaxUpstreams = 4096

// cooldowns is the local cool-down table shared by both views.
type cooldowns struct {
	mu      sync.RWMutex
	until   map[string]time.Time
	refused atomic.Int64
}

func newCooldowns() *cooldowns { return &cooldowns{until: map[string]time.Time{}} }

// extend records id's cool-down end if it is later than the one held, and
// reports whether it changed anything.
func (c *cooldowns) extend(id string, until, now time.Time) bool {
	if !until.After(now) || id == "" {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.until[id]
	if ok && !until.After(old) {
		return false
	}
	if !ok && len(c.until) >= MaxUpstreams {
		for k, v := range c.until {
			if !v.After(now) {
				delete(c.until, k)
			}
		}
		if len(c.until) >= MaxUpstreams {
			c.refused.Add(1)
			return false
		}
	}
	c.until[id] = until
	return true
}

func (c *cooldowns) get(id string, now time.Time) time.Time {
	c.mu.RLock()
	u, ok := c.until[id]
	c.mu.RUnlock()
	if !ok || !u.After(now) {
		return time.Time{}
	}
	return u
}

func (c *cooldowns) active(now time.Time) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := 0
	for _, u := range c.until {
		if u.After(now) {
			n++
		}
	}
	return n
}

// UpstreamMemory is the view of one replica alone (no shared store): a
// cool-down a provider asks for holds on this replica only.
type UpstreamMemory struct {
	t   *cooldowns
	now func() time.Time
}

// NewUpstreamMemory returns a local view; now nil means time.Now.
func NewUpstreamMemory(now func() time.Time) *UpstreamMemory {
	if now == nil {
		now = time.Now
	}
	return &UpstreamMemory{t: newCooldowns(), now: now}
}

// Cooldown implements UpstreamView.
func (m *UpstreamMemory) Cooldown(_ context.Context, id string, until time.Time) error {
	m.t.extend(id, until, m.now())
	return nil
}

// CooldownUntil implements UpstreamView.
func (m *UpstreamMemory) CooldownUntil(id string, now time.Time) time.Time { return m.t.get(id, now) }

// Stats implements UpstreamView.
func (m *UpstreamMemory) Stats() UpstreamStats {
	return UpstreamStats{Refused: m.t.refused.Load(), Active: m.t.active(m.now())}
}

// Close implements UpstreamView.
func (m *UpstreamMemory) Close() error { return nil }
