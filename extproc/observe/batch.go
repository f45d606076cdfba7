package observe

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

// Batch spend is shown apart from the spend of single requests: the
// spend counter's api label (request or batch), and what batches reserved
// on submit beside what they were charged in the end, by batch API.

// Values of tokenwarden_spend_usd_total{api}.
const (
	apiRequest = "request"
	apiBatch   = "batch"
)

// apiOf is the api label of an outcome's spend.
func apiOf(dialect string) string {
	if dialect == gate.BatchDialect || dialect == gate.OpenAIBatchDialect {
		return apiBatch
	}
	return apiRequest
}

// Values of tokenwarden_batch_usd_total{stage}.
const (
	stageReserved = "reserved"
	stageSettled  = "settled"
)

type batchMetrics struct {
	usd *prometheus.CounterVec // tenant, dialect, stage
}

func newBatchMetrics(reg prometheus.Registerer) *batchMetrics {
	b := &batchMetrics{usd: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_batch_usd_total",
		Help: "Batch work in USD, by tenant, dialect (anthropic_batch, openai_batch) and stage: reserved (the estimate of each batch the provider accepted) or settled (what batches were charged: their usage at batch prices, or their estimate when they reported none or their reservation ended; the same spend counted in tokenwarden_spend_usd_total{api=\"batch\"}).",
	}, []string{"tenant", "dialect", "stage"})}
	// Exported from the start, as the dashboard's panels need a sample.
	for _, d := range []string{gate.BatchDialect, gate.OpenAIBatchDialect} {
		for _, s := range []string{stageReserved, stageSettled} {
			b.usd.WithLabelValues("other", d, s)
		}
	}
	reg.MustRegister(b.usd)
	return b
}

// BatchReserved implements gate.Observer.
func (m *Metrics) BatchReserved(tenantLabel, dialect string, cost accounting.NanoUSD) {
	m.batch.usd.WithLabelValues(tenantLabel, dialect, stageReserved).Add(cost.USD())
}

// BatchExpired implements gate.Observer: the batch's estimate is its spend.
func (m *Metrics) BatchExpired(tenantLabel, model, dialect string, cost accounting.NanoUSD) {
	m.spend.WithLabelValues(tenantLabel, model, string(gate.SourceEstimated), apiBatch).Add(cost.USD())
	m.batch.usd.WithLabelValues(tenantLabel, dialect, stageSettled).Add(cost.USD())
}

// batchSettled counts a settled batch's outcome.
func (m *Metrics) batchSettled(o *gate.Outcome) {
	if apiOf(o.Dialect) == apiBatch {
		m.batch.usd.WithLabelValues(o.TenantLabel, o.Dialect, stageSettled).Add(o.Cost.Total.USD())
	}
}
