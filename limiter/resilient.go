package limiter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrCircuitOpen is returned (wrapped in the failure-policy outcome) while a
// Resilient store's primary is considered down; it wraps ErrUnavailable.
var ErrCircuitOpen = fmt.Errorf("%w: circuit open", ErrUnavailable)

// Defaults of ResilientOptions.
const (
	DefaultProbeInterval = time.Second
	DefaultQueueSize     = 10_000
	// replayTimeout bounds each replayed call while draining the queue.
	replayTimeout = time.Second
)

// ResilientOptions configure a Resilient store.
type ResilientOptions struct {
	// Primary is the shared store (Redis).
	Primary Store
	// Local decides FailLocal requests; nil means a fresh NewMemory.
	Local *Memory
	// Replicas is how many replicas this deployment runs: in local mode each
	// enforces 1/Replicas of every limit and budget. Zero means 1.
	Replicas int
	// OnFailure, if set, is called once per request served by a failure
	// policy (for a degraded-mode counter). It must not block.
	OnFailure func(policy FailurePolicy)
	// ProbeInterval is how long the circuit stays open before the primary is
	// probed again. Zero means DefaultProbeInterval.
	ProbeInterval time.Duration
	// QueueSize bounds the settles kept while the primary is down; beyond it
	// the oldest are dropped and logged. Zero means DefaultQueueSize.
	QueueSize int
	// Logger receives state changes and dropped settles; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Resilient wraps a shared store with a per-request failure policy and a
// circuit breaker. While the primary answers it is used as is. When a call
// fails with ErrUnavailable the circuit opens: for ProbeInterval every call
// skips the primary at once (no request waits a full timeout), then one call
// probes it; a background loop also pings it every ProbeInterval, so Up turns
// true again — and queued settles are replayed — without traffic or restart.
//
// While the circuit is open, each request gets its own policy:
// FailClosed returns ErrCircuitOpen; FailOpen admits unchecked and queues the
// settle, replayed later as a zero-estimate admission plus the real settle so
// the spend still lands in the shared budgets; FailLocal decides with the
// Local memory store, every limit and budget divided by Replicas. Local
// budgets start from zero: a replica cannot know the shared spend while it
// cannot reach it, so local mode bounds the outage's spend, not the window's.
type Resilient struct {
	primary   Store
	local     *Memory
	replicas  int64
	onFailure func(FailurePolicy)
	interval  time.Duration
	queueSize int
	log       *slog.Logger

	up      atomic.Bool
	mu      sync.Mutex
	probeAt time.Time // while down: when the next call may probe
	probing bool
	queue   []queued
	open    map[string]AdmitRequest // fail-open admissions by tenant+id, until settled

	stop chan struct{}
	done chan struct{}
}

type queued struct {
	settle SettleRequest
	admit  *AdmitRequest // set for a fail-open admission: replay it first
}

// NewResilient starts the background probe loop; Close stops it.
func NewResilient(opts ResilientOptions) (*Resilient, error) {
	if opts.Primary == nil {
		return nil, errors.New("limiter: ResilientOptions.Primary is nil")
	}
	r := &Resilient{
		primary:   opts.Primary,
		local:     opts.Local,
		replicas:  int64(max(opts.Replicas, 1)),
		onFailure: opts.OnFailure,
		interval:  cmp.Or(opts.ProbeInterval, DefaultProbeInterval),
		queueSize: cmp.Or(opts.QueueSize, DefaultQueueSize),
		log:       cmp.Or(opts.Logger, slog.Default()),
		open:      make(map[string]AdmitRequest),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	if r.local == nil {
		r.local = NewMemory(MemoryOptions{})
	}
	r.up.Store(true)
	go r.loop()
	return r, nil
}

// Up reports whether the primary is in use (the circuit is closed), for
// /readyz and tokenwarden_store_up.
func (r *Resilient) Up() bool { return r.up.Load() }

// Admit implements Store.
func (r *Resilient) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	cause := ErrCircuitOpen
	if r.try() {
		d, err := r.primary.Admit(ctx, req)
		if !errors.Is(err, ErrUnavailable) {
			r.succeeded()
			return d, err
		}
		r.failed(err)
		cause = err
	}
	policy := cmp.Or(req.OnFailure, FailClosed)
	if r.onFailure != nil {
		r.onFailure(policy)
	}
	switch policy {
	case FailOpen:
		r.mu.Lock()
		if len(r.open) < r.queueSize {
			r.open[openKey(req.Tenant, req.RequestID)] = req
		} else {
			r.log.Warn("limiter: too many fail-open admissions outstanding; this one's spend will not be replayed",
				"tenant", req.Tenant, "request_id", req.RequestID)
		}
		r.mu.Unlock()
		return Decision{Allowed: true, Degraded: true, Now: time.Now()}, nil
	case FailLocal:
		d, err := r.local.Admit(ctx, r.scaled(req))
		d.Degraded = true
		return d, err
	}
	return Decision{}, fmt.Errorf("limiter: admit (fail closed): %w", cause)
}

// Settle implements Store. A request decided locally is settled locally; one
// the primary or fail-open admitted is settled on the primary, or queued
// (Queued) while it is down.
func (r *Resilient) Settle(ctx context.Context, req SettleRequest) (SettleResult, error) {
	if res, err := r.local.Settle(ctx, req); err != nil || res.Settled {
		return res, err
	}
	key := openKey(req.Tenant, req.RequestID)
	r.mu.Lock()
	admit, wasOpen := r.open[key]
	delete(r.open, key)
	r.mu.Unlock()
	q := queued{settle: req}
	if wasOpen {
		q.admit = &admit
	}
	if r.try() {
		res, err := r.apply(ctx, q)
		if !errors.Is(err, ErrUnavailable) {
			r.succeeded()
			return res, err
		}
		r.failed(err)
	}
	r.enqueue(q)
	return SettleResult{Queued: true}, nil
}

// Budgets implements Store with the primary only: a replica's local view is
// not the tenant's spend.
func (r *Resilient) Budgets(ctx context.Context, tenant string, budgets []Budget) ([]BudgetState, error) {
	if !r.try() {
		return nil, fmt.Errorf("limiter: budgets: %w", ErrCircuitOpen)
	}
	bs, err := r.primary.Budgets(ctx, tenant, budgets)
	if errors.Is(err, ErrUnavailable) {
		r.failed(err)
	} else {
		r.succeeded()
	}
	return bs, err
}

// Ping implements Store: it fails while the circuit is open.
func (r *Resilient) Ping(ctx context.Context) error {
	if !r.Up() {
		return fmt.Errorf("limiter: ping: %w", ErrCircuitOpen)
	}
	return nil
}

// Close stops the probe loop and closes both stores. Settles still queued
// are lost and logged.
func (r *Resilient) Close() error {
	close(r.stop)
	<-r.done
	r.mu.Lock()
	if n := len(r.queue); n > 0 {
		r.log.Warn("limiter: closing with queued settles unapplied", "settles", n)
	}
	r.mu.Unlock()
	return errors.Join(r.primary.Close(), r.local.Close())
}

// try reports whether a call may use the primary: always while up; while
// down, once per ProbeInterval (the probe).
func (r *Resilient) try() bool {
	if r.up.Load() {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.probing || time.Now().Before(r.probeAt) {
		return false
	}
	r.probing = true
	return true
}

func (r *Resilient) succeeded() {
	if r.up.Load() {
		return
	}
	r.mu.Lock()
	r.probing = false
	r.mu.Unlock()
	if !r.up.Swap(true) {
		r.log.Info("limiter: store is back")
	}
}

func (r *Resilient) failed(err error) {
	r.mu.Lock()
	r.probing = false
	r.probeAt = time.Now().Add(r.interval)
	r.mu.Unlock()
	if r.up.Swap(false) {
		r.log.Warn("limiter: store unavailable, applying failure policies", "err", err)
	}
}

func (r *Resilient) enqueue(q queued) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) >= r.queueSize {
		r.log.Warn("limiter: settle queue full, dropping the oldest", "tenant", r.queue[0].settle.Tenant, "request_id", r.queue[0].settle.RequestID)
		r.queue = r.queue[1:]
	}
	r.queue = append(r.queue, q)
}

// apply runs one settle on the primary; a fail-open admission is first
// recorded as a zero-estimate reservation that no limit or cap can refuse,
// so the real cost lands in the budget window current when it is applied.
func (r *Resilient) apply(ctx context.Context, q queued) (SettleResult, error) {
	if q.admit != nil {
		a := AdmitRequest{Tenant: q.admit.Tenant, RequestID: q.admit.RequestID, Model: q.admit.Model,
			Budgets: append([]Budget(nil), q.admit.Budgets...)}
		for i := range a.Budgets {
			a.Budgets[i].Cap = MaxCost
		}
		if _, err := r.primary.Admit(ctx, a); err != nil && !errors.Is(err, ErrDuplicateRequest) {
			return SettleResult{}, err
		}
	}
	return r.primary.Settle(ctx, q.settle)
}

// loop pings the primary while it is down and drains the queue once it is up.
func (r *Resilient) loop() {
	defer close(r.done)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		if !r.Up() {
			ctx, cancel := context.WithTimeout(context.Background(), replayTimeout)
			err := r.primary.Ping(ctx)
			cancel()
			if err != nil {
				r.failed(err)
				continue
			}
			r.succeeded()
		}
		r.drain()
	}
}

func (r *Resilient) drain() {
	for r.Up() {
		r.mu.Lock()
		if len(r.queue) == 0 {
			r.mu.Unlock()
			return
		}
		q := r.queue[0]
		r.queue = r.queue[1:]
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), replayTimeout)
		_, err := r.apply(ctx, q)
		cancel()
		switch {
		case errors.Is(err, ErrUnavailable):
			r.failed(err)
			r.mu.Lock()
			r.queue = append([]queued{q}, r.queue...)
			r.mu.Unlock()
			return
		case err != nil:
			r.log.Error("limiter: replaying a settle failed; dropped", "tenant", q.settle.Tenant, "request_id", q.settle.RequestID, "err", err)
		}
	}
}

// queueLen reports the queued settles, for tests.
func (r *Resilient) queueLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue)
}

// scaled divides every limit and budget of req by the replica count,
// keeping a configured limit at least 1 (zero would mean unlimited).
func (r *Resilient) scaled(req AdmitRequest) AdmitRequest {
	div := func(v int64) int64 {
		if v <= 0 {
			return v
		}
		return max(v/r.replicas, 1)
	}
	l := &req.Limits
	l.RequestsPerMinute, l.TokensPerMinute, l.Concurrent = div(l.RequestsPerMinute), div(l.TokensPerMinute), div(l.Concurrent)
	bs := make([]Budget, len(req.Budgets))
	for i, b := range req.Budgets {
		b.Cap /= r.replicas
		alerts := make([]int64, len(b.Alerts))
		for j, a := range b.Alerts {
			alerts[j] = a / r.replicas
		}
		b.Alerts = alerts
		bs[i] = b
	}
	req.Budgets = bs
	return req
}

func openKey(tenant, id string) string { return tenant + "\x00" + id }
