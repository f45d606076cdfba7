package observe

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// storeMetrics are the series of the limiter's fault handling: the
// breaker, requests served by a failure policy, the journal of what a
// replica owes the store, drops, reconciliations, store resets, live
// replicas and lease renewals. Metrics implements limiter.Events with them.
type storeMetrics struct {
	breaker      *prometheus.GaugeVec   // state
	degraded     *prometheus.CounterVec // policy, cause
	journal      prometheus.Gauge
	dropped      *prometheus.CounterVec // queue
	reconciled   *prometheus.CounterVec // kind
	resets       prometheus.Counter
	lastReset    prometheus.Gauge
	liveReplicas prometheus.Gauge
	renewals     *prometheus.CounterVec // result
}

func newStoreMetrics(reg prometheus.Registerer) storeMetrics {
	m := storeMetrics{
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_store_breaker_state",
			Help: "1 for the circuit breaker's current state (closed, open, half_open), 0 for the others. It opens on the store's failure rate, never on one slow reply.",
		}, []string{"state"}),
		degraded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_store_degraded_total",
			Help: "Admissions served by their failure policy (closed, open, local) instead of the shared store, by cause: outage (the store did not answer, or the breaker is open) or shed (the store is busy: this replica had store.max_in_flight calls in flight for store.queue_timeout).",
		}, []string{"policy", "cause"}),
		journal: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_store_journal_entries",
			Help: "What this replica owes the shared store: cancels of admissions whose reply was lost, settles not yet taken, spend decided in local or open mode, rebuilds after a store reset.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_store_dropped_total",
			Help: "Entries a bounded queue had no room for, by queue (journal: spend, settles or cancels lost; ledger: lost to a store reset's rebuild; inflight: a degraded request charged at its estimate, or a reservation whose loss in a reset goes unnoticed).",
		}, []string{"queue"}),
		reconciled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_store_reconciled_total",
			Help: "Journal entries applied to the shared store, by kind (cancel, settle, charge, rebuild); phantom counts the cancels that found their timed-out admission had run after all, and released it.",
		}, []string{"kind"}),
		resets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwarden_store_resets_total",
			Help: "Times this replica found the store had lost its data (its epoch changed: a restart without persistence, FLUSHALL): the budgets were reset and are being rebuilt from the replicas' ledgers.",
		}),
		lastReset: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_store_last_reset_timestamp_seconds",
			Help: "Unix time this replica last found the store had lost its data; 0 if never.",
		}),
		liveReplicas: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_store_live_replicas",
			Help: "Replicas heartbeating into the shared store, as this replica last saw; local mode divides limits by max(this, store.replicas).",
		}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_lease_renewals_total",
			Help: "Lease renewal calls (one per tenant per interval for requests older than a third of their lease), by result (ok, error).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.breaker, m.degraded, m.journal, m.dropped, m.reconciled, m.resets, m.lastReset, m.liveReplicas, m.renewals)
	for _, s := range []limiter.BreakerState{limiter.BreakerClosed, limiter.BreakerOpen, limiter.BreakerHalfOpen} {
		m.breaker.WithLabelValues(s.String())
	}
	m.breaker.WithLabelValues(limiter.BreakerClosed.String()).Set(1)
	for _, p := range []limiter.FailurePolicy{limiter.FailClosed, limiter.FailOpen, limiter.FailLocal} {
		for _, c := range []string{"outage", "shed"} {
			m.degraded.WithLabelValues(string(p), c)
		}
	}
	for _, q := range []string{"journal", "ledger", "inflight"} {
		m.dropped.WithLabelValues(q)
	}
	for _, k := range []string{limiter.OpCancel, limiter.OpSettle, limiter.OpCharge, limiter.OpRebuild, limiter.KindPhantom} {
		m.reconciled.WithLabelValues(k)
	}
	for _, r := range []string{"ok", "error"} {
		m.renewals.WithLabelValues(r)
	}
	return m
}

var _ limiter.Events = (*Metrics)(nil)

// BreakerChanged implements limiter.Events.
func (m *Metrics) BreakerChanged(from, to limiter.BreakerState) {
	m.store.breaker.WithLabelValues(from.String()).Set(0)
	m.store.breaker.WithLabelValues(to.String()).Set(1)
}

// Degraded implements limiter.Events.
func (m *Metrics) Degraded(p limiter.FailurePolicy, cause string) {
	m.store.degraded.WithLabelValues(string(p), cause).Inc()
}

// JournalDepth implements limiter.Events.
func (m *Metrics) JournalDepth(n int) { m.store.journal.Set(float64(n)) }

// Dropped implements limiter.Events.
func (m *Metrics) Dropped(queue string) { m.store.dropped.WithLabelValues(queue).Inc() }

// Reconciled implements limiter.Events.
func (m *Metrics) Reconciled(kind string) { m.store.reconciled.WithLabelValues(kind).Inc() }

// StoreReset implements limiter.Events.
func (m *Metrics) StoreReset(at time.Time) {
	m.store.resets.Inc()
	m.store.lastReset.Set(float64(at.UnixNano()) / 1e9)
}

// LiveReplicas implements limiter.Events.
func (m *Metrics) LiveReplicas(n int) { m.store.liveReplicas.Set(float64(n)) }

// LeaseRenewed records one renewal call.
func (m *Metrics) LeaseRenewed(_ int, err error) {
	r := "ok"
	if err != nil {
		r = "error"
	}
	m.store.renewals.WithLabelValues(r).Inc()
}

// ReadinessOptions say what /readyz looks at.
type ReadinessOptions struct {
	// Draining reports that shutdown has begun: the replica leaves the
	// Service endpoints so Envoy stops sending it streams.
	Draining *atomic.Bool
	// Config is the configuration in force.
	Config *policy.Holder
	// Store is the failure-policy layer (nil for the memory store).
	Store *limiter.Resilient
}

// Readiness is /readyz's check: ready while this replica can answer every
// request — it is not draining and it has a configuration. A store outage
// does not make it unready, whatever the failure policy: every replica
// shares the one store, so taking them all out of the endpoints together
// would turn each request into Envoy's own failure (its failure_mode_allow
// is false) instead of this replica's answer in the API's dialect (a
// decision in local or open mode, a 503 with a retry hint in closed mode),
// and traffic would come back only after the probes noticed. Store health
// is tokenwarden_store_up, its alert, and the detail lines of /readyz.
func Readiness(o ReadinessOptions) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		var b strings.Builder
		if o.Store != nil {
			fmt.Fprintf(&b, "store: breaker %s; failure policy %s; live replicas %d; journal %d entries\n",
				o.Store.State(), o.Config.Load().Store.OnFailure, o.Store.Replicas(), o.Store.Pending())
			if at := o.Store.ResetAt(); !at.IsZero() {
				fmt.Fprintf(&b, "store: budgets were reset at %s (the store lost its data); rebuilt from the replicas' ledgers\n", at.UTC().Format(time.RFC3339))
			}
		}
		if o.Draining != nil && o.Draining.Load() {
			return b.String(), errors.New("draining: shutting down")
		}
		return b.String(), nil
	}
}
