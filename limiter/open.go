package limiter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// OpenOptions say which store to open.
type OpenOptions struct {
	// Redis is a redis:// or rediss:// URL; Cluster the seed addresses of a
	// Redis Cluster. With neither, the store is in memory (one replica).
	Redis   string
	Cluster []string
	// Timeout bounds each round trip (the client's read and write
	// timeouts); zero means DefaultTimeout.
	Timeout time.Duration
	// MaxInFlight bounds this replica's store calls in flight (and sizes the
	// connection pool); QueueTimeout bounds the wait for a place, past which
	// a call is shed. Zero means the defaults.
	MaxInFlight  int
	QueueTimeout time.Duration
	// Replicas is passed to Resilient: the floor of the replica count local
	// failure mode divides limits by.
	Replicas int
	// JournalDir keeps Resilient's journal and ledger on disk (empty: in
	// memory, lost at exit).
	JournalDir string
	// ProbeInterval is Resilient's heartbeat period; zero means the default.
	ProbeInterval time.Duration
	// LeaseTick is how often due leases are renewed; zero means one second.
	LeaseTick time.Duration
	Events    Events
	OnRenew   func(renewed int, err error)
	Logger    *slog.Logger
	// Direct opens the bare shared store, for one-shot commands that must
	// read the shared state or fail, never fall back to a local stand-in.
	Direct bool
}

// Opened is a store with what its owner needs to run it.
type Opened struct {
	Store Store
	// Up reports whether decisions are made on the shared store (always
	// true for the memory store).
	Up func() bool
	// Resilient is the failure-policy layer over a shared store (nil for
	// the memory store and with Direct), for readiness details.
	Resilient *Resilient
	// Leases renews open reservations (nil with Direct).
	Leases *LeaseKeeper
	// Leased serves the requests whose policy asks for leases (nil with
	// Direct); it passes the others through.
	Leased *Leased
	// Close stops background work, flushes what can be flushed and closes
	// the client.
	Close func() error
}

// Shared reports whether o names a Redis store.
func (o OpenOptions) Shared() bool { return o.Redis != "" || len(o.Cluster) > 0 }

// Open builds the store o names: the memory store, or Redis wrapped in
// Resilient so that each request's failure policy applies while Redis is
// unreachable (bare, with Direct); both behind Leased (for the policies
// that ask for leases) and a LeaseKeeper. The keeper is on top so that it
// tracks the requests themselves; Leased renews, for those it served from
// a lease, the lease (LeaseKeeper renews through Leased.Renew).
func Open(o OpenOptions) (Opened, error) {
	local := NewMemory(MemoryOptions{})
	keep := func(s Store, replicas func() int64, up func() bool) (*LeaseKeeper, *Leased) {
		ld := NewLeased(LeasedOptions{Inner: s, Replicas: replicas, Up: up, Logger: o.Logger})
		return NewLeaseKeeper(LeaseKeeperOptions{Store: ld, Tick: o.LeaseTick, OnRenew: o.OnRenew, Logger: o.Logger}), ld
	}
	if !o.Shared() {
		k, ld := keep(local, nil, nil)
		return Opened{Store: k, Up: func() bool { return true }, Leases: k, Leased: ld, Close: k.Close}, nil
	}
	if o.Redis != "" && len(o.Cluster) > 0 {
		return Opened{}, errors.New("limiter: set a Redis URL or cluster addresses, not both")
	}
	if o.Logger != nil {
		// go-redis logs every failed dial itself; at debug level, so an
		// outage logs the breaker's one line per state change, not a line per
		// attempt. The logger is the process's (go-redis has one global).
		redis.SetLogger(clientLog{o.Logger})
	}
	timeout := cmp.Or(o.Timeout, DefaultTimeout)
	inflight := cmp.Or(o.MaxInFlight, DefaultMaxInFlight)
	queue := cmp.Or(o.QueueTimeout, DefaultQueueTimeout)
	// The read and write timeouts time the round trip alone; the pool has a
	// connection for every call in flight plus the background loops', so a
	// call that has its place does not wait for a connection
	// (https://pkg.go.dev/github.com/redis/go-redis/v9#Options,
	// https://redis.uptrace.dev/guide/go-redis-debugging.html#timeouts).
	// No retries: a retried script could run twice, and a timed-out
	// admission is cancelled instead. MaxInFlight connections are kept open
	// (MinIdleConns) so a burst does not dial them on a starved CPU.
	pool := inflight + 4
	dial := DefaultDialTimeout
	// A connection of the regular pool carries one EVALSHA at a time: about
	// 1.4 KB out and 0.4 KB back for an admission at four levels (INFO
	// stats total_net_*_bytes over BenchmarkRedis's requests). go-redis
	// gives every connection a 32 KiB read and a 32 KiB write buffer by
	// default (Options.ReadBufferSize), and the pool keeps MaxInFlight of
	// them open: 4 MiB live for buffers that are at most a few KB full, and
	// as much again in heap the GC lets grow on top of it. Coalesced
	// pipelines use go-redis's pipeline pool, whose buffers this leaves at
	// their default; a larger command or reply still goes through, in more
	// than one read or write.
	const connBuffer = 8 << 10
	var client redis.UniversalClient
	if len(o.Cluster) > 0 {
		client = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: o.Cluster, DialTimeout: dial, PoolSize: pool, PoolTimeout: queue, MinIdleConns: inflight,
			ReadTimeout: timeout, WriteTimeout: timeout, MaxRetries: -1,
			ReadBufferSize: connBuffer, WriteBufferSize: connBuffer,
		})
	} else {
		opt, err := redis.ParseURL(o.Redis)
		if err != nil {
			return Opened{}, fmt.Errorf("limiter: redis URL: %w", err)
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.MaxRetries = dial, timeout, timeout, -1
		opt.PoolSize, opt.PoolTimeout, opt.MinIdleConns = pool, queue, inflight
		opt.ReadBufferSize, opt.WriteBufferSize = connBuffer, connBuffer
		client = redis.NewClient(opt)
	}
	primary, err := NewRedis(RedisOptions{Client: client, Timeout: timeout, MaxInFlight: inflight, QueueTimeout: queue, DialTimeout: dial})
	if err != nil {
		return Opened{}, errors.Join(err, client.Close())
	}
	if o.Direct {
		return Opened{Store: primary, Up: func() bool { return true }, Close: client.Close}, nil
	}
	res, err := NewResilient(ResilientOptions{Primary: primary, Local: local, Replicas: o.Replicas, Logger: o.Logger,
		JournalDir: o.JournalDir, ProbeInterval: o.ProbeInterval, Events: o.Events})
	if err != nil {
		return Opened{}, errors.Join(err, client.Close())
	}
	k, ld := keep(res, res.Replicas, res.Up)
	return Opened{Store: k, Up: res.Up, Resilient: res, Leases: k, Leased: ld, Close: func() error { return errors.Join(k.Close(), client.Close()) }}, nil
}

// clientLog routes go-redis's own log lines to slog at debug level.
type clientLog struct{ l *slog.Logger }

func (c clientLog) Printf(ctx context.Context, format string, v ...any) {
	c.l.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
