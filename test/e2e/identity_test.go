package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/yaml"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
	"github.com/tokenwarden/tokenwarden/test/internal/procs"
)

// metaTenant is the tenant the processor charged, from the access-log
// metadata it wrote.
func metaTenant(x exchange) string {
	if x.resp == nil {
		return ""
	}
	return x.resp.DynamicMetadata().GetFields()[contract.MetadataNamespace].GetStructValue().GetFields()["tenant"].GetStringValue()
}

// shippedConfigs are the tokenwarden.yaml files the project ships, with the
// store replaced by the in-memory one.
func shippedConfigs(t *testing.T) map[string]string {
	t.Helper()
	root := procs.RepoRoot(t)
	out := map[string]string{"embedded defaults": string(policy.DefaultYAML())}
	cm, err := os.ReadFile(filepath.Join(root, "deploy/k8s/configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var obj struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(cm, &obj); err != nil {
		t.Fatal(err)
	}
	out["deploy/k8s/configmap.yaml"] = obj.Data["tokenwarden.yaml"]
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(store:.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README has no tokenwarden.yaml example")
	}
	out["README example"] = string(m[1])
	for name, cfg := range out {
		var doc map[string]any
		if err := yaml.Unmarshal([]byte(cfg), &doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		doc["store"] = map[string]any{}
		b, err := yaml.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = string(b)
	}
	return out
}

// Under every shipped configuration, headers a client can set do not
// change who is charged: x-tenant-id naming a configured tenant, another
// caller's key fingerprint, or anything else is ignored, and the request is
// charged to the caller its API key identifies.
func TestClientHeadersDoNotChooseWhoPays(t *testing.T) {
	body := `{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`
	for name, cfg := range shippedConfigs(t) {
		t.Run(name, func(t *testing.T) {
			s := newStack(t, stackOptions{config: cfg})
			key := "sk-ant-mallory"
			var want string
			for _, claim := range []string{"", "acme", "key-9f86d081884c7d65", policy.Fingerprint("sk-ant-victim"), "anonymous", "default"} {
				hs := []sim.Header{{Name: "x-api-key", Value: key}}
				if claim != "" {
					hs = append(hs, sim.Header{Name: "x-tenant-id", Value: claim}, sim.Header{Name: "x-team", Value: claim},
						sim.Header{Name: "x-org-id", Value: claim}, sim.Header{Name: "x-user", Value: claim})
				}
				req := anthropicRequest(body)
				req.Headers = append(req.Headers[:0:0], req.Headers...)
				for i, h := range req.Headers {
					if h.Name == "x-api-key" {
						req.Headers[i].Value = key
					}
				}
				req.Headers = append(req.Headers, hs[1:]...)
				x := s.do(context.Background(), 0, req)
				if x.err != nil || x.resp.Status != 200 {
					t.Fatalf("claim %q: %v %+v %s", claim, x.err, x.resp, x.body)
				}
				got := metaTenant(x)
				if want == "" {
					want = got
					if got == "" || got == "acme" || got == policy.Fingerprint("sk-ant-victim") {
						t.Fatalf("without any claim the caller is charged as %q", got)
					}
				}
				if got != want {
					t.Errorf("x-tenant-id/x-team %q moved the charge from %q to %q", claim, want, got)
				}
			}
		})
	}
}

// Callers the mesh authenticated are charged as themselves: a JWT that
// jwt_authn verified (its payload forwarded in metadata_context) and an
// mTLS peer (its SPIFFE ID in a request attribute), whatever headers they
// add.
func TestAuthenticatedCallersAreChargedAsThemselves(t *testing.T) {
	cfg := `
identity:
  from:
    - jwt: {org: org_id, user: sub}
    - peer: {}
  unknown: deny
  unconfigured: deny
policies:
  default:
    budgets: [{window: month, usd: 100}]
tenants:
  alice: {}
  search.indexer: {}
`
	s := newStack(t, stackOptions{config: cfg, filter: func(c *sim.Config) {
		c.ForwardingNamespaces = []string{policy.JWTNamespace}
		c.RequestAttributes = append(c.RequestAttributes, policy.PeerAttribute)
	}})
	body := `{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`
	spoof := sim.Header{Name: "x-tenant-id", Value: "search.indexer"}

	jwt := anthropicRequest(body, spoof)
	jwt.Metadata = map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{"org_id": "acme", "sub": "alice", "iss": "https://idp"}}}
	if x := s.do(context.Background(), 0, jwt); x.err != nil || x.resp.Status != 200 || metaTenant(x) != "alice" {
		t.Fatalf("JWT caller: %v %d tenant %q %s", x.err, x.resp.Status, metaTenant(x), x.body)
	}
	mtls := anthropicRequest(body, sim.Header{Name: "x-tenant-id", Value: "alice"})
	mtls.Attributes = map[string]any{policy.PeerAttribute: "spiffe://cluster.local/ns/search/sa/indexer"}
	if x := s.do(context.Background(), 0, mtls); x.err != nil || x.resp.Status != 200 || metaTenant(x) != "search.indexer" {
		t.Fatalf("mTLS caller: %v %d tenant %q %s", x.err, x.resp.Status, metaTenant(x), x.body)
	}
	for _, tenant := range []string{"alice", "search.indexer"} {
		s.waitSettled(t, tenant)
		if b := s.budget(tenant, "month"); b.Spent <= 0 {
			t.Errorf("%s was not charged: %+v", tenant, b)
		}
	}

	// A verified caller the configuration does not name is refused here
	// (unconfigured: deny), in the dialect, with nothing kept.
	stranger := anthropicRequest(body)
	stranger.Metadata = map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{"sub": "eve"}}}
	if x := s.do(context.Background(), 0, stranger); x.resp.Status != 403 || x.header(contract.DeniedHeader) != "identity" ||
		!strings.Contains(string(x.body), `"permission_error"`) {
		t.Fatalf("unconfigured caller: %d %v %s", x.resp.Status, x.resp.Headers, x.body)
	}
}

// An unidentified caller gets the configured answer — a 401 in the API's
// own error shape — and leaves no trace in the shared store.
func TestUnidentifiedCallerLeavesNoState(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	rs := redistest.Start(t, redistest.Options{})
	cfg := fmt.Sprintf(`
store: {redis: "redis://%s/0", timeout: 500ms}
identity:
  from: [{api_key_of: x-api-key}, {api_key_of: authorization}]
  unknown: deny
policies:
  default:
    limits: {requests_per_minute: 100, concurrent: 4}
    budgets: [{window: day, usd: 10}]
`, rs.Addr())
	s := newStack(t, stackOptions{config: cfg, redis: rs.Addr()})
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	before := rdb.DBSize(ctx).Val()
	anth := &sim.Request{Method: "POST", Path: "/v1/messages", Authority: "api.anthropic.com", Headers: []sim.Header{
		{Name: "content-type", Value: "application/json"}, {Name: "x-tenant-id", Value: "acme"}},
		Body: []byte(budgetBody(false))}
	x := s.do(ctx, 0, anth)
	if x.resp.Status != 401 || x.header(contract.DeniedHeader) != "identity" || !strings.Contains(string(x.body), `"authentication_error"`) {
		t.Fatalf("anthropic: %d %v %s", x.resp.Status, x.resp.Headers, x.body)
	}
	oai := &sim.Request{Method: "POST", Path: "/v1/chat/completions", Authority: "api.openai.com", Headers: []sim.Header{
		{Name: "content-type", Value: "application/json"}},
		Body: []byte(`{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`)}
	x = s.do(ctx, 0, oai)
	if x.resp.Status != 401 || !strings.Contains(string(x.body), `"invalid_api_key"`) {
		t.Fatalf("openai: %d %s", x.resp.Status, x.body)
	}
	if len(s.mock.Provider().Ledger()) != 0 {
		t.Error("an unidentified request reached the provider")
	}
	if after := rdb.DBSize(ctx).Val(); after != before {
		keys, _ := rdb.Keys(ctx, "*").Result()
		t.Fatalf("Redis held %d keys before and %d after: %v", before, after, keys)
	}
}

// 20,000 requests with random API keys, random x-tenant-id headers, random
// route policies and random model names grow neither the shared store nor
// the process without bound: callers nobody configured share 64 buckets,
// unknown names are counted and logged once each, boundedly.
func TestRandomNamesCostBoundedState(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts processes")
	}
	const (
		requests = 20_000
		buckets  = 64
		// Per tenant the store keeps its state hash, its pending set and one
		// hash per budget window (two here), all with TTLs. Per request it
		// keeps a settled marker for an hour (settle idempotency); those are
		// bounded by time, not by names, and not counted here.
		keysPerTenant = 4
		// The growth allowed for the serve process's RSS: on a Redis store
		// it keeps nothing per request, and its per-name caches are bounded.
		rssBound = 40 << 20
	)
	rs := redistest.Start(t, redistest.Options{})
	cfg := fmt.Sprintf(`
store: {redis: "redis://%s/0", timeout: 1s}
identity:
  from: [{api_key_of: x-api-key}]
  unknown: deny
  unconfigured: buckets
  unconfigured_buckets: %d
policies:
  default:
    limits: {requests_per_minute: 100000000, tokens_per_minute: 1000000000, concurrent: 100000}
    budgets: [{window: day, usd: 1000000}, {window: month, usd: 1000000}]
`, rs.Addr(), buckets)
	mock := newStack(t, stackOptions{config: "policies: {default: {}}\n"}) // only for its mock provider
	// The heap the collector may fill before collecting (serve's
	// --gc-heap-floor-mib, 48 MiB) is headroom, not state: off here, so
	// the growth measured is what the process keeps.
	p := startServe(t, cfg, "--gc-heap-floor-mib", "0")
	conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fc := gateway.DefaultFilterConfig()
	f, err := sim.New(extprocv3.NewExternalProcessorClient(conn), fc)
	if err != nil {
		t.Fatal(err)
	}
	do := func(i int, rng *rand.Rand) int {
		model := "claude-" + strconv.FormatUint(rng.Uint64(), 36)
		req := &sim.Request{Method: "POST", Path: "/v1/messages", Authority: "api.anthropic.com", Headers: []sim.Header{
			{Name: "content-type", Value: "application/json"},
			{Name: "anthropic-version", Value: "2023-06-01"},
			{Name: "x-api-key", Value: "sk-" + strconv.FormatUint(rng.Uint64(), 36)},
			{Name: "x-tenant-id", Value: "t" + strconv.FormatUint(rng.Uint64(), 36)},
			{Name: "x-mock-output-tokens", Value: "3"},
		}, Attributes: map[string]any{contract.PolicyAttribute: "p" + strconv.FormatUint(rng.Uint64(), 36)},
			Body: []byte(`{"model":"` + model + `","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}`)}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := f.Do(ctx, req, mock.upstream)
		if err != nil {
			t.Logf("request %d: %v", i, err)
			return 0
		}
		b, _ := readAll(resp)
		if resp.Status != 200 && i < 3 {
			t.Logf("request %d: %d %s", i, resp.Status, b)
		}
		return resp.Status
	}
	warm := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		if st := do(i, warm); st != 200 {
			t.Fatalf("warm-up request %d: status %d", i, st)
		}
	}
	rssBefore := procRSS(t, p)
	var ok atomic.Int64
	parallel(requests, 16, func(i int) {
		if do(i, rand.New(rand.NewPCG(uint64(i), 7))) == 200 {
			ok.Add(1)
		}
	})
	if ok.Load() != requests {
		t.Fatalf("%d of %d requests succeeded", ok.Load(), requests)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	var tenantKeys, tenants int
	seen := map[string]bool{}
	iter := rdb.Scan(context.Background(), 0, "*", 1000).Iterator()
	for iter.Next(context.Background()) {
		k := iter.Val()
		if strings.Contains(k, "}:r:") { // a request's settled marker, expiring within the hour
			continue
		}
		if strings.HasPrefix(k, "tw:{tokenwarden}:") { // the store epoch and the replicas' heartbeats
			continue
		}
		tenantKeys++
		if i := strings.Index(k, "}"); i > 0 && !seen[k[:i]] {
			seen[k[:i]] = true
			tenants++
		}
	}
	if tenants > buckets || tenantKeys > buckets*keysPerTenant {
		t.Errorf("Redis holds %d tenant keys for %d tenants after %d random callers; bound %d tenants, %d keys", tenantKeys, tenants, requests, buckets, buckets*keysPerTenant)
	}
	t.Logf("%d requests with random callers, policies and models: %d tenants, %d tenant keys in Redis (DBSIZE %d with settled markers)",
		requests, tenants, tenantKeys, rdb.DBSize(context.Background()).Val())
	if grown := procRSS(t, p) - rssBefore; grown > rssBound {
		t.Errorf("serve RSS grew by %d MB over %d requests; bound %d MB", grown>>20, requests, rssBound>>20)
	} else {
		t.Logf("serve RSS grew by %.1f MB", float64(grown)/(1<<20))
	}
	for kind, want := range map[string]float64{"caller": requests, "route_policy": requests, "model": requests} {
		got, _ := strconv.ParseFloat(p.metric(t, `tokenwarden_unconfigured_total{kind="`+kind+`"}`), 64)
		if got < want {
			t.Errorf("unconfigured %s counted %v times, want at least %v", kind, got, want)
		}
	}
}

func readAll(resp *sim.Response) ([]byte, error) {
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			<-resp.Done()
			return []byte(b.String()), nil
		}
	}
}

// procRSS reads a serve process's resident set size from /proc.
func procRSS(t *testing.T, p *serveProc) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("VmRSS not found")
	return 0
}
