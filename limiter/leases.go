package limiter

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

var errKeeperFull = errors.New("limiter: lease keeper full; reservation not renewed")

// Renewer renews leases: Redis, Memory and Resilient are renewers.
type Renewer interface {
	Renew(ctx context.Context, req RenewRequest) (int, error)
}

// LeaseKeeperOptions configure a LeaseKeeper.
type LeaseKeeperOptions struct {
	// Store is the store admissions go to; it must be a Renewer.
	Store Store
	// Tick is how often due leases are looked for. Zero means one second.
	Tick time.Duration
	// Max bounds the reservations tracked; one admitted past it is not
	// renewed (reported to OnRenew as an error). Zero means
	// DefaultQueueSize.
	Max int
	// OnRenew, if set, is called after each renewal call with the leases it
	// renewed and its error. It must not block.
	OnRenew func(renewed int, err error)
	Logger  *slog.Logger
	Now     func() time.Time
}

// LeaseKeeper is a Store that renews the leases of this replica's open
// reservations while their requests run, so leases can be short: a request
// keeps its slot for as long as it streams, and a dead replica's slots free
// within one lease TTL of its last renewal.
//
// Admissions are registered when allowed and unregistered when settled; no
// round trip is added to either. Every Tick the keeper renews, in one call
// per tenant (and lease TTL), the reservations whose last renewal (or
// admission) is at least a third of their lease TTL old: a request shorter
// than that costs no renewal at all, and a lease is renewed twice before it
// could lapse, so one lost renewal does not lose it.
type LeaseKeeper struct {
	Store
	notesOf  // Notes are the store's (notes.go)
	rebinder Rebinder
	renewer  Renewer
	tick     time.Duration
	onRenew  func(int, error)
	log      *slog.Logger
	now      func() time.Time

	max  int
	mu   sync.Mutex
	open map[string]*lease

	stop chan struct{}
	done chan struct{}
}

type lease struct {
	tenant, id string
	ttl        time.Duration
	renewed    time.Time
}

// NewLeaseKeeper starts the renewal loop; Close stops it and closes the
// store.
func NewLeaseKeeper(o LeaseKeeperOptions) *LeaseKeeper {
	k := &LeaseKeeper{
		Store:   o.Store,
		notesOf: notesOf{o.Store},
		tick:    cmp.Or(o.Tick, time.Second),
		max:     cmp.Or(o.Max, DefaultQueueSize),
		onRenew: o.OnRenew,
		log:     cmp.Or(o.Logger, slog.Default()),
		now:     o.Now,
		open:    map[string]*lease{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if k.now == nil {
		k.now = time.Now
	}
	k.renewer, _ = o.Store.(Renewer)
	k.rebinder, _ = o.Store.(Rebinder)
	go k.loop()
	return k
}

// Admit implements Store, registering an allowed reservation. A detached
// one is not registered: it holds no lease to renew (its LeaseTTL is its
// whole life), and it is settled, if ever, under the id Rebind gives it, so
// its entry would never be removed.
func (k *LeaseKeeper) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	d, err := k.Store.Admit(ctx, req)
	if err == nil && d.Allowed && k.renewer != nil && !req.Detached {
		k.mu.Lock()
		if len(k.open) < k.max {
			k.open[openKey(req.Tenant, req.RequestID)] = &lease{tenant: req.Tenant, id: req.RequestID,
				ttl: cmp.Or(req.Limits.LeaseTTL, DefaultLeaseTTL), renewed: k.now()}
		} else if k.onRenew != nil {
			// Not renewed: its lease may lapse and be charged at its estimate.
			k.onRenew(0, errKeeperFull)
		}
		k.mu.Unlock()
	}
	return d, err
}

// Settle implements Store, unregistering the reservation first.
func (k *LeaseKeeper) Settle(ctx context.Context, req SettleRequest) (SettleResult, error) {
	k.mu.Lock()
	delete(k.open, openKey(req.Tenant, req.RequestID))
	k.mu.Unlock()
	return k.Store.Settle(ctx, req)
}

// Rebind implements Rebinder when the store does: the gate renames a
// batch's detached reservation through the store it was given, which is
// this keeper under serve.
func (k *LeaseKeeper) Rebind(ctx context.Context, req RebindRequest) (bool, error) {
	if k.rebinder == nil {
		return false, nil
	}
	return k.rebinder.Rebind(ctx, req)
}

// Open reports how many reservations the keeper holds.
func (k *LeaseKeeper) Open() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.open)
}

// Close stops renewing and closes the store.
func (k *LeaseKeeper) Close() error {
	close(k.stop)
	<-k.done
	return k.Store.Close()
}

func (k *LeaseKeeper) loop() {
	defer close(k.done)
	t := time.NewTicker(k.tick)
	defer t.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-t.C:
		}
		k.renewDue()
	}
}

type renewGroup struct {
	tenant string
	ttl    time.Duration
}

// renewDue renews every lease at least a third of its TTL old, one call
// per tenant and TTL.
func (k *LeaseKeeper) renewDue() {
	if k.renewer == nil {
		return
	}
	now := k.now()
	groups := map[renewGroup][]*lease{}
	k.mu.Lock()
	for _, l := range k.open {
		if now.Sub(l.renewed) >= l.ttl/3 {
			g := renewGroup{l.tenant, l.ttl}
			groups[g] = append(groups[g], l)
		}
	}
	k.mu.Unlock()
	for g, ls := range groups {
		ids := make([]string, len(ls))
		for i, l := range ls {
			ids[i] = l.id
		}
		ctx, cancel := context.WithTimeout(context.Background(), min(g.ttl/3, replayTimeout))
		n, err := k.renewer.Renew(ctx, RenewRequest{Tenant: g.tenant, RequestIDs: ids, LeaseTTL: g.ttl})
		cancel()
		if k.onRenew != nil {
			k.onRenew(n, err)
		}
		if err != nil {
			continue // tried again next tick; the lease has two thirds of its TTL left
		}
		k.mu.Lock()
		for _, l := range ls {
			l.renewed = now
		}
		k.mu.Unlock()
	}
}
