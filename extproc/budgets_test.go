package extproc

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

func TestObserveBudgetsGaugesAndForecast(t *testing.T) {
	cfg, err := policy.Parse([]byte("tenants: {acme: {budgets: [{window: day, usd: 10}]}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	now := start.Add(6 * time.Hour)
	m := NewMetrics(prometheus.NewRegistry())
	s := &Server{opts: Options{Metrics: m, Now: func() time.Time { return now }}, budgets: newBudgetCache()}
	window := limiter.Window{Start: start, End: start.Add(24 * time.Hour)}

	// $4 spent in 6 hours: the $6 left last 9 more hours at that rate, before the day ends.
	s.observeBudgets(cfg, "acme", []limiter.BudgetState{{Name: "day", Window: window, Cap: 10e9, Spent: 4e9, Reserved: 1e9}})
	if got := testutil.ToFloat64(m.BudgetExhaustion.WithLabelValues("acme", "day")); got != 9*3600 {
		t.Errorf("exhaustion forecast %v s, want %v", got, 9*3600)
	}
	if got := testutil.ToFloat64(m.BudgetUsed.WithLabelValues("acme", "day")); got != 0.5 {
		t.Errorf("used ratio %v, want spent+reserved = 0.5", got)
	}
	if got := testutil.ToFloat64(m.BudgetSpent.WithLabelValues("acme", "day")); got != 4 {
		t.Errorf("spent %v USD", got)
	}
	// $1 in 6 hours: the rest would take 54 hours, past the day's end.
	s.observeBudgets(cfg, "acme", []limiter.BudgetState{{Name: "day", Window: window, Cap: 10e9, Spent: 1e9}})
	if got := testutil.ToFloat64(m.BudgetExhaustion.WithLabelValues("acme", "day")); !math.IsInf(got, 1) {
		t.Errorf("a budget that outlasts its window forecasts %v, want +Inf", got)
	}
	// Unconfigured tenants share no gauge, but their use still drives downgrades.
	s.observeBudgets(cfg, "stranger", []limiter.BudgetState{{Name: "day", Window: window, Cap: 10e9, Spent: 9e9}})
	if testutil.CollectAndCount(m.BudgetSpent) != 1 {
		t.Error("gauges exist only for configured tenants")
	}
	if got := s.budgets.used("stranger").ratio("day"); got != 0.9 {
		t.Errorf("last known use %v, want 0.9", got)
	}
}
