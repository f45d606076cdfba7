package limiter

import (
	"context"
	"sync/atomic"
)

// Reservation is an admitted request's hold on the store: its concurrency
// slot and its estimate in tokens-per-minute and every budget window. It
// ends exactly once, by Settle; a reservation that is never settled (its
// replica died) expires in the store and is charged at its estimate there.
type Reservation struct {
	store   Store
	tenant  string
	id      string
	budgets []Budget
	ended   atomic.Bool
}

// Reserve admits req on s. When the decision allows the request, the
// returned Reservation holds what was reserved and must be settled; when it
// denies, nothing was written and the Reservation is nil.
func Reserve(ctx context.Context, s Store, req AdmitRequest) (Decision, *Reservation, error) {
	d, err := s.Admit(ctx, req)
	if err != nil || !d.Allowed {
		return d, nil, err
	}
	return d, &Reservation{store: s, tenant: req.Tenant, id: req.RequestID, budgets: req.Budgets}, nil
}

// Charge is what an admitted request really consumed.
type Charge struct {
	// Tokens is the tokens-per-minute charge (accounting.Usage
	// RateLimitedTokens).
	Tokens int64
	// Cost is the cost in nano-USD charged to every budget reserved.
	Cost int64
	// Calibrate is the request's estimator sample, folded by the same
	// settle (SettleRequest.Calibrate).
	Calibrate CalibrationSample
}

// Settle replaces the reservation's estimate with c and releases its slot,
// in one store call. Only the first call reaches the store; later ones
// return ok false and change nothing, so a request is never charged twice
// whichever path (end of response, a client gone, a panic) settles it.
func (r *Reservation) Settle(ctx context.Context, c Charge) (res SettleResult, ok bool, err error) {
	if r == nil || !r.ended.CompareAndSwap(false, true) {
		return SettleResult{}, false, nil
	}
	res, err = r.store.Settle(ctx, SettleRequest{
		Tenant: r.tenant, RequestID: r.id, Tokens: c.Tokens, Cost: c.Cost, Budgets: r.budgets, Calibrate: c.Calibrate,
	})
	return res, true, err
}

// Ended reports whether Settle was called.
func (r *Reservation) Ended() bool { return r != nil && r.ended.Load() }

// Tenant returns the tenant the reservation was made for.
func (r *Reservation) Tenant() string { return r.tenant }
