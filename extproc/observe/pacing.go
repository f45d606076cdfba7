package observe

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// pacingMetrics are pacing's series (gate.PacingObserver), by host: a
// known provider host or "other", never a credential.
type pacingMetrics struct {
	engaged *prometheus.GaugeVec   // host
	rate    *prometheus.GaugeVec   // host, window
	denied  *prometheus.CounterVec // host
}

var _ gate.PacingObserver = (*Metrics)(nil)

func newPacingMetrics(reg prometheus.Registerer) *pacingMetrics {
	p := &pacingMetrics{
		engaged: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_upstream_pacing_engaged",
			Help: "Upstreams (credentials or routes) of a host this replica paces now because the provider reported little left of a limit, by host.",
		}, []string{"host"}),
		rate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_upstream_pacing_rate",
			Help: "Units per second a host's most recently paced upstream is let through (the provider's limit over its window, times headroom), by host and window (requests, tokens, input_tokens, output_tokens); 0 when nothing of the host is paced.",
		}, []string{"host", "window"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_upstream_paced_total",
			Help: "Requests answered locally with 429 (x-tokenwarden-denied: upstream/paced) because their upstream was paced and their turn had not come, by host.",
		}, []string{"host"}),
	}
	reg.MustRegister(p.engaged, p.rate, p.denied)
	// Exported from the start, at 0, so dashboards and rules see the series.
	p.engaged.WithLabelValues("other")
	p.denied.WithLabelValues("other")
	for _, w := range limiter.PaceDimNames {
		p.rate.WithLabelValues("other", w)
	}
	return p
}

// PacingEngaged implements gate.PacingObserver.
func (m *Metrics) PacingEngaged(host string, upstreams int) {
	m.pacing.engaged.WithLabelValues(host).Set(float64(upstreams))
}

// PacingRate implements gate.PacingObserver.
func (m *Metrics) PacingRate(host, window string, perSecond float64) {
	m.pacing.rate.WithLabelValues(host, window).Set(perSecond)
}

// PacedDenied implements gate.PacingObserver.
func (m *Metrics) PacedDenied(host string) { m.pacing.denied.WithLabelValues(host).Inc() }
