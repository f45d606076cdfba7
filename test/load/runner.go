package load

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

// Scenario is one measured load phase.
type Scenario struct {
	Name string
	// Rate > 0 runs an open loop: exchange i is due at start + i/Rate whether
	// or not earlier ones finished. Rate == 0 runs a closed loop of
	// Concurrency workers, each starting its next exchange when the last one
	// ends.
	Rate float64
	// Concurrency is the closed loop's worker count; in an open loop it caps
	// the exchanges in flight (0 → 20,000), and a due exchange that finds the
	// cap reached is counted as dropped, an error.
	Concurrency int
	// Warmup runs before Duration and is not measured (connections, pools,
	// the Go heap and the processor's caches settle).
	Warmup, Duration time.Duration
	Mix              Mix
	// Seed makes the chunking reproducible: both targets see the same bytes
	// split at the same places.
	Seed uint64
	// Rounds overrides Options.Rounds for this scenario (1: one slice per
	// target, needed when an exchange lasts longer than a slice would).
	Rounds int
}

// Target is one processor under load.
type Target struct {
	Name   string
	Filter *sim.Filter
	// PID is the processor's process for CPU and RSS; 0 skips them.
	PID int
	// Redis, when set, is the processor's store: its commands are counted.
	Redis *Redis
	// Metrics, when set, is the processor's Prometheus endpoint: its
	// garbage collector's counters are read around the measured window.
	Metrics string
}

// Result is what one scenario measured against one target.
type Result struct {
	Scenario, Target string
	// Exchanges is the number of measured exchanges that completed (errors
	// included); Errors those that failed, of which Dropped never started.
	Exchanges, Errors, Dropped int64
	// ErrorSamples are the first few error messages.
	ErrorSamples []string
	// GateTimeouts counts SSE bodies whose response headers never left the
	// filter before the body was due: the processor kept a stream BUFFERED.
	GateTimeouts int64
	// Window is the measured wall time: from the end of the warmup to the
	// last measured exchange's end.
	Window time.Duration
	// GC is the processor's garbage collection during the measured window
	// (zero without Target.Metrics).
	GC GCStat
	// Throughput is measured exchanges completed per second of Window.
	Throughput float64
	// Latency holds one Summary per series (see the Series constants).
	Latency map[string]Summary
	// CPU is the processor's CPU time over Window; Cores is CPU/Window.
	CPU   time.Duration
	Cores float64
	// RedisCPU is the redis-server's CPU over Window (tokenwarden only).
	RedisCPU time.Duration
	// GeneratorCPU is the harness's own CPU over Window (sim, the in-memory
	// upstream, gRPC client): the share of the machine the load itself takes.
	GeneratorCPU time.Duration
	// RSSPeakKB is the highest VmRSS sampled (every 50 ms) during the scenario.
	RSSPeakKB int64
	// RedisCommands counts the store's commands over the whole scenario
	// (warmup included); RedisPerExchange divides them by every exchange the
	// scenario ran. Each limiter call is one EVALSHA, so commands are round
	// trips (an upper bound, were any pipelined).
	RedisCommands    int64
	RedisPerExchange float64
	// RedisByCommand breaks RedisCommands down by command name.
	RedisByCommand map[string]int64

	rec     *Recorder
	started int64
}

// Merge combines the results of rounds of one scenario on one target (see
// Harness.RunScenarios): counts, CPU, windows and Redis commands add up,
// latency samples are pooled before the percentiles are taken, and RSS is
// the highest peak.
func Merge(rounds []*Result) *Result {
	if len(rounds) == 0 {
		return nil
	}
	out := &Result{Scenario: rounds[0].Scenario, Target: rounds[0].Target, rec: NewRecorder(), RedisByCommand: map[string]int64{}}
	var wall float64
	for _, r := range rounds {
		out.Exchanges += r.Exchanges
		out.Errors += r.Errors
		out.Dropped += r.Dropped
		out.GateTimeouts += r.GateTimeouts
		out.Window += r.Window
		out.CPU += r.CPU
		out.GeneratorCPU += r.GeneratorCPU
		out.RedisCPU += r.RedisCPU
		out.GC = out.GC.Add(r.GC)
		if r.Cores > 0 {
			wall += r.CPU.Seconds() / r.Cores
		}
		out.RSSPeakKB = max(out.RSSPeakKB, r.RSSPeakKB)
		out.RedisCommands += r.RedisCommands
		out.started += r.started
		for k, v := range r.RedisByCommand {
			out.RedisByCommand[k] += v
		}
		for _, e := range r.ErrorSamples {
			if len(out.ErrorSamples) < 5 {
				out.ErrorSamples = append(out.ErrorSamples, e)
			}
		}
		if r.rec != nil {
			r.rec.mu.Lock()
			for k, v := range r.rec.samples {
				out.rec.samples[k] = append(out.rec.samples[k], v...)
			}
			r.rec.mu.Unlock()
		}
	}
	out.Throughput = float64(out.Exchanges) / out.Window.Seconds()
	if wall > 0 {
		out.Cores = out.CPU.Seconds() / wall
	}
	if out.started > 0 {
		out.RedisPerExchange = float64(out.RedisCommands) / float64(out.started)
	}
	out.Latency = out.rec.Summaries()
	return out
}

// CPUPerExchange is the processor's CPU time per measured exchange.
func (r *Result) CPUPerExchange() time.Duration {
	if r.Exchanges == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Exchanges)
}

// GeneratorCPUPerExchange is the harness's CPU per exchange measured: what
// the load generator spends on each exchange — applying the answers among
// it — which takes the same two cores as the processor, so a processor's
// answers that cost the generator more lower its throughput ratio too.
func (r *Result) GeneratorCPUPerExchange() time.Duration {
	return perExchange(r.GeneratorCPU, r.Exchanges)
}

// GeneratorCores is the harness's CPU over the measured wall time, in cores.
func (r *Result) GeneratorCores() float64 {
	if r.Cores <= 0 || r.CPU <= 0 {
		return 0
	}
	return r.GeneratorCPU.Seconds() / (r.CPU.Seconds() / r.Cores)
}

const defaultOpenLoopCap = 20000

// Run drives t with sc's load over w and measures it. Errors of individual
// exchanges are counted in the Result; Run fails only when it cannot
// measure (a /proc or Redis read failed) or ctx ended.
func Run(ctx context.Context, sc Scenario, t Target, w *Workload) (*Result, error) {
	if sc.Rate <= 0 && sc.Concurrency <= 0 {
		return nil, errors.New("load: scenario needs a Rate or a Concurrency")
	}
	if sc.Duration <= 0 || sc.Warmup < 0 {
		return nil, errors.New("load: scenario needs a positive Duration and a non-negative Warmup")
	}
	r := &run{sc: sc, t: t, w: w, rec: NewRecorder(), res: &Result{Scenario: sc.Name, Target: t.Name}}
	// An exchange may take as long as its stream is slow, plus a margin for
	// a saturated machine; past that it is an error, not a hang.
	r.exchangeTimeout = 30*time.Second + time.Duration(sc.Mix.SSEDeltas+8)*sc.Mix.EventGap

	var redisBefore map[string]int64
	if t.Redis != nil {
		var err error
		if redisBefore, err = t.Redis.CommandCalls(ctx); err != nil {
			return nil, err
		}
	}
	stopSampling := r.sampleRSS()
	start := time.Now()
	r.measureFrom = start.Add(sc.Warmup)
	end := r.measureFrom.Add(sc.Duration)

	// The CPU reading at the end of the warmup.
	var cpuStart, selfStart, redisStart ProcStat
	var gcStart GCStat
	var cpuErr, selfErr, redisErr, gcErr error
	readStart := func() {
		if t.Metrics != "" {
			gcStart, gcErr = ReadGCStat(ctx, t.Metrics)
		}
		if t.PID > 0 {
			cpuStart, cpuErr = ReadProc(t.PID)
		}
		if t.Redis != nil {
			redisStart, redisErr = ReadProc(t.Redis.PID())
		}
		selfStart, selfErr = ReadProc(os.Getpid())
	}
	warmDone := make(chan struct{})
	warm := time.AfterFunc(time.Until(r.measureFrom), func() { readStart(); close(warmDone) })
	var wg sync.WaitGroup
	if sc.Rate > 0 {
		r.openLoop(ctx, &wg, start, end)
	} else {
		r.closedLoop(ctx, &wg, end)
	}
	wg.Wait()
	if warm.Stop() {
		readStart() // never fired: nothing ran after the warmup
	} else {
		<-warmDone
	}
	finished := time.Now()
	peak := stopSampling()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	selfEnd, err := ReadProc(os.Getpid())
	if err = cmp.Or(selfErr, err); err != nil {
		return nil, err
	}
	var gcEnd GCStat
	if t.Metrics != "" {
		if gcEnd, err = ReadGCStat(ctx, t.Metrics); cmp.Or(gcErr, err) != nil {
			return nil, cmp.Or(gcErr, err)
		}
	}

	res := r.res
	res.rec = r.rec
	res.started = r.started.Load()
	res.Exchanges = r.measured.Load()
	res.Errors = r.errors.Load()
	res.Dropped = r.dropped.Load()
	res.GateTimeouts = r.gateTimeouts.Load()
	last := r.lastEnd()
	if !last.After(r.measureFrom) {
		last = r.measureFrom.Add(time.Millisecond)
	}
	res.Window = last.Sub(r.measureFrom)
	res.Throughput = float64(res.Exchanges) / res.Window.Seconds()
	res.Latency = r.rec.Summaries()
	res.RSSPeakKB = peak
	res.GC = gcEnd.Sub(gcStart)
	res.GeneratorCPU = selfEnd.CPU - selfStart.CPU
	if t.PID > 0 {
		if cpuErr != nil {
			return nil, cpuErr
		}
		cpuEnd, err := ReadProc(t.PID)
		if err != nil {
			return nil, err
		}
		res.CPU = cpuEnd.CPU - cpuStart.CPU
		res.Cores = res.CPU.Seconds() / finished.Sub(r.measureFrom).Seconds()
	}
	if t.Redis != nil {
		if redisErr != nil {
			return nil, redisErr
		}
		redisEnd, err := ReadProc(t.Redis.PID())
		if err != nil {
			return nil, err
		}
		res.RedisCPU = redisEnd.CPU - redisStart.CPU
		after, err := t.Redis.CommandCalls(ctx)
		if err != nil {
			return nil, err
		}
		res.RedisCommands = CommandDelta(redisBefore, after)
		res.RedisByCommand = map[string]int64{}
		for k, v := range after {
			if d := v - redisBefore[k]; d > 0 && k != "info" {
				res.RedisByCommand[k] = d
			}
		}
		if res.started > 0 {
			res.RedisPerExchange = float64(res.RedisCommands) / float64(res.started)
		}
	}
	return res, nil
}

type run struct {
	sc              Scenario
	t               Target
	w               *Workload
	rec             *Recorder
	res             *Result
	measureFrom     time.Time
	exchangeTimeout time.Duration

	seq                                atomic.Uint64
	started, measured, errors, dropped atomic.Int64
	gateTimeouts                       atomic.Int64
	inflight                           atomic.Int64
	mu                                 sync.Mutex
	last                               time.Time
	errSamples                         []string
}

func (r *run) lastEnd() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// openLoop schedules exchange i at start + i/Rate. Sleeping to each slot
// keeps the schedule; the latency is taken from the slot, so a late start
// (the scheduler or the machine behind) counts against the exchange.
func (r *run) openLoop(ctx context.Context, wg *sync.WaitGroup, start, end time.Time) {
	limit := int64(r.sc.Concurrency)
	if limit <= 0 {
		limit = defaultOpenLoopCap
	}
	interval := time.Duration(float64(time.Second) / r.sc.Rate)
	for i := int64(0); ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if !due.Before(end) || ctx.Err() != nil {
			return
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		measured := !due.Before(r.measureFrom)
		if r.inflight.Load() >= limit {
			if measured {
				r.measured.Add(1)
				r.dropped.Add(1)
				r.fail(fmt.Errorf("dropped: %d exchanges in flight", limit))
			}
			continue
		}
		r.inflight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.inflight.Add(-1)
			r.exchange(ctx, due, measured)
		}()
	}
}

// closedLoop runs Concurrency workers back to back until end.
func (r *run) closedLoop(ctx context.Context, wg *sync.WaitGroup, end time.Time) {
	for range r.sc.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				now := time.Now()
				if !now.Before(end) {
					return
				}
				r.exchange(ctx, now, !now.Before(r.measureFrom))
			}
		}()
	}
}

// exchange runs one exchange due at due and records it when measured.
func (r *run) exchange(ctx context.Context, due time.Time, measured bool) {
	seq := r.seq.Add(1) - 1
	r.started.Add(1)
	spec := &r.w.Specs[seq%uint64(len(r.w.Specs))]
	tm := &exchangeTiming{sse: spec.SSE}
	g := newGate()
	xctx, cancel := context.WithTimeout(ctx, r.exchangeTimeout)
	defer cancel()
	err := r.do(withTiming(xctx, tm), spec, seq, g)
	ended := time.Now()
	if g.timedOut.Load() {
		r.gateTimeouts.Add(1)
	}
	if !measured {
		return
	}
	r.measured.Add(1)
	r.mu.Lock()
	if ended.After(r.last) {
		r.last = ended
	}
	r.mu.Unlock()
	if err != nil {
		r.fail(err)
		return
	}
	d := ended.Sub(due)
	kind, bySize := exchangeSeries(len(spec.Body), spec.SSE)
	r.rec.AddAll([]Sample{{SeriesExchange, d}, {kind, d}, {bySize, d}})
	r.rec.AddAll(tm.take())
}

// do runs the exchange through the filter and reads the response to its end;
// the exchange ends for the client with the last body byte.
func (r *run) do(ctx context.Context, spec *Spec, seq uint64, g *gate) error {
	resp, err := r.t.Filter.Do(ctx, spec.Request(seq), upstream(spec, g, &r.w.Mix, r.sc.Seed^seq))
	g.open()
	if err != nil {
		return err
	}
	n, readErr := io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	defer func() {
		// The stream closes after the body; wait so in-flight counts stay true.
		select {
		case <-resp.Done():
		case <-ctx.Done():
		}
	}()
	switch {
	case resp.LocalReply:
		return fmt.Errorf("local reply %d %s", resp.Status, resp.Details)
	case resp.Status != 200:
		return fmt.Errorf("status %d", resp.Status)
	case readErr != nil:
		return fmt.Errorf("response body: %w", readErr)
	case n != int64(len(spec.Response)):
		return fmt.Errorf("response body: %d bytes, upstream sent %d", n, len(spec.Response))
	}
	return nil
}

func (r *run) fail(err error) {
	r.errors.Add(1)
	r.mu.Lock()
	if len(r.res.ErrorSamples) < 5 {
		r.res.ErrorSamples = append(r.res.ErrorSamples, err.Error())
	}
	r.mu.Unlock()
}

// sampleRSS samples the target's VmRSS every 50 ms until the returned
// function is called, which returns the peak in kB.
func (r *run) sampleRSS() func() int64 {
	if r.t.PID <= 0 {
		return func() int64 { return 0 }
	}
	done := make(chan struct{})
	peakc := make(chan int64, 1)
	go func() {
		var peak int64
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if st, err := ReadProc(r.t.PID); err == nil && st.RSSKB > peak {
				peak = st.RSSKB
			}
			select {
			case <-done:
				peakc <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 { close(done); return <-peakc }
}
