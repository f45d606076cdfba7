package anthropic

import (
	"math"
	"testing"
)

// The input estimate against what Anthropic measured on the recorded
// requests: the systematic error the gate's calibration (extproc/gate
// calibrate.go) learns away. Logged for the README; asserted only loosely,
// since a weighing of bytes cannot be exact.
func TestRecordedInputEstimate(t *testing.T) {
	var n int
	var sumErr, sumRatio float64
	for _, r := range recordings(t) {
		if r.Response.Code != 200 {
			continue
		}
		req, err := ParseRequest([]byte(r.Request.Body))
		if err != nil || req.InputTokens <= 0 {
			continue
		}
		u, _, ok := UsageFromJSON([]byte(r.Response.Body))
		if !ok {
			p := NewStreamParser()
			p.Write([]byte(r.Response.Body))
			if u, ok = p.Usage(); !ok {
				continue
			}
		}
		m := u.TotalInputTokens()
		if m <= 0 {
			continue
		}
		n++
		ratio := float64(m) / float64(req.InputTokens)
		sumRatio += ratio
		sumErr += math.Abs(float64(req.InputTokens-m)) / float64(m)
	}
	if n == 0 {
		t.Fatal("no recorded request with measured input")
	}
	t.Logf("%d recorded requests: mean measured/estimated input %.2f, mean |estimate-measured|/measured %.1f%%", n, sumRatio/float64(n), 100*sumErr/float64(n))
	if mean := sumRatio / float64(n); mean < 0.25 || mean > 4 {
		t.Errorf("mean ratio %.2f outside the calibration's bounds [0.25, 4]", mean)
	}
}
