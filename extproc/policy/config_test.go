package policy

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/limiter"
)

const full = `
store:
  redis: redis://127.0.0.1:6379/0
  timeout: 30ms
  on_failure: local
  replicas: 3
identity:
  from:
    - jwt: {org: org_id, user: sub}
    - peer: {}
    - header: X-Tenant-ID
      trusted: true
      level: team
    - api_key_of: x-api-key
  unknown: default:anon
  unconfigured: own
policies:
  default:
    limits: {requests_per_minute: 600, tokens_per_minute: 400000, concurrent: 32}
    budgets:
      - {window: day, usd: 50, timezone: UTC, alert_at: [0.8, 0.95]}
      - {window: month, usd: 1000}
    models:
      allow: ["claude-*", "gpt-*"]
      aliases: {fast: claude-haiku-4-5}
      downgrade:
        - {when_budget_used: 0.8, from: "claude-opus-*", to: claude-sonnet-4-5}
        - {when_budget_used: 0.95, from: "claude-*", to: claude-haiku-4-5}
        - {when_budget_used: 0.9, level: org, window: month, from: "claude-opus-*", to: claude-haiku-4-5}
    prompt_cache: {inject: true, ttl: 1h}
  batch:
    limits: {requests_per_minute: 60}
    on_failure: closed
    output_reservation: 1024
tenants:
  acme:
    policy: batch
    limits: {concurrent: 4}
    budgets: [{window: month, usd: 5000}, {window: week, usd: 300, timezone: Europe/Berlin}]
prices:
  claude-sonnet-4-5: {input: 3, output: 15, cache_write_5m: 3.75, cache_write_1h: 6, cache_read: 0.30}
  my-llama: {input: 0.2, output: 0.6}
`

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.Timeout != 30*time.Millisecond || c.Store.Replicas != 3 || !c.Store.Shared() {
		t.Errorf("store = %+v", c.Store)
	}
	id := c.Identity
	if len(id.Sources) != 4 || id.Unknown.Default != "anon" || id.Unconfigured != UnconfiguredOwn {
		t.Fatalf("identity = %+v", id)
	}
	if s := id.Sources[0]; s.Kind != SourceMetadata || s.Namespace != JWTNamespace || s.Key != JWTPayloadKey || s.Fields != [levels]string{"org_id", "", "sub", ""} {
		t.Errorf("jwt source = %+v", s)
	}
	if s := id.Sources[1]; s.Kind != SourcePeer || s.Attribute != PeerAttribute {
		t.Errorf("peer source = %+v", s)
	}
	if s := id.Sources[2]; s.Kind != SourceHeader || s.Header != "x-tenant-id" || s.Level != LevelTeam {
		t.Errorf("header source = %+v", s)
	}
	if s := id.Sources[3]; s.Kind != SourceAPIKey || s.Header != "x-api-key" {
		t.Errorf("api key source = %+v", s)
	}
	if !c.Configured("anon") || !c.Configured("acme") || c.Configured("someone") {
		t.Error("configured callers: tenants and the default caller")
	}

	p, known := c.Policy("someone", "")
	if !known || p.Name != "default" || p.Limits.RequestsPerMinute != 600 || len(p.Budgets) != 2 {
		t.Fatalf("default policy = %+v", p)
	}
	if p.Budgets[0].Cap != 50_000_000_000 || len(p.Budgets[0].Alerts) != 3 {
		t.Errorf("day budget = %+v", p.Budgets[0])
	}
	if p.Models.Downgrade[0].WhenBudgetUsed != 0.95 {
		t.Errorf("downgrades must be ordered strongest first: %+v", p.Models.Downgrade)
	}
	if d := p.Models.Downgrade[1]; !d.HasLevel || d.Level != LevelOrg || d.Window != "month" || p.Models.Downgrade[0].HasLevel {
		t.Errorf("the org-level downgrade = %+v; the caller's own = %+v", d, p.Models.Downgrade[0])
	}
	if !p.PromptCache.Inject || p.PromptCache.TTL != "1h" {
		t.Errorf("prompt cache = %+v", p.PromptCache)
	}

	// acme's own policy is batch; the override replaces concurrency and the
	// month budget, adds a week budget, and keeps the rest.
	a, _ := c.Policy("acme", "")
	if a.Name != "batch" || a.Limits.RequestsPerMinute != 60 || a.Limits.Concurrent != 4 || a.OnFailure != limiter.FailClosed || a.OutputReservation != 1024 {
		t.Errorf("acme policy = %+v", a)
	}
	if len(a.Budgets) != 2 || a.Budgets[0].Window != accounting.Week || a.Budgets[1].Cap != 5000_000_000_000 {
		t.Errorf("acme budgets = %+v", a.Budgets)
	}
	if a.Budgets[0].Location.String() != "Europe/Berlin" {
		t.Errorf("week budget timezone = %s", a.Budgets[0].Location)
	}
	// The route's policy wins over the tenant's; an unknown route policy is
	// reported and falls back.
	ad, known := c.Policy("acme", "default")
	if !known || ad.Name != "default" || ad.Limits.Concurrent != 4 {
		t.Errorf("acme on a default route = %+v", ad)
	}
	if _, known := c.Policy("acme", "nope"); known {
		t.Error("an unknown route policy must be reported")
	}
	if c.TenantLabel("acme") != "acme" || c.TenantLabel("random") != OtherLabel {
		t.Error("tenant labels must be bounded to configured tenants")
	}

	price, canonical, known := c.Prices.Lookup("my-llama", time.Now())
	if !known || canonical != "my-llama" || price.Input != 200 || price.Output != 600 {
		t.Errorf("price override = %+v %q %v", price, canonical, known)
	}
}

// Prices in tokenwarden.yaml: one price per model as before, or dated
// prices, tiers and a long-context tier; each replaces the embedded prices
// of that model at every time.
func TestParsePrices(t *testing.T) {
	c, err := Parse([]byte(`
policies: {}
prices:
  my-llama: {input: 0.2, output: 0.6}
  gpt-4o:
    - {input: 2.5, output: 10, cache_read: 1.25, tiers: {batch: 0.5, flex: 0.5, priority: 2}}
    - from: 2027-01-01
      input: 2
      output: 8
      cache_read: 1
      long_context: {above: 128000, input: 4, output: 16, cache_read: 2}
fallback_price: {input: 100, output: 400}
`))
	if err != nil {
		t.Fatal(err)
	}
	jan := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	before, _, _ := c.Prices.Lookup("gpt-4o", jan.Add(-time.Nanosecond))
	if before.Input != 2500 || before.CacheRead != 1250 || before.Tiers.Priority != (accounting.Multiplier{Num: 2, Den: 1}) {
		t.Errorf("gpt-4o before 2027: %+v", before)
	}
	after, _, _ := c.Prices.Lookup("gpt-4o-2024-08-06", jan)
	if after.Input != 2000 || after.LongContext.Above != 128000 || after.LongContext.Input != 4000 || after.Tiers != (accounting.Tiers{}) {
		t.Errorf("gpt-4o from 2027: %+v", after)
	}
	if p, _, _ := c.Prices.Lookup("my-llama", jan); p.Input != 200 || p.Output != 600 {
		t.Errorf("flat override: %+v", p)
	}
	if p, c, known := c.Prices.Lookup("mistral-large", jan); known || c != OtherLabel || p.Input != 100_000 || p.Output != 400_000 {
		t.Errorf("fallback: %+v %s %v", p, c, known)
	}
	// The embedded table is still there under the overrides.
	if _, canonical, known := c.Prices.Lookup("gemini-2.5-pro", jan); !known || canonical != "gemini-2.5-pro" {
		t.Error("the embedded table is gone")
	}
}

func TestDefaultsEmbeddedParse(t *testing.T) {
	c, err := Parse(DefaultYAML())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := c.Policy("anonymous", "")
	if !p.Enforces() || c.Store.Shared() {
		t.Errorf("embedded default: policy %+v store %+v", p, c.Store)
	}
	// An empty or schema-less file is what a ConfigMap mid-rewrite or a
	// file cut short looks like: refused, never read as "no limits".
	for name, data := range map[string]string{
		"nil":          "",
		"whitespace":   " \n\t\n",
		"comments":     "# tokenwarden.yaml\n---\n# nothing here\n",
		"no policies":  "store: {timeout: 50ms}\n",
		"null":         "policies:\n",
		"cut short":    "policies:\n  default:\n    limits: {requests_per",
		"not yaml map": "- a\n- b\n",
	} {
		if _, err := Parse([]byte(data)); err == nil {
			t.Errorf("%s: parsed, want an error", name)
		}
	}
	explicit, err := Parse([]byte("policies: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := explicit.Policy("x", ""); p == nil || p.Enforces() {
		t.Errorf("policies: {} must yield an unlimited default policy, got %+v", p)
	}
}

func TestParseErrorsNameThePath(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown field", "store: {redis: redis://x, timout: 1s}", `unknown field "timout"`},
		{"bad window", "policies: {default: {budgets: [{window: fortnight, usd: 5}]}}", "policies.default.budgets[0].window"},
		{"huge usd", "policies: {default: {budgets: [{window: day, usd: 2e9}]}}", "policies.default.budgets[0].usd: 2e+09 is above the largest budget"},
		{"missing usd", "policies: {default: {budgets: [{window: day}]}}", "policies.default.budgets[0].usd"},
		{"duplicate window", "policies: {default: {budgets: [{window: day, usd: 1}, {window: day, usd: 2}]}}", "policies.default.budgets[1].window"},
		{"bad timezone", "policies: {p: {budgets: [{window: day, usd: 1, timezone: Mars/Olympus}]}}", "policies.p.budgets[0].timezone"},
		{"bad alert", "policies: {p: {budgets: [{window: day, usd: 1, alert_at: [1.5]}]}}", "policies.p.budgets[0].alert_at: alert ratio 1.5"},
		{"negative limit", "policies: {p: {limits: {requests_per_minute: -1}}}", "policies.p.limits.requests_per_minute"},
		{"bad burst", "policies: {p: {limits: {burst: 2}}}", "policies.p.limits.burst"},
		{"bad failure", "store: {on_failure: maybe}", "store.on_failure"},
		{"policy failure", "policies: {p: {on_failure: sometimes}}", "policies.p.on_failure"},
		{"bad redis url", "store: {redis: 127.0.0.1:6379}", "store.redis"},
		{"timeout too long", "store: {timeout: 1m}", "store.timeout"},
		{"bad duration", "store: {timeout: soon}", "soon"},
		{"tenant unknown policy", "tenants: {acme: {policy: gold}}", "tenants.acme.policy"},
		{"tenant bad name", "tenants: {'a b': {}}", "tenants.a b"},
		{"tenant override error", "tenants: {acme: {budgets: [{window: year, usd: 1}]}}", "tenants.acme.budgets[0].window"},
		{"too many sources", "identity: {from: [{api_key_of: a}, {api_key_of: b}, {api_key_of: c}, {api_key_of: d}, {api_key_of: e}, {api_key_of: f}, {api_key_of: g}, {api_key_of: h}, {api_key_of: i}]}", "identity.from: 9 sources"},
		{"source both", "identity: {from: [{header: a, api_key_of: b}]}", "identity.from[0]: set exactly one"},
		{"untrusted header", "identity: {from: [{header: x-tenant-id}]}", "identity.from[0].header: \"x-tenant-id\" is a value any client can send"},
		{"trusted on a key source", "identity: {from: [{api_key_of: x-api-key, trusted: true}]}", "trusted and level apply to a header source only"},
		{"bad level", "identity: {from: [{header: x-team, trusted: true, level: division}]}", "identity.from[0].level"},
		{"jwt without fields", "identity: {from: [{jwt: {}}]}", "identity.from[0].jwt: map at least one"},
		{"no sources", "identity: {from: []}", "identity.from: name at least one source"},
		{"bad unknown", "identity: {from: [{peer: {}}], unknown: allow}", "identity.unknown"},
		{"bad default caller", "identity: {from: [{peer: {}}], unknown: 'default:a b'}", "identity.unknown: default caller"},
		{"bad unconfigured", "identity: {from: [{peer: {}}], unconfigured: maybe}", "identity.unconfigured"},
		{"zero buckets", "identity: {from: [{peer: {}}], unconfigured_buckets: 0}", "identity.unconfigured_buckets"},
		{"old tenant section", "tenant: {from: [{header: x-tenant-id}]}", "tenant: replaced by identity:"},
		{"price missing output", "prices: {m: {input: 1}}", "prices.m"},
		{"price inexact", "prices: {m: {input: 0.0001, output: 1}}", "prices.m"},
		{"price unknown field", "prices: {m: {input: 1, output: 1, cached: 1}}", "unknown field"},
		{"prices out of order", "prices: {m: [{from: 2027-01-01, input: 1, output: 1}, {from: 2026-01-01, input: 2, output: 2}]}", "prices.m: price 2: from"},
		{"second price undated", "prices: {m: [{input: 1, output: 1}, {input: 2, output: 2}]}", "prices.m: price 2: only the first"},
		{"bad tier", "prices: {m: {input: 1, output: 1, tiers: {batch: 0}}}", "multiplier"},
		{"fallback dated", "fallback_price: {from: 2026-01-01, input: 1, output: 1}", "fallback_price: from"},
		{"downgrade ratio", "policies: {p: {models: {downgrade: [{when_budget_used: 0, from: a, to: b}]}}}", "policies.p.models.downgrade[0].when_budget_used"},
		{"downgrade level", "policies: {p: {models: {downgrade: [{when_budget_used: 0.5, level: division, from: a, to: b}]}}}", "policies.p.models.downgrade[0].level"},
		{"cache ttl", "policies: {p: {prompt_cache: {inject: true, ttl: 2h}}}", "policies.p.prompt_cache.ttl"},
		{"bad pattern", "policies: {p: {models: {allow: ['claude-[']}}}", "policies.p.models.allow[0]"},
		{"not yaml", "store: [", "tokenwarden.yaml"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("expected an error mentioning %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	a := Fingerprint("sk-ant-secret")
	if a != Fingerprint("Bearer sk-ant-secret") || a != Fingerprint("  sk-ant-secret ") {
		t.Error("the same key must yield the same tenant from x-api-key and authorization")
	}
	if a == Fingerprint("sk-ant-other") {
		t.Error("different keys must yield different tenants")
	}
	if !strings.HasPrefix(a, "key-") || len(a) != 4+16 || strings.Contains(a, "secret") {
		t.Errorf("fingerprint %q must be key- and 16 hex digits, never the key", a)
	}
	if !validName(a) || IdentityName(a) != a {
		t.Error("a fingerprint must be a valid tenant name")
	}
}

func TestIdentityName(t *testing.T) {
	for in, want := range map[string]bool{"acme": true, "alice@corp.example": true, "team.search": true, "a b": false, "{x}": false, "spiffe://x/y": false, "": false} {
		got := IdentityName(in)
		if kept := got == in; kept != want {
			t.Errorf("IdentityName(%q) = %q, kept %v, want kept %v", in, got, kept, want)
		}
		if !want && in != "" && (!strings.HasPrefix(got, "id-") || len(got) != 3+16 || IdentityName(in) != got) {
			t.Errorf("IdentityName(%q) = %q, want a stable id-<16 hex>", in, got)
		}
	}
}

func TestCallerTenantIsTheMostSpecificLevel(t *testing.T) {
	cases := []struct {
		c    Caller
		want string
	}{
		{Caller{}, ""},
		{Caller{"acme", "", "", ""}, "acme"},
		{Caller{"acme", "search", "", ""}, "search"},
		{Caller{"acme", "search", "alice", ""}, "alice"},
		{Caller{"", "", "", "key-0123456789abcdef"}, "key-0123456789abcdef"},
		{Caller{"acme", "", "alice", ""}, "alice"},
	}
	for _, tc := range cases {
		if got := tc.c.Tenant(); got != tc.want {
			t.Errorf("%v.Tenant() = %q, want %q", tc.c, got, tc.want)
		}
	}
}

func TestBucketsAreBoundedAndStable(t *testing.T) {
	id := Identity{UnconfiguredBuckets: 8}
	seen := map[string]bool{}
	for i := range 1000 {
		b := id.Bucket(Fingerprint(strings.Repeat("k", i+1)))
		if b != id.Bucket(Fingerprint(strings.Repeat("k", i+1))) {
			t.Fatal("a caller's bucket must not change")
		}
		seen[b] = true
	}
	if len(seen) != 8 {
		t.Errorf("1000 callers over 8 buckets used %d", len(seen))
	}
}

func TestModelAllowed(t *testing.T) {
	m := ModelPolicy{Allow: []string{"claude-*", "gpt-4o"}}
	for model, want := range map[string]bool{"claude-sonnet-4-5": true, "gpt-4o": true, "gpt-4o-mini": false, "llama": false} {
		if got := m.Allowed(model); got != want {
			t.Errorf("Allowed(%q) = %v", model, got)
		}
	}
	if !(ModelPolicy{}).Allowed("anything") {
		t.Error("an empty allow list allows everything")
	}
}

func TestWatchAppliesGoodAndKeepsLastGood(t *testing.T) {
	contents := make(chan []byte, 10)
	var current []byte = []byte("policies: {default: {limits: {requests_per_minute: 1}}}")
	read := func() ([]byte, error) {
		select {
		case c := <-contents:
			current = c
		default:
		}
		return current, nil
	}
	first, err := Parse(current)
	if err != nil {
		t.Fatal(err)
	}
	h := NewHolder(first)
	applied := make(chan *Config, 10)
	rejected := make(chan error, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Watch(ctx, WatchOptions{
		Read: read, Interval: 5 * time.Millisecond, Initial: current,
		Apply:    func(c *Config) { h.Store(c); applied <- c },
		Rejected: func(err error) { rejected <- err },
	})

	contents <- []byte("policies: {default: {limits: {requests_per_minute: 2}}}")
	select {
	case c := <-applied:
		if p, _ := c.Policy("x", ""); p.Limits.RequestsPerMinute != 2 {
			t.Fatalf("applied config has rpm %d", p.Limits.RequestsPerMinute)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a valid change was not applied")
	}

	contents <- []byte("policies: {default: {limits: {requests_per_minute: -5}}}")
	select {
	case err := <-rejected:
		if !strings.Contains(err.Error(), "requests_per_minute") {
			t.Fatalf("rejection %q does not say why", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an invalid change was not reported")
	}
	if p, _ := h.Load().Policy("x", ""); p.Limits.RequestsPerMinute != 2 {
		t.Fatalf("the last good config must stay in force, rpm = %d", p.Limits.RequestsPerMinute)
	}
	// The same bad content is not reported again on every poll.
	time.Sleep(50 * time.Millisecond)
	if n := len(rejected); n != 0 {
		t.Fatalf("the same rejection was reported %d more times", n)
	}
}

// TestWatchWaitsForAStableFile: content read while it is being written
// (each read differs) is never applied; an empty or truncated file that
// stays so is refused and the last good config stays.
func TestWatchWaitsForAStableFile(t *testing.T) {
	good := []byte("policies: {default: {limits: {requests_per_minute: 3}}}")
	var mu sync.Mutex
	var reads [][]byte // what each Read returns, in order; the last repeats
	read := func() ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		b := reads[0]
		if len(reads) > 1 {
			reads = reads[1:]
		}
		return b, nil
	}
	set := func(seq ...[]byte) {
		mu.Lock()
		reads = seq
		mu.Unlock()
	}
	set(good)
	first, _ := Parse(good)
	h := NewHolder(first)
	applied := make(chan *Config, 10)
	rejected := make(chan error, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Watch(ctx, WatchOptions{
		Read: read, Interval: 5 * time.Millisecond, Settle: time.Millisecond, Initial: good,
		Apply:    func(c *Config) { h.Store(c); applied <- c },
		Rejected: func(err error) { rejected <- err },
	})
	// A writer caught mid-write: every read returns a longer prefix of a file
	// whose complete form is unlimited; the prefixes are never stable.
	full := "policies: {default: {}}\n"
	var prefixes [][]byte
	for i := 1; i < len(full); i++ {
		prefixes = append(prefixes, []byte(full[:i]))
	}
	set(append(prefixes, good)...)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(reads)
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher did not read the file being written")
		}
		time.Sleep(time.Millisecond)
	}
	if len(applied) != 0 || len(rejected) != 0 {
		t.Fatalf("a file caught mid-write was parsed: %d applied, %d rejected", len(applied), len(rejected))
	}
	for _, bad := range []string{"", "policies:\n  default:\n    limits: {requests_per", "store: {timeout: 1s}\n"} {
		set([]byte(bad))
		select {
		case err := <-rejected:
			t.Logf("refused %q: %v", bad, err)
		case c := <-applied:
			t.Fatalf("applied %q: %+v", bad, c)
		case <-time.After(5 * time.Second):
			t.Fatalf("%q was not reported", bad)
		}
		if p, _ := h.Load().Policy("x", ""); p.Limits.RequestsPerMinute != 3 {
			t.Fatalf("after %q the last good config is gone: rpm %d", bad, p.Limits.RequestsPerMinute)
		}
	}
	if len(applied) != 0 {
		t.Fatalf("a partial file was applied")
	}
}
