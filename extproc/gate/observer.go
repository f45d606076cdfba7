package gate

import (
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// Observer receives what the gate sees, for metrics. Label values it is
// given are bounded: tenants and models are configured or priced names, or
// "other". Implementations must not block.
type Observer interface {
	// Outcome records a request as it ended.
	Outcome(o *Outcome)
	// Admission records one admission decision of a tenant: allowed,
	// denied_<dimension>, failed_open, failed_closed, local.
	Admission(tenantLabel, result string)
	// StoreCall records one store round trip ("admit", "settle").
	StoreCall(op string, took time.Duration, err error)
	// ProviderResponse records the status of a provider's answer.
	ProviderResponse(dialect string, status int)
	// ModelRewrite records a model rewritten by a policy (alias, tier,
	// downgrade).
	ModelRewrite(policy, reason string)
	// PrefixChange records a change of a policy's stable prompt prefix.
	PrefixChange(policy string)
	// Budgets records a configured org's budget windows, at every level of
	// one caller, as the store last reported them. budgets is the caller's
	// buffer, valid during the call only: copy what is kept.
	Budgets(tenantLabel string, budgets []LevelBudget, now time.Time)
	// BudgetCrossed records an alert threshold (a fraction of the cap)
	// crossed for the first time in a window of a level, across all
	// replicas.
	BudgetCrossed(tenantLabel string, level BudgetLevel, window string, threshold float64)
	// ExpiredCharged records a reservation that expired unsettled and was
	// charged at its estimate.
	ExpiredCharged(tenantLabel, model string, cost accounting.NanoUSD)
	// BatchReserved records a batch the provider accepted, reserved at its
	// estimate; dialect is BatchDialect or OpenAIBatchDialect.
	BatchReserved(tenantLabel, dialect string, cost accounting.NanoUSD)
	// BatchExpired records a batch's reservation that ended unsettled and
	// was charged at its estimate (in place of ExpiredCharged).
	BatchExpired(tenantLabel, model, dialect string, cost accounting.NanoUSD)
	// Unconfigured records a name the configuration does not know: a
	// caller, a route policy, a model without a price.
	Unconfigured(kind string)
	// InputEstimate records a measured request's calibrated input estimate
	// next to the provider's count, for the estimator's error.
	InputEstimate(model string, estimated, measured int64)
	// EstimatorFactor records the calibration factor of a model a settle
	// returned.
	EstimatorFactor(model string, factor float64)
}

// BudgetLevel names one level of an org for metrics, with bounded values:
// Level is org, team, user or key; Name is the level's configured label
// ("acme", "acme/search"), or "other" for a level not configured by name
// (every user and key).
type BudgetLevel struct{ Level, Name string }

// LevelBudget is one budget window of one level as the store reported it.
type LevelBudget struct {
	BudgetLevel
	// Window is the window kind (day, week, month).
	Window string
	State  limiter.BudgetState
}

// Kinds of unconfigured names, the values of
// tokenwarden_unconfigured_total{kind}.
const (
	UnconfiguredCaller      = "caller"
	UnconfiguredRoutePolicy = "route_policy"
	UnconfiguredModel       = "model"
)

// NopObserver records nothing.
type NopObserver struct{}

func (NopObserver) Outcome(*Outcome)                                        {}
func (NopObserver) Admission(string, string)                                {}
func (NopObserver) StoreCall(string, time.Duration, error)                  {}
func (NopObserver) ProviderResponse(string, int)                            {}
func (NopObserver) ModelRewrite(string, string)                             {}
func (NopObserver) PrefixChange(string)                                     {}
func (NopObserver) Budgets(string, []LevelBudget, time.Time)                {}
func (NopObserver) BudgetCrossed(string, BudgetLevel, string, float64)      {}
func (NopObserver) ExpiredCharged(string, string, accounting.NanoUSD)       {}
func (NopObserver) BatchReserved(string, string, accounting.NanoUSD)        {}
func (NopObserver) BatchExpired(string, string, string, accounting.NanoUSD) {}
func (NopObserver) Unconfigured(string)                                     {}
func (NopObserver) InputEstimate(string, int64, int64)                      {}
func (NopObserver) EstimatorFactor(string, float64)                         {}
