package extproc

import (
	"math"
	"sync"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// observeBudgets publishes the budget gauges for tenants named in the config
// (other tenants would share one meaningless series) and remembers every
// tenant's use for model downgrades.
func (s *Server) observeBudgets(cfg *policy.Config, tenant string, states []limiter.BudgetState) {
	if len(states) == 0 {
		return
	}
	s.budgets.store(tenant, states)
	label := cfg.TenantLabel(tenant)
	if label == policy.OtherLabel {
		return
	}
	m := s.opts.Metrics
	now := s.opts.Now()
	for _, b := range states {
		m.BudgetUsed.WithLabelValues(label, b.Name).Set(b.Used())
		m.BudgetSpent.WithLabelValues(label, b.Name).Set(accounting.NanoUSD(b.Spent).USD())
		m.BudgetCap.WithLabelValues(label, b.Name).Set(accounting.NanoUSD(b.Cap).USD())
		secs := math.Inf(1) // the budget outlasts its window at this rate
		if eta, ok := accounting.Exhaustion(accounting.NanoUSD(b.Spent), accounting.NanoUSD(b.Cap), b.Window.Start, b.Window.End, now); ok {
			secs = eta.Seconds()
		}
		m.BudgetExhaustion.WithLabelValues(label, b.Name).Set(secs)
	}
}

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
