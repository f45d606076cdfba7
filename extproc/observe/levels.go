package observe

import (
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// levelLabels are the labels of the budget gauges: the org (tenant), the
// level (org, team, user, key), its bounded name, and the window kind. A
// dashboard selects a level with level=~"$level".
var levelLabels = []string{"tenant", "level", "name", "window"}

// Budgets implements gate.Observer: the window gauges of every level and the
// forecast of when each window's budget runs out at its burn rate so far.
//
// A level without a configured name (every user and key: their number is
// unbounded) shares one series per org, level and window, name="other",
// which shows the most used such member this replica has seen in the
// current window — "is anyone near their cap" — rather than whichever
// member happened to be last.
func (m *Metrics) Budgets(tenantLabel string, budgets []gate.LevelBudget, now time.Time) {
	for _, b := range budgets {
		st := b.State
		g := m.budgetGauges.of(m, budgetSeries{tenantLabel, b.Level, b.Name, b.Window})
		if b.Name == policy.OtherLabel {
			var ok bool
			if st, ok = g.most(st); !ok {
				continue
			}
		}
		g.used.Set(st.Used())
		g.spent.Set(accounting.NanoUSD(st.Spent).USD())
		g.cap.Set(accounting.NanoUSD(st.Cap).USD())
		secs := math.Inf(1) // the budget outlasts its window at this rate
		if eta, ok := accounting.Exhaustion(accounting.NanoUSD(st.Spent), accounting.NanoUSD(st.Cap), st.Window.Start, st.Window.End, now); ok {
			secs = eta.Seconds()
		}
		g.exhaustion.Set(secs)
	}
}

// budgetSeries is one label set of the budget gauges (levelLabels).
type budgetSeries struct{ tenant, level, name, window string }

// budgetGauges holds the four budget gauges of each series already seen:
// every settle sets them for every budget of every level of its caller
// (eight at four levels), and resolving a label set (WithLabelValues:
// hashing the labels, a lock) four times for each was 6% of the
// processor's CPU in the small-JSON load (pprof). The label sets are
// bounded (configured names or "other"), so the map is too.
type budgetGauges struct {
	mu sync.RWMutex
	m  map[budgetSeries]*budgetGauge
}

type budgetGauge struct {
	used, spent, cap, exhaustion prometheus.Gauge
	// For a series of unnamed members (name="other"): the state of the
	// most used member seen in the current window (most). Kept with the
	// series' gauges, which are looked up anyway, rather than in a map of
	// its own behind one lock for every settle.
	mu      sync.Mutex
	seen    bool
	current limiter.BudgetState
}

func (b *budgetGauges) of(m *Metrics, k budgetSeries) *budgetGauge {
	b.mu.RLock()
	g := b.m[k]
	b.mu.RUnlock()
	if g != nil {
		return g
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if g = b.m[k]; g == nil {
		l := []string{k.tenant, k.level, k.name, k.window}
		g = &budgetGauge{used: m.budgetUsed.WithLabelValues(l...), spent: m.budgetSpent.WithLabelValues(l...),
			cap: m.budgetCap.WithLabelValues(l...), exhaustion: m.budgetExhaustion.WithLabelValues(l...)}
		if b.m == nil {
			b.m = map[budgetSeries]*budgetGauge{}
		}
		b.m[k] = g
	}
	return g
}

// BudgetCrossed implements gate.Observer.
func (m *Metrics) BudgetCrossed(tenantLabel string, level gate.BudgetLevel, window string, threshold float64) {
	m.budgetAlerts.WithLabelValues(tenantLabel, level.Level, level.Name, window, strconv.FormatFloat(threshold, 'f', -1, 64)).Inc()
}

// most folds st into the series' record of its unnamed members and
// returns the state to publish: the most used member seen in the current
// window. ok is false for a state of a window older than the one already
// seen (a late answer), which changes nothing.
func (g *budgetGauge) most(st limiter.BudgetState) (limiter.BudgetState, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	cur := g.current
	switch {
	case !g.seen, st.Window.Start.After(cur.Window.Start):
		// The first member seen, or the first of a new window.
	case st.Window.Start.Before(cur.Window.Start):
		return cur, false
	case spentRatio(st) < spentRatio(cur):
		return cur, true
	}
	g.seen, g.current = true, st
	return st, true
}

// spentRatio ranks members by settled spend, which only grows within a
// window, so the most used member stays the most used until another passes
// it.
func spentRatio(b limiter.BudgetState) float64 {
	if b.Cap <= 0 {
		return 0
	}
	return float64(b.Spent) / float64(b.Cap)
}
