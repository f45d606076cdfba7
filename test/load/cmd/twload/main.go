// Command twload is tokenwarden's load harness: it starts its own
// redis-server, the no-op ext_proc floor (this binary, re-executed with
// -serve-noop) and `tokenwarden serve`, drives both processors through
// envoy/sim with the same traffic, and prints a Markdown table of every
// figure and its ratio to the floor. See package test/load.
//
//	go build -o /tmp/tokenwarden . && go run ./test/load/cmd/twload -tokenwarden /tmp/tokenwarden
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokenwarden/tokenwarden/test/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "twload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("twload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	noop := fs.String("serve-noop", "", "serve the no-op ext_proc floor on this address and do nothing else")
	bin := fs.String("tokenwarden", "", "the tokenwarden binary to load (required)")
	redisBin := fs.String("redis-server", "redis-server", "redis-server binary")
	only := fs.String("scenarios", strings.Join([]string{load.ScenarioRate, load.ScenarioSaturation, load.ScenarioStreams,
		load.ScenarioSmallJSON + "-openai", load.ScenarioSmallJSON + "-anthropic"}, ","), "comma-separated scenarios to run")
	rates := fs.String("rates", "400,1000", "comma-separated open-loop rates, exchanges/s; each is a scenario open-loop@RATE")
	duration := fs.Duration("duration", 10*time.Second, "measured time of the open-loop and saturation scenarios")
	warmup := fs.Duration("warmup", 2*time.Second, "unmeasured warmup before each scenario")
	satConc := fs.Int("saturation-concurrency", 64, "closed-loop workers of the saturation scenario")
	streams := fs.Int("streams", 1000, "concurrent slow SSE streams")
	streamGap := fs.Duration("stream-gap", 50*time.Millisecond, "pause between events of a slow stream")
	streamsDur := fs.Duration("streams-duration", 6*time.Second, "measured time of the slow-streams scenario")
	openai := fs.Float64("openai", load.DefaultMix.OpenAI, "fraction of OpenAI exchanges")
	sse := fs.Float64("sse", load.DefaultMix.SSE, "fraction of streamed responses")
	minBody := fs.Int("min-body", load.DefaultMix.MinBody, "smallest request body, bytes")
	maxBody := fs.Int("max-body", load.DefaultMix.MaxBody, "largest request body, bytes")
	tenants := fs.Int("tenants", load.DefaultMix.Tenants, "tenants the load spreads over")
	deltas := fs.Int("deltas", load.DefaultMix.SSEDeltas, "text deltas per streamed response")
	chunkMax := fs.Int("chunk-max", load.DefaultMix.ChunkMax, "largest SSE chunk, bytes (chunks are 1..N at random boundaries)")
	conns := fs.Int("conns", 2, "gRPC connections per processor (Envoy: one per worker)")
	seed := fs.Uint64("seed", 1, "workload seed")
	benchFile := fs.String("bench-results", "", "`go test -bench` output to cite in the targets table")
	out := fs.String("out", "", "also write the Markdown report to this file")
	jsonOut := fs.String("json", "", "also write the raw results as JSON to this file")
	memStore := fs.Bool("memory-store", false, "run tokenwarden on its in-memory store instead of Redis (its own targets)")
	leases := fs.String("leases", "", "the governed policy's `leases:` (e.g. \"{max_age: 2s, max_requests: 64}\"): leased admission instead of exact")
	timeout := fs.Duration("timeout", 8*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *noop != "" {
		return load.ServeNoop(ctx, *noop)
	}
	if *bin == "" {
		fs.Usage()
		return errors.New("-tokenwarden is required")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locate own binary for the floor: %w", err)
	}

	mix := load.DefaultMix
	mix.OpenAI, mix.SSE, mix.MinBody, mix.MaxBody, mix.Tenants, mix.SSEDeltas, mix.ChunkMax = *openai, *sse, *minBody, *maxBody, *tenants, *deltas, *chunkMax
	want := map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		want[strings.TrimSpace(s)] = true
	}
	var scenarios []load.Scenario
	for _, sc := range load.DefaultScenarios() {
		if !want[sc.Name] {
			continue
		}
		delete(want, sc.Name)
		sc.Warmup = *warmup
		switch sc.Name {
		case load.ScenarioRate:
			for _, r := range strings.Split(*rates, ",") {
				rate, err := strconv.ParseFloat(strings.TrimSpace(r), 64)
				if err != nil || rate <= 0 {
					return fmt.Errorf("-rates: %q is not a positive rate", r)
				}
				s := sc
				s.Name = fmt.Sprintf("%s@%g", load.ScenarioRate, rate)
				s.Rate, s.Duration, s.Mix = rate, *duration, mix
				scenarios = append(scenarios, s)
			}
			continue
		case load.ScenarioSaturation:
			sc.Concurrency, sc.Duration, sc.Mix = *satConc, *duration, mix
		case load.ScenarioSmallJSON + "-openai", load.ScenarioSmallJSON + "-anthropic":
			sc.Duration = *duration
		case load.ScenarioStreams:
			m := mix
			m.SSE, m.EventGap, m.MaxBody = 1, *streamGap, min(mix.MaxBody, sc.Mix.MaxBody)
			m.MinBody = min(m.MinBody, m.MaxBody)
			sc.Concurrency, sc.Duration, sc.Mix = *streams, *streamsDur, m
			sc.Warmup = max(*warmup, *streamGap*time.Duration(*deltas+6)) // every stream open before measuring
		}
		scenarios = append(scenarios, sc)
	}
	for name := range want {
		if name != "" {
			return fmt.Errorf("unknown scenario %q", name)
		}
	}

	var bench []load.BenchLine
	if *benchFile != "" {
		b, err := os.ReadFile(*benchFile)
		if err != nil {
			return err
		}
		bench = load.ParseGoBench(string(b))
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	h, err := load.Start(ctx, load.Options{
		Tokenwarden: *bin,
		Floor:       func(addr string) *exec.Cmd { return exec.Command(self, "-serve-noop", addr) },
		RedisServer: *redisBin,
		Scenarios:   scenarios,
		Conns:       *conns,
		Seed:        *seed,
		MemoryStore: *memStore,
		Leases:      *leases,
		Log:         stderr,
	})
	if err != nil {
		return err
	}
	defer h.Close()
	loadBefore := load.LoadAvg()
	rt, err := h.CountRoundTrips(ctx)
	if err != nil {
		return err
	}
	pairs, err := h.RunScenarios(ctx)
	if err != nil {
		return err
	}
	store := load.StoreRedis
	if *memStore {
		store = load.StoreMemory
	}
	rep := &load.Report{Date: time.Now(), Machine: load.MachineInfo(), Command: "twload " + strings.Join(args, " "), Store: store, Leases: *leases,
		Pairs: pairs, Bench: bench, RoundTrips: rt, LoadBefore: loadBefore, LoadAfter: load.LoadAvg()}
	md := rep.Markdown()
	fmt.Fprint(stdout, md)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			return err
		}
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
