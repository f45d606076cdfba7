package gate

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// admit runs the one admission round trip. It returns nil when the request
// may go on, or the local reply that ends it.
func (x *Exchange) admit() *Reply {
	g := x.g
	tenantLabel := x.cfg.TenantLabel(x.tenant)
	start := time.Now()
	limits, levelLimits, budgets := x.levelRequest(g.opts.Now())
	d, res, err := limiter.Reserve(x.ctx, g.opts.Store, limiter.AdmitRequest{
		Tenant:      x.tenant,
		RequestID:   x.requestID,
		Model:       x.modelLabel,
		Limits:      limits,
		LevelLimits: levelLimits,
		Tokens:      x.rateTokens(),
		Cost:        int64(x.estimateCost),
		Budgets:     budgets,
		Output:      x.output, // the part a full reservation may clamp (reserve.go)
		Detached:    x.batch,  // batch work holds no slot while the provider works (batch.go)
		OnFailure:   x.policy.OnFailure,
		Lease:       x.policy.Leases, // zero unless the policy opts into leased admission
	})
	// Kept before anything else runs, so that whatever fails next (an
	// observer, a panic) leaves a reservation Abort can still settle.
	x.reservation = res
	g.obs.StoreCall("admit", time.Since(start), err)
	if errors.Is(err, limiter.ErrInvalid) {
		// Not an outage: the store refused what tokenwarden asked (a value
		// outside its bounds). That is tokenwarden's bug, not the client's.
		g.log.Error("the store rejected an admission as invalid", "tenant", x.tenant, "policy", x.policy.Name, "err", err)
		return x.reject(500, wire.ErrorInternal, "", "tokenwarden: the request could not be admitted: "+err.Error(), ResultStoreError, nil)
	}
	if err != nil {
		g.obs.Admission(tenantLabel, "failed_closed")
		if n, ok := g.refusals.Allow(time.Now()); ok {
			g.log.Error("admission store failed; policy fails closed", "tenant", x.tenant, "policy", x.policy.Name, "err", err, "suppressed_since_last", n)
		}
		x.decisionTag = "failed_closed"
		return x.reject(503, wire.ErrorUnavailable, "", "tokenwarden: the limits store is unavailable and this policy fails closed; retry shortly", ResultStoreError, nil)
	}
	x.keepDecision(d)
	x.recordExpired(d.Expired)
	x.recordCrossings(d.Crossed)
	x.observeBudgets(d.Budgets)
	if !d.Allowed {
		x.decisionTag = "denied_" + string(d.Denied)
		g.obs.Admission(tenantLabel, x.decisionTag)
		return x.deny(d)
	}
	switch {
	case d.Degraded && x.policy.OnFailure == limiter.FailOpen:
		x.decisionTag = "failed_open"
	case d.Degraded:
		x.decisionTag = "local"
	default:
		x.decisionTag = "allowed"
	}
	g.obs.Admission(tenantLabel, x.decisionTag)
	return nil
}

// batchLimits are the limits a batch submission is admitted under: its
// reservation lasts the policy's batches.reservation_ttl, and it counts
// nothing against tokens per minute (batch.go).
func (x *Exchange) batchLimits(l limiter.Limits) limiter.Limits {
	if x.batch {
		l.LeaseTTL, l.TokensPerMinute = x.policy.Batches.ReservationTTL, 0
	}
	return l
}

// rateTokens is what the request counts against tokens per minute: its
// estimate, or nothing for a batch (batch.go).
func (x *Exchange) rateTokens() int64 {
	if x.batch {
		return 0
	}
	return x.estimate.RateLimitedTokens()
}

// enforces reports whether any level of the caller has anything to check.
func (x *Exchange) enforces() bool {
	if len(x.levels) == 0 {
		return x.policy.Enforces()
	}
	for i := range x.levels {
		if x.levels[i].Enforces() {
			return true
		}
	}
	return false
}

// deniedLevel is the resolved level a decision names (by its key), and its
// kind's name as x-tokenwarden-denied shows it: org, team, user or key.
func (x *Exchange) deniedLevel(key string) (policy.ResolvedLevel, string) {
	if lk, lane := splitLaneKey(key); lane != "" {
		// A lane group: the level's limits at the group's share.
		l, name := x.deniedLevel(lk)
		s := x.laneShare(lane)
		l.Limits.RequestsPerMinute = policy.LaneLimit(l.Limits.RequestsPerMinute, s)
		l.Limits.TokensPerMinute = policy.LaneLimit(l.Limits.TokensPerMinute, s)
		l.Limits.Concurrent = policy.LaneLimit(l.Limits.Concurrent, s)
		return l, name
	}
	for _, l := range x.levels {
		if l.Key == key {
			return l, l.Level.String()
		}
	}
	// A one-level org: its policy is the level.
	kind := policy.LevelOfKey(key)
	return policy.ResolvedLevel{Level: kind, Name: x.tenant, Key: key, Limits: x.policy.Limits}, kind.String()
}

// deny builds the 429: the dialect's error body, exact retry hints, the
// caller's rate-limit state and which level and dimension refused
// (x-tokenwarden-denied: team/budget_day).
func (x *Exchange) deny(d limiter.Decision) *Reply {
	dim := string(d.Denied)
	lvl, lvlName := x.deniedLevel(d.Level)
	// In a hierarchy the message names the level that refused ("the team
	// search: ..."); a one-level org is just the caller.
	pre, who := "tokenwarden: ", "this caller"
	if len(x.levels) > 1 {
		who = "the " + lvlName + " " + lvl.Name
		pre += who + ": "
	}
	if _, lane := splitLaneKey(d.Level); lane != "" {
		// Held to a lower lane group's share: higher lanes keep the rest.
		who += "'s lanes at or below " + lane
		pre += "the share of the lanes at or below " + lane + ": "
	}
	x.retryIn = retryIn(d)
	var h HeaderEdits
	x.rateLimitHeaders(&h)
	retry := d.RetryAfter
	secs := int64(math.Ceil(retry.Seconds()))
	if secs < 1 {
		secs = 1
	}
	h.set("retry-after", strconv.FormatInt(secs, 10))
	// retry-after-ms only for a real wait: SDKs read it before retry-after,
	// so a concurrency denial (no known wait) or a never-fitting request
	// announcing 1ms would be retried at once instead of after a second.
	if retry > 0 {
		h.set("retry-after-ms", strconv.FormatInt(max(retry.Milliseconds(), 1), 10))
	}
	h.set(contract.DeniedHeader, lvlName+"/"+dim)
	// SDKs retry 429s within seconds; when waiting is longer than a minute (a
	// budget window, or a request that can never fit) a retry is pointless.
	if retry > time.Minute || d.NeverFits {
		h.set("x-should-retry", "false")
	}
	kind, msg := wire.ErrorRateLimited, ""
	switch d.Denied {
	case limiter.DimensionRequests:
		msg = fmt.Sprintf("%sover the limit of %d requests per minute; retry in %ds", pre, lvl.Limits.RequestsPerMinute, secs)
	case limiter.DimensionTokens:
		msg = fmt.Sprintf("%sover the limit of %d tokens per minute (this request reserves %d); retry in %ds", pre, lvl.Limits.TokensPerMinute, x.estimate.RateLimitedTokens(), secs)
		if d.NeverFits {
			msg = fmt.Sprintf("tokenwarden: this request reserves %d tokens, more than the %d tokens per minute %s may use; reduce the prompt or max_tokens", x.estimate.RateLimitedTokens(), lvl.Limits.TokensPerMinute, who)
		}
	case limiter.DimensionConcurrency:
		msg = fmt.Sprintf("%s%d requests already in flight, the limit", pre, lvl.Limits.Concurrent)
	default:
		kind = wire.ErrorBudget
		window := dim[len("budget_"):]
		msg = fmt.Sprintf("%sthe %s budget is exhausted; it resets in %s", pre, window, retry.Round(time.Second))
		if cap, ok := budgetCap(d, limiter.LevelBudgetName(d.Level, window)); ok && x.leastReservation() > cap {
			// Not a matter of waiting: the request alone reserves more than
			// the window's whole budget, now and after any reset.
			msg = fmt.Sprintf("%sthis request reserves $%.6f, more than the whole %s budget of $%.6f; reduce the prompt or max_tokens",
				pre, accounting.NanoUSD(x.leastReservation()).USD(), window, accounting.NanoUSD(cap).USD())
			if !slices.Contains(h.Set, Header{"x-should-retry", "false"}) {
				h.set("x-should-retry", "false")
			}
		}
	}
	return x.reject(429, kind, dim, msg, ResultDenied, &h)
}

// concurrencyRetry is when a request denied for concurrency tries again
// while it waits: a slot freed on this replica wakes it at once (queue.go),
// one freed on another replica is seen within this interval.
const concurrencyRetry = 250 * time.Millisecond

// retryIn is how long until capacity a denial names is expected back, for
// the queue: 0 for what waiting cannot cure (a budget, a request that never
// fits).
func retryIn(d limiter.Decision) time.Duration {
	switch d.Denied {
	case limiter.DimensionConcurrency:
		return concurrencyRetry
	case limiter.DimensionRequests, limiter.DimensionTokens:
		if d.NeverFits {
			return 0
		}
		return max(d.RetryAfter, time.Millisecond)
	}
	return 0
}

// keepDecision keeps what the exchange reads of its admission after the
// admitting call: the rate states (its rate-limit headers), the output the
// store granted, the denial and whether the store was down. The budget
// windows, expiries and crossings are read within that call only (the
// decision passed along), and a slow stream would hold them — about 1 KB
// at four levels — until its response ends.
func (x *Exchange) keepDecision(d limiter.Decision) {
	d.Budgets, d.Expired, d.Crossed = nil, nil, nil
	x.decision = d
}

// budgetCap is the cap of the named budget window in a decision.
func budgetCap(d limiter.Decision, window string) (int64, bool) {
	for _, b := range d.Budgets {
		if b.Name == window {
			return b.Cap, true
		}
	}
	return 0, false
}

// reject ends the request with a local reply in the dialect's error format
// and records its outcome.
func (x *Exchange) reject(code int, kind wire.ErrorKind, dimension, msg string, result Result, h *HeaderEdits) *Reply {
	x.paceRelease() // never reaches the provider, or not yet (a held reply waits)
	model := x.modelLabel
	if model == "" {
		model = policy.OtherLabel
	}
	if x.decisionTag == "" {
		x.decisionTag = string(result)
	}
	o := &Outcome{
		Dialect: x.dialect.Name(), Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policyName(),
		RequestedModel: x.requestedModel, Model: x.model, ModelLabel: model, Result: result, Decision: x.decisionTag,
	}
	if x.requestID == "" {
		x.requestID = x.g.nextRequestID()
	}
	body := x.dialect.ErrorBody(kind, dimension, msg, x.requestID)
	r := &Reply{Status: code, Body: body, Details: "tokenwarden_" + string(result)}
	if h != nil {
		r.Headers = h.Set
	}
	// The request id the SDKs show (requestID, request_id) is tokenwarden's
	// own: it names this answer in tokenwarden's logs, as the provider's
	// would in the provider's.
	r.Headers = append(r.Headers,
		Header{x.dialect.RequestIDHeader(), x.requestID},
		Header{"content-type", "application/json"},
		Header{"content-length", strconv.Itoa(len(body))})
	if x.mayWait() {
		// Capacity is expected back within the lane's wait: this answer is
		// kept for the end of the wait, and nothing is recorded yet
		// (queue.go).
		x.q.held = &heldReply{reply: r, outcome: o}
		return r
	}
	x.answered(o)
	return r
}

// answered ends the request with a local answer and records its outcome.
func (x *Exchange) answered(o *Outcome) {
	x.phase = phaseDone
	x.outcome = o
	x.g.obs.Outcome(o)
}

// rateLimitHeaders adds the caller's limits under tokenwarden's own names
// (x-tokenwarden-ratelimit-*, in OpenAI's convention of Go-duration
// resets): the provider's own x-ratelimit-* and anthropic-ratelimit-*
// headers describe the provider's limits and reach the client unchanged.
func (x *Exchange) rateLimitHeaders(h *HeaderEdits) {
	d := x.decision
	// Room for all six at once, not four growths of the slice on the way.
	if n := 3 * (b2i(d.Requests.Limit > 0) + b2i(d.Tokens.Limit > 0)); n > 0 {
		h.Set = slices.Grow(h.Set, n)
	}
	if d.Requests.Limit > 0 {
		h.set(contract.RateLimitPrefix+"limit-requests", strconv.FormatInt(d.Requests.Limit, 10))
		h.set(contract.RateLimitPrefix+"remaining-requests", strconv.FormatInt(d.Requests.Remaining, 10))
		h.set(contract.RateLimitPrefix+"reset-requests", d.Requests.Reset.Round(time.Millisecond).String())
	}
	if d.Tokens.Limit > 0 {
		h.set(contract.RateLimitPrefix+"limit-tokens", strconv.FormatInt(d.Tokens.Limit, 10))
		h.set(contract.RateLimitPrefix+"remaining-tokens", strconv.FormatInt(d.Tokens.Remaining, 10))
		h.set(contract.RateLimitPrefix+"reset-tokens", d.Tokens.Reset.Round(time.Millisecond).String())
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
