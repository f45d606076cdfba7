package accounting

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// BurnRate is the average spend since the window started, in USD per hour,
// for dashboards and forecasts. It is 0 when nothing (or less than nothing,
// after refunds) was spent or no time has passed, rather than infinite.
func BurnRate(spent NanoUSD, windowStart, now time.Time) float64 {
	elapsed := now.Sub(windowStart)
	if spent <= 0 || elapsed <= 0 {
		return 0
	}
	return spent.USD() / elapsed.Hours()
}

// Exhaustion forecasts, at the average rate since windowStart, how long after
// now the spend reaches cap. ok is false when it will not happen before
// windowEnd (when the budget resets), or when there is no rate to extrapolate
// (nothing spent yet, or now is not after windowStart). An already exhausted
// budget (spent ≥ cap) gives eta 0 and ok true.
//
// windowEnd is a parameter because a forecast past the reset is meaningless
// and the window's length (23–25 hour days, 28–31 day months) cannot be
// recovered from its start.
func Exhaustion(spent, cap NanoUSD, windowStart, windowEnd, now time.Time) (eta time.Duration, ok bool) {
	if spent >= cap {
		return 0, true
	}
	elapsed := now.Sub(windowStart)
	left := windowEnd.Sub(now)
	if spent <= 0 || elapsed <= 0 || left <= 0 {
		return 0, false
	}
	// remaining/rate = (cap-spent) · elapsed / spent. In float64: the inputs
	// are far below 2^53 ns in practice and a forecast needs no exactness,
	// only no overflow, which the comparison with left guards.
	f := float64(cap-spent) / float64(spent) * float64(elapsed)
	if f >= float64(left) {
		return 0, false
	}
	return time.Duration(math.Ceil(f)), true
}

// ValidateAlertRatios checks budget alert ratios as written in the
// configuration: each must be in (0, 1].
func ValidateAlertRatios(ratios []float64) error {
	for _, r := range ratios {
		if !validRatio(r) {
			return fmt.Errorf("alert ratio %v: want a fraction of the cap in (0, 1]", r)
		}
	}
	return nil
}

func validRatio(r float64) bool { return r > 0 && r <= 1 } // false for NaN

// AlertAmounts turns alert ratios into the spend amounts at which to alert:
// ascending, without duplicates, and always ending with cap itself (the 100%
// alert). Each amount is ratio·cap rounded to the nearest nano-USD and kept
// within [0, cap]. Ratios outside (0, 1] are ignored here; configuration
// loading rejects them with ValidateAlertRatios. A negative cap counts as 0.
func AlertAmounts(cap NanoUSD, ratios []float64) []NanoUSD {
	cap = max(cap, 0)
	out := make([]NanoUSD, 0, len(ratios)+1)
	for _, r := range ratios {
		if !validRatio(r) {
			continue
		}
		// float64(cap) may round up past MaxInt64 for huge caps; clamp before
		// converting back.
		a := math.Round(r * float64(cap))
		if a >= float64(cap) {
			out = append(out, cap)
			continue
		}
		out = append(out, NanoUSD(a))
	}
	out = append(out, cap)
	slices.Sort(out)
	return slices.Compact(out)
}
