package limiter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrCircuitOpen is returned (wrapped in the failure-policy outcome) while a
// Resilient store's primary is considered down; it wraps ErrUnavailable.
var ErrCircuitOpen = fmt.Errorf("%w: circuit open", ErrUnavailable)

// Defaults of ResilientOptions.
const (
	// DefaultProbeInterval is how often the background loop heartbeats the
	// store (which also probes it while the breaker is open and detects a
	// store reset), and how long the breaker stays open before half-opening.
	DefaultProbeInterval = time.Second
	// DefaultQueueSize bounds the journal: what this replica owes the store.
	DefaultQueueSize = 100_000
	// DefaultFlushTimeout bounds how long Close tries to apply the journal.
	DefaultFlushTimeout = 5 * time.Second
	// replayTimeout bounds each background call.
	replayTimeout = 2 * time.Second
)

// Events receives what a Resilient store does, for metrics and readiness.
// Methods are called from request paths and the background loop and must
// not block. NopEvents implements it.
type Events interface {
	// BreakerChanged reports a state change of the circuit breaker.
	BreakerChanged(from, to BreakerState)
	// Degraded reports one request served by its failure policy; cause is
	// "outage" (the breaker is open, or the store did not answer) or "shed"
	// (the store is busy: this replica had too many calls in flight).
	Degraded(policy FailurePolicy, cause string)
	// JournalDepth reports how many entries the journal holds.
	JournalDepth(n int)
	// Dropped reports one entry a bounded queue ("journal", "ledger",
	// "inflight") had no room for: that much is lost (for inflight: a
	// degraded request charged at its estimate, or a reservation whose loss
	// in a store reset would go unnoticed).
	Dropped(queue string)
	// Reconciled reports one journal entry applied to the store, by kind.
	Reconciled(kind string)
	// StoreReset reports that the store lost its data (its epoch changed).
	StoreReset(at time.Time)
	// LiveReplicas reports the replicas heartbeating into the store.
	LiveReplicas(n int)
}

// NopEvents records nothing.
type NopEvents struct{}

func (NopEvents) BreakerChanged(BreakerState, BreakerState) {}
func (NopEvents) Degraded(FailurePolicy, string)            {}
func (NopEvents) JournalDepth(int)                          {}
func (NopEvents) Dropped(string)                            {}
func (NopEvents) Reconciled(string)                         {}
func (NopEvents) StoreReset(time.Time)                      {}
func (NopEvents) LiveReplicas(int)                          {}

// ResilientOptions configure a Resilient store.
type ResilientOptions struct {
	// Primary is the shared store (Redis). With Shared's operations it is
	// exact under faults (cancels, reconciliation, heartbeats, reset
	// detection); without them only the failure policies apply.
	Primary Store
	// Local decides FailLocal requests; nil means a fresh NewMemory.
	Local *Memory
	// Replicas is the floor of how many replicas share the store: in local
	// mode each enforces 1/max(Replicas, live replicas) of every limit and
	// budget, live replicas being those whose heartbeat the store last
	// showed. Zero means 1.
	Replicas int
	// Replica names this replica in heartbeats; empty means a random id.
	Replica string
	// OnFailure, if set, is called once per request served by a failure
	// policy. It must not block.
	OnFailure func(policy FailurePolicy)
	// ProbeInterval is the heartbeat period and the breaker's open period.
	// Zero means DefaultProbeInterval.
	ProbeInterval time.Duration
	// Breaker tunes the breaker; its zero fields take the defaults
	// (OpenFor: ProbeInterval).
	Breaker BreakerOptions
	// QueueSize bounds the journal, the ledger and the tables of requests in
	// flight; past it entries are dropped and reported to Events.Dropped.
	// Zero means DefaultQueueSize.
	QueueSize int
	// JournalDir, if set, keeps the journal and the ledger in files there,
	// replayed at start; without it they live in memory and are lost when
	// the process exits.
	JournalDir string
	// FlushTimeout bounds Close's last attempt to apply the journal. Zero
	// means DefaultFlushTimeout.
	FlushTimeout time.Duration
	// SettledTTL is the primary's (RedisOptions.SettledTTL): a settle the
	// store no longer knows is charged as lost only for reservations younger
	// than it, which cannot have expired and been forgotten there.
	SettledTTL time.Duration
	Events     Events
	// Logger receives one line per state change; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock of the breaker and of degraded decisions' windows;
	// nil means time.Now.
	Now func() time.Time
}

// Resilient wraps a shared store with a per-request failure policy, a
// circuit breaker, and a journal of everything it owes the store.
//
// While the primary answers it is used as is. The breaker opens on the
// failure rate over a sliding window (BreakerOptions), never on one slow
// reply, and half-opens after ProbeInterval: probes (requests, and the
// background heartbeat) close it again. A call shed because this replica
// has too many in flight (ErrShed) gets the request's failure policy but
// does not count as a failure: the store is busy, not down.
//
// While the primary cannot be used each request gets its own policy:
// FailClosed returns an error wrapping ErrUnavailable; FailOpen admits
// unchecked; FailLocal decides with the Local memory store, every limit and
// budget divided by the number of replicas. Nothing decided is lost:
//
//   - an admission whose reply never came may still run in the store: its
//     cancel is journaled and applied as soon as the store answers (the
//     tombstone makes a later arrival a no-op), so a refused request never
//     holds a slot or is charged;
//   - a settle the store did not take is journaled and applied later;
//   - what was decided locally or admitted unchecked is journaled with its
//     estimate at once and its real cost when it ends, and reconciled into
//     the shared budget windows (idempotently, marked degraded);
//   - the store's epoch is read by every heartbeat: when it changes the
//     store lost its data, and this replica's ledger of what it charged into
//     the current windows is charged again, once per epoch.
type Resilient struct {
	notesOf    // Notes are the primary's (notes.go)
	primary    Store
	shared     Shared // nil without the Shared operations
	local      *Memory
	floor      int64
	live       atomic.Int64
	replica    string
	onFailure  func(FailurePolicy)
	interval   time.Duration
	flush      time.Duration
	settledTTL time.Duration
	events     Events
	log        *slog.Logger
	now        func() time.Time
	maxOpen    int // bound of the in-flight tables (degraded, admitted)
	br         *breaker
	journal    *journal
	ledger     *ledger

	mu       sync.Mutex
	degraded map[string]degradedAdmit // by tenant+id, until settled
	admitted map[string]time.Time     // primary admissions by tenant+id, until settled
	epoch    string
	resetAt  time.Time

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

type degradedAdmit struct {
	op    journalOp // the running charge entry; zero Seq when not journaled
	local bool
}

// NewResilient opens the journal (replaying what a previous process left in
// JournalDir) and starts the background loop; Close stops it.
func NewResilient(opts ResilientOptions) (*Resilient, error) {
	if opts.Primary == nil {
		return nil, errors.New("limiter: ResilientOptions.Primary is nil")
	}
	size := cmp.Or(opts.QueueSize, DefaultQueueSize)
	j, err := openJournal(opts.JournalDir, size)
	if err != nil {
		return nil, err
	}
	interval := cmp.Or(opts.ProbeInterval, DefaultProbeInterval)
	l, err := openLedger(opts.JournalDir, 3*interval, size)
	if err != nil {
		return nil, errors.Join(err, j.close())
	}
	r := &Resilient{
		notesOf:    notesOf{opts.Primary},
		primary:    opts.Primary,
		local:      opts.Local,
		floor:      int64(max(opts.Replicas, 1)),
		replica:    cmp.Or(opts.Replica, newID()),
		onFailure:  opts.OnFailure,
		interval:   interval,
		flush:      cmp.Or(opts.FlushTimeout, DefaultFlushTimeout),
		settledTTL: cmp.Or(opts.SettledTTL, DefaultSettledTTL),
		events:     opts.Events,
		log:        cmp.Or(opts.Logger, slog.Default()),
		now:        opts.Now,
		maxOpen:    size,
		journal:    j,
		ledger:     l,
		degraded:   make(map[string]degradedAdmit),
		admitted:   make(map[string]time.Time),
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	if r.events == nil {
		r.events = NopEvents{}
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.shared, _ = opts.Primary.(Shared)
	if r.local == nil {
		r.local = NewMemory(MemoryOptions{})
	}
	bo := opts.Breaker
	bo.OpenFor = cmp.Or(bo.OpenFor, interval)
	r.br = newBreaker(bo, r.now, r.breakerChanged)
	if n := j.len(); n > 0 {
		r.log.Info("limiter: journal replayed from the last run; applying it when the store answers", "entries", n, "dir", opts.JournalDir)
	}
	r.events.JournalDepth(j.len())
	go r.loop()
	return r, nil
}

func (r *Resilient) breakerChanged(from, to BreakerState) {
	r.events.BreakerChanged(from, to)
	switch to {
	case BreakerOpen:
		if from == BreakerClosed {
			r.log.Warn("limiter: store unavailable, breaker open; applying failure policies")
		}
	case BreakerClosed:
		r.log.Info("limiter: store is back, breaker closed")
		r.wake()
	}
}

// Up reports whether the breaker is closed (decisions are made on the
// shared store), for tokenwarden_store_up.
func (r *Resilient) Up() bool { return r.br.State() == BreakerClosed }

// State reports the breaker's state.
func (r *Resilient) State() BreakerState { return r.br.State() }

// Replicas reports the divisor of local mode: the live replicas last seen
// in the store, at least the configured count.
func (r *Resilient) Replicas() int64 { return max(r.floor, r.live.Load()) }

// ResetAt reports when this replica last saw the store lose its data (zero:
// never).
func (r *Resilient) ResetAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.resetAt
}

// Epoch reports the store epoch last read (empty before the first
// heartbeat).
func (r *Resilient) Epoch() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epoch
}

// Pending reports the journal's entries: what this replica still owes the
// store.
func (r *Resilient) Pending() int { return r.journal.len() }

// maybeRan reports whether a failed call may still have run in the store:
// it was sent and no answer came (a timeout, a cut connection, the caller
// giving up).
func maybeRan(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// answered reports whether err (nil included) is an answer from the store.
func answered(err error) bool { return !maybeRan(err) && !errors.Is(err, ErrShed) }

// neverSent reports a call that failed before anything reached the store:
// its connection could not even be opened (refused, no route).
func neverSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Admit implements Store.
func (r *Resilient) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	cause, reason := error(ErrCircuitOpen), "outage"
	if ok, probe := r.br.allow(); ok {
		d, err := r.primary.Admit(ctx, req)
		switch {
		case answered(err):
			r.br.success(probe)
			if err == nil && d.Allowed {
				r.mu.Lock()
				full := len(r.admitted) >= r.maxOpen
				// A detached reservation (batch work) is settled, if at
				// all, under another id hours later: not tracked here.
				if !full && !req.Detached {
					r.admitted[openKey(req.Tenant, req.RequestID)] = r.now()
				}
				r.mu.Unlock()
				if full {
					// Only a store reset's loss of this reservation would go
					// unnoticed; counted all the same.
					r.events.Dropped("inflight")
				}
			}
			return d, err
		case errors.Is(err, ErrShed):
			r.br.release(probe)
			cause, reason = err, "shed"
		default:
			if ctx.Err() != nil {
				r.br.release(probe)
			} else {
				r.br.failure(probe)
			}
			// The admission may run in the store after all: undo it (unless
			// its connection was never opened).
			if !neverSent(err) {
				r.owe(journalOp{Kind: OpCancel, Cancel: &CancelRequest{Tenant: req.Tenant, RequestID: req.RequestID,
					RequestsPerMinute: req.Limits.RequestsPerMinute, Burst: req.Limits.Burst, Requests: req.count()}})
			}
			if ctx.Err() != nil {
				return Decision{}, err // the caller is gone: nobody to serve
			}
			cause = err
		}
	}
	policy := cmp.Or(req.OnFailure, FailClosed)
	if r.onFailure != nil {
		r.onFailure(policy)
	}
	r.events.Degraded(policy, reason)
	switch policy {
	case FailOpen:
		r.trackDegraded(req, false)
		return Decision{Allowed: true, Degraded: true, Now: r.now(), OutputTokens: req.Output.Tokens}, nil
	case FailLocal:
		d, err := r.local.Admit(ctx, r.scaled(req))
		d.Degraded = true
		if err == nil && d.Allowed {
			// Journaled at what the local store reserved: a clamped output
			// reserves less than the request's whole cost.
			_, req.Cost = req.Reserved(d.OutputTokens)
			r.trackDegraded(req, true)
		}
		return d, err
	}
	return Decision{}, fmt.Errorf("limiter: admit (fail closed): %w", cause)
}

// trackDegraded journals a request decided without the store at its
// estimate, to be replaced by its real cost when it settles.
func (r *Resilient) trackDegraded(req AdmitRequest, local bool) {
	now := r.now()
	op := journalOp{Kind: OpCharge, Running: true, Charge: &ReconcileRequest{
		Tenant: req.Tenant, RequestID: req.RequestID + "~d", Cost: req.Cost, Degraded: true,
		Windows: ChargeWindows(req.Budgets, now), Budgets: alertsOnly(req.Budgets),
	}}
	r.mu.Lock()
	full := len(r.degraded) >= r.maxOpen
	r.mu.Unlock()
	if full {
		// Not tracked until it ends: charged at its estimate.
		op.Running = false
		r.events.Dropped("inflight")
	}
	if len(op.Charge.Windows) > 0 {
		op.Seq = r.owe(op)
	}
	if full {
		return
	}
	r.mu.Lock()
	r.degraded[openKey(req.Tenant, req.RequestID)] = degradedAdmit{op: op, local: local}
	r.mu.Unlock()
}

// owe journals op; it returns its Seq, zero when the journal is full (the
// drop is reported). Nothing is owed without the Shared operations.
func (r *Resilient) owe(op journalOp) uint64 {
	if r.shared == nil {
		return 0
	}
	op.At = r.now()
	seq, ok := r.journal.add(op)
	if !ok {
		r.events.Dropped("journal")
		return 0
	}
	r.events.JournalDepth(r.journal.len())
	return seq
}

// Settle implements Store. A request decided locally is settled locally and
// its real cost journaled for reconciliation; one the primary admitted is
// settled on the primary, or journaled (Queued) while it cannot be.
func (r *Resilient) Settle(ctx context.Context, req SettleRequest) (SettleResult, error) {
	key := openKey(req.Tenant, req.RequestID)
	r.mu.Lock()
	dg, degraded := r.degraded[key]
	delete(r.degraded, key)
	admittedAt, admitted := r.admitted[key]
	delete(r.admitted, key)
	r.mu.Unlock()
	if degraded {
		res := SettleResult{Settled: true}
		if dg.local {
			var err error
			if res, err = r.local.Settle(ctx, req); err != nil {
				return res, err
			}
		}
		if dg.op.Seq != 0 {
			op := dg.op
			c := *op.Charge
			c.Cost, op.Charge, op.Running = req.Cost, &c, false
			r.journal.update(op)
			r.wake()
		}
		// A local settle is done (its reconciliation is the journal's); a
		// fail-open one waits for the store.
		res.Queued = !dg.local
		return res, nil
	}
	op := journalOp{Kind: OpSettle, Settle: &req}
	if admitted {
		op.AdmittedAt = admittedAt
	}
	if ok, probe := r.br.allow(); ok {
		res, err := r.applySettle(ctx, op)
		if answered(err) {
			r.br.success(probe)
			return res, err
		}
		if errors.Is(err, ErrShed) {
			r.br.release(probe)
		} else {
			r.br.failure(probe)
		}
	}
	// Settles are idempotent by request id: one that ran after all is a
	// no-op when replayed.
	r.owe(op)
	return SettleResult{Queued: true}, nil
}

// applySettle settles on the primary and keeps the ledger; a reservation
// the store no longer knows (it lost its data) is charged as a lost one.
func (r *Resilient) applySettle(ctx context.Context, op journalOp) (SettleResult, error) {
	req := *op.Settle
	res, err := r.primary.Settle(ctx, req)
	if err != nil {
		return res, err
	}
	now := r.now()
	if res.Settled {
		ws := make([]WindowCharge, 0, len(res.Budgets))
		for _, b := range res.Budgets {
			ws = append(ws, WindowCharge{Name: b.Name, Window: b.Window})
		}
		r.remember(now, req.Tenant, req.RequestID, req.Cost, ws)
	}
	if res.Unknown && !op.AdmittedAt.IsZero() && now.Sub(op.AdmittedAt) < r.settledTTL {
		r.owe(journalOp{Kind: OpCharge, Charge: &ReconcileRequest{
			Tenant: req.Tenant, RequestID: req.RequestID + "~r", Unless: req.RequestID, Cost: req.Cost,
			Windows: ChargeWindows(req.Budgets, op.AdmittedAt), Budgets: alertsOnly(req.Budgets),
		}})
		r.log.Warn("limiter: the store lost a reservation (reset?); its settle is charged by reconciliation", "tenant", req.Tenant, "request_id", req.RequestID)
		r.wake()
	}
	return res, nil
}

func (r *Resilient) remember(now time.Time, tenant, id string, cost int64, ws []WindowCharge) {
	if r.shared != nil && !r.ledger.add(now, tenant, id, cost, ws) {
		r.events.Dropped("ledger")
	}
}

// Budgets implements Store with the primary only: a replica's local view is
// not the tenant's spend.
func (r *Resilient) Budgets(ctx context.Context, tenant string, budgets []Budget) ([]BudgetState, error) {
	ok, probe := r.br.allow()
	if !ok {
		return nil, fmt.Errorf("limiter: budgets: %w", ErrCircuitOpen)
	}
	bs, err := r.primary.Budgets(ctx, tenant, budgets)
	r.report(err, probe, ctx)
	return bs, err
}

// Renew implements LeaseKeeper's renewer: locally decided reservations are
// renewed in the local store, the others in the primary.
func (r *Resilient) Renew(ctx context.Context, req RenewRequest) (int, error) {
	n, _ := r.local.Renew(ctx, req)
	if r.shared == nil {
		return n, nil
	}
	ok, probe := r.br.allow()
	if !ok {
		return n, fmt.Errorf("limiter: renew: %w", ErrCircuitOpen)
	}
	m, err := r.shared.Renew(ctx, req)
	r.report(err, probe, ctx)
	return n + m, err
}

// report feeds one call's result to the breaker.
func (r *Resilient) report(err error, probe bool, ctx context.Context) {
	switch {
	case answered(err):
		r.br.success(probe)
	case errors.Is(err, ErrShed) || ctx.Err() != nil:
		r.br.release(probe)
	default:
		r.br.failure(probe)
	}
}

// Ping implements Store: it fails while the breaker is not closed.
func (r *Resilient) Ping(ctx context.Context) error {
	if !r.Up() {
		return fmt.Errorf("limiter: ping: %w", ErrCircuitOpen)
	}
	return nil
}

// Close stops the background loop, makes journal entries of requests still
// running final at their estimate, tries for FlushTimeout to apply the
// journal, and closes both stores. What is left stays in the journal file
// (replayed by the next start) or, without a journal directory, is lost and
// logged.
func (r *Resilient) Close() error {
	close(r.stop)
	<-r.done
	r.journal.finishRunning()
	deadline := time.Now().Add(r.flush)
	for r.journal.len() > 0 && time.Now().Before(deadline) {
		if !r.drain() {
			time.Sleep(50 * time.Millisecond)
		}
	}
	r.ledger.roll(r.now())
	if err := r.ledger.save(); err != nil {
		r.log.Error("limiter: saving the ledger failed", "err", err)
	}
	if n := r.journal.len(); n > 0 {
		if r.journal.persistent() {
			r.log.Warn("limiter: closing with journal entries unapplied; the next start applies them", "entries", n)
		} else {
			r.log.Error("limiter: closing with journal entries unapplied and no journal directory: they are lost", "entries", n)
		}
	}
	return errors.Join(r.journal.close(), r.primary.Close(), r.local.Close())
}

func (r *Resilient) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// loop heartbeats the store every interval (probing it while the breaker
// is open, reading its epoch) and applies the journal whenever it can.
func (r *Resilient) loop() {
	defer close(r.done)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	r.heartbeat()
	for {
		r.drain()
		select {
		case <-r.stop:
			return
		case <-r.kick:
			continue
		case <-t.C:
		}
		r.heartbeat()
		if n := r.ledger.roll(r.now()); n > 0 {
			for range n {
				r.events.Dropped("ledger")
			}
		}
		if err := r.ledger.save(); err != nil {
			r.log.Error("limiter: saving the ledger failed", "err", err)
		}
	}
}

func (r *Resilient) heartbeat() {
	if r.shared == nil {
		ok, probe := r.br.allow()
		if ok {
			ctx, cancel := context.WithTimeout(context.Background(), replayTimeout)
			r.report(r.primary.Ping(ctx), probe, ctx)
			cancel()
		}
		return
	}
	ok, probe := r.br.allow()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), replayTimeout)
	hb, err := r.shared.Heartbeat(ctx, HeartbeatRequest{Replica: r.replica, TTL: 10 * r.interval, Epoch: newID()})
	cancel()
	if maybeRan(err) {
		r.br.heartbeatFailed(probe)
	} else {
		r.report(err, probe, ctx)
	}
	if err != nil {
		return
	}
	r.live.Store(int64(hb.Live))
	r.events.LiveReplicas(hb.Live)
	r.mu.Lock()
	known := r.epoch
	r.epoch = hb.Epoch
	r.mu.Unlock()
	prev := r.ledger.setEpoch(hb.Epoch)
	switch {
	case known == "" && (prev == "" || prev == hb.Epoch):
		// First contact with a store this replica (or its ledger) knows.
	case known != hb.Epoch || prev != hb.Epoch:
		r.storeReset(hb.Epoch)
	}
}

// storeReset charges this replica's share of the current windows into a
// store that lost them.
func (r *Resilient) storeReset(epoch string) {
	now := r.now()
	r.mu.Lock()
	r.resetAt = now
	r.mu.Unlock()
	r.events.StoreReset(now)
	charges := r.ledger.rebuild(epoch)
	r.log.Error("limiter: the store lost its data (its epoch changed): budgets were reset; rebuilding this replica's share of the current windows",
		"epoch", epoch, "charges", len(charges))
	for i := range charges {
		r.owe(journalOp{Kind: OpRebuild, Charge: &charges[i]})
	}
	r.wake()
}

// drain applies ready journal entries in order until one cannot be applied;
// it reports whether the journal was emptied of ready entries.
func (r *Resilient) drain() bool {
	if r.shared == nil {
		return true
	}
	for _, op := range r.journal.ready() {
		ok, probe := r.br.allow()
		if !ok {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), replayTimeout)
		err := r.apply(ctx, op)
		cancel()
		switch {
		case answered(err):
			r.br.success(probe)
			if err != nil {
				r.log.Error("limiter: a journal entry was refused by the store; dropped", "kind", op.Kind, "err", err)
				r.events.Dropped("journal")
			} else {
				r.events.Reconciled(op.Kind)
			}
			r.journal.done(op.Seq)
			r.events.JournalDepth(r.journal.len())
		case errors.Is(err, ErrShed):
			r.br.release(probe)
			return false
		default:
			r.br.failure(probe)
			return false
		}
	}
	return true
}

func (r *Resilient) apply(ctx context.Context, op journalOp) error {
	switch op.Kind {
	case OpCancel:
		res, err := r.shared.Cancel(ctx, *op.Cancel)
		if err == nil && res.Released {
			r.events.Reconciled(KindPhantom)
		}
		return err
	case OpSettle:
		_, err := r.applySettle(ctx, op)
		return err
	case OpCharge, OpRebuild:
		res, err := r.shared.Reconcile(ctx, *op.Charge)
		if err == nil && res.Applied && op.Kind == OpCharge {
			r.remember(r.now(), op.Charge.Tenant, op.Charge.RequestID, op.Charge.Cost, op.Charge.Windows)
		}
		return err
	}
	return fmt.Errorf("%w: journal entry of kind %q", ErrInvalid, op.Kind)
}

// queueLen reports the journal's entries, for tests.
func (r *Resilient) queueLen() int { return r.journal.len() }

// scaled divides every limit and budget of req by the replica count,
// keeping a configured limit at least 1 (zero would mean unlimited).
func (r *Resilient) scaled(req AdmitRequest) AdmitRequest {
	n := r.Replicas()
	div := func(v int64) int64 {
		if v <= 0 {
			return v
		}
		return max(v/n, 1)
	}
	l := &req.Limits
	l.RequestsPerMinute, l.TokensPerMinute, l.Concurrent = div(l.RequestsPerMinute), div(l.TokensPerMinute), div(l.Concurrent)
	ls := make([]LevelLimits, len(req.LevelLimits))
	for i, ll := range req.LevelLimits {
		ll.RequestsPerMinute, ll.TokensPerMinute, ll.Concurrent = div(ll.RequestsPerMinute), div(ll.TokensPerMinute), div(ll.Concurrent)
		ls[i] = ll
	}
	req.LevelLimits = ls
	bs := make([]Budget, len(req.Budgets))
	for i, b := range req.Budgets {
		b.Cap /= n
		alerts := make([]int64, len(b.Alerts))
		for j, a := range b.Alerts {
			alerts[j] = a / n
		}
		b.Alerts = alerts
		bs[i] = b
	}
	req.Budgets = bs
	return req
}

// alertsOnly keeps what a reconciled charge needs of budgets: names and
// alert thresholds.
func alertsOnly(bs []Budget) []Budget {
	out := make([]Budget, 0, len(bs))
	for _, b := range bs {
		out = append(out, Budget{Name: b.Name, Cap: b.Cap, Alerts: b.Alerts})
	}
	return out
}

func openKey(tenant, id string) string { return tenant + "\x00" + id }

// Rebind implements Rebinder on the primary store: a reservation decided
// without it (locally, or admitted unchecked) is not there to rename, and
// keeps its id until it ends.
func (r *Resilient) Rebind(ctx context.Context, req RebindRequest) (bool, error) {
	rb, ok := r.primary.(Rebinder)
	if !ok {
		return false, nil
	}
	r.mu.Lock()
	_, degraded := r.degraded[openKey(req.Tenant, req.From)]
	r.mu.Unlock()
	if degraded {
		return false, nil
	}
	return rb.Rebind(ctx, req)
}
