package e2e

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

const cooldownConfig = `
policies:
  default:
    budgets: [{window: month, usd: 100}]
tenants:
  cool: {}
`

const cooldownBody = `{"model":"claude-haiku-4-5","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}`

// TestProviderCooldownSharedAcrossReplicas: three replicas on one Redis.
// The provider answers one replica's request with 429 and retry-after: 20;
// from then on no replica sends that upstream anything: every request on
// every replica, sent as soon as the client has the provider's 429, is
// answered locally with 429, the remaining wait, x-should-retry: true and
// x-tokenwarden-denied: upstream/cooldown — and the provider counts no
// request after its 429. Another credential is another upstream and still
// goes through.
func TestProviderCooldownSharedAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := newStack(t, stackOptions{config: cooldownConfig, processors: 3, redis: srv.Addr()})
	tenant := sim.Header{Name: "x-tenant-id", Value: "cool"}
	ctx := context.Background()

	x := s.do(ctx, 0, anthropicRequest(cooldownBody, tenant,
		sim.Header{Name: "x-mock-status", Value: "429"}, sim.Header{Name: "x-mock-retry-after", Value: "20"}))
	if x.err != nil || x.resp.Status != 429 || x.resp.LocalReply || x.header("retry-after") != "20" {
		t.Fatalf("the provider's own 429 reaches the client as it was: %v %+v %s", x.err, x.resp, x.body)
	}
	before := s.mock.Provider().Served(0)

	// At once, on every replica, several requests each.
	var wg sync.WaitGroup
	results := make([]exchange, 9)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = s.do(ctx, i%3, anthropicRequest(cooldownBody, tenant))
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil || r.resp.Status != 429 || !r.resp.LocalReply {
			t.Fatalf("request %d on replica %d: %v %+v %s", i, i%3, r.err, r.resp, r.body)
		}
		secs, err := strconv.Atoi(r.header("retry-after"))
		ms, err2 := strconv.Atoi(r.header("retry-after-ms"))
		if err != nil || err2 != nil || secs < 15 || secs > 20 || ms > 20000 || ms < 15000 {
			t.Errorf("request %d: retry-after %q retry-after-ms %q, want the remaining wait", i, r.header("retry-after"), r.header("retry-after-ms"))
		}
		if r.header("x-should-retry") != "true" || r.header("x-tokenwarden-denied") != "upstream/cooldown" {
			t.Errorf("request %d: x-should-retry %q x-tokenwarden-denied %q", i, r.header("x-should-retry"), r.header("x-tokenwarden-denied"))
		}
	}
	if n := s.mock.Provider().Served(0) - before; n != 0 {
		t.Fatalf("the provider received %d requests after its 429, want 0", n)
	}
	if got := s.total("tokenwarden_upstream_cooldown_denials_total", "host", "api.anthropic.com"); got != 9 {
		t.Errorf("cool-down denials counted %v, want 9", got)
	}
	if got := s.total("tokenwarden_upstream_cooldowns_total", "code", "429"); got != 1 {
		t.Errorf("cool-downs counted %v, want 1", got)
	}

	// Another key is another upstream (its own provider limits).
	other := anthropicRequest(cooldownBody, tenant)
	for i, h := range other.Headers {
		if h.Name == "x-api-key" {
			other.Headers[i].Value = "sk-ant-other"
		}
	}
	if r := s.do(ctx, 2, other); r.err != nil || r.resp.Status != 200 {
		t.Fatalf("another credential is not cooling down: %v %+v %s", r.err, r.resp, r.body)
	}
}
