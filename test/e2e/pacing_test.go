package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
	"github.com/tokenwarden/tokenwarden/test/mockprovider"
)

// Issue 14's load line: the mock provider enforcing 60 requests and 100k
// tokens a minute, 200 concurrent clients across 3 replicas: no provider
// 429 reaches a client, and accepted throughput stays at or above 90% of
// the provider's limit.
//
// The limits are the issue's, per the provider's window; the mock's window
// is shortened (mockprovider.Options.Window, upstreams.hosts.*.window) so
// the run fits CI: by default 15s, four times the real pace, for three
// windows. TOKENWARDEN_PACING_WINDOW=1m runs the real figures (and
// TOKENWARDEN_PACING_WINDOWS the number of windows).
const (
	loadRPM     = 60
	loadTPM     = 100_000
	loadClients = 200
)

// loadGroup is a set of clients sending alike: prepare sets the route
// metadata (its lane); think, when set, is the pause (±50%) a client takes
// after each answer, as interactive work does; target, when set, is the
// group's bound on its p95 wait.
type loadGroup struct {
	name    string
	clients int
	prepare func(*sim.Request)
	think   time.Duration
	target  time.Duration
}

// loadRun is one load run: the mock's window and how many of them, the
// processors' config (its upstreams: block, its policy) and the clients.
type loadRun struct {
	window  time.Duration
	windows int
	config  string // the upstreams: block, and a policies: block when the run needs one
	warmUp  bool
	groups  []loadGroup
	filter  func(*sim.Config)
}

// groupStats is what one group's clients saw.
type groupStats struct {
	mu             sync.Mutex
	accepted       []time.Time     // when each 200 arrived
	waits          []time.Duration // first attempt to 200, per request, across retries and back-offs
	local429       int             // tokenwarden's (x-tokenwarden-denied)
	provider429    int             // the provider's own, passed through
	otherFailures  map[string]int
	attempts       int
	localByDenied  map[string]int
	largestRetryMs int64
}

func (g *groupStats) add(f func(g *groupStats)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, v)
	}
	return d
}

func TestPacingHoldsTheProviderLimitUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a load test of several provider windows")
	}
	window := envDuration(t, "TOKENWARDEN_PACING_WINDOW", 15*time.Second)
	windows := 3
	if v := os.Getenv("TOKENWARDEN_PACING_WINDOWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TOKENWARDEN_PACING_WINDOWS=%q", v)
		}
		windows = n
	}
	declared := fmt.Sprintf(`
upstreams:
  hosts:
    api.openai.com:
      window: %s
      limits: {requests: %d, tokens: %d}
`, window, loadRPM, loadTPM)
	everyone := []loadGroup{{name: "all", clients: loadClients}}
	t.Run("limits declared", func(t *testing.T) {
		// The README's advice for an upstream under load from its first
		// request: 200 requests arrive before any answer could teach the
		// limits.
		runPacingLoad(t, loadRun{window: window, windows: windows, filter: patient,
			config: declared + "policies:\n  default: {}\n", groups: everyone})
	})
	t.Run("limits learned from a warm-up answer", func(t *testing.T) {
		// Nothing declared but the window: one request through each replica
		// teaches it the limits, then the 200 clients start at once; the in-flight count engages
		// pacing before the provider runs out. One window is enough to show
		// it.
		runPacingLoad(t, loadRun{window: window, windows: 1, warmUp: true, filter: patient, groups: everyone,
			config: fmt.Sprintf("upstreams:\n  hosts:\n    api.openai.com: {window: %s}\npolicies:\n  default: {}\n", window)})
	})
	t.Run("lanes", func(t *testing.T) {
		// The seed's shape: a few interactive tools, each asking now and
		// then (about half the provider's rate together), and a crowd of
		// bulk jobs asking as fast as they are answered. Paced denials wait
		// in the queue (Envoy's own 2s message timeout, extended by
		// override_message_timeout), the interactive lane first; the batch
		// lane absorbs the rest of the provider's rate, never more.
		lane := func(name string) func(*sim.Request) {
			return func(r *sim.Request) { r.Attributes = map[string]any{gateway.LaneAttribute: name} }
		}
		// At the default 15s window the provider takes 4 requests a second;
		// 10 interactive clients pausing 4s (±50%) ask about 2.5, under their
		// 70%; batch, held to its 30% while pacing is on, takes the rest.
		think := window * 4 / 15
		// The interactive target: a fifth of the provider's window — 3s at
		// the default 15s, 12s at the real minute, under the seed's 18s
		// p95 alert (its tools' interactive work at the real pace).
		target := window / 5
		runPacingLoad(t, loadRun{window: window, windows: windows, config: declared + `
queue: {max_requests: 1000, message_timeout: 2s, max_message_timeout: 10s}
policies:
  default:
    lanes:
      interactive: {priority: 2, share: 0.7, default: true, max_wait: 4s}
      batch: {priority: 1, share: 0.3, max_wait: 9s}
`, groups: []loadGroup{
			{name: "interactive", clients: 10, prepare: lane("interactive"), think: think, target: target},
			{name: "batch", clients: loadClients - 10, prepare: lane("batch")},
		}})
	})
}

func runPacingLoad(t *testing.T, run loadRun) {
	window, windows := run.window, run.windows
	cfg := "store: {replicas: 3}\n" + run.config
	s := newStack(t, stackOptions{config: cfg, processors: 3, redis: redistest.Start(t, redistest.Options{}).Addr(), filter: run.filter,
		mock: mockprovider.Options{RPM: loadRPM, TPM: loadTPM, Window: window, Enforce: true}})

	groups := run.groups
	stats := make([]*groupStats, len(groups))
	// About 700 tokens of prompt and 500 of output bound: about 1,200
	// tokens a request by tokenwarden's estimate, so at 60 requests a
	// window the tokens window (100k) has room and requests are what the
	// provider limits; both are paced.
	prompt := strings.Repeat("Summarise the quarterly report for the board in plain words. ", 60)
	body := `{"model":"gpt-4o-mini","max_tokens":500,"messages":[{"role":"user","content":"` + prompt + `"}]}`

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if run.warmUp {
		// Each replica learns from its own answers: one request through
		// each (three of the window's 60).
		for i := range s.procs {
			e := s.do(ctx, i, openaiRequest(body, sim.Header{Name: "x-tenant-id", Value: "load"}, sim.Header{Name: "x-mock-output-tokens", Value: "400"}))
			if e.err != nil || e.resp.Status != 200 || e.header("x-ratelimit-limit-requests") != strconv.Itoa(loadRPM) {
				t.Fatalf("warm-up through replica %d: %v %v", i, e.err, e.resp)
			}
		}
	}
	start := time.Now()
	deadline := start.Add(time.Duration(windows) * window)
	var wg sync.WaitGroup
	client := 0
	for gi, g := range groups {
		st := &groupStats{otherFailures: map[string]int{}, localByDenied: map[string]int{}}
		stats[gi] = st
		for range g.clients {
			c := client
			client++
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(c), 14))
				runLoadClient(ctx, s, c, g, st, body, deadline, rng)
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)

	// Steady state: after the first third of a window (the schedules and the
	// clients' first retries settle), to the end.
	from := start.Add(window / 3)
	var total groupStats
	for gi, st := range stats {
		slices.Sort(st.waits)
		inWindow := 0
		for _, at := range st.accepted {
			if !at.Before(from) {
				inWindow++
			}
		}
		t.Logf("group %s: %d attempts, %d accepted (%d after warm-up), %d local 429 %v, %d provider 429, other %v, wait p50 %s p95 %s max %s, largest retry-after-ms %d",
			groups[gi].name, st.attempts, len(st.accepted), inWindow, st.local429, st.localByDenied, st.provider429, st.otherFailures,
			pct(st.waits, 0.5), pct(st.waits, 0.95), pct(st.waits, 1), st.largestRetryMs)
		if g := groups[gi]; g.target > 0 && pct(st.waits, 0.95) > g.target {
			t.Errorf("group %s: p95 wait %s, want at most %s", g.name, pct(st.waits, 0.95), g.target)
		}
		if inWindow == 0 {
			t.Errorf("group %s: nothing accepted after the first third of a window", groups[gi].name)
		}
		total.accepted = append(total.accepted, st.accepted...)
		total.provider429 += st.provider429
		total.local429 += st.local429
		for k, v := range st.otherFailures {
			if total.otherFailures == nil {
				total.otherFailures = map[string]int{}
			}
			total.otherFailures[k] += v
		}
	}
	steady := 0
	for _, at := range total.accepted {
		if !at.Before(from) && !at.After(deadline) {
			steady++
		}
	}
	span := deadline.Sub(from)
	limit := float64(loadRPM) * span.Seconds() / window.Seconds()
	ratio := float64(steady) / limit
	served429 := s.mock.Provider().Served(429)
	t.Logf("window %s × %d (elapsed %s): accepted %d in the last %s against a provider limit of %.1f: ratio %.3f; provider answered %d 429s, %d 200s; local 429s %d; paced denials %v, pace calls %v",
		window, windows, elapsed.Round(time.Millisecond), steady, span, limit, ratio, served429, s.mock.Provider().Served(200), total.local429,
		s.total("tokenwarden_upstream_paced_total"), s.total("tokenwarden_store_seconds", "op", "pace"))
	if total.provider429 != 0 || served429 != 0 {
		t.Errorf("%d provider 429s reached clients (the provider answered %d): pacing must keep steady overload from the provider", total.provider429, served429)
	}
	if ratio < 0.9 {
		t.Errorf("accepted throughput %.3f of the provider's limit, want at least 0.9", ratio)
	}
	if len(total.otherFailures) > 0 {
		t.Errorf("other failures: %v", total.otherFailures)
	}
	if s.total("tokenwarden_upstream_paced_total") == 0 {
		t.Errorf("no paced denial: 200 clients against 60 a window were never paced (the test proves nothing)")
	}
	for _, g := range groups {
		if g.prepare == nil {
			continue
		}
		t.Logf("queue, lane %s: admitted after a wait %v, timed out %v, overflows %v", g.name,
			s.total("tokenwarden_queue_wait_seconds", "lane", g.name, "result", "admitted"),
			s.total("tokenwarden_queue_wait_seconds", "lane", g.name, "result", "timed_out"),
			s.total("tokenwarden_queue_overflows_total", "lane", g.name))
	}
}

// runLoadClient sends requests until the deadline, retrying as the SDKs
// do: a 429 is retried after its retry-after-ms (else retry-after), plus up
// to 10% jitter, at most twice (the SDKs' default max_retries); then the
// application backs off exponentially with full jitter (0.5s doubling to
// 4s) before asking again, as the seed's fix describes.
func runLoadClient(ctx context.Context, s *stack, c int, g loadGroup, st *groupStats, body string, deadline time.Time, rng *rand.Rand) {
	sleep := func(d time.Duration) bool {
		if time.Now().Add(d).After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	backoff := 500 * time.Millisecond
	// first is when the request the client wants answered was first sent:
	// its wait runs across the SDK's retries and the application's
	// back-offs until it is accepted.
	first := time.Now()
	for time.Now().Before(deadline) {
		ok := false
		for try := 0; try <= 2 && !ok; try++ {
			req := openaiRequest(body, sim.Header{Name: "x-tenant-id", Value: "load"}, sim.Header{Name: "x-mock-output-tokens", Value: "400"})
			if g.prepare != nil {
				g.prepare(req)
			}
			e := s.do(ctx, c, req)
			st.add(func(st *groupStats) { st.attempts++ })
			if e.err != nil {
				st.add(func(st *groupStats) { st.otherFailures["transport"]++ })
				break
			}
			switch status := e.resp.Status; {
			case status == 200:
				now := time.Now()
				st.add(func(st *groupStats) {
					if now.Before(deadline) {
						st.accepted = append(st.accepted, now)
						st.waits = append(st.waits, now.Sub(first))
					}
				})
				ok = true
			case status == 429:
				denied := e.header("x-tokenwarden-denied")
				wait := retryWait(e)
				st.add(func(st *groupStats) {
					if denied == "" {
						st.provider429++
					} else {
						st.local429++
						st.localByDenied[denied]++
					}
					st.largestRetryMs = max(st.largestRetryMs, wait.Milliseconds())
				})
				if try == 2 || !sleep(wait+time.Duration(rng.Int64N(int64(wait/10)+1))) {
					try = 3
				}
			default:
				st.add(func(st *groupStats) { st.otherFailures[strconv.Itoa(status)]++ })
				try = 3
			}
		}
		if ok {
			if g.think > 0 && !sleep(g.think/2+time.Duration(rng.Int64N(int64(g.think)))) {
				return
			}
			backoff, first = 500*time.Millisecond, time.Now()
			continue
		}
		if !sleep(time.Duration(rng.Int64N(int64(backoff)) + 1)) {
			return
		}
		backoff = min(2*backoff, 4*time.Second)
	}
}

// retryWait is the wait a 429 names, retry-after-ms first, as the SDKs read it.
func retryWait(e exchange) time.Duration {
	if v, err := strconv.ParseFloat(e.header("retry-after-ms"), 64); err == nil && v > 0 {
		return time.Duration(v * float64(time.Millisecond))
	}
	if v, err := strconv.ParseFloat(e.header("retry-after"), 64); err == nil && v > 0 {
		return time.Duration(v * float64(time.Second))
	}
	return time.Second
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)].Round(time.Millisecond)
}
