package limiter

import (
	"cmp"
	"context"
	"fmt"
	"time"
)

// Cancel implements Shared in one round trip (lua/cancel.lua).
func (r *Redis) Cancel(ctx context.Context, req CancelRequest) (CancelResult, error) {
	if err := validateIDs(req.Tenant, req.RequestID); err != nil {
		return CancelResult{}, err
	}
	prefix := tenantPrefix(req.Tenant)
	rpm := newRate(req.RequestsPerMinute, req.Burst)
	args := []any{prefix, req.RequestID, rpm.limit, r.tombstoneTTL.Milliseconds(), int64(r.retention / time.Second), req.count()}
	keys := []string{prefix + "s", prefix + "p", prefix + "r:" + req.RequestID}
	v, err := r.run(ctx, cancelScript, keys, args)
	if err != nil {
		return CancelResult{}, fmt.Errorf("limiter: cancel: %w", err)
	}
	top, err := asSlice(v, 2)
	if err != nil {
		return CancelResult{}, fmt.Errorf("limiter: cancel: %w", err)
	}
	released, err := asInt(top[1])
	return CancelResult{Released: released == 1}, err
}

// Renew implements Shared in one round trip for any number of ids
// (lua/renew.lua).
func (r *Redis) Renew(ctx context.Context, req RenewRequest) (int, error) {
	if req.Tenant == "" || len(req.RequestIDs) == 0 {
		return 0, nil
	}
	prefix := tenantPrefix(req.Tenant)
	set, detached := prefix+"p", int64(0)
	if req.Detached {
		set, detached = prefix+"d", 1
	}
	args := make([]any, 0, 4+len(req.RequestIDs))
	args = append(args, int64(cmp.Or(req.LeaseTTL, DefaultLeaseTTL)/time.Microsecond), int64(r.retention/time.Second), prefix, detached)
	for _, id := range req.RequestIDs {
		args = append(args, id)
	}
	v, err := r.run(ctx, renewScript, []string{prefix + "s", set}, args)
	if err != nil {
		return 0, fmt.Errorf("limiter: renew: %w", err)
	}
	n, err := asInt(v)
	return int(n), err
}

// Reconcile implements Shared in one round trip (lua/reconcile.lua).
func (r *Redis) Reconcile(ctx context.Context, req ReconcileRequest) (ReconcileResult, error) {
	if err := validateReconcile(&req); err != nil {
		return ReconcileResult{}, err
	}
	prefix := tenantPrefix(req.Tenant)
	degraded := int64(0)
	if req.Degraded {
		degraded = 1
	}
	alerts := alertsLen(req.Budgets)
	a := newScriptArgs(6+3*len(req.Windows)+alerts, 5+2*len(req.Windows)+alerts, 1+len(req.Windows)+len(req.Budgets))
	a.str(prefix)
	for _, v := range [...]int64{req.Cost, degraded, r.reconciledTTL.Milliseconds(), int64(r.retention / time.Second), int64(len(req.Windows))} {
		a.int(v)
	}
	for _, w := range req.Windows {
		a.str(w.Name)
		a.int(unixMicros(w.Window.Start))
		a.int(unixMicros(w.Window.End))
	}
	a.alerts(req.Budgets)
	marker := prefix + "r:" + req.RequestID
	unless := marker
	if req.Unless != "" {
		unless = prefix + "r:" + req.Unless
	}
	v, err := r.run(ctx, reconcileScript, []string{marker, unless}, a.argv)
	if err != nil {
		return ReconcileResult{}, fmt.Errorf("limiter: reconcile: %w", err)
	}
	top, err := asSlice(v, 4)
	if err != nil {
		return ReconcileResult{}, fmt.Errorf("limiter: reconcile: %w", err)
	}
	// The reply's tail has the shape of a settle's: reuse its parser.
	o, err := parseSettle([]any{top[0], top[1], top[2], []any{}, top[3]})
	if err != nil {
		return ReconcileResult{}, fmt.Errorf("limiter: reconcile: %w", err)
	}
	sr := o.result(&SettleRequest{Budgets: req.Budgets})
	return ReconcileResult{Applied: sr.Settled, Budgets: sr.Budgets, Crossed: sr.Crossed}, nil
}

// Heartbeat implements Shared in one round trip (lua/heartbeat.lua).
func (r *Redis) Heartbeat(ctx context.Context, req HeartbeatRequest) (HeartbeatResult, error) {
	if req.Replica == "" || req.Epoch == "" || req.TTL <= 0 {
		return HeartbeatResult{}, errInvalidf("heartbeat needs a replica, an epoch and a TTL")
	}
	v, err := r.run(ctx, heartbeatScript, []string{epochKey, replicasKey}, []any{req.Replica, req.TTL.Milliseconds(), req.Epoch})
	if err != nil {
		return HeartbeatResult{}, fmt.Errorf("limiter: heartbeat: %w", err)
	}
	top, err := asSlice(v, 3)
	if err != nil {
		return HeartbeatResult{}, fmt.Errorf("limiter: heartbeat: %w", err)
	}
	created, err := asInt(top[1])
	if err != nil {
		return HeartbeatResult{}, err
	}
	live, err := asInt(top[2])
	return HeartbeatResult{Epoch: asString(top[0]), Created: created == 1, Live: int(live)}, err
}

// Rebind implements Rebinder in one round trip (lua/rebind.lua).
func (r *Redis) Rebind(ctx context.Context, req RebindRequest) (bool, error) {
	if err := validateIDs(req.Tenant, req.From); err != nil {
		return false, err
	}
	if err := validateIDs(req.Tenant, req.To); err != nil {
		return false, err
	}
	prefix := tenantPrefix(req.Tenant)
	v, err := r.run(ctx, rebindScript, []string{prefix + "r:" + req.From, prefix + "r:" + req.To}, []any{prefix, req.From, req.To})
	if err != nil {
		return false, fmt.Errorf("limiter: rebind: %w", err)
	}
	n, err := asInt(v)
	return n == 1, err
}
