package limiter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Shared is a Store that also does what keeps a shared store exact under
// faults, off the request path: cancelling an admission whose answer was
// lost, renewing the leases of requests still running, reconciling what was
// decided without the store, and the replicas' heartbeat with the store's
// epoch. Redis and Memory implement it; Resilient needs it of its primary to
// lose nothing (a primary without it gets the old behaviour: no cancels, no
// reconciliation).
type Shared interface {
	Store
	// Cancel undoes an admission whose reply never arrived (a timeout, a cut
	// connection): whatever order the late admission and the cancel reach
	// the store in, the request ends holding nothing and charged nothing. It
	// leaves a tombstone that makes a later Admit of the id a no-op
	// (ErrDuplicateRequest), and is idempotent.
	Cancel(ctx context.Context, req CancelRequest) (CancelResult, error)
	// Renew extends the leases of pending reservations of one tenant to now +
	// LeaseTTL by the store's clock, in one call. Ids that are unknown,
	// finished or already expired are skipped (an expired lease has been, or
	// will be, charged at its estimate by a sweep).
	Renew(ctx context.Context, req RenewRequest) (int, error)
	// Reconcile charges spend decided without the store (or lost by it) into
	// budget windows, once per RequestID: a second call with the same id is a
	// no-op, and so is one whose Unless id has a record in the store.
	Reconcile(ctx context.Context, req ReconcileRequest) (ReconcileResult, error)
	// Heartbeat registers a replica as live for TTL and reads the store's
	// epoch, creating it (as Epoch) when absent: an epoch that changes, or is
	// created again, means the store lost its data.
	Heartbeat(ctx context.Context, req HeartbeatRequest) (HeartbeatResult, error)
}

// ErrShed is returned when a store call was not made because this replica
// already has as many calls in flight as it allows and none finished in
// time. The store is busy, not down: a Resilient applies the request's
// failure policy but does not count it toward opening its breaker. Nothing
// was sent, so nothing needs cancelling.
var ErrShed = errors.New("limiter: store busy, call shed")

// CancelRequest names an admission to undo. RequestsPerMinute is the limit
// the admission was made under, so the requests it counted are refunded
// too: Requests of them (its AdmitRequest.Count, a lease's block), at the
// org and at every level below it that limits requests; zero means one.
type CancelRequest struct {
	Tenant            string
	RequestID         string
	RequestsPerMinute int64
	Burst             float64
	Requests          int64 `json:",omitempty"`
}

func (req *CancelRequest) count() int64 { return max(req.Requests, 1) }

// CancelResult says what Cancel found.
type CancelResult struct {
	// Released is set when a pending reservation was found and released:
	// the late admission had run.
	Released bool
}

// RenewRequest extends the leases of one tenant's reservations.
type RenewRequest struct {
	Tenant     string
	RequestIDs []string
	LeaseTTL   time.Duration
	// Detached renews detached reservations (AdmitRequest.Detached: the
	// leases Leased holds) instead of pending ones; ids of the other kind
	// are skipped.
	Detached bool
}

// WindowCharge is one budget window a reconciled charge lands in.
type WindowCharge struct {
	Name   string
	Window Window
}

// ReconcileRequest is spend to add to budget windows exactly once.
type ReconcileRequest struct {
	Tenant string
	// RequestID names the charge; it is the idempotency key.
	RequestID string
	// Unless, if set, is a request id whose record in the store makes this a
	// no-op: the charge is already there under its own id.
	Unless string
	Cost   int64
	// Degraded marks spend decided while the store was unreachable (local
	// or open): it is also added to each window's degraded total.
	Degraded bool
	Windows  []WindowCharge
	// Budgets carry the alert thresholds to check, matched by name.
	Budgets []Budget
}

// ReconcileResult is the answer to Reconcile.
type ReconcileResult struct {
	// Applied is false when the charge was already made.
	Applied bool
	Budgets []BudgetState
	Crossed []Crossing
}

// HeartbeatRequest registers one replica.
type HeartbeatRequest struct {
	Replica string
	TTL     time.Duration
	// Epoch is written as the store's epoch if it has none.
	Epoch string
}

// HeartbeatResult is the store's answer to a heartbeat.
type HeartbeatResult struct {
	// Epoch is the store's epoch, Created whether this call wrote it.
	Epoch   string
	Created bool
	// Live counts the replicas whose heartbeat is younger than TTL.
	Live int
}

// Defaults of the shared operations.
const (
	// DefaultTombstoneTTL is how long a cancel's tombstone (and a cancelled
	// record) stays: an admission delayed longer than this in a stalled
	// store's input buffer would run. An hour is far beyond any stall a
	// client still waits through.
	DefaultTombstoneTTL = time.Hour
	// DefaultReconciledTTL is how long a reconciled charge's marker stays,
	// which bounds how late the same journal entry may be replayed and still
	// be charged once.
	DefaultReconciledTTL = 7 * 24 * time.Hour
)

// heartbeatKeys are the keys of the store-wide state, one hash tag so a
// Redis Cluster keeps them in one slot.
const (
	epochKey    = "tw:{tokenwarden}:epoch"
	replicasKey = "tw:{tokenwarden}:replicas"
)

func validateReconcile(req *ReconcileRequest) error {
	if err := validateIDs(req.Tenant, req.RequestID); err != nil {
		return err
	}
	if req.Cost < 0 || req.Cost > MaxCost {
		return errInvalidf("cost %d outside [0, %d]", req.Cost, MaxCost)
	}
	for _, w := range req.Windows {
		if w.Name == "" || strings.ContainsAny(w.Name, "{}:\t\n") || w.Window.Start.Unix() <= 0 || !w.Window.Start.Before(w.Window.End) {
			return errInvalidf("window %q [%v, %v)", w.Name, w.Window.Start, w.Window.End)
		}
	}
	return validateBudgets(req.Budgets, false)
}

// ChargeWindows picks, for each budget, the window that contains now: where
// spend decided at now belongs.
func ChargeWindows(budgets []Budget, now time.Time) []WindowCharge {
	out := make([]WindowCharge, 0, len(budgets))
	n := unixMicros(now)
	for i := range budgets {
		b := &budgets[i]
		out = append(out, WindowCharge{Name: b.Name, Window: b.Windows[pickWindow(&b.Windows, n)]})
	}
	return out
}

func errInvalidf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
}

// Rebinder is a store that can give a pending detached reservation
// (AdmitRequest.Detached) a new id: batch work is admitted before the
// provider names the batch, and settled later under that name.
type Rebinder interface {
	// Rebind renames the detached reservation From to To, keeping its
	// estimate, windows and expiry. It reports false, changing nothing,
	// when From is not a pending detached reservation or To is taken.
	Rebind(ctx context.Context, req RebindRequest) (bool, error)
}

// RebindRequest names a reservation and its new id within one tenant.
type RebindRequest struct {
	Tenant   string
	From, To string
}
