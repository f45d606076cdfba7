package limiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
)

// Pacing: a GCRA per provider upstream that spaces the requests sent to it
// at a rate the provider's own limits allow, so that steady overload is
// slowed here instead of reaching the provider as 429s. The gate decides
// when an upstream is paced (its provider reports little left) and at what
// rate (the provider's limit over its window, less headroom); a Pacer only
// keeps the schedule, shared by every replica (PaceRedis) or by one
// (PaceMemory). Like admission, a denied Pace writes nothing.

// The dimensions an upstream is paced on, in the order a denial names the
// first: what the providers limit and report (requests; tokens, input and
// output together; Anthropic's input and output tokens apart).
const (
	PaceRequests = iota
	PaceTokens
	PaceInputTokens
	PaceOutputTokens
	PaceDims
)

// PaceDimNames are the dimensions' names, as metrics and denials show them.
var PaceDimNames = [PaceDims]string{"requests", "tokens", "input_tokens", "output_tokens"}

// MaxPacePeriod bounds a paced window: providers report per-minute limits,
// and a longer period would let a microsecond product pass 2^53 in Lua.
const MaxPacePeriod = time.Hour

// PaceLimit is one paced dimension: Rate units per Period, Burst of them at
// once. A zero Rate leaves the dimension unpaced.
type PaceLimit struct {
	Rate   int64
	Period time.Duration // zero means one minute
	// Burst is how many units may go at once (at least one). A request
	// costing more than Burst goes when the schedule is fully caught up.
	Burst int64
}

// PaceRequest asks whether one request may go to an upstream now.
type PaceRequest struct {
	// Upstream is the opaque upstream id (host#fingerprint, host@policy).
	Upstream string
	Limits   [PaceDims]PaceLimit
	// Cost is the request's units per dimension (1 request, its token
	// estimate).
	Cost [PaceDims]int64
}

// PaceDecision is the answer to Pace.
type PaceDecision struct {
	Allowed bool
	// Denied is the first dimension that refused (-1 when allowed).
	Denied int
	// RetryAfter is when the request conforms on every dimension; zero
	// when allowed.
	RetryAfter time.Duration
	// Slack is the least fraction of any paced dimension's burst left
	// unused after the decision: 1 when the schedule is caught up (pacing
	// limits nothing), 0 when requests are waiting on it.
	Slack float64
	// Degraded is set when PaceResilient decided locally (the shared store
	// unreachable), at the rate divided by the replicas.
	Degraded bool
}

// Pacer keeps the upstreams' schedules.
type Pacer interface {
	Pace(ctx context.Context, req PaceRequest) (PaceDecision, error)
	Close() error
}

// paceArgs are a request in store units: per dimension the µs its cost
// pushes the schedule (inc) and the µs of burst tolerated (tol); tol 0
// marks an unpaced dimension.
type paceArgs struct {
	inc, tol [PaceDims]int64
}

// paced reports whether any dimension is paced.
func (a paceArgs) paced() bool { return a.tol != [PaceDims]int64{} }

func validatePace(req PaceRequest) (paceArgs, error) {
	var a paceArgs
	if req.Upstream == "" || len(req.Upstream) > maxUpstreamID || strings.ContainsAny(req.Upstream, " \r\n{}") {
		return a, fmt.Errorf("%w: upstream id %q", ErrInvalid, req.Upstream)
	}
	for d, l := range req.Limits {
		if l.Rate == 0 {
			continue
		}
		period := l.Period
		if period == 0 {
			period = time.Minute
		}
		c := req.Cost[d]
		if l.Rate < 0 || l.Rate > MaxTokens || l.Burst < 0 || l.Burst > MaxTokens || c < 0 || c > MaxTokens ||
			period < time.Millisecond || period > MaxPacePeriod {
			return a, fmt.Errorf("%w: pace %s: rate %d per %s, burst %d, cost %d", ErrInvalid, PaceDimNames[d], l.Rate, period, l.Burst, c)
		}
		// The same double arithmetic as lua/pace.lua, so both stores agree
		// to the microsecond.
		us := float64(period.Microseconds())
		a.inc[d] = int64(math.Floor(float64(c) * us / float64(l.Rate)))
		a.tol[d] = max(int64(math.Floor(float64(max(l.Burst, 1))*us/float64(l.Rate))), a.inc[d], 1)
	}
	return a, nil
}

// paceDecide is the GCRA step both stores take: tats are the schedules
// (theoretical arrival times, µs), returned advanced when allowed.
func paceDecide(now int64, tats [PaceDims]int64, a paceArgs) (allowed bool, denied int, retry int64, out [PaceDims]int64) {
	denied = -1
	out = tats
	var next [PaceDims]int64
	for d := range PaceDims {
		if a.tol[d] == 0 {
			continue
		}
		next[d] = max(tats[d], now) + a.inc[d]
		if w := next[d] - a.tol[d] - now; w > 0 {
			if denied < 0 {
				denied = d
			}
			retry = max(retry, w)
		}
	}
	if denied >= 0 {
		return false, denied, retry, out
	}
	for d := range PaceDims {
		if a.tol[d] > 0 {
			out[d] = next[d]
		}
	}
	return true, -1, 0, out
}

// paceSlack is the least unused fraction of burst over the paced dimensions.
func paceSlack(now int64, tats [PaceDims]int64, a paceArgs) float64 {
	s := 1.0
	for d := range PaceDims {
		if a.tol[d] == 0 {
			continue
		}
		used := float64(max(tats[d]-now, 0)) / float64(a.tol[d])
		s = min(s, max(1-used, 0))
	}
	return s
}

func paceDecision(allowed bool, denied int, retry int64, now int64, tats [PaceDims]int64, a paceArgs) PaceDecision {
	return PaceDecision{Allowed: allowed, Denied: denied, RetryAfter: micros(retry), Slack: paceSlack(now, tats, a)}
}

// MaxPacedUpstreams bounds PaceMemory's table; schedules that have caught
// up are dropped first, and past the bound a new upstream is not paced
// (allowed, counted in Refused).
const MaxPacedUpstreams = MaxUpstreams

// PaceMemory is the schedule of one replica.
type PaceMemory struct {
	mu      sync.Mutex
	now     func() time.Time
	m       map[string]*[PaceDims]int64
	refused int64
}

// NewPaceMemory returns a local pacer; now nil means time.Now.
func NewPaceMemory(now func() time.Time) *PaceMemory {
	if now == nil {
		now = time.Now
	}
	return &PaceMemory{now: now, m: map[string]*[PaceDims]int64{}}
}

// Pace implements Pacer.
func (p *PaceMemory) Pace(_ context.Context, req PaceRequest) (PaceDecision, error) {
	a, err := validatePace(req)
	if err != nil {
		return PaceDecision{}, err
	}
	if !a.paced() {
		return PaceDecision{Allowed: true, Denied: -1, Slack: 1}, nil
	}
	now := unixMicros(p.now())
	p.mu.Lock()
	defer p.mu.Unlock()
	cur, ok := p.m[req.Upstream]
	var tats [PaceDims]int64
	if ok {
		tats = *cur
	}
	allowed, denied, retry, out := paceDecide(now, tats, a)
	if allowed {
		if !ok {
			if !p.room(now) {
				p.refused++
				return PaceDecision{Allowed: true, Denied: -1, Slack: 1}, nil
			}
			cur = new([PaceDims]int64)
			p.m[req.Upstream] = cur
		}
		*cur = out
	}
	return paceDecision(allowed, denied, retry, now, out, a), nil
}

// room makes a place for one more schedule, dropping those caught up.
func (p *PaceMemory) room(now int64) bool {
	if len(p.m) < MaxPacedUpstreams {
		return true
	}
	for k, v := range p.m {
		if slices4Max(v) <= now {
			delete(p.m, k)
		}
	}
	return len(p.m) < MaxPacedUpstreams
}

func slices4Max(v *[PaceDims]int64) int64 {
	m := v[0]
	for _, x := range v[1:] {
		m = max(m, x)
	}
	return m
}

// Refused counts upstreams not paced because the table was full.
func (p *PaceMemory) Refused() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// Close implements Pacer.
func (p *PaceMemory) Close() error { return nil }

// PaceResilientOptions configure a PaceResilient.
type PaceResilientOptions struct {
	Primary Pacer // the shared pacer (PaceRedis); required
	// Local decides while Primary is unreachable; nil means a new PaceMemory.
	Local *PaceMemory
	// Replicas is how many replicas share the upstreams (Resilient.Replicas:
	// the configured floor or the live heartbeats); nil means 1.
	Replicas func() int64
}

// PaceResilient paces on the shared store and, while it is unreachable,
// on this replica's own schedule at 1/replicas of every rate (the same
// division local failure mode applies to the limits): the provider is
// still protected, and no request waits for a store that is down.
type PaceResilient struct {
	o PaceResilientOptions
}

// NewPaceResilient returns a PaceResilient.
func NewPaceResilient(o PaceResilientOptions) (*PaceResilient, error) {
	if o.Primary == nil {
		return nil, errors.New("limiter: PaceResilientOptions.Primary is required")
	}
	if o.Local == nil {
		o.Local = NewPaceMemory(nil)
	}
	if o.Replicas == nil {
		o.Replicas = func() int64 { return 1 }
	}
	return &PaceResilient{o: o}, nil
}

// Pace implements Pacer.
func (p *PaceResilient) Pace(ctx context.Context, req PaceRequest) (PaceDecision, error) {
	d, err := p.o.Primary.Pace(ctx, req)
	if err == nil || !errors.Is(err, ErrUnavailable) {
		return d, err
	}
	n := max(p.o.Replicas(), 1)
	for i := range req.Limits {
		if req.Limits[i].Rate > 0 {
			req.Limits[i].Rate = max(req.Limits[i].Rate/n, 1)
			req.Limits[i].Burst = max(req.Limits[i].Burst/n, 1)
		}
	}
	d, err = p.o.Local.Pace(ctx, req)
	d.Degraded = true
	return d, err
}

// Close implements Pacer; the primary belongs to its opener.
func (p *PaceResilient) Close() error { return nil }
