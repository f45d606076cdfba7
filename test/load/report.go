package load

import (
	"bufio"
	"cmp"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Scenario names the report knows the targets of.
const (
	ScenarioRate       = "open-loop"    // fixed rate: latency, per-chunk cost, CPU, Redis
	ScenarioSaturation = "saturation"   // closed loop: throughput
	ScenarioStreams    = "slow-streams" // many concurrent slow SSE streams: RSS
	// ScenarioSmallJSON is issue 17's case: small JSON exchanges of one
	// dialect (8 KiB request bodies, no streaming) in a closed loop of 16,
	// named ScenarioSmallJSON + "-openai" or "-anthropic".
	ScenarioSmallJSON = "small-json"
)

// Store names for Report.Store: the targets differ by store.
const (
	StoreRedis  = "redis"
	StoreMemory = "memory"
)

// Report is a whole run, ready to print.
type Report struct {
	Date    time.Time
	Machine string
	Command string
	// Store is the store tokenwarden ran on, StoreRedis or StoreMemory.
	Store string
	// Leases is the policy's `leases:` when admission was leased (the Redis
	// store's targets apply), empty for exact admission.
	Leases string
	Pairs  []Pair
	// Bench are Go benchmark results to cite (the 100 KB parse target);
	// nil when no benchmark output was given.
	Bench []BenchLine
	// RoundTrips is the Redis calibration; nil when it was not run.
	RoundTrips *RoundTrips
	// LoadBefore and LoadAfter are /proc/loadavg at the start and the end:
	// other work on the machine shows here.
	LoadBefore, LoadAfter string
}

// LoadAvg returns the first three fields of /proc/loadavg.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// MachineInfo describes this machine: CPU model, logical CPUs, kernel and Go.
func MachineInfo() string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	kernel := "linux"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s, %d logical CPUs, %s, %s", model, runtime.NumCPU(), kernel, runtime.Version())
}

// row is one line of a results table.
type row struct {
	metric, floor, twdn, ratio, target, verdict string
}

func us(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e3, 'f', 0, 64) + " µs" }

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "—"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64) + "×"
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// targets evaluates the targets against the pairs; rows for
// scenarios that were not run are left out.
func (r *Report) targets() []row {
	var out []row
	// Issue 17: with Redis ≥ 0.75× the floor's throughput and a p50 within
	// 1.5×; with the memory store ≥ 0.85× and 1.25×.
	minThroughput, maxP50 := 0.75, 1.5
	if r.Store == StoreMemory {
		minThroughput, maxP50 = 0.85, 1.25
	}
	for _, p := range r.Pairs {
		f, t := p.Floor, p.Twdn
		switch {
		case strings.HasPrefix(p.Scenario.Name, ScenarioRate):
			fe, te := f.Latency[SeriesExchange], t.Latency[SeriesExchange]
			rp50, rp99 := float64(te.P50)/float64(fe.P50), float64(te.P99)/float64(fe.P99)
			out = append(out,
				row{metric: fmt.Sprintf("full exchange p50 at %.0f/s", p.Scenario.Rate), floor: us(fe.P50), twdn: us(te.P50), ratio: ratio(float64(te.P50), float64(fe.P50)), target: "≤ 1.3×", verdict: verdict(rp50 <= 1.3)},
				row{metric: fmt.Sprintf("full exchange p99 at %.0f/s", p.Scenario.Rate), floor: us(fe.P99), twdn: us(te.P99), ratio: ratio(float64(te.P99), float64(fe.P99)), target: "≤ 1.5×", verdict: verdict(rp99 <= 1.5)})
			fc, tc := f.Latency[SeriesSSEChunk], t.Latency[SeriesSSEChunk]
			if fc.N > 0 && tc.N > 0 {
				added := tc.P99 - fc.P99
				out = append(out, row{metric: "per SSE chunk p99, added", floor: us(fc.P99), twdn: us(tc.P99), ratio: "+" + us(added), target: "≤ +50 µs", verdict: verdict(added <= 50*time.Microsecond)})
			}
		case p.Scenario.Name == ScenarioSaturation:
			// The mixed workload has the small-JSON targets too.
			fe, te := f.Latency[SeriesExchange], t.Latency[SeriesExchange]
			name := fmt.Sprintf("saturation (%d concurrent)", p.Scenario.Concurrency)
			out = append(out,
				row{metric: fmt.Sprintf("saturation throughput (%d concurrent)", p.Scenario.Concurrency), floor: fmt.Sprintf("%.0f/s", f.Throughput), twdn: fmt.Sprintf("%.0f/s", t.Throughput), ratio: ratio(t.Throughput, f.Throughput), target: fmt.Sprintf("≥ %g×", minThroughput), verdict: verdict(t.Throughput >= minThroughput*f.Throughput)},
				row{metric: name + " p50", floor: us(fe.P50), twdn: us(te.P50), ratio: ratio(float64(te.P50), float64(fe.P50)), target: fmt.Sprintf("≤ %g×", maxP50), verdict: verdict(float64(te.P50) <= maxP50*float64(fe.P50))})
		case strings.HasPrefix(p.Scenario.Name, ScenarioSmallJSON):
			fe, te := f.Latency[SeriesExchange], t.Latency[SeriesExchange]
			name := fmt.Sprintf("%s (%d concurrent)", p.Scenario.Name, p.Scenario.Concurrency)
			out = append(out,
				row{metric: name + " throughput", floor: fmt.Sprintf("%.0f/s", f.Throughput), twdn: fmt.Sprintf("%.0f/s", t.Throughput), ratio: ratio(t.Throughput, f.Throughput), target: fmt.Sprintf("≥ %g×", minThroughput), verdict: verdict(t.Throughput >= minThroughput*f.Throughput)},
				row{metric: name + " p50", floor: us(fe.P50), twdn: us(te.P50), ratio: ratio(float64(te.P50), float64(fe.P50)), target: fmt.Sprintf("≤ %g×", maxP50), verdict: verdict(float64(te.P50) <= maxP50*float64(fe.P50))},
				row{metric: name + " server CPU per exchange", floor: us(f.CPUPerExchange()), twdn: us(t.CPUPerExchange()), ratio: ratio(float64(t.CPUPerExchange()), float64(f.CPUPerExchange())), target: "reported", verdict: "—"})
			if r.Store != StoreMemory {
				rc := perExchange(t.RedisCPU, t.Exchanges)
				out = append(out, row{metric: name + " Redis CPU per exchange (admit + settle, 4 levels)", floor: "—", twdn: us(rc), ratio: "—", target: "≤ 25 µs", verdict: verdict(rc <= 25*time.Microsecond)})
			}
		case p.Scenario.Name == ScenarioStreams:
			out = append(out, row{metric: fmt.Sprintf("RSS with %d concurrent slow SSE streams", p.Scenario.Concurrency), floor: mb(f.RSSPeakKB), twdn: mb(t.RSSPeakKB), ratio: ratio(float64(t.RSSPeakKB), float64(f.RSSPeakKB)), target: "< 100 MB", verdict: verdict(t.RSSPeakKB > 0 && t.RSSPeakKB < 100<<10)})
		}
	}
	if rt := r.RoundTrips; rt != nil {
		// One-off script loads (EVAL) are allowed: at most one per
		// hundred requests, which a 2 s calibration amply shows.
		ok := rt.SteadyState <= 2 && rt.Errors == 0 && rt.Client["eval"]*100 <= rt.Exchanges
		out = append(out, row{metric: fmt.Sprintf("Redis round trips per request (MONITOR, %d requests)", rt.Exchanges), floor: "—",
			twdn: fmt.Sprintf("%.3f, steady state %.3f%s", rt.PerRequest, rt.SteadyState, byCommand(rt.Client)), ratio: "—", target: "≤ 2", verdict: verdict(ok)})
	}
	for _, b := range r.Bench {
		if b.Name != "BenchmarkParseRequest/100KB" {
			continue
		}
		// O(1) allocations: the count must not grow from the 2 KB to the
		// 200 KB body of the same benchmark.
		small, large := r.bench(b.Pkg, "BenchmarkParseRequest/2KB"), r.bench(b.Pkg, "BenchmarkParseRequest/200KB")
		constant := small != nil && large != nil && large.AllocsPerOp >= 0 && large.AllocsPerOp <= small.AllocsPerOp+1
		growth := "allocs not compared"
		if small != nil && large != nil {
			growth = fmt.Sprintf("%.0f → %.0f allocs from 2 KB to 200 KB", small.AllocsPerOp, large.AllocsPerOp)
		}
		out = append(out, row{metric: "parse a 100 KB body (" + shortPkg(b.Pkg) + ")", floor: "—",
			twdn: fmt.Sprintf("%s, %.0f allocs (%s)", us(time.Duration(b.NsPerOp)), b.AllocsPerOp, growth), ratio: "—",
			target: "< 100 µs, O(1) allocs", verdict: verdict(b.NsPerOp < 100e3 && constant)})
	}
	return out
}

func (r *Report) bench(pkg, name string) *BenchLine {
	for i := range r.Bench {
		if r.Bench[i].Pkg == pkg && r.Bench[i].Name == name {
			return &r.Bench[i]
		}
	}
	return nil
}

func perExchange(d time.Duration, n int64) time.Duration {
	if n == 0 {
		return 0
	}
	return d / time.Duration(n)
}

func shortPkg(p string) string {
	if i := strings.Index(p, "/extproc/"); i >= 0 {
		return p[i+1:]
	}
	return p
}

func mb(kb int64) string {
	if kb <= 0 {
		return "—"
	}
	return strconv.FormatFloat(float64(kb)/1024, 'f', 1, 64) + " MB"
}

// scenarioRows is the detailed table of one pair.
func scenarioRows(p Pair) []row {
	f, t := p.Floor, p.Twdn
	rows := []row{
		{metric: "exchanges measured", floor: strconv.FormatInt(f.Exchanges, 10), twdn: strconv.FormatInt(t.Exchanges, 10)},
		{metric: "errors", floor: strconv.FormatInt(f.Errors, 10), twdn: strconv.FormatInt(t.Errors, 10)},
		{metric: "throughput (exchanges/s)", floor: fmt.Sprintf("%.0f", f.Throughput), twdn: fmt.Sprintf("%.0f", t.Throughput), ratio: ratio(t.Throughput, f.Throughput)},
	}
	for _, s := range seriesOrder {
		fs, ts := f.Latency[s], t.Latency[s]
		if fs.N == 0 && ts.N == 0 {
			continue
		}
		name, whole := s, strings.HasPrefix(s, SeriesExchange)
		switch {
		case s == SeriesExchange:
			name = "full exchange"
		case whole:
			name = "full " + s
		default:
			name = "ext_proc " + s
		}
		qs := []struct {
			q    string
			a, b time.Duration
		}{{"p50", fs.P50, ts.P50}, {"p90", fs.P90, ts.P90}, {"p99", fs.P99, ts.P99}, {"max", fs.Max, ts.Max}}
		if s != SeriesExchange {
			qs = []struct {
				q    string
				a, b time.Duration
			}{qs[0], qs[2]}
		}
		for _, q := range qs {
			rows = append(rows, row{metric: fmt.Sprintf("%s %s (n=%d/%d)", name, q.q, fs.N, ts.N), floor: us(q.a), twdn: us(q.b), ratio: ratio(float64(q.b), float64(q.a))})
		}
	}
	rows = append(rows,
		row{metric: "processor CPU (cores busy)", floor: fmt.Sprintf("%.2f", f.Cores), twdn: fmt.Sprintf("%.2f", t.Cores), ratio: ratio(t.Cores, f.Cores)},
		row{metric: "load generator CPU (cores busy)", floor: fmt.Sprintf("%.2f", f.GeneratorCores()), twdn: fmt.Sprintf("%.2f", t.GeneratorCores())},
		row{metric: "redis-server CPU per exchange", floor: "—", twdn: us(perExchange(t.RedisCPU, t.Exchanges))},
		row{metric: "processor CPU per exchange", floor: us(f.CPUPerExchange()), twdn: us(t.CPUPerExchange()), ratio: ratio(float64(t.CPUPerExchange()), float64(f.CPUPerExchange()))},
		row{metric: "load generator CPU per exchange", floor: us(f.GeneratorCPUPerExchange()), twdn: us(t.GeneratorCPUPerExchange()),
			ratio: ratio(float64(t.GeneratorCPUPerExchange()), float64(f.GeneratorCPUPerExchange()))},
		gcRow(t),
		row{metric: "processor RSS peak", floor: mb(f.RSSPeakKB), twdn: mb(t.RSSPeakKB), ratio: ratio(float64(t.RSSPeakKB), float64(f.RSSPeakKB))},
		row{metric: "Redis commands executed per request (scripts' calls included)", floor: "—", twdn: strconv.FormatFloat(t.RedisPerExchange, 'f', 2, 64) + byCommand(t.RedisByCommand)},
	)
	if f.GateTimeouts+t.GateTimeouts > 0 {
		rows = append(rows, row{metric: "SSE bodies kept BUFFERED (gate timeouts)", floor: strconv.FormatInt(f.GateTimeouts, 10), twdn: strconv.FormatInt(t.GateTimeouts, 10)})
	}
	return rows
}

// gcRow is tokenwarden's garbage collection in the window, per exchange:
// what it allocated, and how often the collector ran and stopped the world
// (the floor, a separate program, does not export these).
func gcRow(t *Result) row {
	r := row{metric: "tokenwarden GC: allocated per exchange; cycles, stop-the-world pause per 1,000 exchanges", floor: "—", twdn: "—"}
	if t.GC.Cycles <= 0 || t.Exchanges <= 0 {
		return r
	}
	n := float64(t.Exchanges)
	r.twdn = fmt.Sprintf("%.0f KB; %.1f cycles, %.1f ms", t.GC.AllocBytes/n/1024, t.GC.Cycles/n*1000, t.GC.Pause.Seconds()*1e6/n)
	return r
}

// byCommand lists the commands behind a Redis count, most frequent first.
func byCommand(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func describe(sc Scenario) string {
	load := fmt.Sprintf("closed loop, %d concurrent", sc.Concurrency)
	if sc.Rate > 0 {
		load = fmt.Sprintf("open loop at %.0f exchanges/s (latency from the intended send time)", sc.Rate)
	}
	m := sc.Mix
	s := fmt.Sprintf("%s, %s measured after %s warmup; %.0f%% OpenAI / %.0f%% Anthropic, %.0f%% SSE, request bodies %s–%s log-uniform, %d tenants",
		load, sc.Duration, sc.Warmup, m.OpenAI*100, (1-m.OpenAI)*100, m.SSE*100, kb(m.MinBody), kb(m.MaxBody), m.Tenants)
	if m.EventGap > 0 {
		return s + fmt.Sprintf(", %d deltas per stream, one event every %s", m.SSEDeltas, m.EventGap)
	}
	return s + fmt.Sprintf(", %d deltas per stream split at random boundaries into chunks of 1–%d bytes", m.SSEDeltas, m.ChunkMax)
}

func kb(n int) string { return strconv.Itoa(n>>10) + " KB" }

// Markdown renders the report: the targets, then one table per scenario.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on %s; load average %s before, %s after; tokenwarden on the %s store%s.\n\nCommand: `%s`\n\n",
		r.Date.UTC().Format("2006-01-02 15:04 MST"), r.Machine, r.LoadBefore, r.LoadAfter, cmp.Or(r.Store, StoreRedis), r.admission(), r.Command)
	b.WriteString("Load generator (envoy/sim), processor and Redis share the machine; the no-op floor is a separate process answering every ext_proc message with an empty response, measured in the same run under the same load. Ratios are tokenwarden ÷ floor.\n\n")
	if t := r.targets(); len(t) > 0 {
		b.WriteString("| target | no-op floor | tokenwarden | ratio / added | target | verdict |\n|---|---:|---:|---:|---|---|\n")
		for _, x := range t {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", x.metric, x.floor, x.twdn, x.ratio, x.target, x.verdict)
		}
		b.WriteString("\n")
	}
	for _, p := range r.Pairs {
		fmt.Fprintf(&b, "#### %s\n\n%s.\n\n| metric | no-op floor | tokenwarden | ratio |\n|---|---:|---:|---:|\n", p.Scenario.Name, describe(p.Scenario))
		for _, x := range scenarioRows(p) {
			if x.ratio == "" {
				x.ratio = "—"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", x.metric, x.floor, x.twdn, x.ratio)
		}
		for _, res := range []*Result{p.Floor, p.Twdn} {
			for _, e := range res.ErrorSamples {
				fmt.Fprintf(&b, "\n%s error: `%s`", res.Target, e)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// admission says how admission was decided, for the report's first line.
func (r *Report) admission() string {
	if r.Leases == "" {
		return ", exact admission (one store call per admit and per settle)"
	}
	return ", leased admission (policy leases: " + r.Leases + ")"
}

// BenchLine is one result line of `go test -bench` output.
type BenchLine struct {
	Pkg         string
	Name        string // without the -GOMAXPROCS suffix
	N           int64
	NsPerOp     float64
	BytesPerOp  float64 // -1 when not reported
	AllocsPerOp float64 // -1 when not reported
}

// ParseGoBench reads `go test -bench -benchmem` output: "pkg:" lines set the
// package of the benchmark lines that follow; lines that are not results
// (PASS, ok, goos, logs) are skipped.
func ParseGoBench(out string) []BenchLine {
	var res []BenchLine
	pkg := ""
	for line := range strings.SplitSeq(out, "\n") {
		line = strings.TrimSpace(line)
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || f[3] != "ns/op" {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || n <= 0 {
			continue
		}
		ns, err := strconv.ParseFloat(f[2], 64)
		if err != nil || ns < 0 || math.IsNaN(ns) || math.IsInf(ns, 0) {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		bl := BenchLine{Pkg: pkg, Name: name, N: n, NsPerOp: ns, BytesPerOp: -1, AllocsPerOp: -1}
		for i := 4; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "B/op":
				bl.BytesPerOp = v
			case "allocs/op":
				bl.AllocsPerOp = v
			}
		}
		res = append(res, bl)
	}
	return res
}

// DefaultScenarios are the phases make bench runs: the fixed-rate latency
// run at 1,000 exchanges/s, a closed-loop saturation run, 1,000 concurrent
// slow SSE streams for memory, and small JSON exchanges of each dialect in
// a closed loop of 16.
func DefaultScenarios() []Scenario {
	streams := DefaultMix
	streams.SSE = 1
	streams.EventGap = 50 * time.Millisecond
	streams.MaxBody = 16 << 10 // memory is about streams held open, not prompt size
	return []Scenario{
		{Name: ScenarioRate, Rate: 1000, Warmup: 2 * time.Second, Duration: 10 * time.Second, Mix: DefaultMix, Seed: 1},
		{Name: ScenarioSaturation, Concurrency: 64, Warmup: 2 * time.Second, Duration: 8 * time.Second, Mix: DefaultMix, Seed: 2},
		{Name: ScenarioStreams, Concurrency: 1000, Warmup: 3 * time.Second, Duration: 6 * time.Second, Mix: streams, Seed: 3, Rounds: 1},
		{Name: ScenarioSmallJSON + "-openai", Concurrency: 16, Warmup: 2 * time.Second, Duration: 10 * time.Second, Mix: SmallJSON(true), Seed: 4},
		{Name: ScenarioSmallJSON + "-anthropic", Concurrency: 16, Warmup: 2 * time.Second, Duration: 10 * time.Second, Mix: SmallJSON(false), Seed: 5},
	}
}

// SmallJSON is the mix of ScenarioSmallJSON: one dialect, JSON responses,
// 8 KiB request bodies, the default mix's tenants.
func SmallJSON(openai bool) Mix {
	m := DefaultMix
	m.OpenAI, m.SSE, m.MinBody, m.MaxBody = 0, 0, 8<<10, 8<<10
	if openai {
		m.OpenAI = 1
	}
	return m
}
