package observe

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

// upstreamMetrics are the upstream view's series (gate.UpstreamObserver),
// by host: a known provider host or "other", never a credential.
type upstreamMetrics struct {
	remaining     *prometheus.GaugeVec   // host, window
	cooldowns     *prometheus.CounterVec // host, code
	cooldownUntil *prometheus.GaugeVec   // host
	denied        *prometheus.CounterVec // host
}

var _ gate.UpstreamObserver = (*Metrics)(nil)

func newUpstreamMetrics(reg prometheus.Registerer) *upstreamMetrics {
	u := &upstreamMetrics{
		remaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_provider_remaining_ratio",
			Help: "Fraction of a provider rate limit left (remaining over limit) as the provider's last response on this replica reported it, by host and window (requests, tokens, input_tokens, output_tokens).",
		}, []string{"host", "window"}),
		cooldowns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_upstream_cooldowns_total",
			Help: "Provider 429 and 529 answers that put an upstream into cool-down on every replica, by host and code.",
		}, []string{"host", "code"}),
		cooldownUntil: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_upstream_cooldown_until_timestamp_seconds",
			Help: "Unix time at which the latest cool-down this replica started on a host ends; in cool-down while it is after time().",
		}, []string{"host"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_upstream_cooldown_denials_total",
			Help: "Requests answered locally with 429 (x-tokenwarden-denied: upstream/cooldown) because their upstream was cooling down, by host.",
		}, []string{"host"}),
	}
	reg.MustRegister(u.remaining, u.cooldowns, u.cooldownUntil, u.denied)
	for _, code := range []string{"429", "529"} {
		u.cooldowns.WithLabelValues("other", code)
	}
	u.denied.WithLabelValues("other")
	u.cooldownUntil.WithLabelValues("other") // 0: no cool-down started
	return u
}

// ProviderRemaining implements gate.UpstreamObserver.
func (m *Metrics) ProviderRemaining(host, window string, fraction float64) {
	m.hot.remaining.get([2]string{host, window}, func(k [2]string) prometheus.Gauge {
		return m.upstream.remaining.WithLabelValues(k[:]...)
	}).Set(fraction)
}

// UpstreamCooldown implements gate.UpstreamObserver.
func (m *Metrics) UpstreamCooldown(host string, status int, wait time.Duration) {
	m.upstream.cooldowns.WithLabelValues(host, strconv.Itoa(status)).Inc()
	m.upstream.cooldownUntil.WithLabelValues(host).Set(float64(time.Now().Add(wait).UnixMilli()) / 1000)
}

// CooldownDenied implements gate.UpstreamObserver.
func (m *Metrics) CooldownDenied(host string) { m.upstream.denied.WithLabelValues(host).Inc() }
