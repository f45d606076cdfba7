package gate

import (
	"math"
	"sync"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// Reservations that learn. The dialects estimate a request's input tokens
// from its bytes (extproc/dialect/wire's weighing), which is off by a
// model- and workload-dependent ratio: code, CJK text or JSON tool schemas
// tokenize very differently from English prose. Each measured settle
// carries the request's uncalibrated estimate and the provider's input
// count; the store folds their ratio into the org's per-model factor
// (limiter.Calibration: an EWMA of weight 1/20 after a warm-up, each
// observation clamped to [½, 2]× the current factor, the factor to
// [0.25, 4]) in that same settle, and returns it. The replica keeps the
// returned factor here and multiplies it into the model's next input
// estimates, for that org — so every replica sharing the store learns from
// every settle, with no extra round trip.
//
// The factor a request uses is the one the last settle of its (org, model)
// on this replica returned, else 1: an org's reservations depend on its own
// traffic only, never on which other orgs a replica happened to serve. It
// is at most one settle stale per replica (a settle on another replica folds
// in before this one's next settle brings it back), which an EWMA over ~20
// requests does not notice.

// calibrator is the replica's copy of the factors settles returned.
type calibrator struct {
	mu    sync.RWMutex
	byOrg map[calibKey]float64
}

type calibKey struct{ org, model string }

// maxCalibrations bounds byOrg; past it the map starts over, which only
// means an org's next estimates are raw until its next settle.
const maxCalibrations = 100_000

func newCalibrator() *calibrator {
	return &calibrator{byOrg: map[calibKey]float64{}}
}

// factor is the multiplier for an org's estimates of a model: 1 for a
// model without a bounded label (an unpriced model is "other", a mix of
// tokenizers that one factor cannot describe).
func (c *calibrator) factor(org, model string) float64 {
	if model == "" || model == policy.OtherLabel {
		return 1
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if f, ok := c.byOrg[calibKey{org, model}]; ok {
		return f
	}
	return 1
}

// store keeps a factor a settle returned.
func (c *calibrator) store(org string, cal limiter.Calibration) {
	if cal.Factor <= 0 || cal.Model == "" {
		return
	}
	f := cal.Ratio()
	c.mu.Lock()
	if len(c.byOrg) >= maxCalibrations {
		c.byOrg = map[calibKey]float64{}
	}
	c.byOrg[calibKey{org, cal.Model}] = f
	c.mu.Unlock()
}

// calibrated applies a factor to an uncalibrated input estimate, rounding
// to the nearest token and keeping it within the store's bounds.
func calibrated(raw int64, factor float64) int64 {
	if raw <= 0 || factor == 1 {
		return raw
	}
	return min(int64(math.Round(float64(raw)*factor)), limiter.MaxTokens)
}

// calibrationSample is what a settle of a measured request teaches the
// estimator: nothing for an unpriced model, or when either count is zero.
func (x *Exchange) calibrationSample(measured int64) limiter.CalibrationSample {
	if x.unpriced || x.modelLabel == policy.OtherLabel || x.rawInput <= 0 || measured <= 0 {
		return limiter.CalibrationSample{}
	}
	return limiter.CalibrationSample{Model: x.modelLabel, Estimated: x.rawInput, Measured: measured}
}
