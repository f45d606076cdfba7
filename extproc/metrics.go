package extproc

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus series the processor exports. Every label value
// is bounded: tenants and models are those named in the configuration or the
// price table, everything else is "other"; dialects, phases, outcomes and the
// like are fixed sets.
type Metrics struct {
	Requests         *prometheus.CounterVec   // dialect, model, outcome
	Tokens           *prometheus.CounterVec   // model, type
	Cost             *prometheus.CounterVec   // model
	Processing       *prometheus.HistogramVec // phase
	Admissions       *prometheus.CounterVec   // tenant, result
	Spend            *prometheus.CounterVec   // tenant, model, source
	BudgetUsed       *prometheus.GaugeVec     // tenant, window
	BudgetSpent      *prometheus.GaugeVec     // tenant, window
	BudgetCap        *prometheus.GaugeVec     // tenant, window
	BudgetExhaustion *prometheus.GaugeVec     // tenant, window
	BudgetAlerts     *prometheus.CounterVec   // tenant, window, threshold
	ProviderLatency  *prometheus.HistogramVec // policy
	ProviderStatus   *prometheus.CounterVec   // dialect, code
	PromptCache      *prometheus.CounterVec   // model, type
	PrefixChanges    *prometheus.CounterVec   // policy
	ModelRewrites    *prometheus.CounterVec   // policy, reason
	StoreUp          prometheus.Gauge
	StoreErrors      *prometheus.CounterVec   // op
	StoreSeconds     *prometheus.HistogramVec // op
	ActiveStreams    prometheus.Gauge
	ConfigReloads    *prometheus.CounterVec // result
	ConfigReloadTime prometheus.Gauge

	// phase holds the Processing observers by phase, looked up once: every
	// ext_proc message observes one.
	phase map[string]prometheus.Observer
}

// NewMetrics creates the series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_requests_total",
			Help: "LLM requests processed, by dialect, resolved model and outcome (ok, usage_missing, estimated, upstream_error, denied, invalid_request, store_error).",
		}, []string{"dialect", "model", "outcome"}),
		Tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_tokens_total",
			Help: "Tokens metered from provider usage (or estimated when usage was absent), by model and class (input, output, cache_read, cache_write).",
		}, []string{"model", "type"}),
		Cost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_cost_usd_total",
			Help: "Cost of metered requests in USD, by model; computed in integer nano-USD.",
		}, []string{"model"}),
		Processing: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_processing_seconds",
			Help:    "Time spent inside the processor per ext_proc message, by phase (including store round trips).",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}, []string{"phase"}),
		Admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_admissions_total",
			Help: "Admission decisions by tenant and result (allowed, denied_<dimension>, failed_open, failed_closed, local).",
		}, []string{"tenant", "result"}),
		Spend: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_spend_usd_total",
			Help: "Spend settled against budgets in USD, by tenant, model and source (measured from provider usage, or estimated).",
		}, []string{"tenant", "model", "source"}),
		BudgetUsed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_budget_used_ratio",
			Help: "Fraction of the current budget window spent or reserved, by tenant and window.",
		}, []string{"tenant", "window"}),
		BudgetSpent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_budget_spent_usd",
			Help: "USD spent in the current budget window, by tenant and window.",
		}, []string{"tenant", "window"}),
		BudgetCap: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_budget_cap_usd",
			Help: "The budget of the current window in USD, by tenant and window.",
		}, []string{"tenant", "window"}),
		BudgetExhaustion: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_budget_exhaustion_seconds",
			Help: "Forecast time until the current budget window is spent at the window's average burn rate so far; +Inf when it will last the window.",
		}, []string{"tenant", "window"}),
		BudgetAlerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_budget_alerts_total",
			Help: "Budget thresholds crossed, counted once per window across all replicas, by tenant, window and threshold ratio.",
		}, []string{"tenant", "window", "threshold"}),
		ProviderLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_provider_latency_seconds",
			Help:    "Time from forwarding a request to the end of its response, by policy.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 4, 8, 12, 18, 30, 60, 120, 300, 600},
		}, []string{"policy"}),
		ProviderStatus: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_provider_responses_total",
			Help: "Provider responses by dialect and HTTP status code.",
		}, []string{"dialect", "code"}),
		PromptCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_prompt_cache_tokens_total",
			Help: "Prompt-cache tokens reported by the provider, by model and type (read, write).",
		}, []string{"model", "type"}),
		PrefixChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_prompt_prefix_changes_total",
			Help: "How often the stable prompt prefix (tools + system) of a policy changed; a steady climb means dynamic fields leak into a template.",
		}, []string{"policy"}),
		ModelRewrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_model_rewrites_total",
			Help: "Requests whose model was rewritten, by policy and reason (alias, downgrade, tier).",
		}, []string{"policy", "reason"}),
		StoreUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_store_up",
			Help: "1 while the shared store answers, 0 while it does not.",
		}),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_store_errors_total",
			Help: "Store calls that failed, by operation.",
		}, []string{"op"}),
		StoreSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_store_seconds",
			Help:    "Store call latency by operation (one round trip each).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}, []string{"op"}),
		ActiveStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_active_streams",
			Help: "ext_proc streams currently open.",
		}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_config_reloads_total",
			Help: "Configuration reloads by result (success, failure); on failure the last good configuration stays in force.",
		}, []string{"result"}),
		ConfigReloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_config_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful configuration load.",
		}),
	}
	reg.MustRegister(m.Requests, m.Tokens, m.Cost, m.Processing, m.Admissions, m.Spend,
		m.BudgetUsed, m.BudgetSpent, m.BudgetCap, m.BudgetExhaustion, m.BudgetAlerts, m.ProviderLatency, m.ProviderStatus,
		m.PromptCache, m.PrefixChanges, m.ModelRewrites, m.StoreUp, m.StoreErrors, m.StoreSeconds,
		m.ActiveStreams, m.ConfigReloads, m.ConfigReloadTime)
	// Series that would otherwise appear only after their first event are
	// created at zero, so dashboards and alerts see them from the start.
	m.phase = map[string]prometheus.Observer{}
	for _, phase := range []string{phaseRequestHeaders, phaseRequestBody, phaseResponseHeaders, phaseResponseBody} {
		m.phase[phase] = m.Processing.WithLabelValues(phase)
	}
	for _, op := range []string{"admit", "settle"} {
		m.StoreErrors.WithLabelValues(op)
		m.StoreSeconds.WithLabelValues(op)
	}
	for _, r := range []string{"success", "failure"} {
		m.ConfigReloads.WithLabelValues(r)
	}
	return m
}

// InitPolicies creates the per-policy series at zero, so that a policy's
// counters exist on dashboards before anything happens to them.
func (m *Metrics) InitPolicies(names []string) {
	for _, p := range names {
		m.PrefixChanges.WithLabelValues(p)
	}
}

var knownStatus = map[int]string{}

func init() {
	for _, c := range []int{200, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504, 529} {
		knownStatus[c] = strconv.Itoa(c)
	}
}

// statusLabel bounds the code label to the statuses LLM providers use.
func statusLabel(code int) string {
	if s, ok := knownStatus[code]; ok {
		return s
	}
	return "other"
}
