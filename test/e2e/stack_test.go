// Package e2e runs tokenwarden end to end: the processor (extproc) behind
// envoy/sim — Envoy's ext_proc filter — in front of the mock provider, with
// real redis-server processes where state is shared. Nothing here is a
// looser fake than Envoy.
package e2e

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
	"github.com/tokenwarden/tokenwarden/test/internal/procs"
	"github.com/tokenwarden/tokenwarden/test/mockprovider"
)

type stackOptions struct {
	config string
	// processors is how many serve replicas share the store (default 1).
	processors int
	// redis is a redis-server address (host:port) or, with cluster, the
	// cluster's seed addresses; empty means one in-memory store.
	redis   string
	cluster []string
	// filter changes the Envoy filter config from the gateway's default.
	filter func(*sim.Config)
	mock   mockprovider.Options
	// redisHook, if set, is added to every replica's Redis client.
	redisHook redis.Hook
	// wrap, if set, puts a layer over each replica's store (serve's
	// limiter.Open stack: Leased).
	wrap func(limiter.Store) limiter.Store
}

type stack struct {
	t        testing.TB
	mock     *mockprovider.Server
	upstream sim.Upstream
	procs    []*proc
	cfg      *policy.Config
	// upstreams is the view every replica shares with the in-memory store,
	// pacer the pacing schedules.
	upstreams limiter.UpstreamView
	pacer     limiter.Pacer
}

// proc is one in-process `tokenwarden serve`: its own gRPC server, metrics
// registry and store client, like a replica.
type proc struct {
	srv   *extproc.Server
	reg   *prometheus.Registry
	store limiter.Store
	// upstreams is the replica's upstream view: shared through Redis with
	// a Redis store, else the stack's one local view.
	upstreams limiter.UpstreamView
	pacer     limiter.Pacer
	addr      string
	filter    *sim.Filter
	grpc      *grpc.Server
	conn      *grpc.ClientConn
	redis     redis.UniversalClient
	stopped   bool
}

func newStack(t testing.TB, o stackOptions) *stack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	mock, err := mockprovider.Start(ctx, o.mock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = mock.Shutdown(sctx)
	})
	up, err := sim.NewHTTPUpstream(mock.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Parse([]byte(withMeshIdentity(o.config)))
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{t: t, mock: mock, upstream: up, cfg: cfg, upstreams: limiter.NewUpstreamMemory(nil), pacer: limiter.NewPaceMemory(nil)}
	n := max(o.processors, 1)
	var shared limiter.Store
	if o.redis == "" && len(o.cluster) == 0 {
		shared = limiter.NewMemory(limiter.MemoryOptions{})
	}
	for range n {
		s.procs = append(s.procs, s.startProc(o, shared))
	}
	return s
}

func (s *stack) startProc(o stackOptions, store limiter.Store) *proc {
	t := s.t
	p := &proc{reg: prometheus.NewRegistry()}
	if store == nil {
		if len(o.cluster) > 0 {
			p.redis = redis.NewClusterClient(&redis.ClusterOptions{Addrs: o.cluster, MaxRetries: -1})
		} else {
			p.redis = redis.NewClient(&redis.Options{Addr: o.redis, MaxRetries: -1})
		}
		if o.redisHook != nil {
			p.redis.AddHook(o.redisHook)
		}
		// Generous bounds, as the client's pool had before the store bounded
		// its calls in flight: several replicas share this one process and
		// its CPU with the race detector. serve's defaults are tested by the
		// fault tests against real serve processes.
		r, err := limiter.NewRedis(limiter.RedisOptions{Client: p.redis, Timeout: 2 * time.Second, QueueTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		store = r
		u, err := limiter.NewUpstreamRedis(limiter.UpstreamRedisOptions{Client: p.redis, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		p.upstreams = u
		if p.pacer, err = limiter.NewPaceRedis(limiter.PaceRedisOptions{Client: p.redis, Timeout: 2 * time.Second}); err != nil {
			t.Fatal(err)
		}
	} else {
		p.upstreams, p.pacer = s.upstreams, s.pacer
	}
	if o.wrap != nil {
		store = o.wrap(store)
	}
	p.store = store
	p.srv, _ = procs.Processor(t, procs.ProcessorOptions{Config: policy.NewHolder(s.cfg), Store: store, Registry: p.reg, Upstreams: p.upstreams, Pacer: p.pacer})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = lis.Addr().String()
	p.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	extprocv3.RegisterExternalProcessorServer(p.grpc, p.srv)
	go func() { _ = p.grpc.Serve(lis) }()
	p.conn, err = grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	fc := gateway.DefaultFilterConfig()
	fc.NoTrace, fc.NoRecordBody = false, false
	// SSE bodies reach the processor split at random byte boundaries.
	fc.Chunking = sim.Chunking{Random: true, Seed: 7, MaxSize: 97, EmptyLast: sim.EmptyLastRandom}
	if o.filter != nil {
		o.filter(&fc)
	}
	p.filter, err = sim.New(extprocv3.NewExternalProcessorClient(p.conn), fc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *proc) stop() {
	if p.stopped {
		return
	}
	p.stopped = true
	p.conn.Close()
	p.grpc.Stop()
	if p.redis != nil {
		_ = p.upstreams.Close()
		p.redis.Close()
	}
}

// meshIdentity is what the stack's configurations say about callers unless
// a test states its own identity: the stack plays the mesh, which sets
// x-tenant-id (and would strip a client's copy), so it is trusted here.
const meshIdentity = `identity:
  from:
    - header: x-tenant-id
      trusted: true
  unknown: default:anonymous
  unconfigured: own
`

func withMeshIdentity(config string) string {
	if strings.Contains(config, "identity:") {
		return config
	}
	return meshIdentity + config
}

// exchange is one finished HTTP exchange as the client saw it.
type exchange struct {
	resp *sim.Response
	body []byte
	err  error
}

func (e exchange) header(name string) string {
	v, _ := e.resp.Header(name)
	return v
}

// do runs one request through replica i and reads the whole response.
func (s *stack) do(ctx context.Context, i int, req *sim.Request) exchange {
	p := s.procs[i%len(s.procs)]
	resp, err := p.filter.Do(ctx, req, s.upstream)
	if err != nil {
		return exchange{err: err}
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	select {
	case <-resp.Done():
	case <-time.After(10 * time.Second):
		s.t.Errorf("exchange did not finish")
	}
	return exchange{resp: resp, body: body, err: err}
}

func anthropicRequest(body string, headers ...sim.Header) *sim.Request {
	return &sim.Request{
		Method: "POST", Path: "/v1/messages", Authority: "api.anthropic.com",
		Headers: append([]sim.Header{
			{Name: "content-type", Value: "application/json"},
			{Name: "x-api-key", Value: "sk-ant-test"},
			{Name: "anthropic-version", Value: "2023-06-01"},
		}, headers...),
		Body: []byte(body),
	}
}

func openaiRequest(body string, headers ...sim.Header) *sim.Request {
	return &sim.Request{
		Method: "POST", Path: "/v1/chat/completions", Authority: "api.openai.com",
		Headers: append([]sim.Header{
			{Name: "content-type", Value: "application/json"},
			{Name: "authorization", Value: "Bearer sk-test"},
		}, headers...),
		Body: []byte(body),
	}
}

// counter sums a metric's series whose labels include every given pair.
func counter(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// total sums a counter across every replica.
func (s *stack) total(name string, labels ...string) float64 {
	var sum float64
	for _, p := range s.procs {
		sum += counter(s.t, p.reg, name, labels...)
	}
	return sum
}

// budget reads one budget window of a tenant from replica 0's store.
func (s *stack) budget(tenant, window string) limiter.BudgetState {
	s.t.Helper()
	p, _ := s.cfg.Policy(tenant, "")
	for _, lb := range p.LimiterBudgets(time.Now()) {
		if lb.Name != window {
			continue
		}
		st, err := s.procs[0].store.Budgets(context.Background(), tenant, []limiter.Budget{lb})
		if err != nil {
			s.t.Fatal(err)
		}
		return st[0]
	}
	s.t.Fatalf("tenant %s has no %s budget", tenant, window)
	return limiter.BudgetState{}
}

// ledgerSince returns the mock's ledger entries after the first n.
func (s *stack) ledgerSince(n int) []mockprovider.LedgerEntry {
	l := s.mock.Provider().Ledger()
	if n > len(l) {
		return nil
	}
	return l[n:]
}

// nanoPrices are the published prices of the models these tests use, in
// nano-USD per token ($1 per million tokens is 1000), written out
// independently of the accounting package, so a pricing bug cannot cancel
// itself out: Anthropic's from https://docs.anthropic.com/en/docs/about-claude/pricing,
// OpenAI's from https://platform.openai.com/docs/pricing (checked 2025-07-04;
// OpenAI lists no cache-write price, so a cache write would cost input).
var nanoPrices = map[string][5]int64{ // input, output, 5m write, 1h write, read
	"claude-sonnet-4-5": {3000, 15000, 3750, 6000, 300},
	"claude-haiku-4-5":  {1000, 5000, 1250, 2000, 100},
	"claude-opus-4-5":   {5000, 25000, 6250, 10000, 500},
	"gpt-4o":            {2500, 10000, 2500, 2500, 1250}, // $2.50 in, $10 out, $1.25 cached input
	"gpt-4o-mini":       {150, 600, 150, 150, 75},        // $0.15 in, $0.60 out, $0.075 cached input
	"gpt-test":          {50, 400, 63, 100, 5},           // from the tests' price override {input: 0.05, output: 0.4}
	"gpt-4.1-nano":      {100, 400, 125, 200, 25},        // the tiers test's override {input: 0.1, output: 0.4, cache_read: 0.025}
	// The surfaces tests configure these themselves, from
	// https://openai.com/api/pricing (gpt-5.6-terra: $2 in, $12 out, $2.50
	// cache write, $0.20 cached; text-embedding-3-small: $0.02) and
	// https://ai.google.dev/gemini-api/docs/pricing (gemini-2.5-flash: $0.30
	// in, $2.50 out, $0.03 cached).
	"gpt-5.6-terra":          {2000, 12000, 2500, 4000, 200},
	"text-embedding-3-small": {20, 0, 25, 40, 2},
	"gemini-2.5-flash":       {300, 2500, 375, 600, 30},
}

func expectedCost(t testing.TB, model string, u mockprovider.Tokens) int64 {
	t.Helper()
	p, ok := nanoPrices[model]
	if !ok {
		t.Fatalf("no test price for %s", model)
	}
	return u.InputTokens*p[0] + u.OutputTokens*p[1] + u.CacheWrite5mTokens*p[2] + u.CacheWrite1hTokens*p[3] + u.CacheReadTokens*p[4]
}

// parallel runs f(i) for i in [0, n) on at most workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// storeCase is one way a shared-state test runs the stack.
type storeCase struct {
	name string
	opts func(t *testing.T) stackOptions
}

// storeCases are the stores every shared-state test runs on: one replica
// on the memory store, three replicas on one Redis and, with cluster, three
// on a three-master Redis Cluster.
func storeCases(cfg string, cluster bool) []storeCase {
	cs := []storeCase{
		{"memory, one replica", func(t *testing.T) stackOptions { return stackOptions{config: cfg} }},
		{"redis, three replicas", func(t *testing.T) stackOptions {
			return stackOptions{config: cfg, processors: 3, redis: redistest.Start(t, redistest.Options{}).Addr()}
		}},
	}
	if cluster {
		cs = append(cs, storeCase{"redis cluster, three replicas", func(t *testing.T) stackOptions {
			return stackOptions{config: cfg, processors: 3, cluster: redistest.StartCluster(t, 3).Addrs()}
		}})
	}
	return cs
}

// patient gives the filter a message timeout of 10s: for the 500-way
// bursts, whose claims are about exact money under concurrency, not about
// latency on a 2-core machine that runs other test packages at the same
// time (there, 2s answers are late and Envoy would answer 504).
func patient(c *sim.Config) {
	c.MessageTimeout = 10 * time.Second
	if c.MaxMessageTimeout < c.MessageTimeout {
		c.MaxMessageTimeout = c.MessageTimeout
	}
}
