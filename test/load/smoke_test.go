package load

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// noopEnv makes the test binary serve the no-op floor instead of running
// tests: the smoke test re-executes itself, as twload does.
const noopEnv = "TWLOAD_SERVE_NOOP"

func TestMain(m *testing.M) {
	if addr := os.Getenv(noopEnv); addr != "" {
		if err := ServeNoop(context.Background(), addr); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// make bench's leased pass (twload -leases) must give the policy exactly
// the terms it names.
func TestTokenwardenConfigLeases(t *testing.T) {
	c, err := policy.Parse([]byte(TokenwardenConfig("redis://127.0.0.1:6390/0", 100*time.Millisecond, "{max_age: 5s, max_requests: 64}")))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := c.Policy("tenant-0001", "")
	if want := (limiter.LeaseTerms{MaxAge: 5 * time.Second, MaxRequests: 64}); p.Leases != want {
		t.Errorf("leases %+v, want %+v", p.Leases, want)
	}
}

func TestTokenwardenConfigParses(t *testing.T) {
	for _, url := range []string{"", "redis://127.0.0.1:6390/0"} {
		c, err := policy.Parse([]byte(TokenwardenConfig(url, 100*time.Millisecond, "")))
		if err != nil {
			t.Fatalf("store %q: %v", url, err)
		}
		if c.Store.Shared() != (url != "") || c.Store.Timeout != 100*time.Millisecond {
			t.Errorf("store %q parsed as %+v", url, c.Store)
		}
		p, _ := c.Policy("tenant-0001", "")
		if !p.Enforces() || len(p.Budgets) != 2 {
			t.Errorf("the load policy must check limits and budgets: %+v", p)
		}
		if len(p.Lanes) != 2 {
			t.Errorf("the load policy must have two lanes: %+v", p.Lanes)
		}
		if p.Leases != (limiter.LeaseTerms{}) {
			t.Errorf("the load policy is exact unless leases are asked for: %+v", p.Leases)
		}
		// A caller of the workload is admitted at four levels, each with
		// its own limits and two budgets.
		w, err := NewWorkload(DefaultMix, 1, 8)
		if err != nil {
			t.Fatal(err)
		}
		lanes := map[string]int{}
		for _, sp := range w.Specs {
			lanes[sp.Lane]++
		}
		if lanes["batch"] == 0 || lanes["interactive"] == 0 {
			t.Errorf("the workload's lanes %v: want both", lanes)
		}
		sp := &w.Specs[3]
		r := c.Resolve(policy.Caller{sp.Tenant, HierarchyTeam, sp.User, sp.Key}, "default")
		if len(r.Levels) != 4 {
			t.Fatalf("store %q: %d levels, want 4: %+v", url, len(r.Levels), r)
		}
		for _, l := range r.Levels {
			if l.Limits.RequestsPerMinute == 0 || l.Limits.TokensPerMinute == 0 || l.Limits.Concurrent == 0 || len(l.Budgets) != 2 {
				t.Errorf("store %q: level %q checks %+v and %d budgets, want every limit and 2", url, l.Key, l.Limits, len(l.Budgets))
			}
		}
	}
}

// repoRoot walks up from the test's directory to the module root.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// TestSmoke runs the whole harness for a few seconds: redis-server, the
// no-op floor in its own process, tokenwarden serve built from this tree,
// every scenario kind at a low rate, the round-trip calibration and the
// report.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tokenwarden and runs processes for a few seconds")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed")
	}
	bin := filepath.Join(t.TempDir(), "tokenwarden")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build tokenwarden: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	mix := DefaultMix
	mix.MaxBody = 32 << 10
	slow := mix
	slow.SSE, slow.EventGap, slow.SSEDeltas = 1, 10*time.Millisecond, 10
	var log strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := Start(ctx, Options{
		Tokenwarden: bin,
		Floor: func(addr string) *exec.Cmd {
			cmd := exec.Command(self, "-test.run=^$")
			cmd.Env = append(os.Environ(), noopEnv+"="+addr)
			return cmd
		},
		Scenarios: []Scenario{
			{Name: ScenarioRate + "@100", Rate: 100, Warmup: 200 * time.Millisecond, Duration: time.Second, Mix: mix, Seed: 1},
			{Name: ScenarioSaturation, Concurrency: 4, Warmup: 200 * time.Millisecond, Duration: 800 * time.Millisecond, Mix: mix, Seed: 2},
			{Name: ScenarioStreams, Concurrency: 20, Warmup: 150 * time.Millisecond, Duration: 300 * time.Millisecond, Mix: slow, Seed: 3, Rounds: 1},
		},
		Rounds:       2,
		WorkloadSize: 64,
		Seed:         5,
		Log:          &log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rt, err := h.CountRoundTrips(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pairs, err := h.RunScenarios(ctx)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if len(pairs) != 3 {
		t.Fatalf("%d pairs for 3 scenarios", len(pairs))
	}
	for _, p := range pairs {
		for _, r := range []*Result{p.Floor, p.Twdn} {
			if r.Exchanges == 0 || r.Errors != 0 || r.GateTimeouts != 0 {
				t.Errorf("%s on %s: %d exchanges, %d errors %v, %d gate timeouts", p.Scenario.Name, r.Target, r.Exchanges, r.Errors, r.ErrorSamples, r.GateTimeouts)
			}
			if r.CPU <= 0 || r.RSSPeakKB <= 0 {
				t.Errorf("%s on %s: CPU %v, RSS %d kB: the process was not measured", p.Scenario.Name, r.Target, r.CPU, r.RSSPeakKB)
			}
		}
		if p.Twdn.RedisCommands == 0 {
			t.Errorf("%s: tokenwarden sent no commands to the harness's Redis", p.Scenario.Name)
		}
		if p.Floor.RedisCommands != 0 {
			t.Errorf("%s: the floor is charged %d Redis commands", p.Scenario.Name, p.Floor.RedisCommands)
		}
	}
	if rt.Exchanges == 0 || rt.PerRequest < 1 || rt.Client["evalsha"]+rt.Client["eval"] == 0 {
		t.Errorf("round trips %+v: admission never reached Redis", rt)
	}
	rep := &Report{Date: time.Now(), Machine: MachineInfo(), Command: "go test", Pairs: pairs, RoundTrips: rt}
	md := rep.Markdown()
	for _, want := range []string{"full exchange p50 at 100/s", "saturation throughput", "RSS with 20 concurrent slow SSE streams", "Redis round trips per request", "#### slow-streams"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
