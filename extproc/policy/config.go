// Package config turns tokenwarden.yaml into the compiled, immutable Config the
// processor reads on every request. Parse validates everything up front and
// names the first error by its path in the file (policies.batch.budgets[1].usd:
// ...), so `tokenwarden check-config` and hot reload report the same thing.
// A Config is never mutated after Parse; reload builds a new one and swaps it
// in atomically (see Holder).
package policy

import (
	"errors"
	"fmt"
	"math"
	"path"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// DefaultPolicy is the policy used when neither the route nor the tenant
// names one.
const DefaultPolicy = "default"

// OtherLabel is the metric label value for tenants and models that are not
// named in the configuration, so label sets stay bounded.
const OtherLabel = accounting.OtherModel

// Config is one compiled tokenwarden.yaml.
type Config struct {
	Store    Store
	Identity Identity
	Prices   *accounting.PriceTable
	// Queue bounds the admission queue and states Envoy's message timeouts.
	Queue Queue
	// Upstreams paces the provider upstreams (upstreams.go).
	Upstreams Upstreams

	policies map[string]*Policy
	// effective holds every (tenant override × policy) combination, built
	// once so the hot path does a map lookup and nothing else.
	effective map[tenantPolicy]*Policy
	tenants   map[string]*tenantConfig
	orgs      map[string]*org
	// downgrades: some policy has Models.Downgrade rules (ReadsBudgetUse).
	downgrades bool
}

type tenantPolicy struct{ tenant, policy string }

type tenantConfig struct {
	policy string
}

// Store is the shared-state configuration.
type Store struct {
	// Redis is a redis:// URL; empty with no RedisCluster means the in-memory
	// store (one replica only).
	Redis        string
	RedisCluster []string
	// Timeout bounds one round trip to the store.
	Timeout time.Duration
	// MaxInFlight bounds this replica's store calls in flight; QueueTimeout
	// how long a call waits for a place before it is shed (and served by its
	// failure policy without counting as an outage).
	MaxInFlight  int
	QueueTimeout time.Duration
	OnFailure    limiter.FailurePolicy
	// Replicas is the floor of the replica count local mode divides limits
	// by; the live replicas' heartbeats raise it.
	Replicas int
}

// Shared reports whether a Redis store is configured.
func (s Store) Shared() bool { return s.Redis != "" || len(s.RedisCluster) > 0 }

// Kind names the store for logs: memory, redis or redis cluster.
func (s Store) Kind() string {
	switch {
	case len(s.RedisCluster) > 0:
		return "redis cluster"
	case s.Redis != "":
		return "redis"
	}
	return "memory"
}

// Policy is everything that governs one request, after tenant overrides.
type Policy struct {
	Name   string
	Limits limiter.Limits
	// OutputReservation is the most output a capped reservation reserves.
	OutputReservation int64
	// BudgetReservation is how much output a request reserves: capped at
	// OutputReservation, or full (its whole bound, clamped to what the
	// budgets allow, at least MinOutputTokens).
	BudgetReservation Reservation
	MinOutputTokens   int64
	// DefaultMaxOutputTokens is what a full reservation reserves for a
	// request without an output bound to a model the catalog does not know.
	DefaultMaxOutputTokens int64
	Budgets                []Budget
	OnFailure              limiter.FailurePolicy
	Models                 ModelPolicy
	PromptCache            PromptCache
	ResponseCache          ResponseCache
	Batches                Batches
	// Lanes are the policy's priority lanes, highest priority first; none
	// means one implicit lane that never waits. DefaultLane indexes the
	// lane of routes that name none (lanes.go).
	Lanes       []Lane
	DefaultLane int
	// Leases, when set, admit the policy's requests from leases (leases.go);
	// the zero value is exact admission.
	Leases limiter.LeaseTerms
}

// Enforces reports whether admission has anything to check, so a policy with
// no limits and no budgets costs no store round trip.
func (p *Policy) Enforces() bool {
	l := p.Limits
	return l.RequestsPerMinute > 0 || l.TokensPerMinute > 0 || l.Concurrent > 0 || len(p.Budgets) > 0
}

// Reservation is a policy's budget_reservation.
type Reservation string

const (
	// ReservationCapped reserves at most OutputReservation output tokens: a
	// request asking for more may overshoot its budgets by the difference
	// (the README states the bound).
	ReservationCapped Reservation = "capped"
	// ReservationFull reserves the request's whole output bound (the
	// model's maximum when it sets none); when that does not fit, the store
	// clamps the output to what the budgets allow, and the request's bound
	// is rewritten to it.
	ReservationFull Reservation = "full"
)

// DefaultMinOutputTokens is min_output_tokens when a policy does not set it.
// A clamp below it is refused as a budget denial instead of forwarded: 256
// tokens is about a paragraph, the shortest answer still worth its input's
// cost (the input is billed in full whatever the output), and more than the
// few tokens a client would get as a useless stub near the end of a budget.
const DefaultMinOutputTokens = 256

// Budget is one dollar budget window of a policy.
type Budget struct {
	Window   accounting.WindowKind
	Cap      accounting.NanoUSD
	Location *time.Location
	AlertAt  []float64
	// Alerts are the nano-USD amounts matching AlertAt, plus the cap.
	Alerts []int64
	// windows keeps the calendar windows around the current instant, for
	// the compiled configuration's life (nil: worked out on every call).
	windows *accounting.Windows
}

// WindowsAround is accounting.WindowsAround for the budget's window and
// zone, reused within the current window.
func (b *Budget) WindowsAround(now time.Time) [3][2]time.Time {
	if b.windows != nil {
		return b.windows.Around(now)
	}
	return accounting.WindowsAround(b.Window, b.Location, now)
}

// ModelPolicy is the per-policy model governance.
type ModelPolicy struct {
	Allow     []string // glob patterns (path.Match); empty allows every model
	Aliases   map[string]string
	Downgrade []Downgrade // ascending by WhenBudgetUsed
	Tiers     []Tier
}

// Allowed reports whether model matches the allow list.
func (m ModelPolicy) Allowed(model string) bool {
	if len(m.Allow) == 0 {
		return true
	}
	for _, p := range m.Allow {
		if ok, _ := path.Match(p, model); ok {
			return true
		}
	}
	return false
}

// Downgrade rewrites From-matching models to To once the named budget window
// (or the most used one when Window is empty) of a level of the caller
// reaches WhenBudgetUsed: the level named by Level when HasLevel is set
// (the org at 80% → a cheaper model for everyone in it), else the caller's
// own. A caller without that level (a team rule, a caller in no team) is
// never downgraded by the rule.
//
// The use read is what this replica last learned of the level from the
// store's admit and settle answers (settled spend over the cap, no extra
// round trip): it lags the truth by the requests other replicas settled
// since this replica's last answer for that level, and a level this replica
// has not yet seen in the current window reads as unused.
type Downgrade struct {
	WhenBudgetUsed float64
	Window         accounting.WindowKind
	Level          Level
	HasLevel       bool
	From           string
	To             string
}

// Tier routes requests by size and shape to a model.
type Tier struct {
	MinInputTokens int64 // 0: no lower bound
	MaxInputTokens int64 // 0: no upper bound
	MaxOutput      int64 // 0: no bound on max_tokens
	Tools          *bool // nil: either
	From           string
	Model          string
}

// PromptCache configures prompt-cache breakpoint injection, wherever the
// API has breakpoints: Anthropic's cache_control markers (Messages), and
// OpenAI's explicit prompt_cache_breakpoint markers on the models that take
// them (Chat Completions and Responses, gpt-5.6 and later). Each dialect
// places them by the same rules (the stable system prefix, the previous
// user turn, never past the API's limit, never over a client's own).
type PromptCache struct {
	Inject bool
	// TTL is the lifetime of the breakpoints added where the API offers a
	// choice: "5m" or "1h" for Anthropic. OpenAI has one TTL (30m), which
	// its markers inherit from the request; there the policy's TTL is
	// ignored.
	TTL string
}

// Policy returns the effective policy for a tenant on a route. routePolicy is
// the name from the route's metadata ("" when the route names none); a client
// has no way to set it. known is false when the route named a policy the
// config does not define, in which case the tenant's or default policy is used.
func (c *Config) Policy(tenant, routePolicy string) (p *Policy, known bool) {
	known = true
	name := routePolicy
	if name != "" {
		if _, ok := c.policies[name]; !ok {
			known = false
			name = ""
		}
	}
	if name == "" {
		if t, ok := c.tenants[tenant]; ok && t.policy != "" {
			name = t.policy
		} else {
			name = DefaultPolicy
		}
	}
	if p, ok := c.effective[tenantPolicy{tenant, name}]; ok {
		return p, known
	}
	return c.policies[name], known
}

// Configured reports whether the configuration names tenant under tenants:
// or orgs: (or as the default caller of unidentified requests).
func (c *Config) Configured(tenant string) bool {
	_, ok := c.tenants[tenant]
	_, isOrg := c.orgs[tenant]
	return ok || isOrg || tenant == c.Identity.Unknown.Default && tenant != ""
}

// ConfiguredCaller reports whether the configuration places the caller:
// its org is under orgs:, or its most specific name is configured.
func (c *Config) ConfiguredCaller(caller Caller) bool {
	if _, ok := c.orgs[caller[LevelOrg]]; ok {
		return true
	}
	return c.Configured(caller.Tenant())
}

// TenantLabel bounds the tenant metric label to configured tenants and
// orgs.
func (c *Config) TenantLabel(tenant string) string {
	if _, ok := c.tenants[tenant]; ok {
		return tenant
	}
	if _, ok := c.orgs[tenant]; ok {
		return tenant
	}
	return OtherLabel
}

// Tenants lists the tenants named in the config, sorted.
func (c *Config) Tenants() []string {
	out := make([]string, 0, len(c.tenants))
	for t := range c.tenants {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// PolicyNames lists the configured policies, sorted.
func (c *Config) PolicyNames() []string {
	out := make([]string, 0, len(c.policies))
	for p := range c.policies {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Parse decodes and compiles a tokenwarden.yaml. Unknown fields are errors.
//
// A file with no content (empty, whitespace or comments only) and one
// without a policies: mapping are refused: that is what a ConfigMap being
// rewritten, a file cut short or a wrong file looks like, and applying it
// would drop every limit, budget and allow list at once. A deliberately
// unlimited configuration says so with `policies: {}`.
func Parse(data []byte) (*Config, error) {
	if !hasContent(data) {
		return nil, errors.New("tokenwarden.yaml: the file is empty (nothing but whitespace or comments); refusing it rather than running without limits")
	}
	var f fileConfig
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("tokenwarden.yaml: %w", err)
	}
	hasPolicies := f.Policies != nil
	c, err := compile(&f)
	if err != nil {
		return nil, err
	}
	if !hasPolicies {
		return nil, errors.New("tokenwarden.yaml: no policies: mapping (a file cut short, or not a tokenwarden.yaml?); write `policies: {}` to run without limits on purpose")
	}
	return c, nil
}

// hasContent reports whether a YAML file holds anything but whitespace,
// comments and document markers.
func hasContent(data []byte) bool {
	for _, line := range strings.Split(string(data), "\n") {
		l := strings.TrimSpace(line)
		if l != "" && !strings.HasPrefix(l, "#") && l != "---" && l != "..." {
			return true
		}
	}
	return false
}

func compile(f *fileConfig) (*Config, error) {
	c := &Config{
		policies:  map[string]*Policy{},
		effective: map[tenantPolicy]*Policy{},
		tenants:   map[string]*tenantConfig{},
	}
	var err error
	if c.Store, err = compileStore(f.Store); err != nil {
		return nil, err
	}
	if f.Tenant != nil {
		return nil, fmt.Errorf("tenant: replaced by identity: (identity.from lists the sources; a header source must say trusted: true, identity.unknown replaces tenant.default)")
	}
	if f.Identity == nil {
		f.Identity = &identityFile{From: defaultIdentitySources}
	}
	if c.Identity, err = compileIdentity(*f.Identity); err != nil {
		return nil, err
	}
	if c.Prices, err = compilePrices(f.Prices, f.FallbackPrice); err != nil {
		return nil, err
	}
	if c.Queue, err = compileQueue(f.Queue); err != nil {
		return nil, err
	}
	if c.Upstreams, err = compileUpstreams(f.Upstreams); err != nil {
		return nil, err
	}
	if _, ok := f.Policies[DefaultPolicy]; !ok {
		if f.Policies == nil {
			f.Policies = map[string]policyFile{}
		}
		f.Policies[DefaultPolicy] = policyFile{}
	}
	for _, name := range sortedKeys(f.Policies) {
		if !validName(name) {
			return nil, fmt.Errorf("policies.%s: a policy name must be 1-64 letters, digits, '.', '_' or '-'", name)
		}
		p, err := compilePolicy("policies."+name, name, f.Policies[name], c.Store.OnFailure, c.Queue)
		if err != nil {
			return nil, err
		}
		c.policies[name] = p
	}
	for _, name := range sortedKeys(f.Tenants) {
		at := "tenants." + name
		if !validName(name) {
			return nil, fmt.Errorf("%s: a tenant name must be 1-64 letters, digits, '.', '_' or '-'", at)
		}
		o := f.Tenants[name]
		if o.Policy != "" {
			if _, ok := c.policies[o.Policy]; !ok {
				return nil, fmt.Errorf("%s.policy: no policy named %q", at, o.Policy)
			}
		}
		c.tenants[name] = &tenantConfig{policy: o.Policy}
		for pname, base := range c.policies {
			eff, err := applyOverride(at, base, o)
			if err != nil {
				return nil, err
			}
			c.effective[tenantPolicy{name, pname}] = eff
		}
	}
	if c.orgs, err = compileOrgs(f.Orgs, c.policies); err != nil {
		return nil, err
	}
	for name := range c.orgs {
		if _, dup := c.tenants[name]; dup {
			return nil, fmt.Errorf("orgs.%s: also under tenants:; a tenant is a one-level org, name it once", name)
		}
	}
	// Overrides (tenants:, orgs:) change limits, budgets and prompt caching, never model
	// rules (applyOverride): every policy's downgrades are its base's.
	for _, p := range c.policies {
		c.downgrades = c.downgrades || len(p.Models.Downgrade) > 0
	}
	return c, nil
}

// ReadsBudgetUse reports whether any policy downgrades a model by budget
// use, the one reader of the use the gate remembers from each answer.
func (c *Config) ReadsBudgetUse() bool { return c.downgrades }

func compileStore(s storeFile) (Store, error) {
	out := Store{Redis: s.Redis, RedisCluster: s.RedisCluster, Timeout: s.Timeout.Duration, Replicas: s.Replicas}
	if out.Redis != "" && len(out.RedisCluster) > 0 {
		return out, fmt.Errorf("store: set either redis or redis_cluster, not both")
	}
	if out.Redis != "" && !strings.HasPrefix(out.Redis, "redis://") && !strings.HasPrefix(out.Redis, "rediss://") {
		return out, fmt.Errorf("store.redis: %q is not a redis:// or rediss:// URL", out.Redis)
	}
	if !s.Timeout.set {
		out.Timeout = limiter.DefaultTimeout
	}
	out.MaxInFlight, out.QueueTimeout = s.MaxInFlight, s.QueueTimeout.Duration
	if out.MaxInFlight == 0 {
		out.MaxInFlight = limiter.DefaultMaxInFlight
	}
	if out.MaxInFlight < 1 || out.MaxInFlight > 10_000 {
		return out, fmt.Errorf("store.max_in_flight: %d must be between 1 and 10000", out.MaxInFlight)
	}
	if !s.QueueTimeout.set {
		out.QueueTimeout = limiter.DefaultQueueTimeout
	}
	if out.QueueTimeout <= 0 || out.QueueTimeout > 30*time.Second {
		return out, fmt.Errorf("store.queue_timeout: %s must be above 0 and at most 30s", out.QueueTimeout)
	}
	if out.Timeout <= 0 || out.Timeout > 10*time.Second {
		return out, fmt.Errorf("store.timeout: %s must be above 0 and at most 10s (it bounds every request's admission)", out.Timeout)
	}
	var err error
	if out.OnFailure, err = parseFailure("store.on_failure", s.OnFailure, limiter.FailLocal); err != nil {
		return out, err
	}
	if out.Replicas == 0 {
		out.Replicas = 1
	}
	if out.Replicas < 0 || out.Replicas > 1000 {
		return out, fmt.Errorf("store.replicas: %d must be between 1 and 1000", out.Replicas)
	}
	return out, nil
}

// parseFailure reads an on_failure value; empty means def.
func parseFailure(at, v string, def limiter.FailurePolicy) (limiter.FailurePolicy, error) {
	switch f := limiter.FailurePolicy(v); f {
	case "":
		return def, nil
	case limiter.FailClosed, limiter.FailOpen, limiter.FailLocal:
		return f, nil
	}
	return "", fmt.Errorf("%s: %q is not one of closed, open, local", at, v)
}

// compilePrices builds the price table: the embedded one with the
// configuration's prices over it. A model's entry under prices: is one price
// or a list with effective dates; either replaces every embedded price of
// that model. fallback_price is one price for all time.
func compilePrices(prices map[string]accounting.ModelPrice, fallback *accounting.USDPerMTok) (*accounting.PriceTable, error) {
	opts := accounting.PriceTableOptions{Schedules: map[string]accounting.Schedule{}, Fallback: accounting.DefaultFallback()}
	for _, model := range sortedKeys(prices) {
		s, err := prices[model].Schedule()
		if err != nil {
			return nil, fmt.Errorf("prices.%s: %w", model, err)
		}
		opts.Schedules[model] = s
	}
	if fallback != nil {
		if fallback.From != "" {
			return nil, fmt.Errorf("fallback_price: from: the fallback has no effective dates")
		}
		p, err := fallback.Price()
		if err != nil {
			return nil, fmt.Errorf("fallback_price: %w", err)
		}
		opts.Fallback = p
	}
	t, err := accounting.NewPriceTable(opts)
	if err != nil {
		return nil, fmt.Errorf("prices: %w", err)
	}
	return t, nil
}

func compilePolicy(at, name string, p policyFile, storeFailure limiter.FailurePolicy, q Queue) (*Policy, error) {
	out := &Policy{Name: name, OutputReservation: 4096, BudgetReservation: ReservationCapped,
		MinOutputTokens: DefaultMinOutputTokens, DefaultMaxOutputTokens: accounting.UnknownModelMaxOutputTokens}
	var err error
	if out.OnFailure, err = parseFailure(at+".on_failure", p.OnFailure, storeFailure); err != nil {
		return nil, err
	}
	if p.OutputReservation != nil {
		if *p.OutputReservation < 0 {
			return nil, fmt.Errorf("%s.output_reservation: %d is negative", at, *p.OutputReservation)
		}
		out.OutputReservation = *p.OutputReservation
	}
	if err := compileReservation(at, p, out); err != nil {
		return nil, err
	}
	if out.Limits, err = compileLimits(at+".limits", limiter.Limits{}, p.Limits); err != nil {
		return nil, err
	}
	if out.Budgets, err = compileBudgets(at+".budgets", p.Budgets); err != nil {
		return nil, err
	}
	if p.Models != nil {
		if out.Models, err = compileModels(at+".models", *p.Models); err != nil {
			return nil, err
		}
	}
	if p.PromptCache != nil {
		if out.PromptCache, err = compileCache(at+".prompt_cache", *p.PromptCache); err != nil {
			return nil, err
		}
	}
	if p.ResponseCache != nil {
		if out.ResponseCache, err = compileResponseCache(at+".response_cache", *p.ResponseCache); err != nil {
			return nil, err
		}
	}
	if out.Batches, err = compileBatches(at+".batches", p.Batches); err != nil {
		return nil, err
	}
	if out.Lanes, out.DefaultLane, err = compileLanes(at+".lanes", p.Lanes, q); err != nil {
		return nil, err
	}
	if out.Leases, err = compileLeases(at+".leases", p.Leases); err != nil {
		return nil, err
	}
	return out, nil
}

// Batches is what a policy does with the providers' batch APIs.
type Batches struct {
	// Allow false refuses batch submissions on the policy's routes (403).
	Allow bool
	// ReservationTTL is how long a submitted batch's reservation lasts: the
	// provider's own processing window (24 hours) plus a margin. A batch
	// not settled by then is charged at its estimate.
	ReservationTTL time.Duration
	// MaxRequests bounds the requests of one batch tokenwarden estimates; a
	// larger batch is refused, never waved through.
	MaxRequests int
	// FileTTL is how long the estimate of an OpenAI batch input file
	// uploaded through tokenwarden is kept for a batch to name it; a batch
	// naming a file past it (or one never uploaded through tokenwarden) is
	// refused.
	FileTTL time.Duration
	// MaxFileBytes bounds the OpenAI batch file uploads tokenwarden reads:
	// a larger one (or one without a content-length) passes unread and
	// unrecorded, and a batch naming it is refused. It must not exceed
	// what Envoy buffers of a request body (per_connection_buffer_limit_bytes
	// in the shipped envoy.yaml, 32 MiB): a body Envoy cannot buffer is
	// answered 413 by Envoy, whatever its purpose.
	MaxFileBytes int64
}

// Batch defaults: the providers process a batch within 24 hours
// (https://docs.anthropic.com/en/docs/build-with-claude/batch-processing);
// five hours more covers a slow end of processing and the results download.
const (
	DefaultBatchReservationTTL = 29 * time.Hour
	DefaultBatchMaxRequests    = 100_000
	// DefaultBatchFileTTL: a batch input file is normally named by a batch
	// right after its upload; a day covers a pipeline that uploads ahead.
	DefaultBatchFileTTL = 24 * time.Hour
	// MaxBatchFileTTL is the longest a file's estimate can be kept (the
	// store's own bound on a note).
	MaxBatchFileTTL = limiter.MaxNoteTTL
	// DefaultBatchMaxFileBytes is the shipped Envoy configurations' buffer
	// limit; MaxBatchFileBytes the most the gate assembles of a body.
	DefaultBatchMaxFileBytes = 32 << 20
	MaxBatchFileBytes        = 64 << 20
)

func compileBatches(at string, f *batchesFile) (Batches, error) {
	b := Batches{Allow: true, ReservationTTL: DefaultBatchReservationTTL, MaxRequests: DefaultBatchMaxRequests, FileTTL: DefaultBatchFileTTL,
		MaxFileBytes: DefaultBatchMaxFileBytes}
	if f == nil {
		return b, nil
	}
	if f.Allow != nil {
		b.Allow = *f.Allow
	}
	if f.ReservationTTL.set {
		if f.ReservationTTL.Duration <= 0 {
			return b, fmt.Errorf("%s.reservation_ttl: must be above zero", at)
		}
		b.ReservationTTL = f.ReservationTTL.Duration
	}
	if f.MaxRequests != nil {
		if *f.MaxRequests <= 0 || *f.MaxRequests > DefaultBatchMaxRequests {
			return b, fmt.Errorf("%s.max_requests: %d outside 1..%d", at, *f.MaxRequests, DefaultBatchMaxRequests)
		}
		b.MaxRequests = *f.MaxRequests
	}
	if f.FileTTL.set {
		if f.FileTTL.Duration < time.Second || f.FileTTL.Duration > MaxBatchFileTTL {
			return b, fmt.Errorf("%s.file_ttl: %s outside 1s..%s", at, f.FileTTL.Duration, MaxBatchFileTTL)
		}
		b.FileTTL = f.FileTTL.Duration
	}
	if f.MaxFileBytes != nil {
		if *f.MaxFileBytes <= 0 || *f.MaxFileBytes > MaxBatchFileBytes {
			return b, fmt.Errorf("%s.max_file_bytes: %d outside 1..%d", at, *f.MaxFileBytes, MaxBatchFileBytes)
		}
		b.MaxFileBytes = *f.MaxFileBytes
	}
	return b, nil
}

// compileReservation reads budget_reservation, min_output_tokens and
// default_max_output_tokens into out.
func compileReservation(at string, p policyFile, out *Policy) error {
	switch r := Reservation(p.BudgetReservation); r {
	case "":
	case ReservationCapped, ReservationFull:
		out.BudgetReservation = r
	default:
		return fmt.Errorf("%s.budget_reservation: %q is not full or capped", at, p.BudgetReservation)
	}
	for _, f := range []struct {
		name string
		v    *int64
		dst  *int64
	}{
		{"min_output_tokens", p.MinOutputTokens, &out.MinOutputTokens},
		{"default_max_output_tokens", p.DefaultMaxOutputTokens, &out.DefaultMaxOutputTokens},
	} {
		if f.v == nil {
			continue
		}
		if *f.v < 1 || *f.v > limiter.MaxTokens/2 {
			return fmt.Errorf("%s.%s: %d is outside [1, %d]", at, f.name, *f.v, limiter.MaxTokens/2)
		}
		*f.dst = *f.v
	}
	return nil
}

func compileLimits(at string, base limiter.Limits, l limitsFile) (limiter.Limits, error) {
	out := base
	set := func(name string, dst *int64, v *int64) error {
		if v == nil {
			return nil
		}
		if *v < 0 {
			return fmt.Errorf("%s.%s: %d is negative (0 means unlimited)", at, name, *v)
		}
		*dst = *v
		return nil
	}
	if err := set("requests_per_minute", &out.RequestsPerMinute, l.RequestsPerMinute); err != nil {
		return out, err
	}
	if err := set("tokens_per_minute", &out.TokensPerMinute, l.TokensPerMinute); err != nil {
		return out, err
	}
	if err := set("concurrent", &out.Concurrent, l.Concurrent); err != nil {
		return out, err
	}
	if l.Burst != nil {
		if *l.Burst <= 0 || *l.Burst > 1 {
			return out, fmt.Errorf("%s.burst: %v must be in (0, 1]", at, *l.Burst)
		}
		out.Burst = *l.Burst
	}
	if l.LeaseTTL.set {
		if l.LeaseTTL.Duration < time.Second {
			return out, fmt.Errorf("%s.lease_ttl: %s is shorter than 1s", at, l.LeaseTTL.Duration)
		}
		out.LeaseTTL = l.LeaseTTL.Duration
	}
	return out, nil
}

func compileBudgets(at string, in []budgetFile) ([]Budget, error) {
	var out []Budget
	seen := map[accounting.WindowKind]bool{}
	for i, b := range in {
		bat := fmt.Sprintf("%s[%d]", at, i)
		kind, err := accounting.ParseWindowKind(b.Window)
		if err != nil {
			return nil, fmt.Errorf("%s.window: %w", bat, err)
		}
		if seen[kind] {
			return nil, fmt.Errorf("%s.window: a second %s budget; one budget per window", bat, kind)
		}
		seen[kind] = true
		if b.USD == nil || *b.USD <= 0 {
			return nil, fmt.Errorf("%s.usd: a budget needs a positive amount in USD", bat)
		}
		capNano := math.Round(*b.USD * 1e9)
		if capNano > float64(limiter.MaxCost) {
			return nil, fmt.Errorf("%s.usd: %v is above the largest budget, %d USD", bat, *b.USD, limiter.MaxCost/1e9)
		}
		loc := time.UTC
		if b.Timezone != "" {
			if loc, err = time.LoadLocation(b.Timezone); err != nil {
				return nil, fmt.Errorf("%s.timezone: %w", bat, err)
			}
		}
		if err := accounting.ValidateAlertRatios(b.AlertAt); err != nil {
			return nil, fmt.Errorf("%s.alert_at: %w", bat, err)
		}
		cp := accounting.NanoUSD(capNano)
		amounts := accounting.AlertAmounts(cp, b.AlertAt)
		alerts := make([]int64, len(amounts))
		for j, a := range amounts {
			alerts[j] = int64(a)
		}
		out = append(out, Budget{Window: kind, Cap: cp, Location: loc, AlertAt: append([]float64(nil), b.AlertAt...), Alerts: alerts,
			windows: accounting.NewWindows(kind, loc)})
	}
	return out, nil
}

func compileModels(at string, m modelsFile) (ModelPolicy, error) {
	out := ModelPolicy{Allow: m.Allow, Aliases: m.Aliases}
	for i, p := range m.Allow {
		if _, err := path.Match(p, ""); err != nil {
			return out, fmt.Errorf("%s.allow[%d]: bad pattern %q: %w", at, i, p, err)
		}
	}
	for alias, target := range m.Aliases {
		if alias == "" || target == "" {
			return out, fmt.Errorf("%s.aliases: empty alias or target", at)
		}
	}
	for i, d := range m.Downgrade {
		dat := fmt.Sprintf("%s.downgrade[%d]", at, i)
		if d.WhenBudgetUsed <= 0 || d.WhenBudgetUsed > 1 {
			return out, fmt.Errorf("%s.when_budget_used: %v must be a ratio in (0, 1]", dat, d.WhenBudgetUsed)
		}
		if d.From == "" || d.To == "" {
			return out, fmt.Errorf("%s: from and to are required", dat)
		}
		if _, err := path.Match(d.From, ""); err != nil {
			return out, fmt.Errorf("%s.from: bad pattern %q: %w", dat, d.From, err)
		}
		var kind accounting.WindowKind
		if d.Window != "" {
			k, err := accounting.ParseWindowKind(d.Window)
			if err != nil {
				return out, fmt.Errorf("%s.window: %w", dat, err)
			}
			kind = k
		}
		rule := Downgrade{WhenBudgetUsed: d.WhenBudgetUsed, Window: kind, From: d.From, To: d.To}
		if d.Level != "" {
			l, ok := parseLevel(d.Level)
			if !ok {
				return out, fmt.Errorf("%s.level: %q is not one of org, team, user, key", dat, d.Level)
			}
			rule.Level, rule.HasLevel = l, true
		}
		out.Downgrade = append(out.Downgrade, rule)
	}
	// Highest threshold first, so the strongest applicable downgrade wins.
	sort.SliceStable(out.Downgrade, func(i, j int) bool {
		return out.Downgrade[i].WhenBudgetUsed > out.Downgrade[j].WhenBudgetUsed
	})
	for i, t := range m.Tiers {
		tat := fmt.Sprintf("%s.tiers[%d]", at, i)
		if t.Model == "" {
			return out, fmt.Errorf("%s.model: required", tat)
		}
		tier := Tier{Tools: t.Tools, From: t.From, Model: t.Model}
		if t.From != "" {
			if _, err := path.Match(t.From, ""); err != nil {
				return out, fmt.Errorf("%s.from: bad pattern %q: %w", tat, t.From, err)
			}
		}
		if t.MinInputTokens != nil {
			tier.MinInputTokens = *t.MinInputTokens
		}
		if t.MaxInputTokens != nil {
			tier.MaxInputTokens = *t.MaxInputTokens
		}
		if t.MaxOutput != nil {
			tier.MaxOutput = *t.MaxOutput
		}
		if tier.MaxInputTokens > 0 && tier.MinInputTokens > tier.MaxInputTokens {
			return out, fmt.Errorf("%s: min_input_tokens is above max_input_tokens", tat)
		}
		out.Tiers = append(out.Tiers, tier)
	}
	return out, nil
}

func compileCache(at string, c cacheFile) (PromptCache, error) {
	out := PromptCache{Inject: c.Inject, TTL: c.TTL}
	if out.TTL == "" {
		out.TTL = "5m"
	}
	if out.TTL != "5m" && out.TTL != "1h" {
		return out, fmt.Errorf("%s.ttl: %q is not 5m or 1h", at, c.TTL)
	}
	return out, nil
}

// applyOverride layers a tenant's overrides on a policy: set limit fields
// replace the policy's, a budget for a window replaces the policy's budget for
// that window, and budgets for other windows are added.
func applyOverride(at string, base *Policy, o tenantOverride) (*Policy, error) {
	eff := *base
	if o.Limits != nil {
		l, err := compileLimits(at+".limits", base.Limits, *o.Limits)
		if err != nil {
			return nil, err
		}
		eff.Limits = l
	}
	if len(o.Budgets) > 0 {
		tb, err := compileBudgets(at+".budgets", o.Budgets)
		if err != nil {
			return nil, err
		}
		merged := make([]Budget, 0, len(base.Budgets)+len(tb))
		for _, b := range base.Budgets {
			replaced := false
			for _, t := range tb {
				if t.Window == b.Window {
					replaced = true
				}
			}
			if !replaced {
				merged = append(merged, b)
			}
		}
		eff.Budgets = append(merged, tb...)
		sort.SliceStable(eff.Budgets, func(i, j int) bool { return windowOrder(eff.Budgets[i].Window) < windowOrder(eff.Budgets[j].Window) })
	}
	if o.PromptCache != nil {
		pc, err := compileCache(at+".prompt_cache", *o.PromptCache)
		if err != nil {
			return nil, err
		}
		eff.PromptCache = pc
	}
	return &eff, nil
}

func windowOrder(k accounting.WindowKind) int {
	switch k {
	case accounting.Day:
		return 0
	case accounting.Week:
		return 1
	}
	return 2
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// defaultIdentitySources identify callers by their provider API key when
// the configuration says nothing: the one credential every LLM request
// carries, and one a client cannot use to pass for another caller.
var defaultIdentitySources = []identitySourceFile{{APIKeyOf: "x-api-key"}, {APIKeyOf: "authorization"}}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// LimiterBudgets returns the policy's budgets as the store takes them: each
// with its previous, current and next calendar window around now in the
// budget's time zone, so the store can pick the current one by its own clock.
func (p *Policy) LimiterBudgets(now time.Time) []limiter.Budget {
	return LimiterBudgetsOf(p.Budgets, now)
}

// LimiterBudgetsOf returns budgets (a policy's or a level's) as the store
// takes them, as LimiterBudgets does.
func LimiterBudgetsOf(budgets []Budget, now time.Time) []limiter.Budget {
	if len(budgets) == 0 {
		return nil
	}
	out := make([]limiter.Budget, len(budgets))
	for i := range budgets {
		b := &budgets[i]
		ws := b.WindowsAround(now)
		out[i] = limiter.Budget{Name: string(b.Window), Cap: int64(b.Cap), Alerts: b.Alerts}
		for j := range ws {
			out[i].Windows[j] = limiter.Window{Start: ws[j][0], End: ws[j][1]}
		}
	}
	return out
}
