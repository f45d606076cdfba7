package observe

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

// TestBatchSpendIsShownApart: a batch's spend is counted under api="batch"
// (a single request's under api="request"), and per batch API as reserved
// on submit and settled — measured, or its estimate when it expired.
func TestBatchSpendIsShownApart(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	m.BatchReserved("acme", gate.OpenAIBatchDialect, 3_000_000)
	m.Outcome(&gate.Outcome{Dialect: gate.OpenAIBatchDialect, TenantLabel: "acme", ModelLabel: "gpt-4o", Result: gate.ResultOK,
		Metered: true, Source: gate.SourceMeasured, Cost: accounting.Cost{Total: 1_000_000}})
	m.Outcome(&gate.Outcome{Dialect: "openai", TenantLabel: "acme", ModelLabel: "gpt-4o", Result: gate.ResultOK,
		Metered: true, Source: gate.SourceMeasured, Cost: accounting.Cost{Total: 500_000}})
	m.BatchExpired("acme", "claude-sonnet-4-5", gate.BatchDialect, 2_000_000)
	m.ExpiredCharged("acme", "claude-sonnet-4-5", 700_000)
	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"openai reserved", m.batch.usd.WithLabelValues("acme", gate.OpenAIBatchDialect, "reserved"), 0.003},
		{"openai settled", m.batch.usd.WithLabelValues("acme", gate.OpenAIBatchDialect, "settled"), 0.001},
		{"anthropic settled at its estimate", m.batch.usd.WithLabelValues("acme", gate.BatchDialect, "settled"), 0.002},
		{"batch spend measured", m.spend.WithLabelValues("acme", "gpt-4o", "measured", "batch"), 0.001},
		{"request spend measured", m.spend.WithLabelValues("acme", "gpt-4o", "measured", "request"), 0.0005},
		{"batch spend estimated", m.spend.WithLabelValues("acme", "claude-sonnet-4-5", "estimated", "batch"), 0.002},
		{"request spend estimated", m.spend.WithLabelValues("acme", "claude-sonnet-4-5", "estimated", "request"), 0.0007},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
}
