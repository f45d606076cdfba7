package accounting

import (
	"math"
	"slices"
	"testing"
	"time"
)

const usd NanoUSD = 1e9

func TestBurnRate(t *testing.T) {
	start := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		spent NanoUSD
		now   time.Time
		want  float64
	}{
		{"$10 in 2h", 10 * usd, start.Add(2 * time.Hour), 5},
		{"$1.50 in 30m", 1500 * usd / 1000, start.Add(30 * time.Minute), 3},
		{"nothing spent", 0, start.Add(time.Hour), 0},
		{"refunds exceed charges", -usd, start.Add(time.Hour), 0},
		{"no time elapsed", usd, start, 0},
		{"clock before the window", usd, start.Add(-time.Minute), 0},
	}
	for _, tc := range tests {
		if got := BurnRate(tc.spent, start, tc.now); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s: BurnRate = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestExhaustion(t *testing.T) {
	start := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	end := start.Add(24 * time.Hour)
	tests := []struct {
		name       string
		spent, cap NanoUSD
		end, now   time.Time
		wantETA    time.Duration
		wantOK     bool
	}{
		// $30 in 6h is $5/h; the $70 left lasts 14h, before the reset 18h away.
		{"runs out within the window", 30 * usd, 100 * usd, end, start.Add(6 * time.Hour), 14 * time.Hour, true},
		// $25 in 6h: the $75 left lasts exactly the 18h until the reset, when the budget renews.
		{"runs out exactly at the reset", 25 * usd, 100 * usd, end, start.Add(6 * time.Hour), 0, false},
		{"lasts past the reset", 10 * usd, 100 * usd, end, start.Add(6 * time.Hour), 0, false},
		{"already exhausted", 100 * usd, 100 * usd, end, start.Add(time.Hour), 0, true},
		{"overspent", 120 * usd, 100 * usd, end, start.Add(time.Hour), 0, true},
		{"zero cap", 0, 0, end, start.Add(time.Hour), 0, true},
		{"nothing spent", 0, 100 * usd, end, start.Add(time.Hour), 0, false},
		{"no time elapsed", usd, 100 * usd, end, start, 0, false},
		{"window over", usd, 100 * usd, end, end, 0, false},
		// One nano-USD a second, a huge cap: no overflow, just "not this window".
		{"huge cap", 3600, MaxNanoUSD, end, start.Add(time.Hour), 0, false},
		// At $4/h the $95 left lasts 23h45m: within a 25-hour day (fall back), not within a 24-hour one.
		{"25-hour day", 4 * usd, 99 * usd, start.Add(25 * time.Hour), start.Add(time.Hour), 23*time.Hour + 45*time.Minute, true},
		{"24-hour day", 4 * usd, 99 * usd, end, start.Add(time.Hour), 0, false},
		// Sub-second forecasts round up, never to "now".
		{"rounds up", 2, 3, end, start.Add(3 * time.Nanosecond), 2 * time.Nanosecond, true},
	}
	for _, tc := range tests {
		eta, ok := Exhaustion(tc.spent, tc.cap, start, tc.end, tc.now)
		if eta != tc.wantETA || ok != tc.wantOK {
			t.Errorf("%s: Exhaustion = %v, %v; want %v, %v", tc.name, eta, ok, tc.wantETA, tc.wantOK)
		}
	}
}

func TestAlertAmounts(t *testing.T) {
	tests := []struct {
		name   string
		cap    NanoUSD
		ratios []float64
		want   []NanoUSD
	}{
		{"design example", 50 * usd, []float64{0.8, 0.95}, []NanoUSD{40 * usd, 47_500_000_000, 50 * usd}},
		{"no ratios: the cap alone", 50 * usd, nil, []NanoUSD{50 * usd}},
		{"unsorted and repeated", 100 * usd, []float64{0.9, 0.5, 0.9, 0.5}, []NanoUSD{50 * usd, 90 * usd, 100 * usd}},
		{"1.0 is the cap, once", 100 * usd, []float64{1, 0.5}, []NanoUSD{50 * usd, 100 * usd}},
		{"ratios that round to the same amount", 3, []float64{0.5, 0.6}, []NanoUSD{2, 3}},
		{"invalid ratios are ignored", 100 * usd, []float64{0, -0.5, 1.5, math.NaN(), math.Inf(1), 0.25}, []NanoUSD{25 * usd, 100 * usd}},
		{"tiny ratio rounds to zero", 100, []float64{1e-6}, []NanoUSD{0, 100}},
		{"thirds round to the nearest nano-USD", 10, []float64{1.0 / 3, 2.0 / 3}, []NanoUSD{3, 7, 10}},
		{"zero cap", 0, []float64{0.5}, []NanoUSD{0}},
		{"negative cap counts as zero", -5, []float64{0.5}, []NanoUSD{0}},
		{"largest cap stays within it", MaxNanoUSD, []float64{0.5, 1}, []NanoUSD{MaxNanoUSD/2 + 1, MaxNanoUSD}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := AlertAmounts(tc.cap, tc.ratios)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("AlertAmounts(%d, %v) = %v, want %v", tc.cap, tc.ratios, got, tc.want)
			}
		})
	}
}

func TestValidateAlertRatios(t *testing.T) {
	tests := []struct {
		ratios []float64
		ok     bool
	}{
		{nil, true},
		{[]float64{0.8, 0.95, 1}, true},
		{[]float64{1e-9}, true},
		{[]float64{0}, false},
		{[]float64{0.5, 1.01}, false},
		{[]float64{-0.1}, false},
		{[]float64{math.NaN()}, false},
		{[]float64{math.Inf(1)}, false},
	}
	for _, tc := range tests {
		if err := ValidateAlertRatios(tc.ratios); (err == nil) != tc.ok {
			t.Errorf("ValidateAlertRatios(%v) = %v, want ok %v", tc.ratios, err, tc.ok)
		}
	}
}
