package gate

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// levelCache keeps where a caller stands (Resolve) and what admission
// checks for it (levelRequest's limits, level limits and budget names) per
// compiled configuration:
// building them per request — a slice per level, every budget's store name,
// its calendar windows — was a tenth of the processor's allocations in the
// small-JSON load. An entry is a pure function of the configuration value
// it was built from, and the configuration is immutable (a reload publishes
// a new one), so an entry can never be stale: the cache holds the entries
// of one configuration, and starts over at the first request of the next.
//
// What it hands out is shared and read-only: the store and the reservation
// only read the slices of a request (limiter.Resilient copies before it
// divides).
//
// It is bounded: past maxLevelTemplates entries (users and keys are
// unbounded) it starts over, which only costs the next requests a rebuild.
type levelCache struct {
	mu  sync.RWMutex
	cfg *policy.Config
	m   map[levelKey]*levelTemplate
	// res holds the Resolutions of cfg's callers (Begin), under the same
	// rules: Resolve is a pure function of the configuration.
	res map[resolveKey]*policy.Resolution
}

type resolveKey struct {
	caller policy.Caller
	route  string
}

const maxLevelTemplates = 4096

// levelKey is everything levelRequest's answer depends on besides the
// configuration and the clock: the caller's levels follow from its policy
// and identity (Resolve), the lane groups from its lane, the limits from
// whether it is a batch submission.
type levelKey struct {
	policy *policy.Policy
	caller policy.Caller // zero for a caller outside orgs: (its policy is all)
	lane   int
	batch  bool
}

// resolve is cfg.Resolve(caller, route), from the cache when it can be.
// The Resolution's levels are shared: read, never written.
func (c *levelCache) resolve(cfg, current *policy.Config, caller policy.Caller, route string) *policy.Resolution {
	k := resolveKey{caller, route}
	c.mu.RLock()
	r := c.res[k]
	if c.cfg != cfg {
		r = nil
	}
	c.mu.RUnlock()
	if r != nil {
		return r
	}
	res := cfg.Resolve(caller, route)
	r = &res
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.current(cfg, current) {
		return r
	}
	if len(c.res) >= maxLevelTemplates {
		clear(c.res)
	}
	c.res[k] = r
	return r
}

// current reports whether the cache may keep entries of cfg, starting it
// over for cfg when cfg is the current configuration and the cache still
// holds an older one's. c.mu is held.
func (c *levelCache) current(cfg, current *policy.Config) bool {
	if c.cfg == cfg {
		return true
	}
	if cfg != current {
		return false
	}
	c.cfg, c.m, c.res = cfg, make(map[levelKey]*levelTemplate), make(map[resolveKey]*policy.Resolution)
	return true
}

func (c *levelCache) get(cfg *policy.Config, k levelKey) *levelTemplate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.cfg != cfg {
		return nil
	}
	return c.m[k]
}

// put keeps t for cfg, when cfg is the current configuration (an exchange
// begun before a reload does not evict the new configuration's entries).
func (c *levelCache) put(cfg, current *policy.Config, k levelKey, t *levelTemplate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.current(cfg, current) {
		return
	}
	if len(c.m) >= maxLevelTemplates {
		clear(c.m)
	}
	c.m[k] = t
}

// levelTemplate is levelRequest's answer without the clock: the budgets'
// windows are filled in for the current windows and kept until the first
// of them ends.
type levelTemplate struct {
	limits      limiter.Limits
	levelLimits []limiter.LevelLimits
	budgets     []templateBudget
	windowed    atomic.Pointer[windowedBudgets]
}

// templateBudget is one budget of a level under its store name
// (limiter.LevelBudgetName).
type templateBudget struct {
	name string
	src  *policy.Budget
}

// windowedBudgets are a template's budgets with the windows around every
// instant in [from, until): the latest current-window start and the
// earliest current-window end among them.
type windowedBudgets struct {
	from, until time.Time
	budgets     []limiter.Budget
}

// budgetsAt returns the budgets with their windows around now, as
// policy.LimiterBudgetsOf and limiter.LevelBudgets build them; nil when
// there are none.
func (t *levelTemplate) budgetsAt(now time.Time) []limiter.Budget {
	if len(t.budgets) == 0 {
		return nil
	}
	if w := t.windowed.Load(); w != nil && !now.Before(w.from) && now.Before(w.until) {
		return w.budgets
	}
	w := &windowedBudgets{budgets: make([]limiter.Budget, len(t.budgets))}
	for i, b := range t.budgets {
		ws := b.src.WindowsAround(now)
		out := &w.budgets[i]
		*out = limiter.Budget{Name: b.name, Cap: int64(b.src.Cap), Alerts: b.src.Alerts}
		for j := range ws {
			out.Windows[j] = limiter.Window{Start: ws[j][0], End: ws[j][1]}
		}
		if i == 0 || ws[1][0].After(w.from) {
			w.from = ws[1][0]
		}
		if i == 0 || ws[1][1].Before(w.until) {
			w.until = ws[1][1]
		}
	}
	t.windowed.Store(w)
	return w.budgets
}

// levelRequest is what admission checks: the org's limits (with the
// policy's burst and lease), each lower level's own limits, and every
// level's budgets in level order. A caller outside orgs: is a one-level org
// held to its policy. The slices are shared (levelCache): read, never
// written.
func (x *Exchange) levelRequest(now time.Time) (limiter.Limits, []limiter.LevelLimits, []limiter.Budget) {
	k := levelKey{policy: x.policy, lane: x.laneIndex, batch: x.batch}
	if x.lane == nil {
		k.lane = 0
	}
	if len(x.levels) > 0 {
		k.caller = x.caller
	}
	t := x.g.levels.get(x.cfg, k)
	if t == nil {
		t = x.levelTemplate()
		x.g.levels.put(x.cfg, x.g.opts.Config.Load(), k, t)
	}
	return t.limits, t.levelLimits, t.budgetsAt(now)
}

// levelTemplate builds levelRequest's answer for the exchange's caller.
func (x *Exchange) levelTemplate() *levelTemplate {
	t := &levelTemplate{}
	if len(x.levels) == 0 {
		t.limits = x.batchLimits(x.policy.Limits)
		t.levelLimits = x.laneGroups(t.limits, nil)
		for i := range x.policy.Budgets {
			b := &x.policy.Budgets[i]
			t.budgets = append(t.budgets, templateBudget{name: string(b.Window), src: b})
		}
		return t
	}
	// Resolve leaves out pools that check nothing, so the org's own level
	// (key "") may be absent: then the org has no limits of its own.
	var limits limiter.Limits
	var ll []limiter.LevelLimits
	for i := range x.levels {
		l := &x.levels[i]
		for j := range l.Budgets {
			b := &l.Budgets[j]
			t.budgets = append(t.budgets, templateBudget{name: limiter.LevelBudgetName(l.Key, string(b.Window)), src: b})
		}
		if l.Key == "" {
			limits = l.Limits
			continue
		}
		if l.Limits.RequestsPerMinute > 0 || l.Limits.TokensPerMinute > 0 || l.Limits.Concurrent > 0 {
			ll = append(ll, limiter.LevelLimits{Key: l.Key, RequestsPerMinute: l.Limits.RequestsPerMinute,
				TokensPerMinute: l.Limits.TokensPerMinute, Concurrent: l.Limits.Concurrent})
		}
	}
	limits.Burst, limits.LeaseTTL = x.policy.Limits.Burst, x.policy.Limits.LeaseTTL
	t.limits = x.batchLimits(limits)
	t.levelLimits = x.laneGroups(t.limits, ll)
	return t
}
