package load

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
	"github.com/tokenwarden/tokenwarden/test/internal/procs"
)

// inProcessServer is tokenwarden's processor as `serve` wires it, with the
// in-memory store: what one exchange costs without Redis or a process
// boundary in between.
func inProcessServer(tb testing.TB) *extproc.Server {
	tb.Helper()
	cfg, err := policy.Parse([]byte(TokenwardenConfig("", 100*time.Millisecond, "")))
	if err != nil {
		tb.Fatal(err)
	}
	srv, _ := procs.Processor(tb, procs.ProcessorOptions{
		Config: policy.NewHolder(cfg),
		Store:  limiter.NewMemory(limiter.MemoryOptions{}),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	return srv
}

// kindSpec returns a workload spec of one kind with a body of about size.
func kindSpec(tb testing.TB, openai, sse bool, size int) *Spec {
	tb.Helper()
	mix := Mix{SSE: 0, MinBody: size, MaxBody: size, Tenants: 1, SSEDeltas: 40, ChunkMax: 512}
	if openai {
		mix.OpenAI = 1
	}
	if sse {
		mix.SSE = 1
	}
	w, err := NewWorkload(mix, 1, 1)
	if err != nil {
		tb.Fatal(err)
	}
	return &w.Specs[0]
}

// oneExchange runs spec through f the way the harness does and fails on
// anything but the upstream's response, byte for byte in length.
func oneExchange(tb testing.TB, f *sim.Filter, spec *Spec, mix *Mix, seq uint64) {
	r := &run{t: Target{Filter: f}, w: &Workload{Mix: *mix}}
	g := newGate()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.do(ctx, spec, seq, g); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkExchange is one full exchange (request headers, a buffered
// request body, response headers, a JSON body or ~30 SSE chunks) through
// envoy/sim over an in-memory gRPC connection, against tokenwarden's
// processor (memory store) and against the no-op floor. The difference is
// the processor's own cost; `go test -cpuprofile` on it shows where that
// goes.
func BenchmarkExchange(b *testing.B) {
	targets := []struct {
		name string
		srv  func(testing.TB) *sim.Filter
	}{
		{"floor", func(tb testing.TB) *sim.Filter { return serveInMemory(tb, Noop{}) }},
		// Served by the gRPC server `serve` builds (its stream workers and
		// message limits), so the profile is the one the binary has.
		{"tokenwarden", func(tb testing.TB) *sim.Filter {
			return serveGRPCInMemory(tb, inProcessServer(tb).NewGRPCServer().Server)
		}},
	}
	kinds := []struct {
		name        string
		openai, sse bool
		size        int
	}{
		{"anthropic-json-2KB", false, false, 2 << 10},
		{"anthropic-json-8KB", false, false, 8 << 10}, // issue 17's small exchanges
		{"openai-json-8KB", true, false, 8 << 10},
		{"anthropic-json-100KB", false, false, 100 << 10},
		{"anthropic-sse-2KB", false, true, 2 << 10},
		{"openai-sse-100KB", true, true, 100 << 10},
	}
	for _, k := range kinds {
		for _, t := range targets {
			b.Run(fmt.Sprintf("%s/%s", k.name, t.name), func(b *testing.B) {
				f := t.srv(b)
				spec := kindSpec(b, k.openai, k.sse, k.size)
				mix := Mix{ChunkMax: 512}
				b.ReportAllocs()
				b.SetBytes(int64(len(spec.Body) + len(spec.Response)))
				var seq uint64
				for b.Loop() {
					seq++
					oneExchange(b, f, spec, &mix, seq)
				}
			})
		}
	}
}
