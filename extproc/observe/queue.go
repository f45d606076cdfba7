package observe

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

// queueMetrics are the lanes' and the admission queue's series
// (gate.QueueObserver), by lane: a configured lane name, or "none".
type queueMetrics struct {
	wait      *prometheus.HistogramVec               // lane, result
	overflows *prometheus.CounterVec                 // lane, reason
	headers   *prometheus.HistogramVec               // policy, lane
	stats     atomic.Pointer[func() gate.QueueStats] // set by WatchQueue

	length, oldest *prometheus.Desc
	bytes          *prometheus.Desc
}

var _ gate.QueueObserver = (*Metrics)(nil)

// waitBuckets reach the longest wait Envoy allows (max_message_timeout).
var waitBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 12, 18, 30, 60}

func newQueueMetrics(reg prometheus.Registerer) *queueMetrics {
	q := &queueMetrics{
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_queue_wait_seconds",
			Help:    "Time requests waited in the admission queue, by lane and how the wait ended (admitted, denied, timed_out, disconnected).",
			Buckets: waitBuckets,
		}, []string{"lane", "result"}),
		overflows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_queue_overflows_total",
			Help: "Requests that would have waited but were answered at once because this replica's queue was full, by lane and bound (requests, bytes).",
		}, []string{"lane", "reason"}),
		headers: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenwarden_provider_response_headers_seconds",
			Help:    "Time from forwarding a request to the provider's response headers, by policy and lane (none: a policy without lanes).",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 4, 8, 12, 18, 30, 60, 120},
		}, []string{"policy", "lane"}),
		length: prometheus.NewDesc("tokenwarden_queue_requests",
			"Requests waiting in this replica's admission queue, by lane.", []string{"lane"}, nil),
		oldest: prometheus.NewDesc("tokenwarden_queue_oldest_age_seconds",
			"How long the oldest request waiting in this replica's queue has waited, by lane; 0 when none waits.", []string{"lane"}, nil),
		bytes: prometheus.NewDesc("tokenwarden_queue_bytes",
			"Bytes of request bodies this replica's queue holds (bounded by queue.max_bytes).", nil, nil),
	}
	reg.MustRegister(q.wait, q.overflows, q.headers, q)
	for _, r := range []string{gate.WaitAdmitted, gate.WaitDenied, gate.WaitTimedOut, gate.WaitDisconnected} {
		q.wait.WithLabelValues(gate.NoLane, r)
	}
	for _, r := range []string{gate.OverflowRequests, gate.OverflowBytes} {
		q.overflows.WithLabelValues(gate.NoLane, r)
	}
	return q
}

// Describe implements prometheus.Collector.
func (q *queueMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- q.length
	ch <- q.oldest
	ch <- q.bytes
}

// Collect implements prometheus.Collector: the queue as it stands at the
// scrape (an age must be read when asked, not when it last changed).
func (q *queueMetrics) Collect(ch chan<- prometheus.Metric) {
	var s gate.QueueStats
	if f := q.stats.Load(); f != nil {
		s = (*f)()
	} else {
		s.Lanes = []gate.LaneStats{{Lane: gate.NoLane}}
	}
	for _, l := range s.Lanes {
		ch <- prometheus.MustNewConstMetric(q.length, prometheus.GaugeValue, float64(l.Length), l.Lane)
		ch <- prometheus.MustNewConstMetric(q.oldest, prometheus.GaugeValue, l.Oldest.Seconds(), l.Lane)
	}
	ch <- prometheus.MustNewConstMetric(q.bytes, prometheus.GaugeValue, float64(s.Bytes))
}

// WatchQueue makes the queue gauges read stats (the gate's QueueStats) at
// every scrape. Call it once, before serving.
func (m *Metrics) WatchQueue(stats func() gate.QueueStats) { m.queue.stats.Store(&stats) }

// QueueWait implements gate.QueueObserver.
func (m *Metrics) QueueWait(lane, result string, waited time.Duration) {
	m.queue.wait.WithLabelValues(lane, result).Observe(waited.Seconds())
}

// QueueOverflow implements gate.QueueObserver.
func (m *Metrics) QueueOverflow(lane, reason string) {
	m.queue.overflows.WithLabelValues(lane, reason).Inc()
}

// ProviderHeaders implements gate.QueueObserver.
func (m *Metrics) ProviderHeaders(policy, lane string, took time.Duration) {
	m.queue.headers.WithLabelValues(policy, lane).Observe(took.Seconds())
}
