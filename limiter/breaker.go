package limiter

import (
	"cmp"
	"sync"
	"time"
)

// BreakerState is where a Resilient store's circuit breaker is.
type BreakerState int

const (
	// BreakerClosed: calls go to the primary.
	BreakerClosed BreakerState = iota
	// BreakerOpen: calls skip the primary and get their failure policy at
	// once, until the open period ends.
	BreakerOpen
	// BreakerHalfOpen: one probe at a time goes to the primary; enough
	// successes in a row close the breaker, one failure opens it again.
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half_open"
	}
	return "closed"
}

// BreakerOptions tune the circuit breaker. The breaker opens on the failure
// rate over a sliding window, never on one slow reply: at least MinFailures
// failures and at least FailureRatio of the calls in Window failed — or
// Consecutive failures with no success between them, so a long healthy
// history does not keep requests waiting on a store that stopped answering —
// and, either way, the store has answered nothing for MinSpan: a burst whose
// calls all time out in the same slow moment (a starved CPU, a cold pool
// dialling) is not an outage if an answer follows within MinSpan.
type BreakerOptions struct {
	// MinSpan is how long the current run of failures (since the last
	// success) must have lasted before the breaker may open.
	MinSpan time.Duration
	// Heartbeats failed in a row open it too (subject to MinSpan): with
	// little traffic the window fills slowly, but a store that misses
	// several heartbeats in a row is down.
	Heartbeats int
	// Consecutive failures in a row open the breaker whatever the window
	// holds.
	Consecutive int
	// Window is the sliding window the rate is measured over (10 buckets).
	Window time.Duration
	// MinFailures is how many failures the window needs before the breaker
	// may open.
	MinFailures int
	// FailureRatio is the share of failed calls in the window that opens it.
	FailureRatio float64
	// OpenFor is how long the breaker stays open before it half-opens.
	OpenFor time.Duration
	// Probes is how many successful probes in a row close it again.
	Probes int
}

// Defaults of BreakerOptions.
const (
	DefaultBreakerWindow       = 10 * time.Second
	DefaultBreakerMinFailures  = 5
	DefaultBreakerFailureRatio = 0.5
	DefaultBreakerProbes       = 2
	DefaultBreakerConsecutive  = 10
	DefaultBreakerMinSpan      = time.Second
	DefaultBreakerHeartbeats   = 3
)

const breakerBuckets = 10

type breaker struct {
	opts     BreakerOptions
	bucket   time.Duration
	now      func() time.Time
	onChange func(from, to BreakerState)

	mu        sync.Mutex
	state     BreakerState
	openUntil time.Time
	probing   bool
	successes int       // consecutive successful probes while half-open
	failed    int       // consecutive failures while closed
	since     time.Time // the first of them
	beats     int       // consecutive failed heartbeats while closed
	buckets   [breakerBuckets]breakerBucket
}

type breakerBucket struct {
	start        int64 // bucket index (unix ns / bucket width)
	calls, fails int
}

func newBreaker(o BreakerOptions, now func() time.Time, onChange func(from, to BreakerState)) *breaker {
	o.Window = cmp.Or(o.Window, DefaultBreakerWindow)
	o.MinFailures = cmp.Or(o.MinFailures, DefaultBreakerMinFailures)
	o.FailureRatio = cmp.Or(o.FailureRatio, DefaultBreakerFailureRatio)
	o.OpenFor = cmp.Or(o.OpenFor, DefaultProbeInterval)
	o.Probes = cmp.Or(o.Probes, DefaultBreakerProbes)
	o.Consecutive = cmp.Or(o.Consecutive, DefaultBreakerConsecutive)
	o.Heartbeats = cmp.Or(o.Heartbeats, DefaultBreakerHeartbeats)
	if o.MinSpan == 0 {
		o.MinSpan = DefaultBreakerMinSpan
	}
	if now == nil {
		now = time.Now
	}
	return &breaker{opts: o, bucket: max(o.Window/breakerBuckets, time.Millisecond), now: now, onChange: onChange}
}

// State reports the breaker's state.
func (b *breaker) State() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// allow reports whether a call may go to the primary. While half-open one
// call at a time is let through as the probe; it must report back with
// success or failure.
func (b *breaker) allow() (ok, probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerClosed:
		return true, false
	case BreakerOpen:
		if b.now().Before(b.openUntil) {
			return false, false
		}
		b.set(BreakerHalfOpen)
		b.successes = 0
	}
	if b.probing {
		return false, false
	}
	b.probing = true
	return true, true
}

// success records a call that the primary answered.
func (b *breaker) success(probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.state == BreakerClosed:
		b.failed, b.beats = 0, 0
		b.record(false)
	case probe:
		b.probing = false
		b.successes++
		if b.successes >= b.opts.Probes {
			b.buckets, b.failed = [breakerBuckets]breakerBucket{}, 0
			b.set(BreakerClosed)
		}
	}
}

// failure records a call the primary did not answer.
func (b *breaker) failure(probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.state == BreakerClosed:
		if b.failed == 0 {
			b.since = b.now()
		}
		b.failed++
		calls, fails := b.record(true)
		rate := fails >= b.opts.MinFailures && float64(fails) >= b.opts.FailureRatio*float64(calls)
		if (rate || b.failed >= b.opts.Consecutive) && b.now().Sub(b.since) >= b.opts.MinSpan {
			b.trip()
		}
	case probe || b.state == BreakerHalfOpen:
		b.probing = false
		b.trip()
	}
}

// heartbeatFailed records a failed heartbeat: a failure that also counts
// toward Heartbeats in a row.
func (b *breaker) heartbeatFailed(probe bool) {
	b.mu.Lock()
	if b.state == BreakerClosed {
		b.beats++
		if b.beats >= b.opts.Heartbeats && b.failed > 0 && b.now().Sub(b.since) >= b.opts.MinSpan {
			b.trip()
			b.mu.Unlock()
			return
		}
	}
	b.mu.Unlock()
	b.failure(probe)
}

// release gives back a probe that ended without telling anything about the
// store (the caller gave up).
func (b *breaker) release(probe bool) {
	if !probe {
		return
	}
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

func (b *breaker) trip() {
	b.openUntil = b.now().Add(b.opts.OpenFor)
	b.successes, b.failed, b.beats = 0, 0, 0
	b.set(BreakerOpen)
}

func (b *breaker) set(s BreakerState) {
	if b.state == s {
		return
	}
	from := b.state
	b.state = s
	if b.onChange != nil {
		b.onChange(from, s)
	}
}

// record adds one call to the window and returns the window's totals.
func (b *breaker) record(failed bool) (calls, fails int) {
	idx := b.now().UnixNano() / int64(b.bucket)
	bk := &b.buckets[idx%breakerBuckets]
	if bk.start != idx {
		*bk = breakerBucket{start: idx}
	}
	bk.calls++
	if failed {
		bk.fails++
	}
	for i := range b.buckets {
		if c := &b.buckets[i]; idx-c.start < breakerBuckets {
			calls += c.calls
			fails += c.fails
		}
	}
	return calls, fails
}
