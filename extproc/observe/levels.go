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
	gs := m.budgetGauges.handles(m, tenantLabel, budgets)
	for i, b := range budgets {
		gs[i].observe(b.State, now, b.Name == policy.OtherLabel)
	}
}

// budgetSeries is one label set of the budget gauges (levelLabels).
type budgetSeries struct{ tenant, level, name, window string }

// budgetGauges holds the budget gauges of each series already seen. Every
// admission and every settle observes every budget of every level of its
// caller (eight at four levels), and setting four gauges for each, with
// the lookups of their label sets, was 10% of the processor's CPU in the
// small-JSON load (pprof, 2026-12-04). A scrape reads one value a series,
// so an observation only records the state, and publish turns each
// series' latest state into its gauges when the registry is collected
// (budgetCollector). The label sets are bounded (configured names or
// "other"), so the maps are too.
type budgetGauges struct {
	mu sync.RWMutex
	m  map[budgetSeries]*budgetGauge
	// sets caches the series of one caller's budget list, which has the
	// same levels, names and windows on every exchange of that caller: one
	// lookup, checked element by element, instead of one a budget.
	sets map[budgetSetKey][]*budgetGauge
}

// budgetSetKey names a budget list by its tenant label, length and the
// first and last budget's series; handles checks the rest.
type budgetSetKey struct {
	tenant      string
	n           int
	first, last gate.LevelBudget
}

type budgetGauge struct {
	series                       budgetSeries
	used, spent, cap, exhaustion prometheus.Gauge

	mu      sync.Mutex
	pending bool // latest is newer than the gauges
	latest  limiter.BudgetState
	at      time.Time // when latest was observed: the forecast's now
	// For a series of unnamed members (name="other"): the state of the
	// most used member seen in the current window (most).
	seen    bool
	current limiter.BudgetState
}

// handles returns the series of each budget, creating what is missing.
func (b *budgetGauges) handles(m *Metrics, tenant string, budgets []gate.LevelBudget) []*budgetGauge {
	if len(budgets) == 0 {
		return nil
	}
	key := budgetSetKey{tenant: tenant, n: len(budgets), first: stripState(budgets[0]), last: stripState(budgets[len(budgets)-1])}
	b.mu.RLock()
	gs := b.sets[key]
	b.mu.RUnlock()
	if gs != nil && sameSeries(gs, tenant, budgets) {
		return gs
	}
	gs = make([]*budgetGauge, len(budgets))
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, lb := range budgets {
		gs[i] = b.of(m, budgetSeries{tenant, lb.Level, lb.Name, lb.Window})
	}
	if b.sets == nil || len(b.sets) >= maxBudgetSets {
		b.sets = map[budgetSetKey][]*budgetGauge{}
	}
	b.sets[key] = gs
	return gs
}

// maxBudgetSets bounds the cache of budget lists; past it the cache starts
// over, which costs lookups, never series.
const maxBudgetSets = 4096

func stripState(lb gate.LevelBudget) gate.LevelBudget {
	lb.State = limiter.BudgetState{}
	return lb
}

func sameSeries(gs []*budgetGauge, tenant string, budgets []gate.LevelBudget) bool {
	for i, lb := range budgets {
		if s := gs[i].series; s.tenant != tenant || s.level != lb.Level || s.name != lb.Name || s.window != lb.Window {
			return false
		}
	}
	return true
}

// of returns one series' gauges, creating them; b.mu is held.
func (b *budgetGauges) of(m *Metrics, k budgetSeries) *budgetGauge {
	if g := b.m[k]; g != nil {
		return g
	}
	l := []string{k.tenant, k.level, k.name, k.window}
	g := &budgetGauge{series: k, used: m.budgetUsed.WithLabelValues(l...), spent: m.budgetSpent.WithLabelValues(l...),
		cap: m.budgetCap.WithLabelValues(l...), exhaustion: m.budgetExhaustion.WithLabelValues(l...)}
	if b.m == nil {
		b.m = map[budgetSeries]*budgetGauge{}
	}
	b.m[k] = g
	return g
}

// observe records st as the series' latest state; for a series of unnamed
// members, only when it is the most used one of the current window.
func (g *budgetGauge) observe(st limiter.BudgetState, now time.Time, unnamed bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if unnamed {
		var ok bool
		if st, ok = g.most(st); !ok {
			return
		}
	}
	g.latest, g.at, g.pending = st, now, true
}

// publish sets the gauges of every series observed since the last call.
func (b *budgetGauges) publish() {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, g := range b.m {
		g.mu.Lock()
		st, now, pending := g.latest, g.at, g.pending
		g.pending = false
		g.mu.Unlock()
		if !pending {
			continue
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

// budgetCollector is the four budget gauge families as one collector that
// publishes the latest observed states before each collection.
type budgetCollector struct{ m *Metrics }

func (c budgetCollector) vecs() []*prometheus.GaugeVec {
	return []*prometheus.GaugeVec{c.m.budgetUsed, c.m.budgetSpent, c.m.budgetCap, c.m.budgetExhaustion}
}

// Describe implements prometheus.Collector.
func (c budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range c.vecs() {
		v.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c budgetCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.budgetGauges.publish()
	for _, v := range c.vecs() {
		v.Collect(ch)
	}
}

// BudgetCrossed implements gate.Observer.
func (m *Metrics) BudgetCrossed(tenantLabel string, level gate.BudgetLevel, window string, threshold float64) {
	m.budgetAlerts.WithLabelValues(tenantLabel, level.Level, level.Name, window, strconv.FormatFloat(threshold, 'f', -1, 64)).Inc()
}

// most folds st into the series' record of its unnamed members and
// returns the state to publish: the most used member seen in the current
// window. ok is false for a state of a window older than the one already
// seen (a late answer), which changes nothing.
// g.mu is held.
func (g *budgetGauge) most(st limiter.BudgetState) (limiter.BudgetState, bool) {
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
