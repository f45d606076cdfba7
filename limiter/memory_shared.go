package limiter

import (
	"cmp"
	"context"
	"time"
)

// Cancel implements Shared with the Redis store's semantics
// (lua/cancel.lua).
func (m *Memory) Cancel(ctx context.Context, req CancelRequest) (CancelResult, error) {
	if err := validateIDs(req.Tenant, req.RequestID); err != nil {
		return CancelResult{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	m.gc(now)
	t := m.tenant(req.Tenant)
	keep := int64(DefaultTombstoneTTL / time.Microsecond)
	rec := t.records[req.RequestID]
	if rec == nil || rec.deadline <= now {
		if t.ended.state(req.RequestID, now) == 0 {
			t.ended.add(req.RequestID, now, now+keep, 'c') // a tombstone: the admit that comes late is a duplicate
		}
		return CancelResult{}, nil
	}
	if rec.state != 'p' {
		return CancelResult{}, nil
	}
	m.charge(t, now, rec, 0, nil, new([]rawCrossing))
	if rpm := newRate(req.RequestsPerMinute, req.Burst); rpm.limit > 0 && t.rpm > 0 {
		t.rpm = max(max(t.rpm, now)-req.count()*increment(1, rpm.limit), now)
	}
	if rec.tpmLimit > 0 && t.tpm > 0 {
		t.tpm = max(max(t.tpm, now)-increment(rec.tokens, rec.tpmLimit), now)
	}
	for _, ll := range rec.levels {
		s := t.levels[ll.Key]
		if s == nil {
			continue
		}
		if ll.RequestsPerMinute > 0 && s.rpm > 0 {
			s.rpm = max(max(s.rpm, now)-req.count()*increment(1, ll.RequestsPerMinute), now)
		}
		if ll.TokensPerMinute > 0 && s.tpm > 0 {
			s.tpm = max(max(s.tpm, now)-increment(rec.tokens, ll.TokensPerMinute), now)
		}
		if ll.Concurrent > 0 {
			s.pending.remove(req.RequestID)
		}
	}
	t.pending.remove(req.RequestID)
	t.detached.remove(req.RequestID)
	delete(t.records, req.RequestID)
	t.ended.add(req.RequestID, now, now+keep, 'c')
	return CancelResult{Released: true}, nil
}

// Renew implements Shared (lua/renew.lua).
func (m *Memory) Renew(ctx context.Context, req RenewRequest) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	t := m.tenants[req.Tenant]
	if t == nil {
		return 0, nil
	}
	expiry := now + int64(cmp.Or(req.LeaseTTL, DefaultLeaseTTL)/time.Microsecond)
	n := 0
	set := &t.pending
	if req.Detached {
		set = &t.detached
	}
	for _, id := range req.RequestIDs {
		it := set.byID[id]
		if it == nil || it.exp <= now {
			continue
		}
		set.add(id, expiry)
		if rec := t.records[id]; rec != nil {
			rec.deadline = max(rec.deadline, expiry+m.retention)
			for _, ll := range rec.levels {
				if s := t.levels[ll.Key]; s != nil && ll.Concurrent > 0 && s.pending.byID[id] != nil {
					s.pending.add(id, expiry)
				}
			}
		}
		n++
	}
	return n, nil
}

// Reconcile implements Shared (lua/reconcile.lua).
func (m *Memory) Reconcile(ctx context.Context, req ReconcileRequest) (ReconcileResult, error) {
	if err := validateReconcile(&req); err != nil {
		return ReconcileResult{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	m.gc(now)
	t := m.tenant(req.Tenant)
	if t.known(req.RequestID, now) || req.Unless != "" && t.known(req.Unless, now) {
		return ReconcileResult{}, nil
	}
	rec := &memRecord{state: 'd'}
	for _, w := range req.Windows {
		rec.windows = append(rec.windows, recWindow{w.Name, unixMicros(w.Window.Start), unixMicros(w.Window.End)})
		if req.Degraded {
			key := keyOf(w.Name, unixMicros(w.Window.Start))
			s := t.budget(key, now)
			if s == nil {
				s = &memBudget{deadline: unixMicros(w.Window.End) + m.retention}
				t.budgets[key] = s
			}
			s.degraded += req.Cost
		}
	}
	var crossed []rawCrossing
	out := m.charge(t, now, rec, req.Cost, alertsByName(req.Budgets), &crossed)
	rec.windows, rec.deadline = nil, now+int64(DefaultReconciledTTL/time.Microsecond)
	t.records[req.RequestID] = rec
	o := settleOutcome{now: now, settled: true, budgets: out, crossed: crossed}
	sr := o.result(&SettleRequest{Budgets: req.Budgets})
	return ReconcileResult{Applied: true, Budgets: sr.Budgets, Crossed: sr.Crossed}, nil
}

// Heartbeat implements Shared: the memory store's epoch lives as long as
// the process.
func (m *Memory) Heartbeat(ctx context.Context, req HeartbeatRequest) (HeartbeatResult, error) {
	if req.Replica == "" || req.Epoch == "" || req.TTL <= 0 {
		return HeartbeatResult{}, errInvalidf("heartbeat needs a replica, an epoch and a TTL")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	created := m.epoch == ""
	if created {
		m.epoch = req.Epoch
	}
	if m.replicas == nil {
		m.replicas = map[string]int64{}
	}
	m.replicas[req.Replica] = now
	ttl := int64(req.TTL / time.Microsecond)
	for id, at := range m.replicas {
		if at < now-ttl {
			delete(m.replicas, id)
		}
	}
	return HeartbeatResult{Epoch: m.epoch, Created: created, Live: len(m.replicas)}, nil
}

// Rebind implements Rebinder (lua/rebind.lua).
func (m *Memory) Rebind(ctx context.Context, req RebindRequest) (bool, error) {
	if err := validateIDs(req.Tenant, req.From); err != nil {
		return false, err
	}
	if err := validateIDs(req.Tenant, req.To); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	t := m.tenants[req.Tenant]
	if t == nil {
		return false, nil
	}
	rec := t.records[req.From]
	it := t.detached.byID[req.From]
	if rec == nil || rec.deadline <= now || rec.state != 'p' || it == nil {
		return false, nil
	}
	if t.known(req.To, now) {
		return false, nil
	}
	exp := it.exp
	t.detached.remove(req.From)
	t.detached.add(req.To, exp)
	delete(t.records, req.From)
	t.records[req.To] = rec
	return true, nil
}
