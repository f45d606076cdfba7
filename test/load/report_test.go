package load

import (
	"strings"
	"testing"
	"time"
)

const goBenchOutput = `goos: linux
goarch: amd64
pkg: github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic
cpu: Intel(R) Xeon(R) Processor @ 2.80GHz
BenchmarkParseRequest/2KB-2         	  121988	     11212 ns/op	 244.57 MB/s	     168 B/op	       3 allocs/op
BenchmarkParseRequest/100KB-2       	    2846	    398595 ns/op	 258.01 MB/s	     168 B/op	       3 allocs/op
BenchmarkParseRequest/200KB-2       	    1749	   1034857 ns/op	 198.18 MB/s	     168 B/op	       3 allocs/op
time=2026-11-21T08:51:36.221Z level=ERROR msg="noise"
PASS
ok  	github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic	4.757s
pkg: github.com/tokenwarden/tokenwarden/extproc/dialect/openai
BenchmarkParseRequest/2KB-2         	   98770	     13097 ns/op
BenchmarkParseRequest/100KB-2       	    2685	     47297 ns/op	     160 B/op	       9 allocs/op
BenchmarkParseRequest/200KB-2       	    1414	     92182 ns/op	     160 B/op	      90 allocs/op
BenchmarkBroken-2 	 x 	 1 ns/op
`

func TestParseGoBench(t *testing.T) {
	got := ParseGoBench(goBenchOutput)
	if len(got) != 6 {
		t.Fatalf("%d lines parsed, want 6: %+v", len(got), got)
	}
	want := BenchLine{Pkg: "github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic", Name: "BenchmarkParseRequest/100KB", N: 2846, NsPerOp: 398595, BytesPerOp: 168, AllocsPerOp: 3}
	if got[1] != want {
		t.Errorf("line 1 = %+v, want %+v", got[1], want)
	}
	if o := got[3]; o.Pkg != "github.com/tokenwarden/tokenwarden/extproc/dialect/openai" || o.BytesPerOp != -1 || o.AllocsPerOp != -1 {
		t.Errorf("a line without -benchmem columns: %+v", o)
	}
}

func FuzzParseGoBench(f *testing.F) {
	f.Add(goBenchOutput)
	f.Add("BenchmarkX-8 1 2 ns/op 3 B/op 4 allocs/op")
	f.Fuzz(func(t *testing.T, s string) {
		for _, b := range ParseGoBench(s) {
			if b.N <= 0 || b.NsPerOp < 0 || !strings.HasPrefix(b.Name, "Benchmark") {
				t.Errorf("invalid line accepted: %+v", b)
			}
		}
	})
}

// result builds a Result whose exchange and chunk series have the given
// p50 and p99 (a hundred samples each).
func result(p50, p99 time.Duration, throughput float64, rssKB int64) *Result {
	rec := NewRecorder()
	for i := range 100 {
		d := p50
		if i >= 98 {
			d = p99
		}
		rec.Add(SeriesExchange, d)
		rec.Add(SeriesSSEChunk, d/10)
	}
	return &Result{Exchanges: 100, Throughput: throughput, RSSPeakKB: rssKB, Latency: rec.Summaries()}
}

func TestTargetsVerdicts(t *testing.T) {
	ms := time.Millisecond
	smallTwdn := result(14*ms, 20*ms, 800, 1)
	smallTwdn.RedisCPU = 3 * ms // 30 µs for each of 100 exchanges
	rep := &Report{
		Pairs: []Pair{
			{Scenario: Scenario{Name: ScenarioRate + "@1000", Rate: 1000}, Floor: result(10*ms, 20*ms, 1000, 30<<10), Twdn: result(12*ms, 40*ms, 1000, 50<<10)},
			{Scenario: Scenario{Name: ScenarioSaturation, Concurrency: 64}, Floor: result(10*ms, 20*ms, 2000, 1), Twdn: result(14*ms, 20*ms, 1300, 1)},
			{Scenario: Scenario{Name: ScenarioStreams, Concurrency: 1000}, Floor: result(ms, ms, 1, 40<<10), Twdn: result(ms, ms, 1, 120<<10)},
			{Scenario: Scenario{Name: ScenarioSmallJSON + "-openai", Concurrency: 16}, Floor: result(10*ms, 20*ms, 1000, 1), Twdn: smallTwdn},
		},
		RoundTrips: &RoundTrips{Exchanges: 1000, PerRequest: 2.005, SteadyState: 2, Client: map[string]int64{"evalsha": 2000, "eval": 5}},
		Bench:      ParseGoBench(goBenchOutput),
	}
	verdicts := map[string]string{}
	for _, r := range rep.targets() {
		verdicts[r.metric] = r.verdict
	}
	want := map[string]string{
		"full exchange p50 at 1000/s":                  "met",        // 1.2×
		"full exchange p99 at 1000/s":                  "**missed**", // 2×
		"per SSE chunk p99, added":                     "**missed**", // chunks are p99/10: 2 ms → 4 ms, +2 ms
		"saturation throughput (64 concurrent)":        "**missed**", // 0.65×
		"small-json-openai (16 concurrent) throughput": "met",        // 0.8×
		"small-json-openai (16 concurrent) p50":        "met",        // 1.4×
		"small-json-openai (16 concurrent) Redis CPU per exchange (admit + settle, 4 levels)": "**missed**", // 30 µs
		"RSS with 1000 concurrent slow SSE streams":                                           "**missed**", // 120 MB
		"Redis round trips per request (MONITOR, 1000 requests)":                              "met",
		"parse a 100 KB body (extproc/dialect/anthropic)":                                     "**missed**", // 399 µs
		"parse a 100 KB body (extproc/dialect/openai)":                                        "**missed**", // 47 µs but allocs grow
	}
	for m, v := range want {
		if verdicts[m] != v {
			t.Errorf("%s: verdict %q, want %q (all: %v)", m, verdicts[m], v, verdicts)
		}
	}
	// The memory store's targets are tighter, and it has no Redis row.
	mem := *rep
	mem.Store = StoreMemory
	memVerdicts := map[string]string{}
	for _, r := range mem.targets() {
		memVerdicts[r.metric] = r.verdict
	}
	for m, v := range map[string]string{
		"small-json-openai (16 concurrent) throughput":                                        "**missed**", // 0.8× < 0.85×
		"small-json-openai (16 concurrent) p50":                                               "**missed**", // 1.4× > 1.25×
		"saturation (64 concurrent) p50":                                                      "**missed**", // 1.4× > 1.25×
		"small-json-openai (16 concurrent) Redis CPU per exchange (admit + settle, 4 levels)": "",
	} {
		if memVerdicts[m] != v {
			t.Errorf("memory store: %s: verdict %q, want %q", m, memVerdicts[m], v)
		}
	}
	if md := mem.Markdown(); !strings.Contains(md, "| ≤ 1.25× | **missed** |") {
		t.Errorf("the memory store's p50 target is not rendered as 1.25×:\n%s", md)
	}
	md := rep.Markdown()
	if !strings.Contains(md, "| full exchange p99 at 1000/s | 20000 µs | 40000 µs | 2.00× | ≤ 1.5× | **missed** |") {
		t.Errorf("targets table row not rendered as expected:\n%s", md)
	}
}

// TestGeneratorCPUPerExchange: the load generator's CPU is reported per
// exchange, for the floor and tokenwarden, with their ratio — the share of
// a throughput ratio that is the generator applying the answers.
func TestGeneratorCPUPerExchange(t *testing.T) {
	for _, tc := range []struct {
		cpu       time.Duration
		exchanges int64
		want      time.Duration
	}{
		{0, 0, 0},
		{time.Second, 0, 0},
		{time.Millisecond, 4, 250 * time.Microsecond},
		{2 * time.Second, 10000, 200 * time.Microsecond},
	} {
		r := &Result{GeneratorCPU: tc.cpu, Exchanges: tc.exchanges}
		if got := r.GeneratorCPUPerExchange(); got != tc.want {
			t.Errorf("%s over %d exchanges: %s, want %s", tc.cpu, tc.exchanges, got, tc.want)
		}
	}
	p := Pair{
		Floor: &Result{GeneratorCPU: 2010 * time.Millisecond, Exchanges: 10000},
		Twdn:  &Result{GeneratorCPU: 2540 * time.Millisecond, Exchanges: 10000},
	}
	for _, r := range scenarioRows(p) {
		if r.metric == "load generator CPU per exchange" {
			if r.floor != "201 µs" || r.twdn != "254 µs" || r.ratio != "1.26×" {
				t.Fatalf("row %+v", r)
			}
			return
		}
	}
	t.Fatal("no load generator CPU per exchange row")
}
