package limiter

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Leased admission: deciding from slices held locally.
//
// Every exact admission is one script call in the shared store, and most of
// that call's cost is the script's own work over every level and budget. A
// policy that opts in (AdmitRequest.Lease) trades some exactness for far
// fewer calls: Leased takes one ordinary detached reservation — a lease —
// for k requests of a chain (one tenant, model and set of limits, levels,
// budgets and lane groups: everything a decision depends on), charged k
// requests, k times the request's tokens and cost, then admits and settles
// requests of that chain locally, all or nothing, from what the lease has
// left. A lease takes no more once it is exhausted or MaxAge old, and once
// its last request settled it is settled in the store with the sums of what
// its requests really used.
//
// The bounds, all measured by leased_test.go against one Redis shared by
// three replicas:
//
//   - Requests, tokens per minute and budgets are never above exact mode: a
//     lease is charged in advance, and its settle is the sum of its
//     requests' actual tokens and cost. Under-admission: up to Replicas × k
//     requests (and their tokens and cost) may be held in other replicas'
//     open leases, for at most MaxAge each; requests a lease never served
//     stay charged to requests per minute (tokens and cost are refunded at
//     its settle). A budget window: a lease taken before a window's end is
//     charged to that window, for up to MaxAge of requests after it.
//   - Concurrency: a detached lease holds no slot, so each level's
//     Concurrent is enforced per replica at max(1, limit/Replicas) for the
//     requests Leased handles: Σ ≤ limit + Replicas − 1 (when limit <
//     Replicas). Requests that do not opt in hold their slots in the store
//     and are not counted here.
//   - A replica that dies: each of its open leases expires unsettled within
//     its lease TTL (the policy's LeaseTTL + MaxAge) of its last renewal and
//     is charged at its estimate, k × the per-request size it was taken at
//     (the estimate of the request that took it, or the mean estimate of
//     the chain's last lease if larger): the over-charge is at most that,
//     per open lease.
//
// Near a limit leased mode degrades to exact admission: a block that does
// not fit is never taken in part; the request that asked for it is admitted
// exactly (that request pays a second round trip), its chain's block halves
// and the chain stays exact until the denial's RetryAfter (at most MaxAge).
// A Degraded decision (the store unreachable) is never kept as a lease, and
// while the store is down requests pass through to its failure policy. An
// exact requests-per-minute denial answers the chain's requests locally
// until its RetryAfter, which exact mode would deny as well.
type Leased struct {
	notesOf // Notes are Inner's (notes.go)
	inner   Store
	renewer Renewer
	replica func() int64
	up      func() bool
	now     func() time.Time
	log     *slog.Logger
	nonce   string
	tick    time.Duration
	max     int

	mu       sync.Mutex
	seq      int64
	overflow int64 // requests passed through for want of a chain
	taken    int64 // leases the store granted
	served   int64 // requests admitted from a lease
	closed   bool
	chains   map[string]*chain
	reqs     map[reqKey]*localReq
	// held is len(reqs), read without the lock: while no policy asks for
	// leases a settle or renew passes through without taking it.
	held   atomic.Int64
	leases map[*leaseBlock]struct{} // not yet settled in the store
	slots  map[reqKey]int64         // local concurrency in use, by tenant and level key

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// LeaseTerms opt one request into leased admission. The zero value is exact
// admission.
type LeaseTerms struct {
	// MaxAge is how long a lease takes requests; it bounds how long capacity
	// is held in a lease (under-admission), in (0, MaxLeaseAge].
	MaxAge time.Duration
	// MaxRequests is the largest block one lease takes, in [2,
	// MaxLeaseRequests].
	MaxRequests int64
}

func (t LeaseTerms) enabled() bool { return t.MaxAge > 0 && t.MaxRequests >= 2 }

const (
	// MaxLeaseAge and MaxLeaseRequests bound LeaseTerms (the policy's
	// leases: max_age and max_requests).
	MaxLeaseAge      = 10 * time.Second
	MaxLeaseRequests = int64(1000)
	// DefaultLeasedChains bounds the chains a Leased holds.
	DefaultLeasedChains = 10_000
	// firstBlock is a new chain's first block: small, so a chain that sees
	// few requests holds little.
	firstBlock = int64(4)
)

// LeasedOptions configure a Leased.
type LeasedOptions struct {
	// Inner is the store leases and exact admissions go to.
	Inner Store
	// Replicas is the replica count local concurrency is divided by (as for
	// FailLocal); nil means 1.
	Replicas func() int64
	// Up reports whether Inner decides on the shared store; while it does
	// not, requests pass through to its failure policy. Nil means always.
	Up func() bool
	// MaxChains bounds the chains held; past it, and with none idle to
	// evict, a request passes through. Zero means DefaultLeasedChains.
	MaxChains int
	// Tick is how often aged leases are closed and idle ones settled; zero
	// means 100ms.
	Tick   time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// chain is one set of requests a lease can serve: same tenant, model,
// limits, levels and budgets (chainKey).
type chain struct {
	key        string
	tenant     string
	block      int64
	cur        *leaseBlock
	acquiring  chan struct{} // closed when the acquisition in flight ends
	exactUntil time.Time
	open       int // leases of this chain not yet settled in the store
	// denial is the chain's last exact denial for requests per minute, at
	// deniedAt (local clock): until its RetryAfter has passed exact mode
	// denies every request of the chain too (the TATs only ever rise; only
	// a Cancel lowers them), so they are denied locally (stillDenied).
	deniedAt time.Time
	denial   Decision
	// meanTokens and meanCost are the mean estimates of the requests the
	// chain's last closed lease served.
	meanTokens, meanCost int64
	// expired and crossed are what a lease settle off the request path
	// reported, given to the chain's next decision.
	expired []Expired
	crossed []Crossing
}

type leaseBlock struct {
	id     string
	c      *chain
	k      int64
	maxAge time.Duration
	ttl    time.Duration
	opened time.Time // local clock
	dec    Decision
	// The block and what is taken from it: used requests; tokens and cost
	// reserved by requests in flight (their estimates) plus what settled
	// ones really used.
	tokensCap, costCap int64
	used, tokens, cost int64
	estTokens, estCost int64 // the estimates of the requests taken
	inflight           int
	closed, settling   bool
	done               bool // settled in the store
	blockK             int64
	budgets            []Budget
	calibrate          CalibrationSample
	ids                []reqKey
}

type reqKey struct{ tenant, id string }

// localReq is a request Leased handles: admitted from lease l, or exactly
// (l nil) with local concurrency slots.
type localReq struct {
	l            *leaseBlock
	tokens, cost int64
	slots        []reqKey
	settled      bool
}

// NewLeased starts the loop that closes aged leases; Close stops it,
// settles every open lease and closes Inner.
func NewLeased(o LeasedOptions) *Leased {
	var b [6]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand.Read)
	l := &Leased{
		notesOf: notesOf{o.Inner}, inner: o.Inner, replica: o.Replicas, up: o.Up, now: o.Now, log: cmp.Or(o.Logger, slog.Default()),
		nonce: hex.EncodeToString(b[:]), tick: cmp.Or(o.Tick, 100*time.Millisecond), max: cmp.Or(o.MaxChains, DefaultLeasedChains),
		chains: map[string]*chain{}, reqs: map[reqKey]*localReq{}, leases: map[*leaseBlock]struct{}{}, slots: map[reqKey]int64{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	l.renewer, _ = o.Inner.(Renewer)
	if l.now == nil {
		l.now = time.Now
	}
	go l.loop()
	return l
}

func (l *Leased) replicas() int64 {
	if l.replica == nil {
		return 1
	}
	return max(l.replica(), 1)
}

// leasable reports whether req may be served from a lease at all.
func leasable(req *AdmitRequest) bool {
	return req.Lease.enabled() && !req.Detached && req.Count <= 1
}

// Admit implements Store: a request that opts in is served from its chain's
// lease, taking one when there is none; anything else passes through.
func (l *Leased) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	if !leasable(&req) {
		return l.inner.Admit(ctx, req)
	}
	if err := validateAdmit(&req); err != nil {
		return Decision{}, err
	}
	key := chainKey(&req)
	rk := reqKey{req.Tenant, req.RequestID}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return l.inner.Admit(ctx, req)
	}
	if l.reqs[rk] != nil {
		l.mu.Unlock()
		return Decision{}, fmt.Errorf("%w: tenant %q request %q", ErrDuplicateRequest, req.Tenant, req.RequestID)
	}
	c := l.chainFor(key, req.Tenant)
	if c == nil { // full of busy chains: exact
		l.overflow++
		l.mu.Unlock()
		return l.inner.Admit(ctx, req)
	}
	if d, ok := c.stillDenied(l.now()); ok {
		l.mu.Unlock()
		return d, nil
	}
	slots, denied := l.takeSlots(&req, c)
	if denied != nil {
		l.mu.Unlock()
		return *denied, nil
	}
	for {
		now := l.now()
		if ls := c.cur; ls != nil {
			if ls.fits(&req, now) {
				d := l.take(ls, &req, rk, slots, now)
				l.mu.Unlock()
				return d, nil
			}
			l.closeLease(ls, now)
		}
		if now.Before(c.exactUntil) || l.up != nil && !l.up() {
			break
		}
		if w := c.acquiring; w != nil {
			// One acquisition in flight per chain: the others wait for it.
			l.mu.Unlock()
			select {
			case <-w:
			case <-ctx.Done():
				l.mu.Lock()
				l.releaseSlots(slots)
				l.mu.Unlock()
				return Decision{}, fmt.Errorf("limiter: waiting for a lease: %w", ctx.Err())
			}
			l.mu.Lock()
			continue
		}
		// Each of the k requests is sized at this one's estimate or the mean
		// of the chain's last lease, whichever is larger: a lease sized by a
		// small request would close at the next larger one.
		tokens, cost := max(req.Tokens, c.meanTokens), max(req.Cost, c.meanCost)
		k := min(c.block, req.Lease.MaxRequests)
		if tokens > 0 {
			k = min(k, MaxTokens/tokens)
		}
		if cost > 0 {
			k = min(k, MaxCost/cost)
		}
		if k < 2 {
			break
		}
		w := make(chan struct{})
		c.acquiring = w
		l.seq++
		lr := leaseRequest(&req, "lease~"+l.nonce+"~"+strconv.FormatInt(l.seq, 10), k, tokens, cost)
		l.mu.Unlock()
		d, err := l.inner.Admit(ctx, lr)
		l.mu.Lock()
		c.acquiring = nil
		close(w)
		now = l.now()
		switch {
		case err == nil && d.Allowed && l.closed: // Close ran meanwhile: give it back
			l.releaseSlots(slots)
			l.mu.Unlock()
			if _, err := l.inner.Settle(ctx, SettleRequest{Tenant: req.Tenant, RequestID: lr.RequestID, Budgets: req.Budgets}); err != nil {
				l.log.Warn("lease taken while closing not given back; it expires", "tenant", req.Tenant, "err", err)
			}
			return l.inner.Admit(ctx, req)
		case err == nil && d.Allowed && !d.Degraded:
			ls := &leaseBlock{id: lr.RequestID, c: c, k: k, maxAge: req.Lease.MaxAge, ttl: lr.Limits.LeaseTTL, opened: now, dec: d,
				tokensCap: lr.Tokens, costCap: lr.Cost, budgets: req.Budgets, blockK: k}
			c.cur, c.open = ls, c.open+1
			l.leases[ls] = struct{}{}
			l.taken++
			dd := l.take(ls, &req, rk, slots, now)
			// The lease's own reports, once: to the request that took it.
			dd.Expired, dd.Crossed = append(dd.Expired, d.Expired...), append(dd.Crossed, d.Crossed...)
			l.mu.Unlock()
			return dd, nil
		case err == nil && d.Allowed: // Degraded: never kept; given back
			l.leases[&leaseBlock{id: lr.RequestID, c: c, closed: true, budgets: req.Budgets, ttl: lr.Limits.LeaseTTL}] = struct{}{}
			c.open++
			l.wake()
			c.exactUntil = now.Add(req.Lease.MaxAge)
		case err == nil: // the block does not fit: exact, and smaller next time
			c.block = max(c.block/2, 2)
			c.exactUntil = now.Add(min(d.RetryAfter, req.Lease.MaxAge))
		case errors.Is(err, ErrInvalid) || ctx.Err() != nil:
			l.releaseSlots(slots)
			l.mu.Unlock()
			return Decision{}, err
		default: // the store failed: the request gets its failure policy
			c.exactUntil = now.Add(req.Lease.MaxAge)
		}
		break
	}
	l.mu.Unlock()
	sent := l.now() // before the store's own now: a kept denial never outlasts the store's
	d, err := l.inner.Admit(ctx, req)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil || !d.Allowed || l.closed {
		l.releaseSlots(slots)
		if err == nil && d.Denied == DimensionRequests && !d.Degraded {
			c.deniedAt, c.denial = sent, d
		}
		return d, err
	}
	if len(slots) > 0 {
		l.reqs[rk] = &localReq{slots: slots}
		l.held.Store(int64(len(l.reqs)))
	}
	l.report(c, &d.Expired, &d.Crossed)
	return d, nil
}

// stillDenied is the chain's last requests-per-minute denial, moved on to
// now, while its RetryAfter has not passed. Tokens and budgets denials are
// never kept: a settle below its estimate gives tokens and money back.
func (c *chain) stillDenied(now time.Time) (Decision, bool) {
	if c.deniedAt.IsZero() {
		return Decision{}, false
	}
	since := now.Sub(c.deniedAt)
	if since >= c.denial.RetryAfter || since < 0 {
		c.deniedAt, c.denial = time.Time{}, Decision{}
		return Decision{}, false
	}
	d := c.denial
	d.Now, d.RetryAfter = d.Now.Add(since), d.RetryAfter-since
	d.Expired, d.Crossed = nil, nil // reported once, with the denial that had them
	return d, true
}

// leaseRequest is the detached reservation of k requests like req, each of
// tokens and cost. It holds no concurrency slot (Leased counts those), never
// has its output clamped, and fails closed: a lease is never decided
// without the shared store. It lives MaxAge longer than a request's
// reservation: its last request may be admitted MaxAge after it, and is
// renewed (through Renew) only from then on.
func leaseRequest(req *AdmitRequest, id string, k, tokens, cost int64) AdmitRequest {
	lim := req.Limits
	lim.Concurrent = 0
	lim.LeaseTTL = cmp.Or(lim.LeaseTTL, DefaultLeaseTTL) + req.Lease.MaxAge
	var ll []LevelLimits
	for _, x := range req.LevelLimits {
		if x.RequestsPerMinute > 0 || x.TokensPerMinute > 0 {
			x.Concurrent = 0
			ll = append(ll, x)
		}
	}
	return AdmitRequest{Tenant: req.Tenant, RequestID: id, Model: req.Model, Count: k, Limits: lim, LevelLimits: ll,
		Tokens: k * tokens, Cost: k * cost, Budgets: req.Budgets, Detached: true, OnFailure: FailClosed}
}

func (ls *leaseBlock) fits(req *AdmitRequest, now time.Time) bool {
	return !ls.closed && now.Sub(ls.opened) < ls.maxAge && ls.used < ls.k &&
		ls.tokens+req.Tokens <= ls.tokensCap && ls.cost+req.Cost <= ls.costCap
}

// take admits req from ls (which it fits) and builds its decision.
func (l *Leased) take(ls *leaseBlock, req *AdmitRequest, rk reqKey, slots []reqKey, now time.Time) Decision {
	l.served++
	ls.used++
	ls.tokens += req.Tokens
	ls.cost += req.Cost
	ls.estTokens += req.Tokens
	ls.estCost += req.Cost
	ls.inflight++
	ls.ids = append(ls.ids, rk)
	l.reqs[rk] = &localReq{l: ls, tokens: req.Tokens, cost: req.Cost, slots: slots}
	l.held.Store(int64(len(l.reqs)))
	d := ls.decision(now)
	if req.Output.Tokens > 0 {
		d.OutputTokens = req.Output.Tokens
	}
	l.report(ls.c, &d.Expired, &d.Crossed)
	if ls.used == ls.k {
		l.closeLease(ls, now)
	}
	return d
}

// decision is a local admission's answer: the lease's decision, its clock
// moved on by the local time since, with what the lease still holds counted
// as remaining (the store charged it in advance) and as not reserved.
func (ls *leaseBlock) decision(now time.Time) Decision {
	d := Decision{Allowed: true, Now: ls.dec.Now.Add(now.Sub(ls.opened)), Requests: ls.dec.Requests, Tokens: ls.dec.Tokens}
	if d.Requests.Limit > 0 {
		d.Requests.Remaining = min(d.Requests.Remaining+ls.k-ls.used, d.Requests.Limit)
	}
	if d.Tokens.Limit > 0 {
		d.Tokens.Remaining = min(d.Tokens.Remaining+max(ls.tokensCap-ls.tokens, 0), d.Tokens.Limit)
	}
	d.Budgets = ls.budgetStates()
	return d
}

func (ls *leaseBlock) budgetStates() []BudgetState {
	if len(ls.dec.Budgets) == 0 {
		return nil
	}
	bs := make([]BudgetState, len(ls.dec.Budgets))
	unused := max(ls.costCap-ls.cost, 0)
	for i, b := range ls.dec.Budgets {
		b.Reserved = max(b.Reserved-unused, 0)
		bs[i] = b
	}
	return bs
}

// closeLease stops ls taking requests and adapts its chain's block: double
// it when the lease ran out before MaxAge, halve it when it closes more
// than half unused. An idle closed lease is settled by the loop.
func (l *Leased) closeLease(ls *leaseBlock, now time.Time) {
	if ls.closed {
		return
	}
	ls.closed = true
	c := ls.c
	if c.cur == ls {
		c.cur = nil
	}
	if ls.used > 0 {
		c.meanTokens, c.meanCost = ls.estTokens/ls.used, ls.estCost/ls.used
	}
	switch {
	case ls.used == ls.k && now.Sub(ls.opened) < ls.maxAge:
		c.block = min(2*ls.blockK, MaxLeaseRequests)
	case 2*ls.used < ls.k:
		c.block = max(ls.blockK/2, 2)
	}
	if ls.inflight == 0 {
		l.wake()
	}
}

func (l *Leased) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// report moves what off-path lease settles reported into a decision.
func (l *Leased) report(c *chain, expired *[]Expired, crossed *[]Crossing) {
	if c == nil || len(c.expired)+len(c.crossed) == 0 {
		return
	}
	*expired, *crossed = append(*expired, c.expired...), append(*crossed, c.crossed...)
	c.expired, c.crossed = nil, nil
}

// chainFor returns key's chain, making one (evicting an idle one when full);
// nil when every chain held is busy.
func (l *Leased) chainFor(key, tenant string) *chain {
	if c := l.chains[key]; c != nil {
		return c
	}
	if len(l.chains) >= l.max {
		for k, c := range l.chains {
			if c.cur == nil && c.open == 0 && c.acquiring == nil {
				delete(l.chains, k)
				break
			}
		}
		if len(l.chains) >= l.max {
			return nil
		}
	}
	c := &chain{key: key, tenant: tenant, block: firstBlock}
	l.chains[key] = c
	return c
}

// takeSlots takes a local concurrency slot at every level of req that limits
// concurrency, each level held to max(1, limit/Replicas) on this replica.
func (l *Leased) takeSlots(req *AdmitRequest, c *chain) ([]reqKey, *Decision) {
	n := l.replicas()
	var keys []reqKey
	check := func(level string, limit int64) *Decision {
		if limit <= 0 {
			return nil
		}
		k := reqKey{req.Tenant, level}
		if l.slots[k] >= max(1, limit/n) {
			d := Decision{Denied: DimensionConcurrency, Level: level, Now: l.now()}
			if ls := c.cur; ls != nil {
				d.Now, d.Requests, d.Tokens, d.Budgets = ls.dec.Now.Add(l.now().Sub(ls.opened)), ls.dec.Requests, ls.dec.Tokens, ls.budgetStates()
			}
			return &d
		}
		keys = append(keys, k)
		return nil
	}
	if d := check("", req.Limits.Concurrent); d != nil {
		return nil, d
	}
	for i := range req.LevelLimits {
		if d := check(req.LevelLimits[i].Key, req.LevelLimits[i].Concurrent); d != nil {
			return nil, d
		}
	}
	for _, k := range keys {
		l.slots[k]++
	}
	return keys, nil
}

func (l *Leased) releaseSlots(keys []reqKey) {
	for _, k := range keys {
		if l.slots[k]--; l.slots[k] <= 0 {
			delete(l.slots, k)
		}
	}
}

// Settle implements Store: a request served from a lease settles locally,
// once; the lease is settled in the store when its last request has
// (in this call, so the round trip is this settle's own).
func (l *Leased) Settle(ctx context.Context, req SettleRequest) (SettleResult, error) {
	if l.held.Load() == 0 {
		return l.inner.Settle(ctx, req)
	}
	rk := reqKey{req.Tenant, req.RequestID}
	l.mu.Lock()
	lr := l.reqs[rk]
	if lr == nil {
		l.mu.Unlock()
		return l.inner.Settle(ctx, req)
	}
	ls := lr.l
	if ls == nil { // admitted exactly, with local slots
		delete(l.reqs, rk)
		l.held.Store(int64(len(l.reqs)))
		l.releaseSlots(lr.slots)
		l.mu.Unlock()
		return l.inner.Settle(ctx, req)
	}
	if lr.settled || ls.done {
		res := SettleResult{Budgets: ls.budgetStates()}
		l.mu.Unlock()
		return res, nil
	}
	if err := validateSettle(&req); err != nil {
		l.mu.Unlock()
		return SettleResult{}, err
	}
	lr.settled = true
	l.releaseSlots(lr.slots)
	ls.inflight--
	ls.tokens += req.Tokens - lr.tokens
	ls.cost += req.Cost - lr.cost
	if s := req.Calibrate; s.Model != "" && (ls.calibrate.Model == "" || ls.calibrate.Model == s.Model) {
		ls.calibrate.Model = s.Model
		ls.calibrate.Estimated, ls.calibrate.Measured = ls.calibrate.Estimated+s.Estimated, ls.calibrate.Measured+s.Measured
	}
	now := l.now()
	if now.Sub(ls.opened) >= ls.maxAge {
		l.closeLease(ls, now)
	}
	res := SettleResult{Settled: true, Budgets: ls.budgetStates()}
	l.report(ls.c, &res.Expired, &res.Crossed)
	var sr SettleRequest
	last := ls.closed && ls.inflight == 0 && !ls.settling
	if last {
		ls.settling = true
		sr = ls.settleRequest()
		if len(req.Budgets) > 0 {
			sr.Budgets = req.Budgets // the alerts as this request knows them
		}
	}
	l.mu.Unlock()
	if last {
		r, err := l.inner.Settle(ctx, sr)
		l.settled(ls, r, err, false)
		if err == nil {
			res.Budgets = r.Budgets
			res.Expired, res.Crossed = append(res.Expired, r.Expired...), append(res.Crossed, r.Crossed...)
			res.Calibration = r.Calibration
		}
	}
	return res, nil
}

// settleRequest settles ls with what its requests used: the actuals of
// those settled, the estimates of any still in flight (Close).
func (ls *leaseBlock) settleRequest() SettleRequest {
	return SettleRequest{Tenant: ls.c.tenant, RequestID: ls.id, Tokens: max(ls.tokens, 0), Cost: max(ls.cost, 0),
		Budgets: ls.budgets, Calibrate: ls.calibrate}
}

// settled ends a lease settle: done, or tried again by the loop. Off the
// request path (keep) its reports wait for the chain's next decision.
func (l *Leased) settled(ls *leaseBlock, r SettleResult, err error, keep bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls.settling = false
	if err != nil {
		l.log.Warn("lease settle failed; tried again", "tenant", ls.c.tenant, "err", err)
		return
	}
	ls.done = true
	delete(l.leases, ls)
	ls.c.open--
	for _, k := range ls.ids {
		if lr := l.reqs[k]; lr != nil && lr.l == ls {
			delete(l.reqs, k)
		}
	}
	l.held.Store(int64(len(l.reqs)))
	ls.ids = nil
	if !keep {
		return
	}
	c := ls.c
	c.expired, c.crossed = append(c.expired, r.Expired...), append(c.crossed, r.Crossed...)
	// A chain nobody asks again keeps its last few, bounded all the same.
	c.expired, c.crossed = c.expired[max(len(c.expired)-maxReports, 0):], c.crossed[max(len(c.crossed)-maxReports, 0):]
}

// maxReports bounds the reports a chain keeps for its next decision.
const maxReports = 64

func (l *Leased) loop() {
	defer close(l.done)
	t := time.NewTicker(l.tick)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		case <-l.kick:
		}
		l.sweep(false)
	}
}

// sweep closes leases past MaxAge and settles every closed lease with no
// request in flight (all of them when final, in-flight ones at their
// estimates).
func (l *Leased) sweep(final bool) {
	now := l.now()
	var due []*leaseBlock
	var reqs []SettleRequest
	l.mu.Lock()
	for ls := range l.leases {
		if !ls.closed && (final || now.Sub(ls.opened) >= ls.maxAge) {
			l.closeLease(ls, now)
		}
		if ls.closed && !ls.settling && (final || ls.inflight == 0) {
			ls.settling = true
			due = append(due, ls)
			reqs = append(reqs, ls.settleRequest())
		}
	}
	l.mu.Unlock()
	for i, ls := range due {
		ttl := ls.ttl
		if ttl <= 0 {
			ttl = DefaultLeaseTTL
		}
		ctx, cancel := context.WithTimeout(context.Background(), min(ttl/3, replayTimeout))
		r, err := l.inner.Settle(ctx, reqs[i])
		cancel()
		l.settled(ls, r, err, true)
	}
}

// Renew implements Renewer: a request served from a lease renews its lease
// (a detached reservation in the store), the others pass through.
func (l *Leased) Renew(ctx context.Context, req RenewRequest) (int, error) {
	if l.renewer == nil {
		return 0, nil
	}
	if l.held.Load() == 0 {
		return l.renewer.Renew(ctx, req)
	}
	var pass []string
	byTTL := map[time.Duration][]string{}
	seen := map[*leaseBlock]bool{}
	l.mu.Lock()
	for _, id := range req.RequestIDs {
		lr := l.reqs[reqKey{req.Tenant, id}]
		switch {
		case lr == nil || lr.l == nil:
			pass = append(pass, id)
		case !lr.l.done && !seen[lr.l]:
			seen[lr.l] = true
			byTTL[lr.l.ttl] = append(byTTL[lr.l.ttl], lr.l.id)
		}
	}
	l.mu.Unlock()
	var n int
	var errs []error
	if len(pass) > 0 {
		m, err := l.renewer.Renew(ctx, RenewRequest{Tenant: req.Tenant, RequestIDs: pass, LeaseTTL: req.LeaseTTL, Detached: req.Detached})
		n, errs = n+m, append(errs, err)
	}
	for ttl, ids := range byTTL {
		m, err := l.renewer.Renew(ctx, RenewRequest{Tenant: req.Tenant, RequestIDs: ids, LeaseTTL: ttl, Detached: true})
		n, errs = n+m, append(errs, err)
	}
	return n, errors.Join(errs...)
}

// Open reports the leases not yet settled in the store, for tests and
// readiness details.
func (l *Leased) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leases)
}

// Overflowed reports how many requests that asked for leases were admitted
// exactly because MaxChains busy chains were held.
func (l *Leased) Overflowed() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.overflow
}

// LeasedStats are Leased's counters, for the metrics.
type LeasedStats struct {
	// Open is the leases not yet settled in the store.
	Open int
	// Taken is the leases the store granted, Served the requests admitted
	// from them: Served/Taken is how many requests one lease's two store
	// calls stood for.
	Taken, Served int64
	// Overflowed is Overflowed().
	Overflowed int64
}

// Stats reads the counters at once.
func (l *Leased) Stats() LeasedStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return LeasedStats{Open: len(l.leases), Taken: l.taken, Served: l.served, Overflowed: l.overflow}
}

// Budgets implements Store.
func (l *Leased) Budgets(ctx context.Context, tenant string, budgets []Budget) ([]BudgetState, error) {
	return l.inner.Budgets(ctx, tenant, budgets)
}

// Ping implements Store.
func (l *Leased) Ping(ctx context.Context) error { return l.inner.Ping(ctx) }

// Close settles every open lease (requests still in flight at their
// estimates), then closes Inner.
func (l *Leased) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	l.sweep(true)
	return l.inner.Close()
}

// Rebind implements Rebinder when Inner does (detached batch reservations
// always pass through).
func (l *Leased) Rebind(ctx context.Context, req RebindRequest) (bool, error) {
	rb, ok := l.inner.(Rebinder)
	if !ok {
		return false, nil
	}
	return rb.Rebind(ctx, req)
}

// chainKey names everything a decision for req depends on besides its own
// size: tenant, model, failure policy, the org's limits, every level's and
// lane group's limits, every budget's name, cap and windows.
func chainKey(req *AdmitRequest) string {
	b := make([]byte, 0, 256)
	str := func(s string) { b = append(strconv.AppendInt(b, int64(len(s)), 10), ':'); b = append(b, s...) }
	num := func(v int64) { b = append(strconv.AppendInt(b, v, 10), ',') }
	str(req.Tenant)
	str(req.Model)
	str(string(req.OnFailure))
	l := req.Limits
	num(l.RequestsPerMinute)
	num(l.TokensPerMinute)
	num(int64(math.Float64bits(l.Burst)))
	num(l.Concurrent)
	num(int64(l.LeaseTTL))
	num(int64(req.Lease.MaxAge))
	for _, x := range req.LevelLimits {
		str(x.Key)
		num(x.RequestsPerMinute)
		num(x.TokensPerMinute)
		num(x.Concurrent)
	}
	b = append(b, '|')
	for i := range req.Budgets {
		x := &req.Budgets[i]
		str(x.Name)
		num(x.Cap)
		for _, w := range x.Windows {
			num(w.Start.UnixMicro())
			num(w.End.UnixMicro())
		}
	}
	return string(b)
}
