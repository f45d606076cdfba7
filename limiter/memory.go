package limiter

import (
	"cmp"
	"context"
	"strconv"
	"sync"
	"time"
)

// MemoryOptions configure a Memory store.
type MemoryOptions struct {
	// Now is the store's clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
	// Retention, SettledTTL and SweepLimit mean what they mean for
	// RedisOptions; zero picks the same defaults.
	Retention  time.Duration
	SettledTTL time.Duration
	SweepLimit int
}

// Memory is a Store kept in this process, for a single replica and for the
// "local" failure mode. It has the Redis store's semantics, integer for
// integer: a mutex stands in for Redis's single thread, its clock for Redis
// TIME, and deadlines checked on access for key TTLs. Nothing runs in the
// background: expired reservations are swept by the next write for their
// tenant, and state whose every deadline has passed is dropped by a pass over
// all tenants at most once per minute of store time, so idle tenants cost
// nothing.
type Memory struct {
	now        func() time.Time
	retention  int64 // µs
	settledTTL int64 // µs
	sweepLimit int

	endedSpan int64 // µs: the longest an ended reservation answers duplicates

	mu       sync.Mutex
	tenants  map[string]*memTenant
	nextGC   int64
	epoch    string
	replicas map[string]int64    // replica -> last heartbeat µs
	notes    map[string]*memNote // Notes, by their Redis key (notes.go)
}

var _ Shared = (*Memory)(nil)

type memTenant struct {
	rpm, tpm int64                 // TATs; a value ≤ now means a full bucket
	pending  pendingSet            // request id by expiry: leases and unsettled reservations at once
	detached pendingSet            // request id by expiry: reservations that hold no lease (AdmitRequest.Detached)
	records  map[string]*memRecord // pending reservations and reconciled charges
	ended    endedSet              // reservations that ended, while they answer duplicates
	budgets  map[budgetKey]*memBudget
	calib    map[string]*memCalib // by model
	levels   map[string]*memLevel // the levels below the org, by key
}

// memLevel is one level's own state: its TATs and its leases (admit.lua's
// r:<key>, t:<key> fields and p:<key> zset).
type memLevel struct {
	rpm, tpm int64
	pending  pendingSet
}

// level returns the state of level key, creating it.
func (t *memTenant) level(key string) *memLevel {
	l := t.levels[key]
	if l == nil {
		if t.levels == nil {
			t.levels = map[string]*memLevel{}
		}
		l = &memLevel{pending: newPendingSet()}
		t.levels[key] = l
	}
	return l
}

// memCalib is one model's estimator calibration record (settle.lua's c:<model>).
type memCalib struct {
	factor, samples int64
	deadline        int64
}

type memRecord struct {
	state    byte // 'p' pending, 'd' a reconciled charge; the ended states are in endedSet
	tokens   int64
	cost     int64
	tpmLimit int64
	model    string
	windows  []recWindow
	levels   []LevelLimits // the levels' own limits it was admitted under
	deadline int64         // the record's TTL
}

type recWindow struct {
	name       string
	start, end int64
}

type memBudget struct {
	spent, reserved, degraded int64
	alerts                    map[int64]bool
	deadline                  int64
}

// NewMemory returns an empty memory store.
func NewMemory(opts MemoryOptions) *Memory {
	m := &Memory{
		now:        opts.Now,
		retention:  int64(cmp.Or(opts.Retention, DefaultRetention) / time.Microsecond),
		settledTTL: int64(cmp.Or(opts.SettledTTL, DefaultSettledTTL) / time.Microsecond),
		sweepLimit: cmp.Or(opts.SweepLimit, DefaultSweepLimit),
		tenants:    make(map[string]*memTenant),
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.endedSpan = max(m.settledTTL, int64(DefaultTombstoneTTL/time.Microsecond))
	return m
}

// rateCode is the first of concurrency, requests and tokens that refuses a
// request at one level: live leases against the concurrency limit, and how
// far past now the new TATs would be against the burst tolerance.
func rateCode(conc, rpm, tpm, live, rpmAhead, tpmAhead, tol int64) int {
	switch {
	case conc > 0 && live >= conc:
		return codeConcurrency
	case rpm > 0 && rpmAhead > tol:
		return codeRequests
	case tpm > 0 && tpmAhead > tol:
		return codeTokens
	}
	return codeAllowed
}

// budgetKey is a budget window's key: its name and its start in unix
// seconds (the Redis key's suffix). A struct, not a concatenated string, so
// the lookups on every admit and settle allocate nothing.
type budgetKey struct {
	name  string
	start int64 // unix seconds
}

func keyOf(name string, windowStart int64) budgetKey {
	return budgetKey{name, windowStart / 1_000_000}
}

// String is the key as the Redis store spells its suffix (tests' dumps).
func (k budgetKey) String() string { return k.name + ":" + strconv.FormatInt(k.start, 10) }

// Admit implements Store.
func (m *Memory) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	if err := validateAdmit(&req); err != nil {
		return Decision{}, err
	}
	m.mu.Lock()
	o := m.admit(&req)
	m.mu.Unlock()
	return o.decision(&req)
}

func (m *Memory) admit(req *AdmitRequest) admitOutcome {
	now := unixMicros(m.now())
	m.gc(now)
	t := m.tenant(req.Tenant)
	o := admitOutcome{now: now, rpmTAT: max(t.rpm, now), tpmTAT: max(t.tpm, now)}
	if t.known(req.RequestID, now) {
		o.code = codeDuplicate
		return o
	}
	l := req.Limits
	// keys and next stay on the stack for the usual few levels and budgets.
	var keyBuf [16]budgetKey
	keys := keyBuf[:0]
	if len(req.Budgets) > len(keyBuf) {
		keys = make([]budgetKey, 0, len(req.Budgets))
	}
	keys = keys[:len(req.Budgets)]
	o.budgets = make([]budgetOutcome, 0, len(req.Budgets))
	room := int64(MaxCost)
	for i := range req.Budgets {
		b := &req.Budgets[i]
		w := pickWindow(&b.Windows, now)
		keys[i] = keyOf(b.Name, unixMicros(b.Windows[w].Start))
		bo := budgetOutcome{window: w}
		if s := t.budget(keys[i], now); s != nil {
			bo.spent, bo.reserved = s.spent, s.reserved
		}
		room = min(room, b.Cap-bo.spent-bo.reserved)
		o.budgets = append(o.budgets, bo)
	}
	// The output clamp (AdmitRequest.Output): from here on the request is
	// what it reserves.
	o.output = clampOutput(req.Output, req.Cost, room)
	tokens, cost := req.Reserved(o.output)
	count := req.count()
	rpmNew := o.rpmTAT + requestsIncrement(count, l.RequestsPerMinute)
	tpmNew := o.tpmTAT + increment(tokens, l.TokensPerMinute)
	tol := newRate(1, l.Burst).tolerance
	o.code = rateCode(l.Concurrent, l.RequestsPerMinute, l.TokensPerMinute, t.pending.live(now), rpmNew-now, tpmNew-now, tol)
	type levelNext struct{ rpm, tpm int64 }
	var nextBuf [8]levelNext
	next := nextBuf[:0]
	if len(req.LevelLimits) > len(nextBuf) {
		next = make([]levelNext, 0, len(req.LevelLimits))
	}
	next = next[:len(req.LevelLimits)]
	o.levelTATs = make([][2]int64, 0, len(req.LevelLimits))
	for i := range req.LevelLimits {
		ll := &req.LevelLimits[i]
		var lr, lt, live int64 = now, now, 0
		if s := t.levels[ll.Key]; s != nil {
			lr, lt, live = max(s.rpm, now), max(s.tpm, now), s.pending.live(now)
		}
		o.levelTATs = append(o.levelTATs, [2]int64{lr, lt})
		next[i] = levelNext{lr + requestsIncrement(count, ll.RequestsPerMinute), lt + increment(tokens, ll.TokensPerMinute)}
		if o.code == codeAllowed {
			if o.code = rateCode(ll.Concurrent, ll.RequestsPerMinute, ll.TokensPerMinute, live, next[i].rpm-now, next[i].tpm-now, tol); o.code != codeAllowed {
				o.level = i + 1
			}
		}
	}
	if o.code == codeAllowed {
		for i, b := range o.budgets {
			if b.spent+b.reserved+cost > req.Budgets[i].Cap {
				o.code = codeBudget0 + i
				break
			}
		}
	}
	if o.code != codeAllowed {
		return o
	}

	// Allowed: sweep first, then reserve every dimension.
	m.sweep(t, now, alertsByName(req.Budgets), &o.expired, &o.crossed)
	if l.RequestsPerMinute > 0 {
		t.rpm, o.rpmTAT = rpmNew, rpmNew
	}
	if l.TokensPerMinute > 0 {
		t.tpm, o.tpmTAT = tpmNew, tpmNew
	}
	lease := int64(cmp.Or(l.LeaseTTL, DefaultLeaseTTL) / time.Microsecond)
	expiry := now + lease
	if req.Detached {
		t.detached.add(req.RequestID, expiry)
	} else {
		t.pending.add(req.RequestID, expiry)
	}
	rec := &memRecord{state: 'p', tokens: tokens, cost: cost, tpmLimit: l.TokensPerMinute,
		model: req.Model, deadline: expiry + m.retention,
		levels: make([]LevelLimits, 0, len(req.LevelLimits)), windows: make([]recWindow, 0, len(req.Budgets))}
	for i := range req.LevelLimits {
		ll := &req.LevelLimits[i]
		if !ll.enforces() {
			continue
		}
		s := t.level(ll.Key)
		if ll.RequestsPerMinute > 0 {
			s.rpm, o.levelTATs[i][0] = next[i].rpm, next[i].rpm
		}
		if ll.TokensPerMinute > 0 {
			s.tpm, o.levelTATs[i][1] = next[i].tpm, next[i].tpm
		}
		rl := *ll
		if req.Detached {
			// Holds no slot here either (AdmitRequest.Detached): its record
			// says so, as admit.lua's lease flag does, so its end frees none.
			rl.Concurrent = 0
		} else if ll.Concurrent > 0 {
			s.pending.add(req.RequestID, expiry)
		}
		rec.levels = append(rec.levels, rl)
	}
	for i := range req.Budgets {
		w := req.Budgets[i].Windows[o.budgets[i].window]
		s := t.budget(keys[i], now)
		if s == nil {
			s = &memBudget{}
			t.budgets[keys[i]] = s
		}
		s.reserved += cost
		s.deadline = unixMicros(w.End) + m.retention
		o.budgets[i].spent, o.budgets[i].reserved = s.spent, s.reserved // the sweep may have moved both
		rec.windows = append(rec.windows, recWindow{req.Budgets[i].Name, unixMicros(w.Start), unixMicros(w.End)})
	}
	t.records[req.RequestID] = rec
	return o
}

// Settle implements Store.
func (m *Memory) Settle(ctx context.Context, req SettleRequest) (SettleResult, error) {
	if err := validateSettle(&req); err != nil {
		return SettleResult{}, err
	}
	m.mu.Lock()
	o := m.settle(&req)
	m.mu.Unlock()
	return o.result(&req), nil
}

func (m *Memory) settle(req *SettleRequest) settleOutcome {
	now := unixMicros(m.now())
	m.gc(now)
	o := settleOutcome{now: now}
	t := m.tenants[req.Tenant]
	if t == nil {
		o.unknown = true
		return o
	}
	rec := t.records[req.RequestID]
	if rec == nil || rec.deadline <= now {
		o.unknown = t.ended.state(req.RequestID, now) == 0
		return o
	}
	if rec.state != 'p' {
		return o
	}
	m.sweep(t, now, alertsByName(req.Budgets), &o.expired, &o.crossed)
	if rec.state != 'p' {
		return o // expired just now: already charged at its estimate
	}
	if rec.tpmLimit > 0 {
		diff := increment(req.Tokens, rec.tpmLimit) - increment(rec.tokens, rec.tpmLimit)
		t.tpm = max(max(t.tpm, now)+diff, now)
	}
	for _, ll := range rec.levels {
		if ll.TokensPerMinute > 0 {
			s := t.level(ll.Key)
			diff := increment(req.Tokens, ll.TokensPerMinute) - increment(rec.tokens, ll.TokensPerMinute)
			s.tpm = max(max(s.tpm, now)+diff, now)
		}
	}
	o.settled = true
	o.budgets = m.charge(t, now, rec, req.Cost, alertsByName(req.Budgets), &o.crossed)
	m.finish(t, now, req.RequestID, rec, 's')
	if c := req.Calibrate; c.Model != "" {
		o.factor, o.samples = m.calibrate(t, now, &c)
	}
	return o
}

// calibrate folds one sample into t's record for its model and returns the
// record, as settle.lua's calibration block does.
func (m *Memory) calibrate(t *memTenant, now int64, c *CalibrationSample) (factor, samples int64) {
	r := t.calib[c.Model]
	if r == nil || r.deadline <= now {
		if t.calib == nil {
			t.calib = map[string]*memCalib{}
		}
		r = &memCalib{factor: CalibrationScale}
		t.calib[c.Model] = r
	}
	r.factor, r.samples = foldCalibration(r.factor, r.samples, c.Estimated, c.Measured)
	r.deadline = now + m.retention
	return r.factor, r.samples
}

// sweep charges every reservation of t whose expiry has passed at its
// estimate, up to the sweep limit, oldest first.
func (m *Memory) sweep(t *memTenant, now int64, alerts budgetAlerts, expired *[]Expired, crossed *[]rawCrossing) {
	for range m.sweepLimit {
		id, ok := t.pending.popExpired(now)
		if !ok {
			if id, ok = t.detached.popExpired(now); !ok {
				return
			}
		}
		rec := t.records[id]
		if rec == nil || rec.deadline <= now || rec.state != 'p' {
			continue
		}
		m.charge(t, now, rec, rec.cost, alerts, crossed)
		m.finish(t, now, id, rec, 'x')
		*expired = append(*expired, Expired{RequestID: id, Model: rec.model, Cost: rec.cost})
	}
}

// charge replaces a reservation's estimate by cost in each of its windows and
// records first alert crossings.
func (m *Memory) charge(t *memTenant, now int64, rec *memRecord, cost int64, alerts budgetAlerts, crossed *[]rawCrossing) []windowOutcome {
	out := make([]windowOutcome, 0, len(rec.windows))
	for _, w := range rec.windows {
		key := keyOf(w.name, w.start)
		s := t.budget(key, now)
		if s == nil { // the window's retention ran out; charge a fresh one like HINCRBY would
			s = &memBudget{deadline: w.end + m.retention}
			t.budgets[key] = s
		}
		s.reserved -= rec.cost
		s.spent += cost
		for _, a := range alerts.of(w.name) {
			if s.spent >= a && !s.alerts[a] {
				if s.alerts == nil {
					s.alerts = make(map[int64]bool)
				}
				s.alerts[a] = true
				*crossed = append(*crossed, rawCrossing{name: w.name, start: w.start, end: w.end, threshold: a, spent: s.spent})
			}
		}
		out = append(out, windowOutcome{name: w.name, start: w.start, end: w.end, spent: s.spent, reserved: s.reserved})
	}
	return out
}

func (m *Memory) finish(t *memTenant, now int64, id string, rec *memRecord, state byte) {
	t.pending.remove(id)
	t.detached.remove(id)
	for _, ll := range rec.levels {
		if s := t.levels[ll.Key]; s != nil && ll.Concurrent > 0 {
			s.pending.remove(id)
		}
	}
	rec.state = state
	// An ended reservation only answers duplicates (settle, cancel and the
	// sweep look at its state alone) for settledTTL.
	delete(t.records, id)
	t.ended.add(id, now, now+m.settledTTL, state)
}

// known reports whether id names a reservation or charge that still
// answers duplicates, in any state.
func (t *memTenant) known(id string, now int64) bool {
	if r := t.records[id]; r != nil && r.deadline > now {
		return true
	}
	return t.ended.state(id, now) != 0
}

// Budgets implements Store.
func (m *Memory) Budgets(ctx context.Context, tenant string, budgets []Budget) ([]BudgetState, error) {
	if err := validateBudgets(budgets, true); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	t := m.tenants[tenant]
	out := make([]BudgetState, 0, len(budgets))
	for _, b := range budgets {
		w := pickWindow(&b.Windows, now)
		st := BudgetState{Name: b.Name, Level: levelOf(b.Name), Window: b.Windows[w], Cap: b.Cap}
		if t != nil {
			if s := t.budget(keyOf(b.Name, unixMicros(b.Windows[w].Start)), now); s != nil {
				st.Spent, st.Reserved, st.Degraded = s.spent, s.reserved, s.degraded
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// Ping implements Store; memory always answers.
func (m *Memory) Ping(context.Context) error { return nil }

// Close implements Store.
func (m *Memory) Close() error { return nil }

func (m *Memory) tenant(name string) *memTenant {
	t := m.tenants[name]
	if t == nil {
		t = &memTenant{pending: newPendingSet(), detached: newPendingSet(), records: map[string]*memRecord{},
			ended: endedSet{span: m.endedSpan}, budgets: map[budgetKey]*memBudget{}}
		m.tenants[name] = t
	}
	return t
}

// budget returns a live budget window, or nil when absent or past its TTL.
func (t *memTenant) budget(key budgetKey, now int64) *memBudget {
	s := t.budgets[key]
	if s == nil || s.deadline <= now {
		return nil
	}
	return s
}

// gc drops state past its deadline, at most once per minute of store time.
// A pending reservation is never dropped: it lives until swept.
func (m *Memory) gc(now int64) {
	if now < m.nextGC {
		return
	}
	m.nextGC = now + minute
	for name, t := range m.tenants {
		for id, r := range t.records {
			if r.deadline <= now {
				delete(t.records, id)
			}
		}
		t.ended.age(now)
		for k, b := range t.budgets {
			if b.deadline <= now {
				delete(t.budgets, k)
			}
		}
		for k, c := range t.calib {
			if c.deadline <= now {
				delete(t.calib, k)
			}
		}
		for k, l := range t.levels {
			if l.pending.len() == 0 && l.rpm <= now && l.tpm <= now {
				delete(t.levels, k)
			}
		}
		if len(t.records) == 0 && t.ended.len() == 0 && len(t.budgets) == 0 && len(t.calib) == 0 && len(t.levels) == 0 &&
			t.pending.len() == 0 && t.detached.len() == 0 && t.rpm <= now && t.tpm <= now {
			delete(m.tenants, name)
		}
	}
}

// memTenantCount reports how many tenants hold state, for tests.
func (m *Memory) memTenantCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.tenants)
}
