package gate

import (
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// budgetCache is the last known fraction of each budget window spent, per
// org and level, learned from the admission and settle answers this replica
// already receives, so a downgrade decision costs no extra round trip. An
// answer carries the windows of the levels of one caller (the org, its team,
// its own user or key); they are merged into the org's entry, each window
// remembered with its end so a window that has ended reads as unused.
//
// It bounds its memory: past maxTenants orgs, or maxLevelWindows windows in
// one org (many users), that map starts over, which only means a downgrade
// waits for one more answer from the store.
type budgetCache struct {
	mu      sync.RWMutex
	tenants map[string]map[string]windowUse // org → store budget name → use
}

type windowUse struct {
	ratio float64
	end   time.Time // zero: unknown, taken as current
}

const (
	maxTenants      = 100_000
	maxLevelWindows = 4096
)

func newBudgetCache() *budgetCache { return &budgetCache{tenants: map[string]map[string]windowUse{}} }

// ratio is the use of one window of a level of org (levelKey as
// limiter.Level.Key, "" for the org), or of the level's most used window
// when window is empty; 0 when unknown.
func (c *budgetCache) ratio(org, levelKey string, window accounting.WindowKind, now time.Time) float64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ws := c.tenants[org]
	current := func(w windowUse) float64 {
		if !w.end.IsZero() && !now.Before(w.end) {
			return 0
		}
		return w.ratio
	}
	if window != "" {
		return current(ws[limiter.LevelBudgetName(levelKey, string(window))])
	}
	var best float64
	for name, w := range ws {
		if key, _ := limiter.SplitBudgetName(name); key == levelKey {
			best = max(best, current(w))
		}
	}
	return best
}

func (c *budgetCache) store(org string, states []limiter.BudgetState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ws := c.tenants[org]
	if ws == nil || len(ws) >= maxLevelWindows {
		if len(c.tenants) >= maxTenants {
			c.tenants = map[string]map[string]windowUse{}
		}
		ws = make(map[string]windowUse, len(states))
		c.tenants[org] = ws
	}
	for _, b := range states {
		// Settled spend only: in-flight reservations over-estimate, and a
		// downgrade must not happen before the configured ratio is really spent.
		if b.Cap > 0 {
			ws[b.Name] = windowUse{ratio: float64(b.Spent) / float64(b.Cap), end: b.Window.End}
		}
	}
}

// prefixTracker remembers the last stable-prefix fingerprint (tools +
// system) seen per policy and tenant and reports each change. A template
// that leaks a timestamp or an id into its system prompt changes it on every
// request — silently defeating the prompt cache — which shows up as a
// climbing tokenwarden_prompt_prefix_changes_total.
type prefixTracker struct {
	mu   sync.Mutex
	last map[prefixKey]uint64
}

type prefixKey struct{ policy, tenant string }

// maxPrefixKeys bounds the memory; past it the tracker starts over, which
// costs at most one uncounted change per key.
const maxPrefixKeys = 100_000

func newPrefixTracker() *prefixTracker { return &prefixTracker{last: map[prefixKey]uint64{}} }

// observe records fp for the key and reports whether it differs from the
// last one seen.
func (p *prefixTracker) observe(policy, tenant string, fp uint64) (changed bool) {
	k := prefixKey{policy, tenant}
	p.mu.Lock()
	defer p.mu.Unlock()
	prev, seen := p.last[k]
	if !seen && len(p.last) >= maxPrefixKeys {
		p.last = map[prefixKey]uint64{}
	}
	p.last[k] = fp
	return seen && prev != fp
}

// boundedSet remembers up to limit strings; past it, it stops remembering
// new ones and reports them as seen, so a flood of names costs neither
// memory nor log lines.
type boundedSet struct {
	mu    sync.Mutex
	limit int
	seen  map[string]struct{}
}

const maxWarnedPolicies = 256

func newBoundedSet(limit int) *boundedSet {
	return &boundedSet{limit: limit, seen: map[string]struct{}{}}
}

// add reports whether s is new (and now remembered).
func (b *boundedSet) add(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.seen[s]; ok || len(b.seen) >= b.limit {
		return false
	}
	b.seen[s] = struct{}{}
	return true
}
