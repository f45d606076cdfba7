package limiter

import (
	"errors"
	"fmt"
	"testing"
)

func TestFoldCalibration(t *testing.T) {
	const s = CalibrationScale
	for _, tc := range []struct {
		name            string
		f, n, est, meas int64
		wantF, wantN    int64
	}{
		{"no estimate", s, 0, 0, 100, s, 0},
		{"no measurement", s, 3, 100, 0, s, 3},
		// The prior counts as 4 samples: 1.0 and 1.6 weighted 3:1.
		{"first sample", s, 0, 100, 160, (3*s + 1_600_000 + 2) / 4, 1},
		{"exact agrees", s, 50, 100, 100, s, 51},
		// An observation of 10x is clamped to twice the factor.
		{"outlier clamped high", s, 50, 100, 1000, (19*s + 2*s + 10) / 20, 51},
		{"outlier clamped low", s, 50, 1000, 1, (19*s + s/2 + 10) / 20, 51},
		// Past the warm-up the weight is 1/20.
		{"steady weight", 1_500_000, 1000, 100, 160, (19*1_500_000 + 1_600_000 + 10) / 20, 1001},
		{"bounded above", CalibrationMax, 100, 1, 100, CalibrationMax, 101},
		{"bounded below", CalibrationMin, 100, 100, 1, CalibrationMin, 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, n := foldCalibration(tc.f, tc.n, tc.est, tc.meas)
			if f != tc.wantF || n != tc.wantN {
				t.Fatalf("fold(%d, %d, %d, %d) = %d, %d; want %d, %d", tc.f, tc.n, tc.est, tc.meas, f, n, tc.wantF, tc.wantN)
			}
		})
	}
}

// A systematic error converges: after a warm-up the factor is the ratio.
func TestFoldCalibrationConverges(t *testing.T) {
	f, n := int64(CalibrationScale), int64(0)
	for range 200 {
		f, n = foldCalibration(f, n, 1000, 1600)
	}
	if f < 1_590_000 || f > 1_610_000 || n != 200 {
		t.Fatalf("after 200 samples of 1.6: factor %d, samples %d", f, n)
	}
}

func runCalibrationConformance(t *testing.T, h harness) {
	t.Run("CalibrationFoldsOnSettle", func(t *testing.T) {
		tenant := newTenant("calib")
		now := h.now(t)
		bs := []Budget{dayBudget("day", now, 1_000_000)}
		// Both replicas fold into one record; the stores compute the same
		// integers as foldCalibration.
		f, n := int64(CalibrationScale), int64(0)
		samples := [][2]int64{{100, 160}, {200, 330}, {50, 500}, {0, 10}, {1000, 1500}, {300, 1}}
		for i, smp := range samples {
			s := h.store
			if i%2 == 1 {
				s = h.replica
			}
			id := fmt.Sprint("r", i)
			mustAdmit(t, s, AdmitRequest{Tenant: tenant, RequestID: id, Cost: 10, Budgets: bs})
			r := mustSettle(t, s, SettleRequest{Tenant: tenant, RequestID: id, Cost: 5, Budgets: bs,
				Calibrate: CalibrationSample{Model: "claude-sonnet-4-5", Estimated: smp[0], Measured: smp[1]}})
			f, n = foldCalibration(f, n, smp[0], smp[1])
			want := Calibration{Model: "claude-sonnet-4-5", Factor: f, Samples: n}
			if !r.Settled || r.Calibration != want {
				t.Fatalf("settle %d: %+v; want %+v", i, r.Calibration, want)
			}
		}
		// A settle that settles nothing folds nothing.
		r := mustSettle(t, h.replica, SettleRequest{Tenant: tenant, RequestID: "r0", Cost: 5, Budgets: bs,
			Calibrate: CalibrationSample{Model: "claude-sonnet-4-5", Estimated: 100, Measured: 400}})
		if r.Settled || r.Calibration != (Calibration{}) {
			t.Fatalf("duplicate settle: %+v", r)
		}
		// Another model, and another tenant, start from 1.
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "h", Cost: 10, Budgets: bs})
		r = mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "h", Cost: 5, Budgets: bs,
			Calibrate: CalibrationSample{Model: "claude-haiku-4-5", Estimated: 100, Measured: 100}})
		if r.Calibration != (Calibration{Model: "claude-haiku-4-5", Factor: CalibrationScale, Samples: 1}) {
			t.Fatalf("second model: %+v", r.Calibration)
		}
		other := newTenant("calib")
		mustAdmit(t, h.store, AdmitRequest{Tenant: other, RequestID: "o", Cost: 10, Budgets: bs})
		r = mustSettle(t, h.store, SettleRequest{Tenant: other, RequestID: "o", Cost: 5, Budgets: bs,
			Calibrate: CalibrationSample{Model: "claude-sonnet-4-5", Estimated: 100, Measured: 100}})
		if r.Calibration.Samples != 1 {
			t.Fatalf("another tenant shares the record: %+v", r.Calibration)
		}
		// Without a sample, nothing is returned.
		mustAdmit(t, h.store, AdmitRequest{Tenant: tenant, RequestID: "none", Cost: 10, Budgets: bs})
		if r = mustSettle(t, h.store, SettleRequest{Tenant: tenant, RequestID: "none", Cost: 5, Budgets: bs}); r.Calibration != (Calibration{}) {
			t.Fatalf("settle without a sample: %+v", r.Calibration)
		}
	})

	t.Run("CalibrationInvalid", func(t *testing.T) {
		tenant := newTenant("calib-bad")
		for _, c := range []CalibrationSample{
			{Model: string(make([]byte, maxCalibrationModel+1)), Estimated: 1, Measured: 1},
			{Model: "m", Estimated: -1, Measured: 1},
			{Model: "m", Estimated: 1, Measured: MaxTokens + 1},
		} {
			_, err := h.store.Settle(ctxb, SettleRequest{Tenant: tenant, RequestID: "x", Calibrate: c})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("sample %+v: err %v; want ErrInvalid", c, err)
			}
		}
	})
}
