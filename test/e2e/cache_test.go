package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

const cacheConfig = `
policies:
  default:
    limits: {requests_per_minute: 100000, tokens_per_minute: 100000000, concurrent: 1000}
    budgets: [{window: day, usd: 1000}]
    response_cache: {enabled: true, ttl: 10m}
tenants:
  acme: {}
  beta: {}
`

// withResponseCache rewires every replica of s as serve does when the
// configuration enables the cache: the same store, plus cache(i).
func withResponseCache(t *testing.T, s *stack, cache func(i int) limiter.ResponseCache) {
	t.Helper()
	for i, p := range s.procs {
		p.conn.Close()
		p.grpc.Stop()
		p.reg = prometheus.NewRegistry()
		m := observe.NewMetrics(p.reg)
		g, err := gate.New(gate.Options{Config: policy.NewHolder(s.cfg), Store: p.store, ResponseCache: cache(i), Observer: m,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if p.srv, err = extproc.NewServer(extproc.Options{Gate: g, Metrics: m}); err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p.addr = lis.Addr().String()
		p.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
		extprocv3.RegisterExternalProcessorServer(p.grpc, p.srv)
		go func() { _ = p.grpc.Serve(lis) }()
		if p.conn, err = grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			t.Fatal(err)
		}
		fc := gateway.DefaultFilterConfig()
		fc.Chunking = sim.Chunking{Random: true, Seed: 11, MaxSize: 97, EmptyLast: sim.EmptyLastRandom}
		if p.filter, err = sim.New(extprocv3.NewExternalProcessorClient(p.conn), fc); err != nil {
			t.Fatal(err)
		}
	}
}

// newCacheStack is two replicas on one Redis, each with its own cache
// client on it, as two serve processes would have.
func newCacheStack(t *testing.T, config string) *stack {
	rs := redistest.Start(t, redistest.Options{})
	s := newStack(t, stackOptions{config: config, redis: rs.Addr(), processors: 2})
	withResponseCache(t, s, func(i int) limiter.ResponseCache {
		c, closeCache, err := limiter.OpenResponseCache(limiter.OpenOptions{Redis: "redis://" + rs.Addr(), Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = closeCache() })
		return c
	})
	return s
}

func tenantH(t string) sim.Header { return sim.Header{Name: "x-tenant-id", Value: t} }

// sseEvents splits a stream into its events.
func sseEvents(b []byte) []string {
	var out []string
	for e := range strings.SplitSeq(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n\n") {
		if strings.TrimSpace(e) != "" {
			out = append(out, e)
		}
	}
	return out
}

// TestResponseCacheEndToEnd: through envoy/sim, on two replicas sharing one
// Redis, a repeated deterministic request — JSON and streamed, Anthropic
// and OpenAI — is answered from the cache by the other replica with the
// first answer's bytes, and the provider sees it once; the hit charges no
// budget, and the saved-dollars counter equals the skipped usage priced.
func TestResponseCacheEndToEnd(t *testing.T) {
	s := newCacheStack(t, cacheConfig)
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		req   func(body string, h ...sim.Header) *sim.Request
		body  string
		model string
	}{
		{"anthropic json", anthropicRequest, `{"model":"claude-sonnet-4-5","max_tokens":300,"temperature":0,"messages":[{"role":"user","content":"Name three primes."}]}`, "claude-sonnet-4-5"},
		{"anthropic stream", anthropicRequest, `{"model":"claude-sonnet-4-5","max_tokens":300,"temperature":0,"stream":true,"messages":[{"role":"user","content":"Name three primes."}]}`, "claude-sonnet-4-5"},
		{"openai json", openaiRequest, `{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"Name three primes."}]}`, "gpt-4o-mini"},
		{"openai stream", openaiRequest, `{"model":"gpt-4o-mini","temperature":0,"stream":true,"messages":[{"role":"user","content":"Name three primes."}]}`, "gpt-4o-mini"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(s.mock.Provider().Ledger())
			// The fill counter is cumulative across the cases: wait for this
			// case's own fill, not any.
			stored := s.total("tokenwarden_response_cache_fills_total", "result", "stored")
			first := s.do(ctx, 0, tc.req(tc.body, tenantH("acme")))
			if first.err != nil || first.resp.Status != 200 {
				t.Fatalf("first: %v %+v", first.err, first.resp)
			}
			if got := first.header(gate.CacheHeader); got != gate.CacheMiss {
				t.Errorf("first: %s = %q", gate.CacheHeader, got)
			}
			waitFor(t, func() bool { return s.total("tokenwarden_response_cache_fills_total", "result", "stored") >= stored+1 })
			spent := s.budget("acme", "day").Spent
			savedBefore := s.total("tokenwarden_response_cache_saved_usd_total")

			second := s.do(ctx, 1, tc.req(tc.body, tenantH("acme")))
			if second.err != nil || second.resp.Status != 200 || !second.resp.LocalReply {
				t.Fatalf("second: %v %+v", second.err, second.resp)
			}
			if got := second.header(gate.CacheHeader); got != gate.CacheHit {
				t.Errorf("second: %s = %q", gate.CacheHeader, got)
			}
			if !bytes.Equal(first.body, second.body) {
				t.Errorf("the hit's body differs from the first answer:\n%s\n---\n%s", first.body, second.body)
			}
			if strings.Contains(tc.name, "stream") {
				a, b := sseEvents(first.body), sseEvents(second.body)
				if !slices.Equal(a, b) || len(a) < 3 {
					t.Errorf("events: %d then %d, equal %v", len(a), len(b), slices.Equal(a, b))
				}
				if ct := second.header("content-type"); !strings.HasPrefix(ct, "text/event-stream") {
					t.Errorf("hit content-type %q", ct)
				}
			}
			l := s.ledgerSince(n)
			if len(l) != 1 {
				t.Fatalf("the provider saw %d requests, want 1", len(l))
			}
			if got := s.budget("acme", "day").Spent; got != spent {
				t.Errorf("the hit changed the day's spend: %d -> %d", spent, got)
			}
			saved := s.total("tokenwarden_response_cache_saved_usd_total") - savedBefore
			want := float64(expectedCost(t, tc.model, l[0].Reported)) / 1e9
			if math.Abs(saved-want) > 1e-12 {
				t.Errorf("saved $%.9f, want the skipped usage priced: $%.9f", saved, want)
			}
		})
	}
	if got := s.total("tokenwarden_response_cache_lookups_total", "result", "hit"); got != 4 {
		t.Errorf("hits counted: %v", got)
	}
}

// TestResponseCacheSafety: orgs never share, a client no-cache bypasses,
// and an error, a truncated stream and cancelled streams are never stored.
func TestResponseCacheSafety(t *testing.T) {
	s := newCacheStack(t, cacheConfig)
	ctx := context.Background()
	seen := func() int { return len(s.mock.Provider().Ledger()) }
	body := func(prompt string, extra string) string {
		return `{"model":"claude-sonnet-4-5","max_tokens":300,"temperature":0` + extra + `,"messages":[{"role":"user","content":"` + prompt + `"}]}`
	}
	stored := func() float64 { return s.total("tokenwarden_response_cache_fills_total", "result", "stored") }
	// Every miss ends in one fill, stored or not: waiting for it keeps one
	// case's store from landing in the next.
	fills := func() float64 { return s.total("tokenwarden_response_cache_fills_total") }
	settled := func(f0 float64, n int) {
		t.Helper()
		waitFor(t, func() bool { return fills() >= f0+float64(n) })
	}

	t.Run("two orgs", func(t *testing.T) {
		n := seen()
		b := body("orgs", "")
		for i, tenant := range []string{"acme", "beta", "acme", "beta"} {
			st := stored()
			e := s.do(ctx, i, anthropicRequest(b, tenantH(tenant)))
			if e.err != nil || e.resp.Status != 200 {
				t.Fatalf("%s: %v", tenant, e.err)
			}
			want := gate.CacheMiss
			if i >= 2 {
				want = gate.CacheHit
			} else {
				waitFor(t, func() bool { return stored() > st })
			}
			if got := e.header(gate.CacheHeader); got != want {
				t.Errorf("request %d (%s): %s", i, tenant, got)
			}
		}
		if got := seen() - n; got != 2 {
			t.Errorf("provider saw %d requests, want one per org", got)
		}
	})
	t.Run("no-cache", func(t *testing.T) {
		b := body("orgs", "")
		n, f0 := seen(), fills()
		e := s.do(ctx, 0, anthropicRequest(b, tenantH("acme"), sim.Header{Name: "cache-control", Value: "no-cache"}))
		settled(f0, 1)
		if e.err != nil || e.header(gate.CacheHeader) != gate.CacheBypass || seen()-n != 1 {
			t.Errorf("no-cache: %v %q, provider saw %d", e.err, e.header(gate.CacheHeader), seen()-n)
		}
	})
	// Each case: a request whose answer must not be stored, then the same
	// request plainly: it must reach the provider.
	for _, tc := range []struct {
		name  string
		body  string
		hdrs  []sim.Header
		abort bool
	}{
		{"error", body("err", ""), []sim.Header{{Name: "x-mock-status", Value: "500"}}, false},
		{"truncated stream", body("trunc", `,"stream":true`), []sim.Header{{Name: "x-mock-output-tokens", Value: "400"}}, false},
		{"upstream cut the stream", body("cut", `,"stream":true`), []sim.Header{{Name: "x-mock-disconnect-after", Value: "3"}}, false},
		{"client cancelled the stream", body("cancel", `,"stream":true`), []sim.Header{{Name: "x-mock-chunk-delay", Value: "40ms"}}, true},
		{"mid-stream error", body("midstream", `,"stream":true`), []sim.Header{{Name: "x-mock-error-after", Value: "3"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, st, f0 := seen(), stored(), fills()
			req := anthropicRequest(tc.body, append([]sim.Header{tenantH("acme")}, tc.hdrs...)...)
			if tc.abort {
				cctx, cancel := context.WithCancel(ctx)
				resp, err := s.procs[0].filter.Do(cctx, req, s.upstream)
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 64)
				_, _ = resp.Body.Read(buf)
				cancel()
				_ = resp.Body.Close()
				<-resp.Done()
			} else {
				_ = s.do(ctx, 0, req)
			}
			settled(f0, 1)
			if stored() != st {
				t.Fatalf("stored: %v -> %v", st, stored())
			}
			e := s.do(ctx, 1, anthropicRequest(tc.body, tenantH("acme")))
			if e.err != nil || e.header(gate.CacheHeader) != gate.CacheMiss {
				t.Errorf("repeat: %v %q", e.err, e.header(gate.CacheHeader))
			}
			settled(f0, 2)
			// The mock's ledger lists answers that carry usage, which a
			// scripted error does not.
			want := 2
			if tc.name == "error" {
				want = 1
			}
			if got := seen() - n; got != want {
				t.Errorf("the provider's ledger grew by %d, want %d", got, want)
			}
		})
	}
	for _, r := range []string{gate.FillUpstreamError, gate.FillTruncated, gate.FillIncomplete} {
		if s.total("tokenwarden_response_cache_fills_total", "result", r) == 0 {
			t.Errorf("no fill counted as %s", r)
		}
	}
}

// TestResponseCacheLatency reports a hit's latency through the gateway (an
// HTTP front on envoy/sim) next to a miss's, measured in one run: the
// machine is shared and noisy, so only the ratio means anything.
func TestResponseCacheLatency(t *testing.T) {
	s := newCacheStack(t, cacheConfig)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gw, err := gateway.Start(ctx, gateway.Options{Listen: "127.0.0.1:0", Upstream: s.mock.URL(), Processor: s.procs[0].addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	post := func(prompt string) (time.Duration, string) {
		t.Helper()
		body := `{"model":"claude-sonnet-4-5","max_tokens":300,"temperature":0,"messages":[{"role":"user","content":"` + prompt + `"}]}`
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+gw.Addr()+"/v1/messages", strings.NewReader(body))
		req.Header.Set("content-type", "application/json")
		req.Header.Set("x-api-key", "sk-ant-test")
		req.Header.Set("anthropic-version", "2023-06-01")
		req.Header.Set("x-tenant-id", "acme")
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start), resp.Header.Get(gate.CacheHeader)
	}
	const n = 40
	var miss, hit []time.Duration
	for i := range n {
		st := s.total("tokenwarden_response_cache_fills_total", "result", "stored")
		d, h := post(fmt.Sprint("latency ", i))
		if h != gate.CacheMiss {
			t.Fatalf("miss %d: %q", i, h)
		}
		miss = append(miss, d)
		waitFor(t, func() bool { return s.total("tokenwarden_response_cache_fills_total", "result", "stored") > st })
	}
	for i := range n {
		d, h := post(fmt.Sprint("latency ", i))
		if h != gate.CacheHit {
			t.Fatalf("hit %d: %q", i, h)
		}
		hit = append(hit, d)
	}
	slices.Sort(miss)
	slices.Sort(hit)
	mm, mh := miss[n/2], hit[n/2]
	t.Logf("through the gateway, %d each: miss median %s p90 %s; hit median %s p90 %s; hit/miss median ratio %.2f",
		n, mm, miss[n*9/10], mh, hit[n*9/10], float64(mh)/float64(mm))
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
