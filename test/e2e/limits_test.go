package e2e

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// The request every budget test sends: a fixed prompt and exactly 100 output
// tokens (the mock is told so), so its reservation is known in advance.
const budgetPrompt = "Summarise the quarterly report in three bullet points, please."

func budgetBody(stream bool) string {
	return fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":100,"stream":%v,"messages":[{"role":"user","content":%q}]}`, stream, budgetPrompt)
}

// reservation is what the processor reserves for budgetBody: its own input
// estimate plus max_tokens, at Sonnet 4.5 prices.
func reservation(t testing.TB) int64 {
	req, err := anthropic.ParseRequest([]byte(budgetBody(false)))
	if err != nil {
		t.Fatal(err)
	}
	p := nanoPrices["claude-sonnet-4-5"]
	return req.InputTokens*p[0] + 100*p[1]
}

// TestBudgetHoldsUnderConcurrency fires 500 requests at once, streamed and
// not, at a tenant whose budget fits 50 reservations: the spend never
// exceeds the budget, and it equals the mock's reported usage priced exactly.
// The same holds for one replica with the in-memory store, three replicas
// sharing one Redis, and three replicas on a three-master Redis Cluster.
func TestBudgetHoldsUnderConcurrency(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server processes and runs 500 exchanges per case")
	}
	res := reservation(t)
	capNano := 50*res + res/2
	cfg := fmt.Sprintf(`
policies:
  default:
    limits: {concurrent: 10000}
    budgets: [{window: month, usd: %s, alert_at: [0.5, 0.9]}]
tenants:
  team: {}
`, strconv.FormatFloat(float64(capNano)/1e9, 'f', 9, 64))

	for _, tc := range storeCases(cfg, true) {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts(t)
			o.filter = patient
			s := newStack(t, o)
			ctx := context.Background()
			var tl tally
			ok, denied, other := &tl.ok, &tl.denied, &tl.other
			parallel(500, 500, func(i int) {
				tl.count(t, i, "org/budget_month", s.do(ctx, i, anthropicRequest(budgetBody(i%2 == 1),
					sim.Header{Name: "x-tenant-id", Value: "team"},
					sim.Header{Name: "x-mock-output-tokens", Value: "100"})))
			})
			// The last settles run after the last answers; wait for them.
			deadline := time.Now().Add(10 * time.Second)
			for s.budget("team", "month").Reserved != 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			b := s.budget("team", "month")
			var want int64
			ledger := s.mock.Provider().Ledger()
			for _, e := range ledger {
				if !e.Complete {
					t.Errorf("incomplete exchange in the ledger: %+v", e)
				}
				want += expectedCost(t, "claude-sonnet-4-5", e.Reported)
			}
			t.Logf("admitted %d, denied %d; spent %d of %d nano-USD (reservation %d)", ok.Load(), denied.Load(), b.Spent, capNano, res)
			if b.Reserved != 0 {
				t.Errorf("reservations left outstanding: %d", b.Reserved)
			}
			if b.Spent > capNano {
				t.Errorf("spent %d is over the budget %d", b.Spent, capNano)
			}
			if b.Spent != want {
				t.Errorf("spent %d, but the mock's usage priced exactly is %d", b.Spent, want)
			}
			if int64(len(ledger)) != ok.Load() || ok.Load() < 50 || denied.Load() == 0 || other.Load() != 0 {
				t.Errorf("ledger %d, admitted %d, denied %d, other %d", len(ledger), ok.Load(), denied.Load(), other.Load())
			}
			// Spend crossed 50% and 90% of the budget (not 100%): each alert
			// fired exactly once, whichever replica settled across it.
			for th, want := range map[string]float64{"0.5": 1, "0.9": 1, "1": 0} {
				if got := s.total("tokenwarden_budget_alerts_total", "tenant", "team", "window", "month", "threshold", th); got != want {
					t.Errorf("alerts at %s: %v across the replicas, want %v", th, got, want)
				}
			}
		})
	}
}

// TestEachAdmitAndSettleIsOneRoundTrip counts what the processor sends Redis
// for whole exchanges, on the client (a go-redis hook sees every round trip)
// and on the server (INFO commandstats): one EVALSHA to admit and one to
// settle, nothing else.
func TestEachAdmitAndSettleIsOneRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	srv := redistest.Start(t, redistest.Options{})
	hook := &roundTrips{}
	s := newStack(t, stackOptions{config: `
policies:
  default:
    limits: {requests_per_minute: 100000, tokens_per_minute: 100000000, concurrent: 100}
    budgets: [{window: day, usd: 1000}, {window: month, usd: 10000}]
`, redis: srv.Addr(), redisHook: hook})
	ctx := context.Background()
	probe := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer probe.Close()
	send := func(stream bool) {
		x := s.do(ctx, 0, anthropicRequest(budgetBody(stream)))
		if x.err != nil || x.resp.Status != 200 {
			t.Fatalf("err %v resp %+v", x.err, x.resp)
		}
	}
	send(false) // loads the scripts and warms the connection
	hook.quiet()
	before, beforeTrips := commandCalls(t, probe), hook.n.Load()
	const n = 20
	for i := range n {
		send(i%2 == 0)
	}
	hook.quiet()
	delta := diffCalls(before, commandCalls(t, probe))
	if got := hook.n.Load() - beforeTrips; got != 2*n {
		t.Errorf("%d exchanges made %d round trips to Redis (all so far: %v); want %d", n, got, hook.cmds(), 2*n)
	}
	if delta["evalsha"] != 2*n || delta["eval"] != 0 {
		t.Errorf("Redis ran %d EVALSHA and %d EVAL for %d exchanges; want %d and 0", delta["evalsha"], delta["eval"], n, 2*n)
	}
	t.Logf("client round trips %d; server commandstats (script-internal commands included) %v", hook.n.Load()-beforeTrips, delta)
}

// roundTrips counts commands and pipelines a go-redis client sends.
type roundTrips struct {
	n     atomic.Int64
	mu    sync.Mutex
	names map[string]int
}

func (h *roundTrips) record(name string) {
	h.n.Add(1)
	h.mu.Lock()
	if h.names == nil {
		h.names = map[string]int{}
	}
	h.names[name]++
	h.mu.Unlock()
}

// quiet waits until no round trip has started for 100ms: the settle of an
// exchange runs after its last answer.
func (h *roundTrips) quiet() {
	last := h.n.Load()
	for range 100 {
		time.Sleep(100 * time.Millisecond)
		now := h.n.Load()
		if now == last {
			return
		}
		last = now
	}
}

func (h *roundTrips) cmds() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.names)
}

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !connectionSetup(cmd) {
			h.record(cmd.Name())
		}
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		setup := true
		for _, c := range cmds {
			setup = setup && connectionSetup(c)
		}
		if !setup {
			h.record("pipeline")
		}
		return next(ctx, cmds)
	}
}

// connectionSetup is what go-redis sends once per new pooled connection
// (HELLO, CLIENT SETINFO): not a round trip of any request.
func connectionSetup(c redis.Cmder) bool {
	switch c.Name() {
	case "hello", "client", "auth", "select":
		return true
	}
	return false
}

func commandCalls(t testing.TB, c *redis.Client) map[string]int64 {
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				out[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return out
}

func diffCalls(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if v-before[k] != 0 {
			d[k] = v - before[k]
		}
	}
	return d
}

// TestDenialsSpeakTheDialect checks the 429s a client sees for each limit.
func TestDenialsSpeakTheDialect(t *testing.T) {
	s := newStack(t, stackOptions{config: `
policies:
  default:
    limits: {requests_per_minute: 2, tokens_per_minute: 1000000, concurrent: 10}
  tiny:
    limits: {tokens_per_minute: 50}
  broke:
    budgets: [{window: day, usd: 0.000001}]
tenants:
  small: {policy: tiny}
  poor: {policy: broke}
`})
	ctx := context.Background()
	req := func(tenant string) *sim.Request {
		return anthropicRequest(budgetBody(false), sim.Header{Name: "x-tenant-id", Value: tenant})
	}
	for i := range 2 {
		if x := s.do(ctx, 0, req("a")); x.err != nil || x.resp.Status != 200 {
			t.Fatalf("request %d: %v %+v", i, x.err, x.resp)
		}
	}
	x := s.do(ctx, 0, req("a"))
	if x.err != nil || x.resp.Status != 429 {
		t.Fatalf("third request in a minute at 2 rpm: %v %+v", x.err, x.resp)
	}
	retry, _ := strconv.Atoi(x.header("retry-after"))
	if x.header("x-tokenwarden-denied") != "org/requests" || retry < 1 || retry > 30 ||
		x.header("x-tokenwarden-ratelimit-limit-requests") != "2" || x.header("x-tokenwarden-ratelimit-remaining-requests") != "0" ||
		x.header("x-should-retry") != "" || !strings.Contains(string(x.body), `"rate_limit_error"`) {
		t.Errorf("requests denial: headers %v body %s", x.resp.Headers, x.body)
	}
	// An OpenAI request of the same tenant is refused in OpenAI's shape.
	x = s.do(ctx, 0, openaiRequest(`{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`, sim.Header{Name: "x-tenant-id", Value: "a"}))
	if x.resp.Status != 429 || !strings.Contains(string(x.body), `"code":"rate_limit_exceeded"`) || !strings.Contains(string(x.body), `"type":"requests"`) {
		t.Errorf("openai denial: %d %s", x.resp.Status, x.body)
	}

	// A request larger than the tenant's whole minute can never fit.
	x = s.do(ctx, 0, req("small"))
	if x.resp.Status != 429 || x.header("x-tokenwarden-denied") != "org/tokens" || x.header("x-should-retry") != "false" {
		t.Errorf("tokens denial: %d %v %s", x.resp.Status, x.resp.Headers, x.body)
	}
	// An exhausted budget waits for its window: no point retrying soon.
	x = s.do(ctx, 0, req("poor"))
	if x.resp.Status != 429 || x.header("x-tokenwarden-denied") != "org/budget_day" || x.header("x-should-retry") != "false" {
		t.Errorf("budget denial: %d %v %s", x.resp.Status, x.resp.Headers, x.body)
	}
	if r, _ := strconv.Atoi(x.header("retry-after")); r < 1 || r > 86400 {
		t.Errorf("a day budget's retry-after is the window's end, got %q", x.header("retry-after"))
	}
	if got := s.total("tokenwarden_admissions_total", "result", "denied_requests"); got != 2 {
		t.Errorf("denied_requests = %v", got)
	}
	// An allowed response carries the tenant's limits too, next to the provider's own.
	x = s.do(ctx, 0, req("b"))
	if x.resp.Status != 200 || x.header("x-tokenwarden-ratelimit-remaining-requests") != "1" || x.header("anthropic-ratelimit-requests-limit") == "" {
		t.Errorf("allowed response headers %v", x.resp.Headers)
	}
}

// TestClientDisconnectMidStreamIsChargedAndFreesItsSlot: a client that goes
// away mid-stream is charged from what was streamed, marked estimated, and
// its concurrency slot is released.
func TestClientDisconnectMidStreamIsChargedAndFreesItsSlot(t *testing.T) {
	s := newStack(t, stackOptions{config: `
policies:
  default:
    limits: {concurrent: 1}
    budgets: [{window: month, usd: 100}]
tenants:
  t1: {}
`})
	ctx, cancel := context.WithCancel(context.Background())
	p := s.procs[0]
	resp, err := p.filter.Do(ctx, anthropicRequest(
		`{"model":"claude-sonnet-4-5","max_tokens":400,"stream":true,"messages":[{"role":"user","content":"Tell me a long story."}]}`,
		sim.Header{Name: "x-tenant-id", Value: "t1"},
		sim.Header{Name: "x-mock-output-tokens", Value: "400"},
		sim.Header{Name: "x-mock-chunk-delay", Value: "20ms"}), s.upstream)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	// While the stream runs, the tenant's only slot is taken.
	busy := s.do(context.Background(), 0, anthropicRequest(budgetBody(false), sim.Header{Name: "x-tenant-id", Value: "t1"}))
	if busy.resp.Status != 429 || busy.header("x-tokenwarden-denied") != "org/concurrency" {
		t.Fatalf("second concurrent request: %d %v", busy.resp.Status, busy.resp.Headers)
	}
	time.Sleep(100 * time.Millisecond)
	cancel() // the client goes away
	resp.Body.Close()
	<-resp.Done()

	deadline := time.Now().Add(5 * time.Second)
	for s.total("tokenwarden_requests_total", "outcome", "estimated") == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := s.total("tokenwarden_requests_total", "outcome", "estimated"); got != 1 {
		t.Fatalf("estimated outcomes %v", got)
	}
	b := s.budget("t1", "month")
	if b.Reserved != 0 || b.Spent <= 0 {
		t.Fatalf("budget after the disconnect %+v", b)
	}
	if s.total("tokenwarden_spend_usd_total", "tenant", "t1", "source", "estimated") <= 0 {
		t.Error("the disconnected stream's spend is recorded as estimated")
	}
	// The slot is free again.
	x := s.do(context.Background(), 0, anthropicRequest(budgetBody(false), sim.Header{Name: "x-tenant-id", Value: "t1"}))
	if x.err != nil || x.resp.Status != 200 {
		t.Fatalf("after the disconnect the slot must be free: %v %+v", x.err, x.resp)
	}
}

// tally counts a burst's exchanges: answered 200, denied 429 by the named
// level and dimension (x-tokenwarden-denied), or anything else (an error
// reported on t).
type tally struct{ ok, denied, other atomic.Int64 }

func (tl *tally) count(t *testing.T, i int, deniedBy string, x exchange) {
	switch {
	case x.err == nil && x.resp.Status == 200:
		tl.ok.Add(1)
	case x.err == nil && x.resp.Status == 429 && x.header("x-tokenwarden-denied") == deniedBy:
		tl.denied.Add(1)
	default:
		tl.other.Add(1)
		if x.err != nil {
			t.Errorf("exchange %d: %v", i, x.err)
		} else {
			t.Errorf("exchange %d: %d %v %s", i, x.resp.Status, x.resp.Headers, x.body)
		}
	}
}
