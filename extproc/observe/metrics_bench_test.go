package observe

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// BenchmarkExchangeMetrics is what one governed exchange of the small-JSON
// load writes to the metrics: its outcome, admission, two store calls, the
// provider's status and remaining limits, and the budget windows of four
// levels (two of them unnamed) after admission and after settle.
func BenchmarkExchangeMetrics(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry())
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	day := limiter.Window{Start: now.Truncate(24 * time.Hour), End: now.Truncate(24 * time.Hour).Add(24 * time.Hour)}
	month := limiter.Window{Start: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	var budgets []gate.LevelBudget
	for _, l := range []gate.BudgetLevel{{Level: "org", Name: "acme"}, {Level: "team", Name: "acme/search"}, {Level: "user", Name: "other"}, {Level: "key", Name: "other"}} {
		budgets = append(budgets,
			gate.LevelBudget{BudgetLevel: l, Window: "day", State: limiter.BudgetState{Window: day, Cap: 1e10, Spent: 1e8}},
			gate.LevelBudget{BudgetLevel: l, Window: "month", State: limiter.BudgetState{Window: month, Cap: 1e11, Spent: 1e9}})
	}
	o := &gate.Outcome{Dialect: "openai", Tenant: "acme", TenantLabel: "acme", Policy: "default", ModelLabel: "gpt-4o-mini",
		Result: gate.ResultOK, Metered: true, Source: gate.SourceMeasured, Latency: time.Millisecond,
		Usage: accounting.Usage{InputTokens: 2000, OutputTokens: 100}, Cost: accounting.Cost{Total: 360_000}}
	b.ReportAllocs()
	for b.Loop() {
		m.Admission("acme", "allowed")
		m.StoreCall("admit", 20*time.Microsecond, nil)
		m.Budgets("acme", budgets, now)
		m.ProviderResponse("openai", 200)
		m.ProviderRemaining("api.openai.com", "requests", 0.5)
		m.ProviderRemaining("api.openai.com", "tokens", 0.5)
		m.Outcome(o)
		m.StoreCall("settle", 20*time.Microsecond, nil)
		m.Budgets("acme", budgets, now)
	}
}
