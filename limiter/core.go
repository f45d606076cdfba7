package limiter

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// This file holds what the Redis and memory stores share: validation, the
// GCRA arithmetic, window selection, and turning a store's raw outcome into a
// Decision. The Lua scripts repeat the few lines of arithmetic that must run
// inside Redis; everything derived from their raw numbers is computed here so
// both stores report identical figures.
//
// Time inside the stores is integer microseconds since the Unix epoch, and
// money integer nano-USD. Lua numbers are IEEE doubles, exact up to 2^53, so
// the inputs are bounded (MaxTokens, MaxCost) to keep every product exact.

// minute is the GCRA period in microseconds.
const minute = int64(60_000_000)

const (
	// MaxTokens bounds a token estimate or charge: tokens × 60e6 stays below
	// 2^53, where the Lua scripts' doubles are still exact integers.
	MaxTokens = int64(100_000_000)
	// MaxCost bounds a cost in nano-USD ($1M per request) for the same reason:
	// sums of costs stay exact in Lua.
	MaxCost = int64(1_000_000_000_000_000)
	// DefaultRetention is how long a budget window's keys outlive the window,
	// so `tokenwarden budgets` can show recent windows.
	DefaultRetention = 40 * 24 * time.Hour
	// DefaultSettledTTL is how long a settled or expired reservation record
	// is kept to make duplicate Settles no-ops.
	DefaultSettledTTL = time.Hour
	// DefaultSweepLimit bounds how many expired reservations one call sweeps,
	// keeping each call O(budgets + SweepLimit); the rest go to later calls.
	DefaultSweepLimit = 64
	// MaxCount bounds AdmitRequest.Count: count × 60e6 stays exact in Lua,
	// and one admission cannot stand for more than a large lease.
	MaxCount = int64(10_000)
)

// ErrDuplicateRequest is returned by Admit when the request id already has a
// reservation (pending, or settled recently). Nothing is written.
var ErrDuplicateRequest = errors.New("limiter: request id already admitted")

// ErrInvalid wraps every error caused by a malformed request.
var ErrInvalid = errors.New("limiter: invalid request")

// Denial codes shared with the Lua scripts: 0 allowed, 1 concurrency,
// 2 requests, 3 tokens, 4+i budget i, -1 duplicate request id.
const (
	codeAllowed     = 0
	codeConcurrency = 1
	codeRequests    = 2
	codeTokens      = 3
	codeBudget0     = 4
	codeDuplicate   = -1
)

// rate is one GCRA limit in store units.
type rate struct {
	limit     int64 // per minute; 0 = unlimited
	tolerance int64 // µs of burst: Burst × 60s
}

func newRate(limit int64, burst float64) rate {
	if burst <= 0 || burst > 1 {
		burst = 1
	}
	return rate{limit: limit, tolerance: int64(burst * float64(minute))}
}

// increment is how far cost units push the theoretical arrival time:
// floor(cost × 60s / limit). Flooring (rather than rounding up) keeps exactly
// `limit` unit requests inside one minute for every limit, at the price of
// sub-microsecond leniency per request.
func increment(cost, limit int64) int64 {
	if limit <= 0 {
		return 0
	}
	return cost * minute / limit
}

// requestsIncrement is how far an admission standing for count requests
// pushes a requests-per-minute TAT: count single increments, not
// increment(count, limit), so a Count=k admission moves the state exactly
// as k admissions do (flooring each keeps exactly `limit` per minute).
// lua/admit.lua repeats it.
func requestsIncrement(count, limit int64) int64 { return count * increment(1, limit) }

// retry is how long after now a request of cost inc conforms, given the
// current TAT; 0 when it conforms now.
func (r rate) retry(now, tat, inc int64) int64 {
	tat = max(tat, now)
	return max(tat+inc-r.tolerance-now, 0)
}

// state reports the limit for headers: Remaining is how many cost units fit
// now, Reset how long until the TAT falls back to now (fully replenished).
func (r rate) state(now, tat int64) RateState {
	if r.limit <= 0 {
		return RateState{}
	}
	d := max(tat-now, 0)
	return RateState{
		Limit:     r.limit,
		Remaining: max((r.tolerance-d)*r.limit/minute, 0),
		Reset:     micros(d),
	}
}

func micros(us int64) time.Duration { return time.Duration(us) * time.Microsecond }

func unixMicros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// pickWindow returns the index of the window that contains now; when the
// caller's clock is so far off that none does, the last window that has
// started, or the first.
func pickWindow(ws *[3]Window, now int64) int {
	pick := 0
	for i, w := range ws {
		if unixMicros(w.Start) <= now {
			pick = i
			if now < unixMicros(w.End) {
				return i
			}
		}
	}
	return pick
}

// tenantPrefix is the key prefix of every key of a tenant. The tenant is the
// Redis Cluster hash tag, so braces in it are escaped (and the escape
// character itself) to keep the tag intact and the mapping one-to-one.
func tenantPrefix(tenant string) string {
	return "tw:{" + tagEscaper.Replace(tenant) + "}:"
}

var tagEscaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")

func validateAdmit(req *AdmitRequest) error {
	if err := validateIDs(req.Tenant, req.RequestID); err != nil {
		return err
	}
	l := req.Limits
	switch {
	case l.RequestsPerMinute < 0 || l.TokensPerMinute < 0 || l.Concurrent < 0 || l.LeaseTTL < 0:
		return fmt.Errorf("%w: negative limit", ErrInvalid)
	case l.Burst < 0 || l.Burst > 1:
		return fmt.Errorf("%w: burst %v outside [0, 1]", ErrInvalid, l.Burst)
	case req.Tokens < 0 || req.Tokens > MaxTokens:
		return fmt.Errorf("%w: tokens %d outside [0, %d]", ErrInvalid, req.Tokens, MaxTokens)
	case req.Cost < 0 || req.Cost > MaxCost:
		return fmt.Errorf("%w: cost %d outside [0, %d]", ErrInvalid, req.Cost, MaxCost)
	case req.Count < 0 || req.Count > MaxCount:
		return fmt.Errorf("%w: count %d outside [1, %d]", ErrInvalid, req.Count, MaxCount)
	}
	if o := req.Output; o.Tokens != 0 || o.Price != 0 || o.Min != 0 {
		switch {
		case o.Tokens < 0 || o.Tokens > req.Tokens:
			return fmt.Errorf("%w: output tokens %d outside [0, tokens %d]", ErrInvalid, o.Tokens, req.Tokens)
		case o.Min < 0 || o.Min > o.Tokens:
			return fmt.Errorf("%w: minimum output %d outside [0, output tokens %d]", ErrInvalid, o.Min, o.Tokens)
		case o.Price < 0 || o.Tokens > 0 && o.Price > req.Cost/o.Tokens: // Tokens×Price ≤ Cost, without overflow
			return fmt.Errorf("%w: output price %d × %d tokens outside [0, cost %d]", ErrInvalid, o.Price, o.Tokens, req.Cost)
		}
	}
	if err := validateLevelLimits(req.LevelLimits); err != nil {
		return err
	}
	return validateBudgets(req.Budgets, true)
}

// clampOutput is the output an admission reserves when room is the least
// headroom (cap − spent − reserved) over its budgets: all of o.Tokens when
// cost fits, else the largest whole number of output tokens that fits, or
// o.Tokens again when that is below o.Min (the budget check then denies
// the request whole). lua/admit.lua repeats it.
func clampOutput(o Output, cost, room int64) int64 {
	if o.Tokens <= 0 || o.Price <= 0 || cost <= room {
		return o.Tokens
	}
	avail := room - (cost - o.Tokens*o.Price) // what is left for output
	if avail < 0 || avail/o.Price < o.Min {
		return o.Tokens
	}
	return avail / o.Price
}

func validateSettle(req *SettleRequest) error {
	if err := validateIDs(req.Tenant, req.RequestID); err != nil {
		return err
	}
	switch {
	case req.Tokens < 0 || req.Tokens > MaxTokens:
		return fmt.Errorf("%w: tokens %d outside [0, %d]", ErrInvalid, req.Tokens, MaxTokens)
	case req.Cost < 0 || req.Cost > MaxCost:
		return fmt.Errorf("%w: cost %d outside [0, %d]", ErrInvalid, req.Cost, MaxCost)
	}
	if err := validateCalibration(&req.Calibrate); err != nil {
		return err
	}
	return validateBudgets(req.Budgets, false)
}

func validateIDs(tenant, id string) error {
	if tenant == "" || id == "" {
		return fmt.Errorf("%w: empty tenant or request id", ErrInvalid)
	}
	return nil
}

// validateBudgets checks names (they become key parts and record fields, so
// no separators) and, when windows matter, that they are ordered and real.
func validateBudgets(bs []Budget, windows bool) error {
	for i := range bs {
		b := &bs[i]
		if b.Name == "" || strings.ContainsAny(b.Name, "{}:\t\n") {
			return fmt.Errorf("%w: budget name %q", ErrInvalid, b.Name)
		}
		for _, a := range b.Alerts {
			if a < 0 || a > MaxCost {
				return fmt.Errorf("%w: budget %s alert %d", ErrInvalid, b.Name, a)
			}
		}
		if !windows {
			continue
		}
		if b.Cap < 0 || b.Cap > MaxCost {
			return fmt.Errorf("%w: budget %s cap %d", ErrInvalid, b.Name, b.Cap)
		}
		for j, w := range b.Windows {
			if w.Start.Unix() <= 0 || !w.Start.Before(w.End) {
				return fmt.Errorf("%w: budget %s window %d [%v, %v)", ErrInvalid, b.Name, j, w.Start, w.End)
			}
		}
	}
	return nil
}

// admitOutcome is a store's raw answer to Admit, in store units.
type admitOutcome struct {
	now     int64
	code    int
	rpmTAT  int64 // TAT after the decision (≥ now)
	tpmTAT  int64
	budgets []budgetOutcome // one per request budget, in order
	expired []Expired
	crossed []rawCrossing
	// output is the output reserved (clampOutput) of an allowed request.
	output int64
	// level is the index+1 in AdmitRequest.LevelLimits of the level whose
	// own limit denied (0: the org, or a budget); levelTATs are each
	// level's requests and tokens TATs after the decision.
	level     int
	levelTATs [][2]int64
}

type budgetOutcome struct {
	window                    int
	spent, reserved, degraded int64
}

// rawCrossing is a first crossing of an alert threshold in one window.
type rawCrossing struct {
	name       string
	start, end int64 // µs
	threshold  int64
	spent      int64
}

// decision builds the Decision from a store's raw outcome.
func (o *admitOutcome) decision(req *AdmitRequest) (Decision, error) {
	if o.code == codeDuplicate {
		return Decision{}, fmt.Errorf("%w: tenant %q request %q", ErrDuplicateRequest, req.Tenant, req.RequestID)
	}
	rpm := newRate(req.Limits.RequestsPerMinute, req.Limits.Burst)
	tpm := newRate(req.Limits.TokensPerMinute, req.Limits.Burst)
	d := Decision{
		Allowed:  o.code == codeAllowed,
		Now:      fromMicros(o.now),
		Requests: rpm.state(o.now, o.rpmTAT),
		Tokens:   tpm.state(o.now, o.tpmTAT),
		Expired:  withTenant(o.expired, req.Tenant),
		Crossed:  crossings(o.crossed, req.Budgets),
	}
	rpmTAT, tpmTAT := o.rpmTAT, o.tpmTAT
	for i, tats := range o.levelTATs {
		if i >= len(req.LevelLimits) {
			break
		}
		l := &req.LevelLimits[i]
		lr, lt := newRate(l.RequestsPerMinute, req.Limits.Burst), newRate(l.TokensPerMinute, req.Limits.Burst)
		if st := lr.state(o.now, tats[0]); st.Limit > 0 && (d.Requests.Limit == 0 || st.Remaining < d.Requests.Remaining) {
			d.Requests = st
		}
		if st := lt.state(o.now, tats[1]); st.Limit > 0 && (d.Tokens.Limit == 0 || st.Remaining < d.Tokens.Remaining) {
			d.Tokens = st
		}
		if o.level == i+1 { // the denying level's own limits and TATs
			d.Level, rpm, tpm, rpmTAT, tpmTAT = l.Key, lr, lt, tats[0], tats[1]
		}
	}
	if o.code != codeAllowed && o.level > len(req.LevelLimits) {
		return Decision{}, fmt.Errorf("limiter: store returned a denial at unknown level %d", o.level)
	}
	d.Budgets = make([]BudgetState, 0, len(o.budgets))
	var lv levelNames
	for i, b := range o.budgets {
		d.Budgets = append(d.Budgets, BudgetState{
			Name: req.Budgets[i].Name, Level: lv.of(req.Budgets[i].Name), Window: req.Budgets[i].Windows[b.window],
			Cap: req.Budgets[i].Cap, Spent: b.spent, Reserved: b.reserved,
		})
	}
	switch {
	case o.code == codeAllowed:
		if req.Output.Tokens > 0 {
			d.OutputTokens = o.output
		}
	case o.code == codeConcurrency:
		d.Denied = DimensionConcurrency
	case o.code == codeRequests:
		d.Denied = DimensionRequests
		d.RetryAfter, d.NeverFits = rateDenial(rpm, o.now, rpmTAT, requestsIncrement(req.count(), rpm.limit))
	case o.code == codeTokens:
		d.Denied = DimensionTokens
		d.RetryAfter, d.NeverFits = rateDenial(tpm, o.now, tpmTAT, increment(req.Tokens, tpm.limit))
	case o.code >= codeBudget0 && o.code-codeBudget0 < len(d.Budgets):
		b := d.Budgets[o.code-codeBudget0]
		lvl, kind := SplitBudgetName(b.Name)
		d.Denied, d.Level = BudgetDimension(kind), lvl
		d.RetryAfter = max(b.Window.End.Sub(d.Now), 0)
	default:
		return Decision{}, fmt.Errorf("limiter: store returned unknown decision code %d", o.code)
	}
	return d, nil
}

// rateDenial is the RetryAfter of a GCRA denial. A cost larger than the whole
// tolerance never conforms; then the honest answer is "never", reported as
// NeverFits with RetryAfter = time until the limit is fully replenished.
func rateDenial(r rate, now, tat, inc int64) (time.Duration, bool) {
	if inc > r.tolerance {
		return micros(max(tat-now, 0)), true
	}
	return micros(r.retry(now, tat, inc)), false
}

// crossings attaches caps (by budget name) to raw crossings.
func crossings(raw []rawCrossing, budgets []Budget) []Crossing {
	var out []Crossing
	for _, c := range raw {
		var capUSD int64
		for _, b := range budgets {
			if b.Name == c.name {
				capUSD = b.Cap
				break
			}
		}
		out = append(out, Crossing{
			Budget: c.name, Level: levelOf(c.name), Window: Window{Start: fromMicros(c.start), End: fromMicros(c.end)},
			Threshold: c.threshold, Spent: c.spent, Cap: capUSD,
		})
	}
	return out
}

// budgetAlerts looks up budgets' alert thresholds by name. A call carries
// a handful of budgets (eight at four levels), so a scan is cheaper than
// the map it replaced, built on every admit and settle; the last budget of
// a name wins, as it did in that map.
type budgetAlerts []Budget

func alertsByName(bs []Budget) budgetAlerts { return budgetAlerts(bs) }

func (a budgetAlerts) of(name string) []int64 {
	for i := len(a) - 1; i >= 0; i-- {
		if a[i].Name == name {
			return a[i].Alerts
		}
	}
	return nil
}

// settleOutcome is a store's raw answer to Settle.
type settleOutcome struct {
	now     int64
	settled bool
	unknown bool
	budgets []windowOutcome
	expired []Expired
	crossed []rawCrossing
	// factor and samples are the calibration record after the fold, zero
	// when none was folded.
	factor, samples int64
}

// windowOutcome is one budget window a reservation was charged to.
type windowOutcome struct {
	name            string
	start, end      int64
	spent, reserved int64
}

func (o *settleOutcome) result(req *SettleRequest) SettleResult {
	r := SettleResult{Settled: o.settled, Unknown: o.unknown, Expired: withTenant(o.expired, req.Tenant), Crossed: crossings(o.crossed, req.Budgets)}
	if o.factor > 0 {
		r.Calibration = Calibration{Model: req.Calibrate.Model, Factor: o.factor, Samples: o.samples}
	}
	r.Budgets = make([]BudgetState, 0, len(o.budgets))
	var lv levelNames
	for _, w := range o.budgets {
		st := BudgetState{Name: w.name, Level: lv.of(w.name), Window: Window{Start: fromMicros(w.start), End: fromMicros(w.end)},
			Spent: w.spent, Reserved: w.reserved}
		for _, b := range req.Budgets {
			if b.Name == w.name {
				st.Cap = b.Cap
			}
		}
		r.Budgets = append(r.Budgets, st)
	}
	return r
}

// withTenant fills the tenant in, which the stores leave out because every
// reservation a call sweeps belongs to the calling tenant.
func withTenant(es []Expired, tenant string) []Expired {
	for i := range es {
		es[i].Tenant = tenant
	}
	return es
}
