package gate

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// benchLevel is one level's block in the load harness's configuration
// (test/load): its own limits and a day and a month budget.
const benchLevel = `{limits: {requests_per_minute: 100000000, tokens_per_minute: 100000000000, concurrent: 1000000}, ` +
	`budgets: [{window: day, usd: 1000000, timezone: UTC}, {window: month, usd: 1000000, timezone: UTC}]`

// benchYAML is the load harness's four-level configuration (its
// TokenwardenConfig, one org): an org, its team, and every user and key
// with limits and budgets of their own, two lanes; callers from
// jwt_authn's payload.
var benchYAML = `
identity: {from: [{jwt: {org: org_id, team: team, user: sub, key_id: kid}}], unknown: "default:anonymous", unconfigured: own}
policies:
  default: ` + benchLevel + `, output_reservation: 1024,
    lanes: {interactive: {priority: 2, share: 0.7, default: true}, batch: {priority: 1, share: 0.3}}}
prices: {gpt-4o-mini: {input: 0.15, output: 0.6, cache_read: 0.075}}
orgs:
  acme: ` + benchLevel + `, teams: {search: ` + benchLevel + `, users: ` + benchLevel + `}, keys: ` + benchLevel + `}}}}
`

// BenchmarkGateExchange is the gate's part of one small-JSON exchange of
// the load harness (an OpenAI chat completion of about 8 KB, four levels,
// the memory store): Begin, Body, the response's headers and body, Settle.
// No Envoy messages, no gRPC: what the gate itself costs.
func BenchmarkGateExchange(b *testing.B) {
	cfg, err := policy.Parse([]byte(benchYAML))
	if err != nil {
		b.Fatal(err)
	}
	g, err := New(Options{Config: policy.NewHolder(cfg), Store: limiter.NewMemory(limiter.MemoryOptions{}),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	var msgs []string
	for i := 0; len(strings.Join(msgs, ",")) < 8<<10; i++ {
		msgs = append(msgs, fmt.Sprintf(`{"role":"user","content":"message %d: the quick brown fox jumps over the lazy dog, again and again and again."}`, i))
	}
	body := []byte(`{"model":"gpt-4o-mini","messages":[` + strings.Join(msgs, ",") + `]}`)
	resp := []byte(`{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2000,"completion_tokens":20,"total_tokens":2020}}`)
	reqHeaders := post(pathChat, Header{":authority", "api.openai.com"}, Header{"authorization", "Bearer sk-test"}, Header{"x-request-id", "r-1"})
	respHeaders := HeaderList{{":status", "200"}, {"content-type", "application/json"}, {"content-length", fmt.Sprint(len(resp))},
		{"x-ratelimit-limit-requests", "10000"}, {"x-ratelimit-remaining-requests", "9999"}, {"x-ratelimit-reset-requests", "6ms"},
		{"x-ratelimit-limit-tokens", "30000000"}, {"x-ratelimit-remaining-tokens", "29990000"}, {"x-ratelimit-reset-tokens", "20ms"}}
	env := EnvoyValues{Meta: map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{
		"org_id": "acme", "team": "search", "sub": "user-7", "kid": "key-7"}}}}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		x, hv := g.Begin(ctx, Request{Headers: reqHeaders, Envoy: env})
		if hv.Reply != nil || hv.PassThrough {
			b.Fatalf("Begin: %+v", hv)
		}
		if bv := x.Body(body); bv.Reply != nil {
			b.Fatalf("Body: %d %s", bv.Reply.Status, bv.Reply.Body)
		}
		x.ResponseHeaders(respHeaders, false)
		if !x.ResponseBody(resp, true).Done {
			b.Fatal("not metered")
		}
		x.Settle()
	}
}
