package limiter

import "fmt"

// Calibration: the input estimator learns from settled usage.
//
// A request's input tokens are estimated from its body before it is sent
// (a fixed weighing of its bytes); the provider reports the real count.
// Their ratio, per org and model, is folded by the settle the request
// already makes into a small record under the org's hash tag — no extra
// round trip — and the settle returns the record's current factor, which the
// replica multiplies into that model's next estimates. Every replica that
// shares the store learns from every replica's settles.
//
// The factor is an exponentially weighted moving average of
// measured/estimated in integer parts per CalibrationScale, so the Redis
// script and the memory store compute it bit for bit alike (foldCalibration):
//
//   - each observation is clamped to [factor/2, factor×2] around the current
//     factor, so one weird request (a prompt of pure digits, a provider
//     glitch) moves the factor by at most a weight's share of a doubling;
//   - its weight is 1/(samples+CalibrationPrior) until that reaches
//     1/CalibrationWindow: the starting factor 1 counts as CalibrationPrior
//     samples, so the first observation moves it by at most a quarter of the
//     distance, and after the warm-up the weight is 1/20 (an EWMA whose
//     memory is about 20 requests);
//   - the factor stays within [CalibrationMin, CalibrationMax].
//
// A record outlives its last settle by the store's Retention; a model
// unused that long starts again from 1.
const (
	CalibrationScale  = 1_000_000 // the factor 1.0
	CalibrationMin    = CalibrationScale / 4
	CalibrationMax    = CalibrationScale * 4
	CalibrationPrior  = 4
	CalibrationWindow = 20
	// maxCalibrationModel bounds the model name in a record's key.
	maxCalibrationModel = 128
)

// CalibrationSample is one settled request's input estimate and the
// provider's measured input, for one model. The zero value (Model "")
// carries no observation.
type CalibrationSample struct {
	// Model is a bounded model label (a priced model's canonical name);
	// never a client's free text, since each one is a record in the store.
	Model string
	// Estimated is the estimator's uncalibrated input estimate, the one the
	// factor multiplies; Measured the provider's total input (uncached,
	// cache reads and writes).
	Estimated, Measured int64
}

// Calibration is a model's estimator factor as the store holds it after a
// settle.
type Calibration struct {
	Model string
	// Factor is measured/estimated input, smoothed, in parts per
	// CalibrationScale; zero when the store returned none.
	Factor int64
	// Samples is how many observations the factor has folded.
	Samples int64
}

// Ratio is the factor as a multiplier, 1 when there is none.
func (c Calibration) Ratio() float64 {
	if c.Factor <= 0 {
		return 1
	}
	return float64(c.Factor) / CalibrationScale
}

// foldCalibration folds one observation into factor f after n samples, as
// settle.lua does. An observation without both counts changes nothing.
func foldCalibration(f, n, estimated, measured int64) (int64, int64) {
	if estimated <= 0 || measured <= 0 {
		return f, n
	}
	obs := measured * CalibrationScale / estimated
	obs = min(max(obs, f/2, CalibrationMin), 2*f, CalibrationMax)
	d := min(n+CalibrationPrior, CalibrationWindow)
	f = (f*(d-1) + obs + d/2) / d
	return min(max(f, CalibrationMin), CalibrationMax), n + 1
}

func validateCalibration(c *CalibrationSample) error {
	switch {
	case c.Model == "":
		return nil
	case len(c.Model) > maxCalibrationModel:
		return fmt.Errorf("%w: calibration model of %d bytes", ErrInvalid, len(c.Model))
	case c.Estimated < 0 || c.Estimated > MaxTokens || c.Measured < 0 || c.Measured > MaxTokens:
		return fmt.Errorf("%w: calibration tokens %d/%d outside [0, %d]", ErrInvalid, c.Estimated, c.Measured, MaxTokens)
	}
	return nil
}
