// Package limiter makes tokenwarden's shared, atomic admission decisions.
//
// A request is admitted by one Admit call and finished by one Settle call.
// Admit checks every dimension of a tenant's policy at once — requests per
// minute and tokens per minute (GCRA), concurrent requests (leases that
// expire), and every dollar budget window (spent + reserved + this request's
// estimate against the cap) — and either reserves all of them or writes
// nothing. Settle replaces the reservation with what the request really cost,
// releases its lease, and is idempotent per request id. A reservation that is
// never settled expires and stays charged at its estimate.
//
// A Store keeps this state. The Redis store runs each call as one Lua script
// (one round trip) and uses Redis TIME as its only clock, so every replica
// that shares the Redis shares the limits. The memory store has the same
// semantics for a single replica, and is what "local" failure mode falls back
// to while Redis is unreachable. Resilient wraps the shared store with a
// circuit breaker and the per-request failure policy (closed, open, local).
//
// Choices worth knowing:
//
//   - Per-minute limits are GCRA with emission interval 60s/limit (floored to
//     whole microseconds) and tolerance Burst×60s. A request whose cost
//     exceeds the whole tolerance can never conform: it is denied with
//     NeverFits set and RetryAfter = the time until the limit is full again.
//   - Concurrency leases and pending reservations are one set: a reservation
//     holds a slot until it is settled or its LeaseTTL passes.
//   - A denied Admit writes nothing, not even the sweep of expired
//     reservations; those are already counted as reserved, so the decision
//     is the same as after a sweep.
//   - An expired reservation is charged at its estimate by the next writing
//     call for its tenant (on any replica), reported once in Expired; a Settle
//     arriving later returns Settled=false and changes nothing, so a request
//     is never charged twice.
//   - Each budget is charged in the window among Budget.Windows that contains
//     the store's own now; when none does (the caller's clock is far off), the
//     last window that has started, else the first.
package limiter

import (
	"context"
	"errors"
	"time"
)

// Store is the shared state behind admission. Implementations must make each
// call atomic: concurrent Admits for one tenant never both take the last unit
// of any dimension.
type Store interface {
	// Admit decides and, when allowed, reserves. A denied request changes
	// nothing in the store.
	Admit(ctx context.Context, req AdmitRequest) (Decision, error)
	// Settle finishes an admitted request. Settling an id that is unknown or
	// already settled is a no-op that returns Settled=false.
	Settle(ctx context.Context, req SettleRequest) (SettleResult, error)
	// Budgets reports the current windows of a tenant's budgets, for the
	// `tokenwarden budgets` command and the budget gauges.
	Budgets(ctx context.Context, tenant string, budgets []Budget) ([]BudgetState, error)
	// Ping reports whether the store answers; /readyz and tokenwarden_store_up
	// use it.
	Ping(ctx context.Context) error
	Close() error
}

// ErrUnavailable wraps every error that means the store could not be reached
// or did not answer in time, as opposed to a bug in a request.
var ErrUnavailable = errors.New("limiter store unavailable")

// Dimension names what denied a request. The values are the ones clients see
// in x-tokenwarden-denied.
type Dimension string

const (
	DimensionNone        Dimension = ""
	DimensionRequests    Dimension = "requests"
	DimensionTokens      Dimension = "tokens"
	DimensionConcurrency Dimension = "concurrency"
	// Budget dimensions are "budget_" + the budget's window name, e.g.
	// "budget_day", "budget_week", "budget_month".
)

// BudgetDimension is the denial dimension of a budget window.
func BudgetDimension(window string) Dimension { return Dimension("budget_" + window) }

// Limits are the per-minute and concurrency limits of one tenant. A zero field
// means that dimension is unlimited.
type Limits struct {
	RequestsPerMinute int64
	TokensPerMinute   int64
	// Burst is how much of a per-minute limit may be used at once, as a
	// fraction of the limit in (0, 1]. Zero means 1: a full minute's worth,
	// which is how provider token buckets behave.
	Burst      float64
	Concurrent int64
	// LeaseTTL bounds how long a concurrency slot and a budget reservation
	// live without Settle (a crashed replica). Zero means DefaultLeaseTTL.
	LeaseTTL time.Duration
}

// DefaultLeaseTTL is how long a reservation holds its slot without being
// renewed. The replica that owns a reservation renews it while its stream
// lives (LeaseKeeper, every LeaseTTL/3), so a long generation keeps its slot
// and a dead replica's slots free within one LeaseTTL of its last renewal.
const DefaultLeaseTTL = 30 * time.Second

// Window is one calendar period of a budget, [Start, End).
type Window struct {
	Start, End time.Time
}

// Budget is one dollar budget of a tenant. The caller computes the calendar
// windows in the policy's time zone by its own clock; the store picks the one
// that contains its own clock's now, so replicas whose clocks disagree still
// charge the same window.
type Budget struct {
	// Name is the window kind ("day", "week", "month"); it names the keys and
	// the denial dimension.
	Name string
	// Cap is the budget in nano-USD.
	Cap int64
	// Windows are the previous, current and next windows by the caller's
	// clock.
	Windows [3]Window
	// Alerts are spend amounts in nano-USD, ascending, whose crossing is
	// reported once per window across all replicas (typically cap×alert_at
	// and the cap itself).
	Alerts []int64
}

// AdmitRequest is everything Admit needs for one request.
type AdmitRequest struct {
	Tenant    string
	RequestID string
	// Count is how many requests this admission stands for, charged to
	// requests per minute at every level (a lease of Count requests, see
	// Leased); zero means 1. At most MaxCount.
	Count int64
	// Model is the resolved model; the store keeps it with the reservation so
	// that an expired reservation can be reported under its model.
	Model  string
	Limits Limits
	// Tokens is the estimate charged to tokens-per-minute now and corrected by
	// Settle.
	Tokens int64
	// Cost is the estimated cost in nano-USD reserved against every budget.
	Cost    int64
	Budgets []Budget
	// LevelLimits are the limits of the levels below the org (a team's, a
	// user's, a key's own), checked with Limits (the org's) and the budgets
	// in the same atomic decision; they share Limits' Burst and LeaseTTL.
	LevelLimits []LevelLimits
	// Detached makes a reservation that holds no concurrency slot at any
	// level while it lasts: long-lived batch work, reserved against the
	// budgets (and the minute limits) for up to its LeaseTTL, then settled
	// by a later request or expired and charged at its estimate.
	Detached bool
	// Output, when its Tokens are above zero, lets the store shrink the
	// request's output to fit its budgets (a full budget reservation).
	Output Output
	// OnFailure is what a Resilient store does with this request while its
	// primary store is unreachable. Plain stores ignore it.
	OnFailure FailurePolicy
	// Lease opts this request into leased admission (Leased: its bounds are
	// documented there); the zero value is exact admission. Plain stores
	// ignore it.
	Lease LeaseTerms
}

// count is how many requests req stands for (Count, zero meaning 1).
func (req *AdmitRequest) count() int64 { return max(req.Count, 1) }

// Output is the part of an admission the store may shrink: the request's
// output, counted whole in Tokens and Cost. When Cost does not fit every
// budget, the store reserves instead the largest whole number of output
// tokens in [Min, Tokens] that fits every budget of every level — decided in
// the same atomic call as the rest of the admission, since a clamp computed
// from an earlier read would be stale by the time it is admitted — and
// Decision.OutputTokens reports it; below Min the request is denied for the
// budget as usual. Tokens per minute are charged the output reserved, not
// the output asked for.
type Output struct {
	// Tokens is the output the request may produce (its max_tokens, or the
	// model's maximum), already part of AdmitRequest.Tokens and Cost.
	Tokens int64
	// Price is what one output token adds to Cost, in nano-USD. Zero makes
	// output free, and nothing is clamped.
	Price int64
	// Min is the smallest output worth forwarding, at most Tokens.
	Min int64
}

// Reserved returns the tokens and cost an admission of req reserves when the
// store grants it out output tokens (req.Output.Tokens when not clamped).
func (req *AdmitRequest) Reserved(out int64) (tokens, cost int64) {
	cut := req.Output.Tokens - out
	if req.Output.Tokens <= 0 || cut <= 0 {
		return req.Tokens, req.Cost
	}
	return req.Tokens - cut, req.Cost - cut*req.Output.Price
}

// FailurePolicy is the per-request choice of what to do while the shared
// store is unreachable.
type FailurePolicy string

const (
	// FailClosed refuses the request: Admit returns an error wrapping
	// ErrUnavailable. The zero value means FailClosed.
	FailClosed FailurePolicy = "closed"
	// FailOpen admits the request unchecked (Decision.Degraded) and queues its
	// Settle until the store is back.
	FailOpen FailurePolicy = "open"
	// FailLocal decides with the replica's own memory store, every limit and
	// budget divided by the number of replicas.
	FailLocal FailurePolicy = "local"
)

// RateState describes one per-minute limit after a decision, for the
// x-ratelimit-* headers.
type RateState struct {
	Limit     int64
	Remaining int64
	// Reset is how long until the limit is fully replenished.
	Reset time.Duration
}

// BudgetState is one budget window as the store sees it.
type BudgetState struct {
	// Name is the store name: the window kind for the org level, else
	// LevelBudgetName(Level, kind).
	Name string
	// Level is the key of the level the budget belongs to ("" for the org).
	Level    string
	Window   Window
	Cap      int64
	Spent    int64 // settled, plus expired reservations charged at their estimate
	Reserved int64 // outstanding reservations
	// Degraded is the part of Spent that was decided while the store was
	// unreachable (local or open failure mode) and reconciled afterwards.
	// Budgets reports it; Admit and Settle leave it zero.
	Degraded int64
}

// Used is the fraction of the cap already spent or reserved.
func (b BudgetState) Used() float64 {
	if b.Cap <= 0 {
		return 0
	}
	return float64(b.Spent+b.Reserved) / float64(b.Cap)
}

// Decision is the answer to Admit.
type Decision struct {
	Allowed bool
	// Denied is the first dimension that refused the request, in the order
	// concurrency, requests, tokens, then budgets in the order given. A
	// budget denial names the window kind ("budget_day"); the levels' own
	// limits are checked after the org's (Limits), in the order given.
	// Level is the key of the level that refused ("" for the org).
	Denied Dimension
	Level  string
	// RetryAfter is when the denied dimension will admit this request again:
	// exact for GCRA, the window end for a budget, zero for concurrency (a
	// slot frees when another request finishes). When NeverFits is set it is
	// the time until the rate limit is fully replenished instead.
	RetryAfter time.Duration
	// NeverFits reports that the request's cost exceeds what the denied
	// per-minute limit can ever admit at once (its whole burst tolerance), so
	// retrying the same request is pointless (x-should-retry: false).
	NeverFits bool
	// Degraded is set when a Resilient store decided without the shared
	// store (FailOpen or FailLocal).
	Degraded bool
	// Now is the store's clock at the decision.
	Now time.Time
	// OutputTokens is the output reserved for an allowed request with an
	// AdmitRequest.Output: its Tokens, or fewer when the store clamped the
	// output to fit the budgets. Zero for a request without one.
	OutputTokens int64
	// Requests and Tokens are the most constraining level's per-minute
	// state (the one with the least remaining; the org's on a tie).
	Requests RateState
	Tokens   RateState
	Budgets  []BudgetState
	// Expired lists reservations found expired (never settled) during this
	// call and charged at their estimate. Each is reported exactly once across
	// all replicas.
	Expired []Expired
	// Crossed lists alert thresholds that the expiry sweep of this call
	// crossed first in their window.
	Crossed []Crossing
}

// Expired is a reservation that expired unsettled and was charged at its
// estimate.
type Expired struct {
	Tenant    string
	RequestID string
	Model     string
	Cost      int64
}

// SettleRequest finishes one admitted request with what it really consumed.
type SettleRequest struct {
	Tenant    string
	RequestID string
	// Tokens is the real tokens-per-minute charge (accounting.Usage
	// RateLimitedTokens), replacing the estimate.
	Tokens int64
	// Cost is the real cost in nano-USD, replacing the estimate in every
	// budget the request reserved.
	Cost int64
	// Budgets carry the alert thresholds to check after the charge; matched to
	// the reservation's windows by Name.
	Budgets []Budget
	// Calibrate, when its Model is set, is folded into the tenant's estimator
	// calibration record for that model in the same call (see Calibration);
	// only a settle that settles folds it.
	Calibrate CalibrationSample
}

// SettleResult is the answer to Settle.
type SettleResult struct {
	// Settled is false when the request id was unknown or already settled;
	// nothing changed then.
	Settled bool
	Budgets []BudgetState
	// Crossed lists alert thresholds this settle crossed first in their window,
	// across all replicas.
	Crossed []Crossing
	Expired []Expired
	// Queued is set by a Resilient store when the shared store was down and
	// the settle was queued to be applied when it is back.
	Queued bool
	// Unknown is set (with Settled false) when the store has no record of the
	// id at all, as opposed to one already settled, expired or cancelled: a
	// reservation the store lost (a restart without persistence, FLUSHALL,
	// eviction) or one never made.
	Unknown bool
	// Calibration is the model's factor after this settle folded the
	// request's sample; zero Factor when it folded none.
	Calibration Calibration
}

// Crossing is one alert threshold crossed for the first time in a window.
type Crossing struct {
	Budget    string // store budget name (see LevelBudgetName)
	Level     string // the level key of Budget
	Window    Window
	Threshold int64 // the alert amount in nano-USD
	Spent     int64
	Cap       int64
}
