package gate

import (
	"sync"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// budgetUse is the last known fraction of each budget window a tenant has
// spent, learned from the admission and settle answers this replica already
// receives, so a downgrade decision costs no extra round trip.
type budgetUse struct {
	byWindow map[string]float64
}

// ratio is the use of one window, or of the most used window when window is
// empty.
func (u budgetUse) ratio(window accounting.WindowKind) float64 {
	if window != "" {
		return u.byWindow[string(window)]
	}
	var best float64
	for _, r := range u.byWindow {
		best = max(best, r)
	}
	return best
}

// budgetCache bounds its memory: past maxTenants entries it starts over,
// which only means a downgrade waits for one more answer from the store.
type budgetCache struct {
	mu      sync.RWMutex
	tenants map[string]budgetUse
}

const maxTenants = 100_000

func newBudgetCache() *budgetCache { return &budgetCache{tenants: map[string]budgetUse{}} }

func (c *budgetCache) used(tenant string) budgetUse {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tenants[tenant]
}

func (c *budgetCache) store(tenant string, states []limiter.BudgetState) {
	u := budgetUse{byWindow: make(map[string]float64, len(states))}
	for _, b := range states {
		// Settled spend only: in-flight reservations over-estimate, and a
		// downgrade must not happen before the configured ratio is really spent.
		if b.Cap > 0 {
			u.byWindow[b.Name] = float64(b.Spent) / float64(b.Cap)
		}
	}
	c.mu.Lock()
	if len(c.tenants) >= maxTenants {
		c.tenants = map[string]budgetUse{}
	}
	c.tenants[tenant] = u
	c.mu.Unlock()
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
