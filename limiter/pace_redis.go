package limiter

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lua/pace.lua
	paceLua    string
	paceScript = redis.NewScript(paceLua)
)

// paceKey is an upstream's schedule: its own hash tag, so in a Redis
// Cluster each upstream's schedule is one slot, apart from every org's.
func paceKey(id string) string { return "tw:{up:" + id + "}:pace" }

// PaceRedisOptions configure a PaceRedis.
type PaceRedisOptions struct {
	// Client is any UniversalClient; the pacer does not close it. Required.
	Client redis.UniversalClient
	// Timeout bounds each call on top of the caller's context; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// Backoff is how long the pacer answers "unavailable" at once after a
	// call found Redis unreachable; zero means DefaultCacheBackoff.
	Backoff time.Duration
}

// PaceRedis is the shared pacer: one EVALSHA (EVAL after a NOSCRIPT) per
// paced request, Redis TIME as the clock, nothing written on a denial. It
// is a second round trip on the request's path, made only while the gate
// paces the upstream — when the provider is near its limit and requests
// are being slowed anyway — never in the normal case.
type PaceRedis struct {
	backingOff
}

// NewPaceRedis returns a PaceRedis over o.Client.
func NewPaceRedis(o PaceRedisOptions) (*PaceRedis, error) {
	if o.Client == nil {
		return nil, errors.New("limiter: PaceRedisOptions.Client is nil")
	}
	return &PaceRedis{backingOff{client: o.Client, timeout: cmp.Or(o.Timeout, DefaultTimeout),
		backoff: cmp.Or(o.Backoff, DefaultCacheBackoff), skipped: ErrPaceSkipped}}, nil
}

// ErrPaceSkipped wraps ErrUnavailable for calls not made because Redis was
// found unreachable less than Backoff ago.
var ErrPaceSkipped = fmt.Errorf("%w: pacer backing off", ErrUnavailable)

// Pace implements Pacer.
func (r *PaceRedis) Pace(ctx context.Context, req PaceRequest) (PaceDecision, error) {
	a, err := validatePace(req)
	if err != nil {
		return PaceDecision{}, err
	}
	if !a.paced() {
		return PaceDecision{Allowed: true, Denied: -1, Slack: 1}, nil
	}
	args := make([]any, 0, 2*PaceDims)
	for d := range PaceDims {
		args = append(args, a.inc[d], a.tol[d])
	}
	v, err := r.run(ctx, paceScript, []string{paceKey(req.Upstream)}, args...)
	if err != nil {
		return PaceDecision{}, fmt.Errorf("limiter: pace: %w", err)
	}
	f, err := asSlice(v, 4+PaceDims)
	if err != nil {
		return PaceDecision{}, fmt.Errorf("limiter: pace: %w", err)
	}
	var n [4 + PaceDims]int64
	for i := range n {
		if n[i], err = asInt(f[i]); err != nil {
			return PaceDecision{}, fmt.Errorf("limiter: pace: %w", err)
		}
	}
	var tats [PaceDims]int64
	copy(tats[:], n[4:])
	return paceDecision(n[0] == 1, int(n[1]), n[2], n[3], tats, a), nil
}

// Close implements Pacer; the client belongs to the caller.
func (r *PaceRedis) Close() error { return nil }

// OpenPacer returns the pacer the store options name: in memory without
// Redis, else PaceRedis on a client of its own behind PaceResilient
// (local pacing at 1/replicas while Redis is unreachable), and its closer.
func OpenPacer(o OpenOptions, replicas func() int64) (Pacer, func() error, error) {
	if !o.Shared() {
		p := NewPaceMemory(nil)
		return p, p.Close, nil
	}
	return onOwnClient(o, func(client redis.UniversalClient, timeout time.Duration) (Pacer, error) {
		r, err := NewPaceRedis(PaceRedisOptions{Client: client, Timeout: timeout})
		if err != nil {
			return nil, err
		}
		return NewPaceResilient(PaceResilientOptions{Primary: r, Replicas: replicas})
	})
}
