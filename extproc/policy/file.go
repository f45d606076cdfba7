package policy

import (
	"encoding/json"

	"fmt"
	"github.com/tokenwarden/tokenwarden/accounting"
	"time"
)

// The types in this file mirror tokenwarden.yaml one to one. They are decoded
// strictly (an unknown field is an error) and then compiled by Compile into
// the types the processor uses; nothing outside this package sees them.

type fileConfig struct {
	Store         storeFile                        `json:"store"`
	Identity      *identityFile                    `json:"identity"`
	Tenant        *json.RawMessage                 `json:"tenant"` // the section identity replaced; refused with a pointer to it
	Policies      map[string]policyFile            `json:"policies"`
	Tenants       map[string]tenantOverride        `json:"tenants"`
	Orgs          map[string]orgFile               `json:"orgs"`
	Prices        map[string]accounting.ModelPrice `json:"prices"`
	FallbackPrice *accounting.USDPerMTok           `json:"fallback_price"`
	Queue         queueFile                        `json:"queue"`
	Upstreams     upstreamsFile                    `json:"upstreams"`
}

type storeFile struct {
	Redis        string   `json:"redis"`
	RedisCluster []string `json:"redis_cluster"`
	Timeout      duration `json:"timeout"`
	MaxInFlight  int      `json:"max_in_flight"`
	QueueTimeout duration `json:"queue_timeout"`
	OnFailure    string   `json:"on_failure"`
	// Replicas is the least number of serve replicas sharing the store; in
	// local failure mode each enforces 1/max(replicas, live replicas) of
	// every limit and budget.
	Replicas int `json:"replicas"`
}

type policyFile struct {
	Limits            limitsFile `json:"limits"`
	OutputReservation *int64     `json:"output_reservation"`
	BudgetReservation string     `json:"budget_reservation"`
	MinOutputTokens   *int64     `json:"min_output_tokens"`
	// DefaultMaxOutputTokens is the output a full reservation assumes for
	// an unbounded request to a model the catalog does not know.
	DefaultMaxOutputTokens *int64              `json:"default_max_output_tokens"`
	Budgets                []budgetFile        `json:"budgets"`
	OnFailure              string              `json:"on_failure"`
	Models                 *modelsFile         `json:"models"`
	PromptCache            *cacheFile          `json:"prompt_cache"`
	ResponseCache          *responseCacheFile  `json:"response_cache"`
	Batches                *batchesFile        `json:"batches"`
	Lanes                  map[string]laneFile `json:"lanes"`
	Leases                 *leasesFile         `json:"leases"`
}

// leasesFile is a policy's leases: block (leased admission, leases.go).
type leasesFile struct {
	MaxAge      duration `json:"max_age"`
	MaxRequests *int64   `json:"max_requests"`
}

// batchesFile is a policy's batches: block (the providers' batch APIs).
type batchesFile struct {
	Allow          *bool    `json:"allow"`
	ReservationTTL duration `json:"reservation_ttl"`
	MaxRequests    *int     `json:"max_requests"`
	FileTTL        duration `json:"file_ttl"`
	MaxFileBytes   *int64   `json:"max_file_bytes"`
}

type limitsFile struct {
	RequestsPerMinute *int64   `json:"requests_per_minute"`
	TokensPerMinute   *int64   `json:"tokens_per_minute"`
	Concurrent        *int64   `json:"concurrent"`
	Burst             *float64 `json:"burst"`
	LeaseTTL          duration `json:"lease_ttl"`
}

type budgetFile struct {
	Window   string    `json:"window"`
	USD      *float64  `json:"usd"`
	Timezone string    `json:"timezone"`
	AlertAt  []float64 `json:"alert_at"`
}

type modelsFile struct {
	Allow     []string          `json:"allow"`
	Aliases   map[string]string `json:"aliases"`
	Downgrade []downgradeFile   `json:"downgrade"`
	Tiers     []tierFile        `json:"tiers"`
}

type downgradeFile struct {
	WhenBudgetUsed float64 `json:"when_budget_used"`
	Window         string  `json:"window"`
	Level          string  `json:"level"`
	From           string  `json:"from"`
	To             string  `json:"to"`
}

type tierFile struct {
	MaxInputTokens *int64 `json:"max_input_tokens"`
	MinInputTokens *int64 `json:"min_input_tokens"`
	Tools          *bool  `json:"tools"`
	MaxOutput      *int64 `json:"max_output_tokens"`
	From           string `json:"from"`
	Model          string `json:"model"`
}

type cacheFile struct {
	Inject bool   `json:"inject"`
	TTL    string `json:"ttl"`
}

type responseCacheFile struct {
	Enabled       bool             `json:"enabled"`
	TTL           duration         `json:"ttl"`
	MaxEntryBytes *int64           `json:"max_entry_bytes"`
	MaxOrgBytes   *int64           `json:"max_org_bytes"`
	Shared        bool             `json:"shared"`
	CountRequests bool             `json:"count_requests"`
	Cacheable     []cacheShapeFile `json:"cacheable"`
}

type cacheShapeFile struct {
	MaxTemperature *float64 `json:"max_temperature"`
	AnyTemperature bool     `json:"any_temperature"`
	Seed           bool     `json:"seed"`
}

type tenantOverride struct {
	Policy      string       `json:"policy"`
	Limits      *limitsFile  `json:"limits"`
	Budgets     []budgetFile `json:"budgets"`
	PromptCache *cacheFile   `json:"prompt_cache"`
}

// duration accepts Go duration strings ("25ms", "15m") in YAML.
type duration struct {
	time.Duration
	set bool
}

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"25ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	d.Duration, d.set = v, true
	return nil
}
