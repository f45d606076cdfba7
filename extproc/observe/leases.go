package observe

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/limiter"
)

// leaseMetrics are leased admission's series (limiter.Leased), read at each
// scrape: lease counts change on the request path, where a metric write per
// request is what leasing saves.
type leaseMetrics struct {
	stats atomic.Pointer[func() limiter.LeasedStats] // set by WatchLeases

	open, taken, served, overflowed *prometheus.Desc
}

func newLeaseMetrics(reg prometheus.Registerer) *leaseMetrics {
	m := &leaseMetrics{
		open: prometheus.NewDesc("tokenwarden_leases_open",
			"Leases this replica holds that are not yet settled in the store (policies with leases:).", nil, nil),
		taken: prometheus.NewDesc("tokenwarden_leases_taken_total",
			"Leases the store granted to this replica; each costs one admit and one settle in the store.", nil, nil),
		served: prometheus.NewDesc("tokenwarden_leased_requests_total",
			"Requests admitted from a lease without a store call; served ÷ taken is how many requests a lease stood for.", nil, nil),
		overflowed: prometheus.NewDesc("tokenwarden_leased_overflows_total",
			"Requests of a leased policy admitted exactly because this replica held as many caller chains as it allows.", nil, nil),
	}
	reg.MustRegister(m)
	return m
}

// Describe implements prometheus.Collector.
func (m *leaseMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.open
	ch <- m.taken
	ch <- m.served
	ch <- m.overflowed
}

// Collect implements prometheus.Collector.
func (m *leaseMetrics) Collect(ch chan<- prometheus.Metric) {
	var s limiter.LeasedStats
	if f := m.stats.Load(); f != nil {
		s = (*f)()
	}
	ch <- prometheus.MustNewConstMetric(m.open, prometheus.GaugeValue, float64(s.Open))
	ch <- prometheus.MustNewConstMetric(m.taken, prometheus.CounterValue, float64(s.Taken))
	ch <- prometheus.MustNewConstMetric(m.served, prometheus.CounterValue, float64(s.Served))
	ch <- prometheus.MustNewConstMetric(m.overflowed, prometheus.CounterValue, float64(s.Overflowed))
}

// WatchLeases makes the lease series read stats (limiter.Leased.Stats) at
// every scrape. Call it once, before serving.
func (m *Metrics) WatchLeases(stats func() limiter.LeasedStats) { m.leases.stats.Store(&stats) }
