package limiter

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// backingOff runs the scripts of a store that sits on a request's path
// beside admission (the response cache, the pacer): each call bounded by
// timeout, and for backoff after a call found Redis unreachable every call
// answers skipped (wrapping ErrUnavailable) at once, so an outage costs
// each request nothing rather than a timeout.
type backingOff struct {
	client    redis.UniversalClient
	timeout   time.Duration
	backoff   time.Duration
	skipped   error
	downUntil atomic.Int64 // unix nanoseconds
}

func (r *backingOff) run(ctx context.Context, s *redis.Script, keys []string, args ...any) (any, error) {
	if time.Now().UnixNano() < r.downUntil.Load() {
		return nil, r.skipped
	}
	callCtx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	v, err := s.Run(callCtx, r.client, keys, args...).Result()
	if err == nil || errors.Is(err, redis.Nil) {
		return v, err
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	if unavailable(err) {
		r.downUntil.Store(time.Now().Add(r.backoff).UnixNano())
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil, err
}
