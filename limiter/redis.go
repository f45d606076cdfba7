package limiter

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lua/common.lua
	commonLua string
	//go:embed lua/admit.lua
	admitLua string
	//go:embed lua/settle.lua
	settleLua string
	//go:embed lua/budgets.lua
	budgetsLua string
	//go:embed lua/cancel.lua
	cancelLua string
	//go:embed lua/renew.lua
	renewLua string
	//go:embed lua/reconcile.lua
	reconcileLua string
	//go:embed lua/heartbeat.lua
	heartbeatLua string
	//go:embed lua/rebind.lua
	rebindLua string

	admitScript     = redis.NewScript(commonLua + admitLua)
	settleScript    = redis.NewScript(commonLua + settleLua)
	budgetsScript   = redis.NewScript(commonLua + budgetsLua)
	cancelScript    = redis.NewScript(commonLua + cancelLua)
	renewScript     = redis.NewScript(commonLua + renewLua)
	reconcileScript = redis.NewScript(commonLua + reconcileLua)
	heartbeatScript = redis.NewScript(heartbeatLua)
	rebindScript    = redis.NewScript(commonLua + rebindLua)
)

// Defaults of RedisOptions. A busy store is not a down store: the round
// trip is timed on its own (the client's read and write timeouts, set by
// Open), waiting for a place among this replica's calls in flight has its
// own bound, and what waits longer is shed (ErrShed), which a Resilient
// store serves with the request's failure policy without calling it an
// outage.
const (
	// DefaultTimeout bounds one round trip. A script runs in well under a
	// millisecond, but a reply read by a process starved of CPU arrives
	// late: a 500-request burst for one tenant on a busy 2-core machine was
	// refused almost whole at 25ms and still in part at 250ms while other
	// test processes ran. It only delays the first requests of a real
	// outage; the breaker answers the rest at once. Timeout + QueueTimeout
	// (1.75s; a dial, 250ms at most, is rare: connections are kept open)
	// stays below the ext_proc filter's message_timeout
	// that tokenwarden's Envoy configs set (2s;
	// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto),
	// so a slow store is answered by its failure policy, not by Envoy's
	// timeout.
	DefaultTimeout = 500 * time.Millisecond
	// DefaultMaxInFlight bounds this replica's store calls in flight (the
	// connection pool is sized to it and kept open, so a call that has its
	// place does not wait for a connection).
	DefaultMaxInFlight = 64
	// DefaultQueueTimeout bounds the wait for a place among the calls in
	// flight; past it the call is shed. A burst waits here most of the time
	// it takes: 500 admissions for one tenant took up to 1.8s to drain on the
	// 2-core machine while other test runs starved it of CPU.
	DefaultQueueTimeout = 1250 * time.Millisecond
	// DefaultDialTimeout bounds opening a connection (Open keeps
	// MaxInFlight of them open, so a call rarely dials).
	DefaultDialTimeout = 250 * time.Millisecond
)

// RedisOptions configure a Redis store.
type RedisOptions struct {
	// Client is a *redis.Client, *redis.ClusterClient or any
	// UniversalClient. The store does not close it.
	Client redis.UniversalClient
	// Timeout bounds each call (one script round trip) on top of the
	// caller's context. Zero means DefaultTimeout.
	Timeout time.Duration
	// Retention is how long budget windows' keys outlive the window, and how
	// long an unswept reservation is kept. Zero means DefaultRetention.
	Retention time.Duration
	// SettledTTL is how long a settled or expired reservation's record stays
	// to make duplicate Settles no-ops. Zero means DefaultSettledTTL.
	SettledTTL time.Duration
	// SweepLimit bounds the expired reservations one call sweeps. Zero means
	// DefaultSweepLimit.
	SweepLimit int
	// MaxInFlight bounds this store's calls in flight; QueueTimeout how long
	// a call waits for a place before it is shed (ErrShed). Zero means
	// DefaultMaxInFlight and DefaultQueueTimeout.
	MaxInFlight  int
	QueueTimeout time.Duration
	// DialTimeout is the client's: a call's deadline is DialTimeout +
	// Timeout, as it may have to open a connection before its round trip.
	// Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// TombstoneTTL is how long a cancel's tombstone stays; ReconciledTTL how
	// long a reconciled charge's marker stays. Zero means the defaults.
	TombstoneTTL  time.Duration
	ReconciledTTL time.Duration
	// Pipelines is how many calls, or pipelines of calls, this store has in
	// flight at once; a call that finds them all busy waits for the next
	// pipeline, with every call that queued meanwhile (see pipeline). Zero
	// means DefaultPipelines.
	Pipelines int
}

// Redis is the shared Store: each Admit and Settle is one EVALSHA of an
// embedded Lua script (EVAL once after a NOSCRIPT), all keys of a tenant
// share one hash tag, and Redis TIME is the only clock.
//
// Keys, all under tw:{tenant}: and all with a TTL:
//
//	s                      hash of the tenant's small state, read with one HMGET and written
//	                       with one HSET: r, t (RPM and TPM GCRA theoretical arrival times, µs),
//	                       n (a lower bound of p's earliest expiry, so calls skip the sweep
//	                       while nothing can have expired), pe and e (the expiries last set on
//	                       p and on s, so calls skip PEXPIRE until one would lapse); per
//	                       level below the org r:<level>, t:<level> (its TATs) and
//	                       pe:<level> (a lower bound of p:<level>'s expiry); it outlives its
//	                       TATs and is safe to lose: absent fields mean sweep and read or
//	                       set the expiries again
//	p:<level>              zset of request id → expiry: a level's concurrency leases
//	p                      zset of request id → expiry: the concurrency leases and the pending
//	                       reservations at once (unexpired members are the leases); TTL at
//	                       least the newest lease + Retention
//	d                      zset of request id → expiry of detached reservations (batch work):
//	                       swept like p, never counted as leases; s's nd is its earliest
//	r:<id>                 string: "p<tokens> <cost> <tpm limit> <len> <windows><model>" while
//	                       pending (created with SET NX PX, which is also the duplicate check),
//	                       then "s" (settled) or "x" (expired) for SettledTTL
//	b:<name>:<startUnix>   hash: spent, reserved (nano-USD); TTL window end + Retention
//	a:<name>:<startUnix>   set of alert thresholds already reported for the window
//	c:<model>              hash: f, n (the input estimator's calibration factor in parts per
//	                       million and its sample count, see Calibration), x (its expiry as
//	                       last set, s); TTL Retention after its last settle, give or take the
//	                       hour by which an EXPIRE is skipped
type Redis struct {
	client        redis.UniversalClient
	timeout       time.Duration
	callTimeout   time.Duration // DialTimeout + Timeout: one call, dial included
	retention     time.Duration
	settledTTL    time.Duration
	sweepLimit    int
	queueTimeout  time.Duration
	tombstoneTTL  time.Duration
	reconciledTTL time.Duration
	// slots holds one token per call in flight.
	slots chan struct{}
	// pipe sends the calls: at once while few are in flight, else
	// coalesced into pipelines (redis_pipe.go).
	pipe *pipeline
}

var _ Shared = (*Redis)(nil)

// NewRedis returns a Redis store over opts.Client.
func NewRedis(opts RedisOptions) (*Redis, error) {
	if opts.Client == nil {
		return nil, errors.New("limiter: RedisOptions.Client is nil")
	}
	callTimeout := cmp.Or(opts.DialTimeout, DefaultDialTimeout) + cmp.Or(opts.Timeout, DefaultTimeout)
	return &Redis{
		pipe:          &pipeline{client: opts.Client, timeout: callTimeout, lanes: cmp.Or(opts.Pipelines, DefaultPipelines)},
		client:        opts.Client,
		callTimeout:   callTimeout,
		timeout:       cmp.Or(opts.Timeout, DefaultTimeout),
		retention:     cmp.Or(opts.Retention, DefaultRetention),
		settledTTL:    cmp.Or(opts.SettledTTL, DefaultSettledTTL),
		sweepLimit:    cmp.Or(opts.SweepLimit, DefaultSweepLimit),
		queueTimeout:  cmp.Or(opts.QueueTimeout, DefaultQueueTimeout),
		tombstoneTTL:  cmp.Or(opts.TombstoneTTL, DefaultTombstoneTTL),
		reconciledTTL: cmp.Or(opts.ReconciledTTL, DefaultReconciledTTL),
		slots:         make(chan struct{}, cmp.Or(opts.MaxInFlight, DefaultMaxInFlight)),
	}, nil
}

// Admit implements Store in one round trip.
func (r *Redis) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	if err := validateAdmit(&req); err != nil {
		return Decision{}, err
	}
	keys, args := r.admitArgs(&req)
	v, err := r.run(ctx, admitScript, keys, args)
	if err != nil {
		return Decision{}, fmt.Errorf("limiter: admit: %w", err)
	}
	o, err := parseAdmit(v, len(req.Budgets))
	if err != nil {
		return Decision{}, fmt.Errorf("limiter: admit: %w", err)
	}
	return o.decision(&req)
}

// admitArgs are the KEYS and ARGV of lua/admit.lua for req.
func (r *Redis) admitArgs(req *AdmitRequest) ([]string, []any) {
	prefix := tenantPrefix(req.Tenant)
	l := req.Limits
	rpm, tpm := newRate(l.RequestsPerMinute, l.Burst), newRate(l.TokensPerMinute, l.Burst)
	detached := int64(0)
	if req.Detached {
		detached = 1
	}
	// Each distinct set of windows once: the script picks the window of
	// each set, not of each budget (every level's day budget has the same).
	sets, setOf := windowSets(req.Budgets)
	nl, nb := len(req.LevelLimits), len(req.Budgets)
	ints := 17 + 3*nl + 1 + 6*len(sets) + 1 + 2*nb
	strs := 3 + nl + nb
	alerts := alertsLen(req.Budgets)
	a := newScriptArgs(ints+strs+alerts, ints+alerts, strs+nb)
	a.str(prefix)
	a.str(req.RequestID)
	for _, v := range [...]int64{rpm.limit, rpm.tolerance, tpm.limit, tpm.tolerance, l.Concurrent,
		int64(cmp.Or(l.LeaseTTL, DefaultLeaseTTL) / time.Microsecond), req.Tokens, req.Cost} {
		a.int(v)
	}
	a.str(req.Model)
	for _, v := range [...]int64{int64(r.retention / time.Second), r.settledTTL.Milliseconds(), int64(r.sweepLimit),
		req.Output.Tokens, req.Output.Price, req.Output.Min, detached, req.count(), int64(nl)} {
		a.int(v)
	}
	for i := range req.LevelLimits {
		l := &req.LevelLimits[i]
		a.str(escapedLevel(l.Key))
		a.int(l.RequestsPerMinute)
		a.int(l.TokensPerMinute)
		a.int(l.Concurrent)
	}
	a.int(int64(len(sets)))
	for _, ws := range sets {
		for _, w := range ws {
			a.int(w)
		}
	}
	a.int(int64(nb))
	for i := range req.Budgets {
		a.str(req.Budgets[i].Name)
		a.int(req.Budgets[i].Cap)
		a.int(int64(setOf[i]))
	}
	a.alerts(req.Budgets)
	return callKeys(prefix, req.RequestID), a.argv
}

// Settle implements Store in one round trip.
func (r *Redis) Settle(ctx context.Context, req SettleRequest) (SettleResult, error) {
	if err := validateSettle(&req); err != nil {
		return SettleResult{}, err
	}
	prefix := tenantPrefix(req.Tenant)
	alerts := alertsLen(req.Budgets)
	a := newScriptArgs(10+alerts, 7+alerts, 3+len(req.Budgets))
	a.str(prefix)
	a.str(req.RequestID)
	for _, v := range [...]int64{req.Tokens, req.Cost,
		int64(r.retention / time.Second), r.settledTTL.Milliseconds(), int64(r.sweepLimit)} {
		a.int(v)
	}
	a.alerts(req.Budgets)
	a.str(req.Calibrate.Model)
	a.int(req.Calibrate.Estimated)
	a.int(req.Calibrate.Measured)
	v, err := r.run(ctx, settleScript, callKeys(prefix, req.RequestID), a.argv)
	if err != nil {
		return SettleResult{}, fmt.Errorf("limiter: settle: %w", err)
	}
	o, err := parseSettle(v)
	if err != nil {
		return SettleResult{}, fmt.Errorf("limiter: settle: %w", err)
	}
	return o.result(&req), nil
}

// Budgets implements Store in one read-only round trip.
func (r *Redis) Budgets(ctx context.Context, tenant string, budgets []Budget) ([]BudgetState, error) {
	if err := validateBudgets(budgets, true); err != nil {
		return nil, err
	}
	prefix := tenantPrefix(tenant)
	args := []any{prefix, len(budgets)}
	for _, b := range budgets {
		args = append(args, b.Name)
		for _, w := range b.Windows {
			args = append(args, unixMicros(w.Start), unixMicros(w.End))
		}
	}
	v, err := r.run(ctx, budgetsScript, []string{prefix + "p"}, args)
	if err != nil {
		return nil, fmt.Errorf("limiter: budgets: %w", err)
	}
	top, err := asSlice(v, 2)
	if err != nil {
		return nil, fmt.Errorf("limiter: budgets: %w", err)
	}
	rows, err := asSlice(top[1], len(budgets))
	if err != nil {
		return nil, fmt.Errorf("limiter: budgets: %w", err)
	}
	out := make([]BudgetState, len(budgets))
	for i, b := range budgets {
		bo, err := parseBudget(rows[i])
		if err != nil {
			return nil, fmt.Errorf("limiter: budgets: %w", err)
		}
		out[i] = BudgetState{Name: b.Name, Level: levelOf(b.Name), Window: b.Windows[bo.window], Cap: b.Cap, Spent: bo.spent, Reserved: bo.reserved, Degraded: bo.degraded}
	}
	return out, nil
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("limiter: ping: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// Close implements Store. The client belongs to the caller and stays open.
func (r *Redis) Close() error { return nil }

func (r *Redis) run(ctx context.Context, s *redis.Script, keys []string, args []any) (any, error) {
	if err := r.acquire(ctx); err != nil {
		return nil, err
	}
	defer func() { <-r.slots }()
	// The client's read and write timeouts time the round trip (Open sets
	// them to the store timeout); the pipeline's deadline, DialTimeout +
	// Timeout, bounds what the client does around it too: a connection to
	// dial first.
	v, err := r.pipe.do(ctx, s, keys, args)
	if errors.Is(err, redis.ErrPoolTimeout) {
		// Nothing was sent: the pool was exhausted (a client shared with
		// other work, or sized below MaxInFlight).
		return nil, fmt.Errorf("%w: %w", ErrShed, err)
	}
	if err != nil {
		// The caller giving up (a client gone, its own deadline) says nothing
		// about the store; it must not open a circuit breaker.
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("%w (%w)", cerr, err)
		}
		if unavailable(err) {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	return v, nil
}

// acquire takes a place among the calls in flight, waiting at most the
// queue timeout; a call that finds none is shed.
func (r *Redis) acquire(ctx context.Context) error {
	select {
	case r.slots <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(r.queueTimeout)
	defer t.Stop()
	select {
	case r.slots <- struct{}{}:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: %d calls in flight for %s", ErrShed, cap(r.slots), r.queueTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// InFlight reports the calls in flight now, for tests and metrics.
func (r *Redis) InFlight() int { return len(r.slots) }

// unavailable tells a store that cannot answer now (no reply at all:
// network, timeout, a closed client; or a node loading, failing over or
// without quorum) from an error reply to the script or the request, which
// retrying elsewhere would not fix.
func unavailable(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true
	}
	msg := rerr.Error()
	for _, p := range []string{"LOADING", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "TRYAGAIN", "BUSY"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// windowSets returns the distinct window sets of budgets (start, end µs of
// each of the three windows) and, per budget, the 1-based index of its set.
func windowSets(budgets []Budget) ([][6]int64, []int) {
	var sets [][6]int64
	setOf := make([]int, len(budgets))
	for i := range budgets {
		var ws [6]int64
		for j, w := range budgets[i].Windows {
			ws[2*j], ws[2*j+1] = unixMicros(w.Start), unixMicros(w.End)
		}
		k := slices.Index(sets, ws)
		if k < 0 {
			k = len(sets)
			sets = append(sets, ws)
		}
		setOf[i] = k + 1
	}
	return sets, setOf
}

func parseAdmit(v any, nb int) (admitOutcome, error) {
	top, err := asSlice(v, -1)
	if err == nil && len(top) != 7 && len(top) != 10 {
		err = fmt.Errorf("unexpected admit reply of length %d", len(top))
	}
	if err != nil {
		return admitOutcome{}, err
	}
	var o admitOutcome
	var code int64
	for i, p := range []*int64{&o.now, &code, &o.rpmTAT, &o.tpmTAT} {
		if *p, err = asInt(top[i]); err != nil {
			return admitOutcome{}, err
		}
	}
	o.code = int(code)
	if code == codeDuplicate {
		return o, nil
	}
	// Each budget's window, spent and reserved, one flat list.
	flat, err := asSlice(top[4], 3*nb)
	if err != nil {
		return admitOutcome{}, err
	}
	o.budgets = make([]budgetOutcome, 0, nb)
	for i := 0; i < len(flat); i += 3 {
		b, err := parseBudgetFields(flat[i : i+3])
		if err != nil {
			return admitOutcome{}, err
		}
		o.budgets = append(o.budgets, b)
	}
	if o.expired, err = parseExpired(top[5]); err != nil {
		return admitOutcome{}, err
	}
	if len(top) == 10 { // the output reserved, the denying level, the levels' TATs
		if o.output, err = asInt(top[7]); err != nil {
			return admitOutcome{}, err
		}
		lvl, err := asInt(top[8])
		if err != nil {
			return admitOutcome{}, err
		}
		o.level = int(lvl)
		// Each level's rpm and tpm TAT, one flat list.
		flat, err := asSlice(top[9], -1)
		if err == nil && len(flat)%2 != 0 {
			err = fmt.Errorf("levels' TATs of odd length %d", len(flat))
		}
		if err != nil {
			return admitOutcome{}, err
		}
		for i := 0; i < len(flat); i += 2 {
			var tats [2]int64
			for j := range tats {
				if tats[j], err = asInt(flat[i+j]); err != nil {
					return admitOutcome{}, err
				}
			}
			o.levelTATs = append(o.levelTATs, tats)
		}
	}
	o.crossed, err = parseCrossed(top[6])
	return o, err
}

func parseSettle(v any) (settleOutcome, error) {
	top, err := asSlice(v, -1)
	if err != nil {
		return settleOutcome{}, err
	}
	if len(top) != 5 && len(top) != 6 {
		return settleOutcome{}, fmt.Errorf("settle reply of %d fields", len(top))
	}
	var o settleOutcome
	if len(top) == 6 {
		c, err := asSlice(top[5], 2)
		if err != nil {
			return settleOutcome{}, err
		}
		if o.factor, err = asInt(c[0]); err != nil {
			return settleOutcome{}, err
		}
		if o.samples, err = asInt(c[1]); err != nil {
			return settleOutcome{}, err
		}
	}
	if o.now, err = asInt(top[0]); err != nil {
		return settleOutcome{}, err
	}
	settled, err := asInt(top[1])
	if err != nil {
		return settleOutcome{}, err
	}
	o.settled, o.unknown = settled == 1, settled == -1
	// Each window's name, start, end, spent and reserved, one flat list.
	flat, err := asSlice(top[2], -1)
	if err == nil && len(flat)%5 != 0 {
		err = fmt.Errorf("settled windows of length %d", len(flat))
	}
	if err != nil {
		return settleOutcome{}, err
	}
	if len(flat) > 0 {
		o.budgets = make([]windowOutcome, 0, len(flat)/5)
	}
	for k := 0; k < len(flat); k += 5 {
		f := flat[k : k+5]
		w := windowOutcome{name: asString(f[0])}
		for i, p := range []*int64{&w.start, &w.end, &w.spent, &w.reserved} {
			if *p, err = asInt(f[i+1]); err != nil {
				return settleOutcome{}, err
			}
		}
		o.budgets = append(o.budgets, w)
	}
	if o.expired, err = parseExpired(top[3]); err != nil {
		return settleOutcome{}, err
	}
	o.crossed, err = parseCrossed(top[4])
	return o, err
}

func parseBudget(v any) (budgetOutcome, error) {
	f, err := asSlice(v, -1)
	if err != nil {
		return budgetOutcome{}, err
	}
	return parseBudgetFields(f)
}

// parseBudgetFields reads a budget's window index, spent, reserved and,
// from lua/budgets.lua, degraded.
func parseBudgetFields(f []any) (budgetOutcome, error) {
	if len(f) != 3 && len(f) != 4 {
		return budgetOutcome{}, fmt.Errorf("budget row of %d fields", len(f))
	}
	w, err := asInt(f[0])
	if err != nil {
		return budgetOutcome{}, err
	}
	if w < 0 || w > 2 {
		return budgetOutcome{}, fmt.Errorf("window index %d", w)
	}
	b := budgetOutcome{window: int(w)}
	if b.spent, err = asInt(f[1]); err != nil {
		return budgetOutcome{}, err
	}
	if b.reserved, err = asInt(f[2]); err != nil || len(f) == 3 {
		return b, err
	}
	b.degraded, err = asInt(f[3])
	return b, err
}

func parseExpired(v any) ([]Expired, error) {
	rows, err := asSlice(v, -1)
	if err != nil {
		return nil, err
	}
	var out []Expired
	for _, row := range rows {
		f, err := asSlice(row, 3)
		if err != nil {
			return nil, err
		}
		cost, err := asInt(f[2])
		if err != nil {
			return nil, err
		}
		out = append(out, Expired{RequestID: asString(f[0]), Model: asString(f[1]), Cost: cost})
	}
	return out, nil
}

func parseCrossed(v any) ([]rawCrossing, error) {
	rows, err := asSlice(v, -1)
	if err != nil {
		return nil, err
	}
	var out []rawCrossing
	for _, row := range rows {
		f, err := asSlice(row, 5)
		if err != nil {
			return nil, err
		}
		c := rawCrossing{name: asString(f[0])}
		for i, p := range []*int64{&c.start, &c.end, &c.threshold, &c.spent} {
			if *p, err = asInt(f[i+1]); err != nil {
				return nil, err
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// asSlice checks a script reply is an array of n elements (any n when n < 0).
func asSlice(v any, n int) ([]any, error) {
	s, ok := v.([]any)
	if !ok || (n >= 0 && len(s) != n) {
		return nil, fmt.Errorf("unexpected script reply %T of length %d, want %d", v, len(s), n)
	}
	return s, nil
}

// asInt reads an integer reply, or an integer the script passed through as a
// string (window bounds read back from a record).
func asInt(v any) (int64, error) {
	switch x := v.(type) {
	case int64:
		return x, nil
	case string:
		return strconv.ParseInt(x, 10, 64)
	}
	return 0, fmt.Errorf("unexpected script value %T", v)
}

func asString(v any) string {
	s, _ := v.(string)
	return s
}
