package limiter

import (
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
	// Timeout bounds each round trip; zero means DefaultTimeout.
	Timeout time.Duration
	// Replicas is passed to Resilient: in local failure mode each replica
	// enforces 1/Replicas of every limit.
	Replicas int
	Logger   *slog.Logger
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
	// Close stops background work and closes the client.
	Close func() error
}

// Shared reports whether o names a Redis store.
func (o OpenOptions) Shared() bool { return o.Redis != "" || len(o.Cluster) > 0 }

// Open builds the store o names: the memory store, or Redis wrapped in
// Resilient so that each request's failure policy applies while Redis is
// unreachable (bare, with Direct).
func Open(o OpenOptions) (Opened, error) {
	local := NewMemory(MemoryOptions{})
	if !o.Shared() {
		return Opened{Store: local, Up: func() bool { return true }, Close: local.Close}, nil
	}
	if o.Redis != "" && len(o.Cluster) > 0 {
		return Opened{}, errors.New("limiter: set a Redis URL or cluster addresses, not both")
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	var client redis.UniversalClient
	if len(o.Cluster) > 0 {
		client = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: o.Cluster, DialTimeout: time.Second,
			ReadTimeout: timeout, WriteTimeout: timeout, MaxRetries: -1,
		})
	} else {
		opt, err := redis.ParseURL(o.Redis)
		if err != nil {
			return Opened{}, fmt.Errorf("limiter: redis URL: %w", err)
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.MaxRetries = time.Second, timeout, timeout, -1
		client = redis.NewClient(opt)
	}
	primary, err := NewRedis(RedisOptions{Client: client, Timeout: timeout})
	if err != nil {
		return Opened{}, errors.Join(err, client.Close())
	}
	if o.Direct {
		return Opened{Store: primary, Up: func() bool { return true }, Close: client.Close}, nil
	}
	res, err := NewResilient(ResilientOptions{Primary: primary, Local: local, Replicas: o.Replicas, Logger: o.Logger})
	if err != nil {
		return Opened{}, errors.Join(err, client.Close())
	}
	return Opened{Store: res, Up: res.Up, Close: func() error { return errors.Join(res.Close(), client.Close()) }}, nil
}
