package limiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
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
	// Groups are the lane groups the request belongs to below the whole
	// schedule: each keeps a schedule of its own within the upstream's, at
	// Share of every paced rate and burst, and the request goes only if it
	// fits the whole schedule and every group, or writes nothing.
	Groups []PaceGroup
}

// PaceGroup is one lane group's part of an upstream's schedule.
type PaceGroup struct {
	// Name names the group's schedule (the lane heading it): 1-64 letters,
	// digits, '.', '_' or '-'. Requests naming the same group of the same
	// upstream share its schedule.
	Name string
	// Share of every paced rate and burst, in (0, 1].
	Share float64
}

// MaxPaceGroups bounds a request's groups: a policy has at most 8 lanes,
// and the top one's group is the whole schedule.
const MaxPaceGroups = 8

// PaceDecision is the answer to Pace.
type PaceDecision struct {
	Allowed bool
	// Denied is the first dimension that refused (-1 when allowed).
	Denied int
	// DeniedGroup is the group that refused first, "" when it was the whole
	// schedule (or the request was allowed).
	DeniedGroup string
	// RetryAfter is when the request conforms on every dimension of every
	// group; zero when allowed.
	RetryAfter time.Duration
	// Slack is the least fraction of any paced dimension's burst left
	// unused after the decision: 1 when the schedule is caught up (pacing
	// limits nothing), 0 when requests are waiting on it. Only the whole
	// schedule counts: a lane held to its group's share while the whole
	// schedule has room is not what pacing protects the provider from.
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

// paceSlot is one schedule a request must fit, in store units: the hash
// field holding its theoretical arrival time ("<dim>" for the whole
// schedule, "<dim>~<group>" for a group's), the µs its cost pushes the
// schedule (inc) and the µs of burst tolerated (tol, at least 1).
type paceSlot struct {
	field    string
	dim      int
	group    string
	inc, tol int64
}

// paceArgs are a request's slots: the whole schedule's paced dimensions
// first, then each group's.
type paceArgs struct {
	slots []paceSlot
}

// paced reports whether any dimension is paced.
func (a paceArgs) paced() bool { return len(a.slots) > 0 }

// ShareOf is a limit's share for a lane group: rounded down, at least 1 so
// that a small limit never becomes unlimited (0); 0 stays unlimited. The
// lanes' shares of the caller's limits and of an upstream's pace both use
// it.
func ShareOf(limit int64, share float64) int64 {
	if limit <= 0 {
		return 0
	}
	return max(1, int64(math.Floor(float64(limit)*share+1e-9)))
}

// paceUnits turns a cost against rate per period, burst at once, into the
// µs the schedule moves and the µs tolerated. Both stores take these from
// here (lua/pace.lua only adds and compares), so they agree to the
// microsecond.
func paceUnits(cost, rate, burst int64, period time.Duration) (inc, tol int64) {
	us := float64(period.Microseconds())
	inc = int64(math.Floor(float64(cost) * us / float64(rate)))
	tol = max(int64(math.Floor(float64(max(burst, 1))*us/float64(rate))), inc, 1)
	return inc, tol
}

func validatePace(req PaceRequest) (paceArgs, error) {
	var a paceArgs
	if req.Upstream == "" || len(req.Upstream) > maxUpstreamID || strings.ContainsAny(req.Upstream, " \r\n{}") {
		return a, fmt.Errorf("%w: upstream id %q", ErrInvalid, req.Upstream)
	}
	if len(req.Groups) > MaxPaceGroups {
		return a, fmt.Errorf("%w: %d pace groups, at most %d", ErrInvalid, len(req.Groups), MaxPaceGroups)
	}
	for i, g := range req.Groups {
		if !validGroupName(g.Name) || !(g.Share > 0 && g.Share <= 1) {
			return a, fmt.Errorf("%w: pace group %q, share %v", ErrInvalid, g.Name, g.Share)
		}
		for _, o := range req.Groups[:i] {
			if o.Name == g.Name {
				return a, fmt.Errorf("%w: pace group %q twice", ErrInvalid, g.Name)
			}
		}
	}
	var periods [PaceDims]time.Duration
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
		periods[d] = period
	}
	a.slots = make([]paceSlot, 0, PaceDims*(1+len(req.Groups)))
	for gi := -1; gi < len(req.Groups); gi++ {
		for d, l := range req.Limits {
			if l.Rate == 0 {
				continue
			}
			s := paceSlot{field: strconv.Itoa(d), dim: d}
			rate, burst := l.Rate, l.Burst
			if gi >= 0 {
				g := req.Groups[gi]
				s.group, s.field = g.Name, s.field+"~"+g.Name
				rate, burst = ShareOf(rate, g.Share), ShareOf(max(burst, 1), g.Share)
			}
			s.inc, s.tol = paceUnits(req.Cost[d], rate, burst, periods[d])
			a.slots = append(a.slots, s)
		}
	}
	return a, nil
}

// validGroupName is a lane name's shape (policy.validName): nothing a hash
// field or a log line could misread.
func validGroupName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// paceDecide is the GCRA step both stores take: tats are the slots'
// schedules (theoretical arrival times, µs), returned advanced when
// allowed; denied is the first slot that refused.
func paceDecide(now int64, tats []int64, a paceArgs) (allowed bool, denied int, retry int64, out []int64) {
	denied = -1
	next := make([]int64, len(a.slots))
	for i, s := range a.slots {
		next[i] = max(tats[i], now) + s.inc
		if w := next[i] - s.tol - now; w > 0 {
			if denied < 0 {
				denied = i
			}
			retry = max(retry, w)
		}
	}
	if denied >= 0 {
		return false, denied, retry, tats
	}
	return true, -1, 0, next
}

// paceSlack is the least unused fraction of burst over the whole
// schedule's slots.
func paceSlack(now int64, tats []int64, a paceArgs) float64 {
	s := 1.0
	for i, sl := range a.slots {
		if sl.group != "" {
			continue
		}
		used := float64(max(tats[i]-now, 0)) / float64(sl.tol)
		s = min(s, max(1-used, 0))
	}
	return s
}

func paceDecision(allowed bool, denied int, retry int64, now int64, tats []int64, a paceArgs) PaceDecision {
	d := PaceDecision{Allowed: allowed, Denied: -1, RetryAfter: micros(retry), Slack: paceSlack(now, tats, a)}
	if denied >= 0 && denied < len(a.slots) {
		d.Denied, d.DeniedGroup = a.slots[denied].dim, a.slots[denied].group
	}
	return d
}

// MaxPacedUpstreams bounds PaceMemory's table; schedules that have caught
// up are dropped first, and past the bound a new upstream is not paced
// (allowed, counted in Refused).
const MaxPacedUpstreams = MaxUpstreams

// PaceMemory is the schedule of one replica: per upstream, the same fields
// PaceRedis keeps in its hash.
type PaceMemory struct {
	mu      sync.Mutex
	now     func() time.Time
	m       map[string]map[string]int64
	refused int64
}

// NewPaceMemory returns a local pacer; now nil means time.Now.
func NewPaceMemory(now func() time.Time) *PaceMemory {
	if now == nil {
		now = time.Now
	}
	return &PaceMemory{now: now, m: map[string]map[string]int64{}}
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
	tats := make([]int64, len(a.slots))
	for i, s := range a.slots {
		tats[i] = cur[s.field]
	}
	allowed, denied, retry, out := paceDecide(now, tats, a)
	if allowed {
		if !ok {
			if !p.room(now) {
				p.refused++
				return PaceDecision{Allowed: true, Denied: -1, Slack: 1}, nil
			}
			cur = make(map[string]int64, len(a.slots))
			p.m[req.Upstream] = cur
		}
		// A caught-up field is the same as none: dropping them keeps an
		// upstream's fields to those of groups still being paced.
		for f, tat := range cur {
			if tat <= now {
				delete(cur, f)
			}
		}
		for i, s := range a.slots {
			cur[s.field] = out[i]
		}
	}
	return paceDecision(allowed, denied, retry, now, out, a), nil
}

// room makes a place for one more schedule, dropping those caught up.
func (p *PaceMemory) room(now int64) bool {
	if len(p.m) < MaxPacedUpstreams {
		return true
	}
	for k, v := range p.m {
		if latest(v) <= now {
			delete(p.m, k)
		}
	}
	return len(p.m) < MaxPacedUpstreams
}

// latest is the last of a schedule's arrival times.
func latest(fields map[string]int64) int64 {
	var m int64
	for _, x := range fields {
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
