package load

import (
	"math"
	"slices"
	"sync"
	"time"
)

// Summary is the distribution of one latency series.
type Summary struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

// Percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of
// sorted: the smallest sample such that at least p% of the samples are less
// than or equal to it. It returns 0 for an empty series.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// Summarize sorts samples in place and summarizes them.
func Summarize(samples []time.Duration) Summary {
	slices.Sort(samples)
	s := Summary{N: len(samples)}
	if s.N == 0 {
		return s
	}
	s.P50 = Percentile(samples, 50)
	s.P90 = Percentile(samples, 90)
	s.P99 = Percentile(samples, 99)
	s.Max = samples[s.N-1]
	return s
}

// Series names recorded by the harness.
const (
	SeriesExchange        = "exchange"         // full exchange, intended start → last body byte
	SeriesRequestHeaders  = "request_headers"  // ext_proc message round trips, per phase:
	SeriesRequestBody     = "request_body"     //   the whole request body (BUFFERED)
	SeriesResponseHeaders = "response_headers" //
	SeriesResponseJSON    = "response_body"    //   a whole JSON response body (BUFFERED)
	SeriesSSEChunk        = "sse_chunk"        //   one streamed SSE chunk (STREAMED)
	SeriesImmediate       = "immediate"        //   a message answered with an ImmediateResponse
)

// The full exchange again, split by what an exchange carries, so a tail
// can be put down to a kind of exchange: its response (JSON or SSE) and its
// request body's size (the parse, the copies and the garbage grow with it).
const (
	SeriesExchangeJSON = "exchange, JSON response"
	SeriesExchangeSSE  = "exchange, SSE response"
)

// bodyBuckets are the upper bounds of the request-body size buckets of the
// exchange breakdown; the mixed workload draws sizes log-uniform from 2 KB
// to 200 KB, so each bucket below the last holds about a quarter of it.
var bodyBuckets = []struct {
	below  int
	series string
}{
	{8 << 10, "exchange, request body < 8 KB"},
	{32 << 10, "exchange, request body 8–32 KB"},
	{96 << 10, "exchange, request body 32–96 KB"},
	{math.MaxInt, "exchange, request body ≥ 96 KB"},
}

// exchangeSeries names the breakdown series an exchange with a request body
// of size bytes and the given response kind is also recorded in.
func exchangeSeries(size int, sse bool) (kind, bySize string) {
	kind = SeriesExchangeJSON
	if sse {
		kind = SeriesExchangeSSE
	}
	for _, b := range bodyBuckets {
		if size < b.below {
			return kind, b.series
		}
	}
	return kind, bodyBuckets[len(bodyBuckets)-1].series
}

// seriesOrder is the order series are reported in.
var seriesOrder = func() []string {
	s := []string{SeriesExchange, SeriesExchangeJSON, SeriesExchangeSSE}
	for _, b := range bodyBuckets {
		s = append(s, b.series)
	}
	return append(s, SeriesRequestHeaders, SeriesRequestBody,
		SeriesResponseHeaders, SeriesResponseJSON, SeriesSSEChunk, SeriesImmediate)
}()

// Recorder collects latency samples per series; it is safe for concurrent
// use. Samples are kept whole (a 10 s run at 1,000 exchanges/s with ~20
// messages each is a few MB) so percentiles are exact, not bucketed.
type Recorder struct {
	mu      sync.Mutex
	samples map[string][]time.Duration
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{samples: map[string][]time.Duration{}}
}

// Add records one sample of series.
func (r *Recorder) Add(series string, d time.Duration) {
	r.mu.Lock()
	r.samples[series] = append(r.samples[series], d)
	r.mu.Unlock()
}

// AddAll records a batch, as one exchange's phases are recorded together.
func (r *Recorder) AddAll(batch []Sample) {
	r.mu.Lock()
	for _, s := range batch {
		r.samples[s.Series] = append(r.samples[s.Series], s.D)
	}
	r.mu.Unlock()
}

// Sample is one latency observation of a series.
type Sample struct {
	Series string
	D      time.Duration
}

// Summaries summarizes every series that has samples.
func (r *Recorder) Summaries() map[string]Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Summary, len(r.samples))
	for k, v := range r.samples {
		out[k] = Summarize(slices.Clone(v))
	}
	return out
}
