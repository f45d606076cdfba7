package observe

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// cacheMetrics are the response cache's series (gate.CacheObserver). The
// hit ratio is lookups{result="hit"} over lookups{result!="bypass"}; what
// the cache saved is counted apart from spend, in the same units.
type cacheMetrics struct {
	lookups      *prometheus.CounterVec   // tenant, result, reason
	savedReqs    *prometheus.CounterVec   // tenant, model
	savedTokens  *prometheus.CounterVec   // tenant, model, type, source
	savedUSD     *prometheus.CounterVec   // tenant, model, source
	fills        *prometheus.CounterVec   // result
	bytes        *prometheus.GaugeVec     // partition
	evictions    *prometheus.CounterVec   // partition
	storeSeconds *prometheus.HistogramVec // op
	storeErrors  *prometheus.CounterVec   // op
}

var _ gate.CacheObserver = (*Metrics)(nil)

func newCacheMetrics(reg prometheus.Registerer) *cacheMetrics {
	c := &cacheMetrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_response_cache_lookups_total",
			Help: "Requests of policies with the response cache on, by tenant, result (hit, miss, error: the cache failed and the request went on as a miss, bypass) and, for bypass, reason (sampling, choices, server_tools, warmup, background, dialect, no_cache, no_store).",
		}, []string{"tenant", "result", "reason"}),
		savedReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_response_cache_saved_requests_total",
			Help: "Requests answered from the response cache instead of the provider, by tenant and model.",
		}, []string{"tenant", "model"}),
		savedTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_response_cache_saved_tokens_total",
			Help: "Tokens the provider did not process because the response cache answered, by tenant, model, class (input, output, cache_read, cache_write) and source (measured: the usage the stored answer reported).",
		}, []string{"tenant", "model", "type", "source"}),
		savedUSD: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_response_cache_saved_usd_total",
			Help: "USD not spent because the response cache answered: the stored answer's usage priced at the time of the hit, by tenant, model and source; computed in integer nano-USD.",
		}, []string{"tenant", "model", "source"}),
		fills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_response_cache_fills_total",
			Help: "Answers to cache misses, by what became of them: stored, or not (too_large, incomplete, truncated, refused, upstream_error, encoded, rejected, store_error).",
		}, []string{"result"}),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_response_cache_bytes",
			Help: "Bytes the response cache holds for a partition (a configured tenant, or shared:<policy>), as the store counts them, after the last store into it.",
		}, []string{"partition"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_response_cache_evictions_total",
			Help: "Entries evicted (least recently used first) to keep a partition within max_org_bytes, by partition (other: tenants without a label).",
		}, []string{"partition"}),
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_response_cache_store_seconds",
			Help:    "Response cache round trips by operation (get on the request's path, put after the answer).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}, []string{"op"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_response_cache_errors_total",
			Help: "Response cache round trips that failed (down, slow, or backing off after a failure), by operation; a failed get is a miss, never an error for the client.",
		}, []string{"op"}),
	}
	reg.MustRegister(c.lookups, c.savedReqs, c.savedTokens, c.savedUSD, c.fills, c.bytes, c.evictions, c.storeSeconds, c.storeErrors)
	for _, op := range []string{"get", "put"} {
		c.storeSeconds.WithLabelValues(op)
		c.storeErrors.WithLabelValues(op)
	}
	c.fills.WithLabelValues(gate.FillStored)
	// Present at zero from the start, so dashboards and alerts see the
	// series before the first cached policy's first request.
	c.lookups.WithLabelValues(policy.OtherLabel, "miss", "none")
	c.savedReqs.WithLabelValues(policy.OtherLabel, policy.OtherLabel)
	c.savedUSD.WithLabelValues(policy.OtherLabel, policy.OtherLabel, string(gate.SourceMeasured))
	c.bytes.WithLabelValues(policy.OtherLabel)
	c.evictions.WithLabelValues(policy.OtherLabel)
	return c
}

// CacheLookup implements gate.CacheObserver.
func (m *Metrics) CacheLookup(tenantLabel, result, reason string) {
	if reason == "" {
		reason = "none"
	}
	m.cache.lookups.WithLabelValues(tenantLabel, result, reason).Inc()
}

// CacheHit implements gate.CacheObserver.
func (m *Metrics) CacheHit(tenantLabel, modelLabel string, u accounting.Usage, cost accounting.NanoUSD) {
	c := m.cache
	src := string(gate.SourceMeasured)
	c.savedReqs.WithLabelValues(tenantLabel, modelLabel).Inc()
	c.savedTokens.WithLabelValues(tenantLabel, modelLabel, "input", src).Add(float64(u.InputTokens))
	c.savedTokens.WithLabelValues(tenantLabel, modelLabel, "output", src).Add(float64(u.OutputTokens))
	c.savedTokens.WithLabelValues(tenantLabel, modelLabel, "cache_read", src).Add(float64(u.CacheReadTokens))
	c.savedTokens.WithLabelValues(tenantLabel, modelLabel, "cache_write", src).Add(float64(u.CacheWriteTokens()))
	c.savedUSD.WithLabelValues(tenantLabel, modelLabel, src).Add(cost.USD())
}

// CacheFill implements gate.CacheObserver.
func (m *Metrics) CacheFill(result string) { m.cache.fills.WithLabelValues(result).Inc() }

// CacheStored implements gate.CacheObserver.
func (m *Metrics) CacheStored(partition string, orgBytes int64, evicted int) {
	if partition == "" {
		m.cache.evictions.WithLabelValues(policy.OtherLabel).Add(float64(evicted))
		return
	}
	m.cache.bytes.WithLabelValues(partition).Set(float64(orgBytes))
	m.cache.evictions.WithLabelValues(partition).Add(float64(evicted))
}

// CacheCall implements gate.CacheObserver.
func (m *Metrics) CacheCall(op string, took time.Duration, err error) {
	m.cache.storeSeconds.WithLabelValues(op).Observe(took.Seconds())
	if err != nil {
		m.cache.storeErrors.WithLabelValues(op).Inc()
	}
}
