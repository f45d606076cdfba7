package observe

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

// TestOutputClamped: a clamped request is counted by policy and its bound
// is in the access log; an unclamped one is neither.
func TestOutputClamped(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	clamped := &gate.Outcome{Dialect: "anthropic", Policy: "default", ModelLabel: "claude-sonnet-4-5",
		Result: gate.ResultOK, Metered: true, Source: gate.SourceMeasured, OutputClamped: 6664}
	plain := *clamped
	plain.OutputClamped = 0
	m.Outcome(clamped)
	m.Outcome(&plain)
	if got := testutil.ToFloat64(m.outputClamps.WithLabelValues("default")); got != 1 {
		t.Fatalf("tokenwarden_output_clamped_total{policy=default} = %v, want 1", got)
	}
	if v := AccessLog(clamped)["output_clamped"]; v != float64(6664) {
		t.Fatalf("access log output_clamped = %v, want 6664", v)
	}
	if _, ok := AccessLog(&plain)["output_clamped"]; ok {
		t.Fatal("an unclamped request logs output_clamped")
	}
}
