// Package gate is tokenwarden's request lifecycle without Envoy: who is
// calling and under which policy, one parse of the body, the model rules and
// every edit applied in one copy, admission against the shared store, the
// provider's answer, the meter, and the settle that ends the reservation.
//
// Values go in and out: a Request at request headers, the body, the
// response's status and chunks; HeadersVerdict, BodyVerdict,
// ResponseVerdict and an Outcome back. The Envoy adapter (package extproc)
// turns them into ext_proc messages; tests drive the gate directly with
// limiter.Memory and a fake clock.
//
// One Exchange serves one HTTP request and is used by one goroutine at a
// time. Its reservation ends exactly once: Settle after the final answer is
// sent, or Abort when the stream ends first — whichever comes first wins,
// and the store is never asked twice.
package gate

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// Options configures a Gate.
type Options struct {
	// Config publishes the current configuration; each request loads it
	// once, at its start, and keeps it to its end. Required.
	Config *policy.Holder
	// Store makes admission decisions. Required.
	Store limiter.Store
	// ResponseCache serves and keeps the answers of policies that enable
	// response_cache; nil disables it for every policy.
	ResponseCache limiter.ResponseCache
	// Upstreams is the view of the provider upstreams (cool-downs the
	// provider asked for), shared by the replicas or not; nil means a view
	// of this replica alone.
	Upstreams limiter.UpstreamView
	// Pacer keeps the schedules of paced upstreams (pacing.go), shared by
	// the replicas or not; nil means this replica's own.
	Pacer limiter.Pacer
	// Replicas is how many replicas share the upstreams (the store's live
	// count); nil means the configured store.replicas alone.
	Replicas func() int64
	// Observer receives every observation; nil records nothing.
	Observer Observer
	Logger   *slog.Logger
	// Now is the clock of budget windows and latencies; nil means time.Now.
	// The store keeps its own clock for decisions.
	Now func() time.Time
	// Timer makes the queue's timers, on the clock of Now; nil means real
	// timers (time.NewTimer).
	Timer func(d time.Duration) Timer
	// SettleTimeout bounds the store call that ends a reservation after its
	// stream may be gone; zero means DefaultSettleTimeout.
	SettleTimeout time.Duration
}

// DefaultSettleTimeout bounds a settle when Options.SettleTimeout is zero.
const DefaultSettleTimeout = 2 * time.Second

// Gate holds what outlives one request: the options, the request-id
// sequence, and the small caches fed by the store's answers.
type Gate struct {
	opts     Options
	obs      Observer
	log      *slog.Logger
	idPrefix string
	idSeq    atomic.Uint64
	budgets  *budgetCache
	levels   levelCache // admission's limits and budgets per caller (levelcache.go)
	// upstreams is Options.Upstreams, or a local view.
	upstreams limiter.UpstreamView
	calib     *calibrator
	prefixes  *prefixTracker
	warned    *boundedSet // route policy names already warned about
	unpriced  *boundedSet // model names already warned about
	// invalidLog samples the warnings about impossible provider usage,
	// decodeLog those about response bodies that cannot be read.
	invalidLog Sampler
	// refusals and settles sample the log lines of store failures.
	refusals, settles Sampler
	decodeLog         Sampler
	cooldownLog       Sampler // cool-downs that could not be shared
	queue             *queue  // requests waiting for capacity (queue.go)
	// pacer is Options.Pacer, or a local one; paces the upstreams' state.
	pacer   limiter.Pacer
	paces   *paceTable
	paceLog Sampler // pacer failures
}

// New returns a Gate.
func New(o Options) (*Gate, error) {
	if o.Config == nil || o.Store == nil {
		return nil, errors.New("gate: Options.Config and Options.Store are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.SettleTimeout = cmp.Or(o.SettleTimeout, DefaultSettleTimeout)
	g := &Gate{
		opts:     o,
		obs:      o.Observer,
		log:      cmp.Or(o.Logger, slog.Default()),
		budgets:  newBudgetCache(),
		calib:    newCalibrator(),
		prefixes: newPrefixTracker(),
		warned:   newBoundedSet(maxWarnedPolicies),
		unpriced: newBoundedSet(maxWarnedPolicies),
	}
	g.queue = newQueue(g)
	g.upstreams = o.Upstreams
	g.pacer, g.paces = o.Pacer, newPaceTable(g.log)
	if g.pacer == nil {
		g.pacer = limiter.NewPaceMemory(nil)
	}
	if g.upstreams == nil {
		g.upstreams = limiter.NewUpstreamMemory(o.Now)
	}
	if g.obs == nil {
		g.obs = NopObserver{}
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	g.idPrefix = hex.EncodeToString(b[:])
	return g, nil
}

// Sampler lets one event through per second and counts the rest, so an
// event a client can trigger at will (a log line about its own bad input)
// costs neither disk nor lock contention. The zero value is ready.
type Sampler struct {
	last       atomic.Int64 // unix nanoseconds of the last event let through
	suppressed atomic.Int64
}

// Allow reports whether an event at now may be logged, and how many were
// suppressed since the last one that was.
func (s *Sampler) Allow(now time.Time) (suppressed int64, ok bool) {
	last := s.last.Load()
	if now.UnixNano()-last < int64(time.Second) || !s.last.CompareAndSwap(last, now.UnixNano()) {
		s.suppressed.Add(1)
		return 0, false
	}
	return s.suppressed.Swap(0), true
}

// nextRequestID names a reservation. It is unique per replica and process
// lifetime, which is what settle idempotency needs; the client's
// x-request-id is only logged, since a client could reuse it.
func (g *Gate) nextRequestID() string {
	return g.idPrefix + "-" + strconv.FormatUint(g.idSeq.Add(1), 10)
}

// detached returns a context for the store call that ends a reservation:
// not cancelled with the stream (Envoy cancels it right after the last
// answer), but bounded by its own timeout.
func (g *Gate) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), g.opts.SettleTimeout)
}
