package load

import (
	"slices"
	"testing"
	"time"
)

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample any p", ms(7), 99, 7 * time.Millisecond},
		{"median of odd count", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"median of even count is the lower middle (nearest rank)", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 100 is the 99th", hundred, 99, 99 * time.Millisecond},
		{"p90 of 100 is the 90th", hundred, 90, 90 * time.Millisecond},
		{"p100 is the max", hundred, 100, 100 * time.Millisecond},
		{"p99 of 10 rounds up to the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{"tiny p is the min", ms(4, 5, 6), 0.001, 4 * time.Millisecond},
		{"p0 clamps to the min", ms(4, 5, 6), 0, 4 * time.Millisecond},
		{"p above 100 clamps to the max", ms(4, 5, 6), 150, 6 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarizeSortsAndSummarizes(t *testing.T) {
	s := Summarize(ms(9, 1, 5, 3, 7, 2, 8, 4, 6, 10))
	want := Summary{N: 10, P50: 5 * time.Millisecond, P90: 9 * time.Millisecond, P99: 10 * time.Millisecond, Max: 10 * time.Millisecond}
	if s != want {
		t.Errorf("Summarize = %+v, want %+v", s, want)
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("Summarize(nil) is not the zero Summary")
	}
}

func TestRecorderKeepsSeriesApart(t *testing.T) {
	r := NewRecorder()
	r.Add(SeriesExchange, time.Millisecond)
	r.AddAll([]Sample{{SeriesSSEChunk, 2 * time.Microsecond}, {SeriesSSEChunk, 4 * time.Microsecond}, {SeriesExchange, 3 * time.Millisecond}})
	got := r.Summaries()
	if e := got[SeriesExchange]; e.N != 2 || e.Max != 3*time.Millisecond || e.P50 != time.Millisecond {
		t.Errorf("exchange series = %+v", e)
	}
	if c := got[SeriesSSEChunk]; c.N != 2 || c.P99 != 4*time.Microsecond {
		t.Errorf("chunk series = %+v", c)
	}
	if _, ok := got[SeriesRequestBody]; ok {
		t.Error("a series with no samples is reported")
	}
}

// Every exchange lands in one response kind and one size bucket, the
// bucket bounds are exclusive above, and every breakdown series is reported.
func TestExchangeSeries(t *testing.T) {
	for _, tc := range []struct {
		size         int
		sse          bool
		kind, bucket string
	}{
		{2 << 10, false, SeriesExchangeJSON, "exchange, request body < 8 KB"},
		{8<<10 - 1, true, SeriesExchangeSSE, "exchange, request body < 8 KB"},
		{8 << 10, false, SeriesExchangeJSON, "exchange, request body 8–32 KB"},
		{96 << 10, true, SeriesExchangeSSE, "exchange, request body ≥ 96 KB"},
		{200 << 10, false, SeriesExchangeJSON, "exchange, request body ≥ 96 KB"},
	} {
		kind, bySize := exchangeSeries(tc.size, tc.sse)
		if kind != tc.kind || bySize != tc.bucket {
			t.Errorf("exchangeSeries(%d, %v) = %q, %q; want %q, %q", tc.size, tc.sse, kind, bySize, tc.kind, tc.bucket)
		}
		if !slices.Contains(seriesOrder, kind) || !slices.Contains(seriesOrder, bySize) {
			t.Errorf("%q or %q is not reported", kind, bySize)
		}
	}
}
