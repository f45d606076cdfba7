package observe

import (
	"github.com/prometheus/client_golang/prometheus"
)

// estimatorMetrics show how far the input estimate is from what providers
// measure, after calibration (gate calibrate.go), and the factors in use.
type estimatorMetrics struct {
	errorRatio *prometheus.HistogramVec // model
	factor     *prometheus.GaugeVec     // model
}

func newEstimatorMetrics(reg prometheus.Registerer) *estimatorMetrics {
	e := &estimatorMetrics{
		errorRatio: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokenwarden_input_estimate_error_ratio",
			Help: "|estimated - measured| / measured input tokens of each measured request, the estimate as reserved (calibrated), by model.",
			// A calibrated estimate is within a few percent; an
			// uncalibrated one is commonly 20-60% off.
			Buckets: []float64{.01, .02, .05, .1, .15, .2, .3, .5, 1, 2},
		}, []string{"model"}),
		factor: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_input_estimate_factor",
			Help: "The input estimator's calibration factor (measured/estimated input tokens, smoothed) the last settle of the model returned to this replica, by model.",
		}, []string{"model"}),
	}
	reg.MustRegister(e.errorRatio, e.factor)
	return e
}

// InputEstimate implements gate.Observer.
func (m *Metrics) InputEstimate(model string, estimated, measured int64) {
	if measured <= 0 {
		return
	}
	d := estimated - measured
	if d < 0 {
		d = -d
	}
	m.estimator.errorRatio.WithLabelValues(model).Observe(float64(d) / float64(measured))
}

// EstimatorFactor implements gate.Observer.
func (m *Metrics) EstimatorFactor(model string, factor float64) {
	m.estimator.factor.WithLabelValues(model).Set(factor)
}
