// Package observe is what operators see of tokenwarden: the Prometheus
// metrics (written through semantic methods, never as raw vectors), the
// access-log fields written as Envoy dynamic metadata, the admin handler
// (/metrics, /healthz, /readyz) and the budgets report of the `budgets`
// command.
//
// Every label value is bounded: tenants and models are those named in the
// configuration or the price table, everything else is "other"; dialects,
// phases, outcomes and the like are fixed sets.
package observe

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

// Phases of an ext_proc stream, the values of
// tokenwarden_processing_seconds{phase}.
const (
	PhaseRequestHeaders  = "request_headers"
	PhaseRequestBody     = "request_body"
	PhaseResponseHeaders = "response_headers"
	PhaseResponseBody    = "response_body"
)

// Reasons a stream ends with a gRPC error, the values of
// tokenwarden_stream_errors_total{reason}.
const (
	StreamPanic    = "panic"    // the processor failed: a bug, contained to the stream
	StreamProtocol = "protocol" // a message Envoy does not send in that order or form
)

// Metrics are the Prometheus series tokenwarden exports. It implements
// gate.Observer.
type Metrics struct {
	requests         *prometheus.CounterVec   // dialect, model, outcome
	tokens           *prometheus.CounterVec   // model, type
	cost             *prometheus.CounterVec   // model
	processing       *prometheus.HistogramVec // phase
	admissions       *prometheus.CounterVec   // tenant, result
	spend            *prometheus.CounterVec   // tenant, model, source
	budgetUsed       *prometheus.GaugeVec     // levelLabels
	budgetSpent      *prometheus.GaugeVec     // levelLabels
	budgetCap        *prometheus.GaugeVec     // levelLabels
	budgetExhaustion *prometheus.GaugeVec     // levelLabels
	budgetAlerts     *prometheus.CounterVec   // tenant, level, name, window, threshold
	budgetGauges     budgetGauges             // levels.go: the four gauges above, per series
	providerLatency  *prometheus.HistogramVec // policy
	providerStatus   *prometheus.CounterVec   // dialect, code
	promptCache      *prometheus.CounterVec   // model, type
	prefixChanges    *prometheus.CounterVec   // policy
	modelRewrites    *prometheus.CounterVec   // policy, reason
	outputClamps     *prometheus.CounterVec   // policy
	storeUp          prometheus.Gauge
	storeErrors      *prometheus.CounterVec   // op
	storeSeconds     *prometheus.HistogramVec // op
	activeStreams    prometheus.Gauge
	streamErrors     *prometheus.CounterVec // reason
	unconfigured     *prometheus.CounterVec // kind
	unpriced         prometheus.Counter
	configReloads    *prometheus.CounterVec // result
	configReloadTime prometheus.Gauge
	store            storeMetrics

	// phase holds the processing observers by phase, looked up once: every
	// ext_proc message observes one.
	phase map[string]prometheus.Observer
	// hot caches the children written on every exchange (children.go).
	hot outcomeChildren

	cache     *cacheMetrics     // cache.go
	estimator *estimatorMetrics // estimator.go
	upstream  *upstreamMetrics  // upstream.go
	queue     *queueMetrics     // queue.go
	leases    *leaseMetrics     // leases.go
	batch     *batchMetrics     // batch.go
	pacing    *pacingMetrics    // pacing.go
}

var _ gate.Observer = (*Metrics)(nil)

// NewMetrics creates the series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_requests_total",
			Help: "LLM requests processed, by dialect, resolved model and outcome (ok, usage_missing, usage_invalid, estimated, upstream_error, denied, invalid_request, store_error).",
		}, []string{"dialect", "model", "outcome"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_tokens_total",
			Help: "Tokens charged, by model, class (input, output, cache_read, cache_write) and source (measured from the provider's usage, or estimated when it was absent, cut short or impossible).",
		}, []string{"model", "type", "source"}),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_cost_usd_total",
			Help: "Cost of metered requests in USD, by model; computed in integer nano-USD.",
		}, []string{"model"}),
		processing: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_processing_seconds",
			Help:    "Time spent inside the processor per ext_proc message, by phase (including store round trips).",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}, []string{"phase"}),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_admissions_total",
			Help: "Admission decisions by tenant and result (allowed, denied_<dimension>, failed_open, failed_closed, local).",
		}, []string{"tenant", "result"}),
		spend: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_spend_usd_total",
			Help: "Spend settled against budgets in USD, by tenant, model, source (measured from provider usage, or estimated) and api (request: one request; batch: a batch, Anthropic's or OpenAI's).",
		}, []string{"tenant", "model", "source", "api"}),
		budgetUsed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_budget_used_ratio",
			Help: "Fraction of the current budget window spent or reserved, by tenant (the org), level (org, team, user, key), name (the level's configured label; other: the most used unnamed member this replica saw in the window) and window.",
		}, levelLabels),
		budgetSpent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_budget_spent_usd",
			Help: "USD spent in the current budget window, by tenant, level, name and window (as tokenwarden_budget_used_ratio).",
		}, levelLabels),
		budgetCap: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_budget_cap_usd",
			Help: "The budget of the current window in USD, by tenant, level, name and window (as tokenwarden_budget_used_ratio).",
		}, levelLabels),
		budgetExhaustion: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_budget_exhaustion_seconds",
			Help: "Forecast time until the current budget window is spent at the window's average burn rate so far, by tenant, level, name and window; +Inf when it will last the window.",
		}, levelLabels),
		budgetAlerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_budget_alerts_total",
			Help: "Budget thresholds crossed, counted once per window across all replicas, by tenant, level, name (other: any unnamed member, so the count is how many crossed), window and threshold ratio.",
		}, []string{"tenant", "level", "name", "window", "threshold"}),
		providerLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_provider_latency_seconds",
			Help:    "Time from forwarding a request to the end of its response, by policy.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 4, 8, 12, 18, 30, 60, 120, 300, 600},
		}, []string{"policy"}),
		providerStatus: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_provider_responses_total",
			Help: "Provider responses by dialect and HTTP status code.",
		}, []string{"dialect", "code"}),
		promptCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_prompt_cache_tokens_total",
			Help: "Prompt-cache tokens reported by the provider, by model and type (read, write).",
		}, []string{"model", "type"}),
		prefixChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_prompt_prefix_changes_total",
			Help: "How often the stable prompt prefix (tools + system) of a policy changed; a steady climb means dynamic fields leak into a template.",
		}, []string{"policy"}),
		modelRewrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_model_rewrites_total",
			Help: "Requests whose model was rewritten, by policy and reason (alias, downgrade, tier).",
		}, []string{"policy", "reason"}),
		outputClamps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_output_clamped_total",
			Help: "Requests forwarded with their output bound lowered to what their budgets allow (budget_reservation: full), by policy.",
		}, []string{"policy"}),
		storeUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_store_up",
			Help: "1 while the shared store answers, 0 while it does not.",
		}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_store_errors_total",
			Help: "Store calls that failed, by operation.",
		}, []string{"op"}),
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_store_seconds",
			Help:    "Store call latency by operation (one round trip each).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}, []string{"op"}),
		activeStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_active_streams",
			Help: "ext_proc streams currently open.",
		}),
		streamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_stream_errors_total",
			Help: "ext_proc streams ended with a gRPC error, by reason (panic: a processor bug contained to its stream; protocol: a message out of order or unknown).",
		}, []string{"reason"}),
		unconfigured: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_unconfigured_total",
			Help: "Requests naming what the configuration does not know, by kind (caller: an identified caller not under tenants:, charged to a shared bucket or refused; route_policy: a route metadata policy that does not exist; model: a model without a price).",
		}, []string{"kind"}),
		unpriced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwarden_unpriced_requests_total",
			Help: "Metered requests for a model with no price, charged at the fallback price and counted under model=\"other\"; the log names each such model once. Add it under prices: in tokenwarden.yaml.",
		}),
		configReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_config_reloads_total",
			Help: "Configuration reloads by result (success, failure); on failure the last good configuration stays in force.",
		}, []string{"result"}),
		configReloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_config_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful configuration load.",
		}),
	}
	reg.MustRegister(m.requests, m.tokens, m.cost, m.processing, m.admissions, m.spend,
		budgetCollector{m}, m.budgetAlerts, m.providerLatency, m.providerStatus,
		m.promptCache, m.prefixChanges, m.modelRewrites, m.outputClamps, m.storeUp, m.storeErrors, m.storeSeconds,
		m.activeStreams, m.streamErrors, m.unconfigured, m.unpriced, m.configReloads, m.configReloadTime)
	m.store = newStoreMetrics(reg)
	m.cache = newCacheMetrics(reg)
	m.estimator = newEstimatorMetrics(reg)
	m.upstream = newUpstreamMetrics(reg)
	m.queue = newQueueMetrics(reg)
	m.leases = newLeaseMetrics(reg)
	m.batch = newBatchMetrics(reg)
	m.pacing = newPacingMetrics(reg)
	// Series that would otherwise appear only after their first event are
	// created at zero, so dashboards and alerts see them from the start.
	m.phase = map[string]prometheus.Observer{}
	for _, phase := range []string{PhaseRequestHeaders, PhaseRequestBody, PhaseResponseHeaders, PhaseResponseBody} {
		m.phase[phase] = m.processing.WithLabelValues(phase)
	}
	for _, op := range []string{"admit", "settle"} {
		m.storeErrors.WithLabelValues(op)
		m.storeSeconds.WithLabelValues(op)
	}
	for _, r := range []string{StreamPanic, StreamProtocol} {
		m.streamErrors.WithLabelValues(r)
	}
	for _, r := range []string{"success", "failure"} {
		m.configReloads.WithLabelValues(r)
	}
	for _, k := range []string{gate.UnconfiguredCaller, gate.UnconfiguredRoutePolicy, gate.UnconfiguredModel} {
		m.unconfigured.WithLabelValues(k)
	}
	return m
}

// Unconfigured implements gate.Observer.
func (m *Metrics) Unconfigured(kind string) { m.unconfigured.WithLabelValues(kind).Inc() }

// Outcome implements gate.Observer.
func (m *Metrics) Outcome(o *gate.Outcome) {
	m.hot.requests.get([3]string{o.Dialect, o.ModelLabel, string(o.Result)}, func(k [3]string) prometheus.Counter {
		return m.requests.WithLabelValues(k[:]...)
	}).Inc()
	if !o.Metered {
		return
	}
	if o.OutputClamped > 0 {
		m.outputClamps.WithLabelValues(o.Policy).Inc()
	}
	u, model, src := o.Usage, o.ModelLabel, string(o.Source)
	tc := m.hot.tokens.get([2]string{model, src}, func(k [2]string) *tokenCounters {
		return &tokenCounters{input: m.tokens.WithLabelValues(k[0], "input", k[1]), output: m.tokens.WithLabelValues(k[0], "output", k[1]),
			cacheRead: m.tokens.WithLabelValues(k[0], "cache_read", k[1]), cacheWrite: m.tokens.WithLabelValues(k[0], "cache_write", k[1])}
	})
	tc.input.Add(float64(u.InputTokens))
	tc.output.Add(float64(u.OutputTokens))
	tc.cacheRead.Add(float64(u.CacheReadTokens))
	tc.cacheWrite.Add(float64(u.CacheWriteTokens()))
	if u.CacheReadTokens > 0 {
		m.promptCache.WithLabelValues(model, "read").Add(float64(u.CacheReadTokens))
	}
	if w := u.CacheWriteTokens(); w > 0 {
		m.promptCache.WithLabelValues(model, "write").Add(float64(w))
	}
	m.hot.cost.get(model, func(k string) prometheus.Counter { return m.cost.WithLabelValues(k) }).Add(o.Cost.Total.USD())
	if o.Unpriced {
		m.unpriced.Inc()
	}
	m.hot.spend.get([4]string{o.TenantLabel, model, string(o.Source), apiOf(o.Dialect)}, func(k [4]string) prometheus.Counter {
		return m.spend.WithLabelValues(k[:]...)
	}).Add(o.Cost.Total.USD())
	m.batchSettled(o)
	if o.Latency > 0 {
		m.providerLatency.WithLabelValues(o.Policy).Observe(o.Latency.Seconds())
	}
}

// Admission implements gate.Observer.
func (m *Metrics) Admission(tenantLabel, result string) {
	m.hot.admissions.get([2]string{tenantLabel, result}, func(k [2]string) prometheus.Counter {
		return m.admissions.WithLabelValues(k[:]...)
	}).Inc()
}

// StoreCall implements gate.Observer.
func (m *Metrics) StoreCall(op string, took time.Duration, err error) {
	m.hot.storeSeconds.get(op, func(k string) prometheus.Observer { return m.storeSeconds.WithLabelValues(k) }).Observe(took.Seconds())
	if err != nil {
		m.storeErrors.WithLabelValues(op).Inc()
	}
}

// ProviderResponse implements gate.Observer.
func (m *Metrics) ProviderResponse(dialect string, status int) {
	m.hot.status.get([2]string{dialect, statusLabel(status)}, func(k [2]string) prometheus.Counter {
		return m.providerStatus.WithLabelValues(k[:]...)
	}).Inc()
}

// ModelRewrite implements gate.Observer.
func (m *Metrics) ModelRewrite(policy, reason string) {
	m.modelRewrites.WithLabelValues(policy, reason).Inc()
}

// PrefixChange implements gate.Observer.
func (m *Metrics) PrefixChange(policy string) { m.prefixChanges.WithLabelValues(policy).Inc() }

// ExpiredCharged implements gate.Observer.
func (m *Metrics) ExpiredCharged(tenantLabel, model string, cost accounting.NanoUSD) {
	m.spend.WithLabelValues(tenantLabel, model, string(gate.SourceEstimated), apiRequest).Add(cost.USD())
}

// Phase records the time one ext_proc message spent in the processor.
func (m *Metrics) Phase(phase string, took time.Duration) {
	if o := m.phase[phase]; o != nil {
		o.Observe(took.Seconds())
	}
}

// StreamOpened and StreamClosed track the open ext_proc streams.
func (m *Metrics) StreamOpened() { m.activeStreams.Inc() }

// StreamClosed is StreamOpened's pair.
func (m *Metrics) StreamClosed() { m.activeStreams.Dec() }

// StreamError counts a stream ended with a gRPC error, by reason.
func (m *Metrics) StreamError(reason string) { m.streamErrors.WithLabelValues(reason).Inc() }

// StoreUp sets tokenwarden_store_up.
func (m *Metrics) StoreUp(up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.storeUp.Set(v)
}

// ConfigLoaded records a configuration load or reload; on success the
// policies' series are created at zero.
func (m *Metrics) ConfigLoaded(ok bool, policies []string) {
	if !ok {
		m.configReloads.WithLabelValues("failure").Inc()
		return
	}
	m.configReloads.WithLabelValues("success").Inc()
	m.configReloadTime.SetToCurrentTime()
	for _, p := range policies {
		m.prefixChanges.WithLabelValues(p)
	}
}

var knownStatus = func() map[int]string {
	m := map[int]string{}
	for _, c := range []int{200, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504, 529} {
		m[c] = strconv.Itoa(c)
	}
	return m
}()

// statusLabel bounds the code label to the statuses LLM providers use.
func statusLabel(code int) string {
	if s, ok := knownStatus[code]; ok {
		return s
	}
	return "other"
}

// WatchStore keeps tokenwarden_store_up true to up, checking every interval
// until ctx is done.
func (m *Metrics) WatchStore(ctx context.Context, up func() bool, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		m.StoreUp(up())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
