package gate

import (
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// Pacing from the provider's own budget. Each replica keeps, per upstream,
// the last reading of the provider's limits (limit, remaining, reset per
// window) and what it has forwarded that no answer has reflected yet. While
// every window has plenty left, requests go unpaced and cost nothing more
// than before. When a window's remaining (less this replica's unreflected
// requests times the replicas) falls under upstreams.pacing.engage_below of
// its limit, the upstream is paced: each request asks the shared schedule
// (limiter.Pacer: a GCRA at headroom × the provider's limit per window) and
// waits its turn — today as a local 429 with the exact retry. Pacing stops
// only when every window is back above release_above and the schedule has
// caught up (the paced requests no longer wait), so a crowd held back by
// pacing cannot stampede the provider the moment it stops.

// DeniedUpstreamPaced is the x-tokenwarden-denied value of a request
// refused because its upstream is paced and its turn has not come.
const DeniedUpstreamPaced = "upstream/paced"

// releaseSlack is how much of the schedule's burst must be unused before
// pacing may stop: below it, requests are still waiting on the pace.
const releaseSlack = 0.5

// PacingObserver is implemented by an Observer that records pacing
// (package observe's Metrics).
type PacingObserver interface {
	// PacingEngaged records how many upstreams of a host this replica paces.
	PacingEngaged(host string, upstreams int)
	// PacingRate records the rate a host's last engaged upstream is paced
	// at, per window (requests, tokens, ...), in units per second; 0 when
	// none of the host's upstreams is paced.
	PacingRate(host, window string, perSecond float64)
	// PacedDenied records a request refused to wait for its turn.
	PacedDenied(host string)
}

// paceEntry is one upstream's pacing state on this replica.
type paceEntry struct {
	host string // the metric label
	// The provider's last reading, by limiter.Pace* dimension.
	limit, remaining [limiter.PaceDims]int64
	reset            [limiter.PaceDims]time.Time
	seen             [limiter.PaceDims]bool
	readAt           time.Time // zero: no reading yet (only declared limits)
	declared         policy.UpstreamHost
	// inflight is what this replica forwarded that no answer reflects yet.
	inflight [limiter.PaceDims]int64
	engaged  bool
	slack    float64   // of the last paced decision ...
	slackAt  time.Time // ... made then
}

// paceTable holds every upstream's entry, bounded like the cool-downs.
type paceTable struct {
	mu      sync.Mutex
	m       map[string]*paceEntry
	engaged map[string]int // engaged upstreams per host label
	full    Sampler        // upstreams left unpaced because the table was full
	log     *slog.Logger
}

func newPaceTable(log *slog.Logger) *paceTable {
	return &paceTable{m: map[string]*paceEntry{}, engaged: map[string]int{}, log: log}
}

// entry returns id's entry, made when create is set (a reading arrived, or
// the host has declared limits); nil when there is none and no room.
func (t *paceTable) entry(id, host string, declared policy.UpstreamHost, now time.Time, create bool) *paceEntry {
	e := t.m[id]
	if e != nil || !create {
		return e
	}
	if len(t.m) >= limiter.MaxUpstreams {
		for k, v := range t.m {
			if v.idle(now) {
				delete(t.m, k)
			}
		}
		if len(t.m) >= limiter.MaxUpstreams {
			if n, ok := t.full.Allow(time.Now()); ok {
				t.log.Warn("pacing keeps no more upstreams; this one goes unpaced", "max", limiter.MaxUpstreams, "suppressed_since_last", n)
			}
			return nil
		}
	}
	e = &paceEntry{host: host, declared: declared, slack: 1}
	t.m[id] = e
	return e
}

// idle reports an entry whose dropping loses nothing: not paced, nothing
// in flight, every reading past its reset.
func (e *paceEntry) idle(now time.Time) bool {
	if e.engaged || e.inflight != [limiter.PaceDims]int64{} {
		return false
	}
	for d := range e.reset {
		if e.seen[d] && now.Before(e.reset[d]) {
			return false
		}
	}
	return true
}

// paceState is the Exchange's part of pacing.
type paceState struct {
	e *paceEntry
	// cost is what the request adds to its upstream's windows while it is
	// unreflected; counted is set while it is in inflight.
	cost    [limiter.PaceDims]int64
	counted bool
}

// paceCost is what the request counts against each provider window: one
// request; its estimate of input and output together (what OpenAI's TPM
// and Anthropic's combined tokens count); its uncached input (Anthropic's
// ITPM: cache reads do not count); its output bound (OTPM, which Anthropic
// estimates from max_tokens).
func (x *Exchange) paceCost() [limiter.PaceDims]int64 {
	e := x.estimate
	return [limiter.PaceDims]int64{
		limiter.PaceRequests:     1,
		limiter.PaceTokens:       min(e.RateLimitedTokens(), limiter.MaxTokens),
		limiter.PaceInputTokens:  min(e.InputTokens+e.CacheWriteTokens(), limiter.MaxTokens),
		limiter.PaceOutputTokens: min(e.OutputTokens, limiter.MaxTokens),
	}
}

// replicas is how many replicas send to an upstream: the configured floor,
// or the live replicas the store counts.
func (x *Exchange) replicas() int64 { return x.g.replicas(x.cfg) }

// replicas is how many replicas send to an upstream under cfg.
func (g *Gate) replicas(cfg *policy.Config) int64 {
	n := int64(max(cfg.Store.Replicas, 1))
	if g.opts.Replicas != nil {
		n = max(n, g.opts.Replicas())
	}
	return n
}

// paceGate paces the request's upstream when its provider is near its
// limit; nil lets the request go on.
func (x *Exchange) paceGate() *Reply {
	pc := x.cfg.Upstreams.Pacing
	if !pc.Enabled || x.up.id == "" || x.g.pacer == nil {
		return nil
	}
	g := x.g
	now := g.opts.Now()
	cost := x.paceCost()
	declared := x.cfg.Upstreams.Host(x.up.name)
	g.paces.mu.Lock()
	e := g.paces.entry(x.up.id, x.up.host, declared, now, declared.Declared())
	if e == nil {
		g.paces.mu.Unlock()
		return nil // nothing known yet: the first answer teaches the limits
	}
	e.declared = declared // a reload may have changed it
	req, engaged, changed := g.paces.assess(e, now, x.replicas(), pc)
	g.paces.mu.Unlock()
	if changed {
		x.pacingChanged(e, req, engaged)
	}
	if !engaged {
		x.paceForward(e, cost)
		return nil
	}
	req.Upstream, req.Cost, req.Groups = x.up.id, cost, x.paceGroups()
	start := time.Now()
	d, err := g.pacer.Pace(x.ctx, req)
	g.obs.StoreCall("pace", time.Since(start), err)
	if err != nil {
		// A pacer that cannot answer (a shared store down behind
		// PaceResilient answers locally instead) does not hold the request:
		// the provider's own 429s and the cool-downs still protect it.
		if n, ok := g.paceLog.Allow(time.Now()); ok {
			g.log.Warn("pacing could not decide; the request goes unpaced", "err", err, "suppressed_since_last", n)
		}
		x.paceForward(e, cost)
		return nil
	}
	g.paces.mu.Lock()
	e.slack, e.slackAt = d.Slack, now
	if !d.Allowed {
		// Held back, by the whole schedule or a lower lane's share of it:
		// a crowd waits on the pace, and releasing it now would send the
		// crowd to the provider at once. A lane's share is reserved, so a
		// lower lane held at its share keeps pacing on even while the
		// schedule itself has room (README "Pacing").
		e.slack = 0
	}
	g.paces.mu.Unlock()
	if !d.Allowed {
		return x.paced(d.RetryAfter, d.Denied, d.DeniedGroup)
	}
	x.paceForward(e, cost)
	return nil
}

// assess decides whether e is paced now, and at what rate; changed
// reports an engagement or release. Called with the table locked.
func (t *paceTable) assess(e *paceEntry, now time.Time, replicas int64, pc policy.Pacing) (req limiter.PaceRequest, engaged, changed bool) {
	window := e.declared.Window
	low, high := false, true
	for d := range limiter.PaceDims {
		limit, rem := e.declared.Limits[d], int64(-1)
		if !e.readAt.IsZero() {
			if !e.seen[d] {
				continue // not a window this provider reports
			}
			limit, rem = e.limit[d], e.remaining[d]
			if !now.Before(e.reset[d]) {
				rem = limit // a reading older than its reset is void: full again
			}
		}
		if limit <= 0 {
			continue
		}
		rate := max(int64(float64(limit)*pc.Headroom), 1)
		req.Limits[d] = limiter.PaceLimit{Rate: rate, Period: window, Burst: max(int64(float64(rate)*pc.Burst), 1)}
		if rem < 0 {
			low, high = true, false // declared only: nothing seen yet, so paced from the start
			continue
		}
		pressure := float64(rem - e.inflight[d]*replicas)
		if pressure < pc.EngageBelow*float64(limit) {
			low = true
		}
		if pressure < pc.ReleaseAbove*float64(limit) {
			high = false
		}
	}
	was := e.engaged
	slack := e.slack
	if now.Sub(e.slackAt) >= window {
		slack = 1 // no paced request for a whole window: the schedule has caught up
	}
	switch {
	case !e.engaged && low:
		e.engaged = true
	case e.engaged && high && slack >= releaseSlack:
		e.engaged = false
	}
	if e.engaged != was {
		if e.engaged {
			t.engaged[e.host]++
			e.slack, e.slackAt = 0, now
		} else {
			t.engaged[e.host]--
		}
	}
	return req, e.engaged, e.engaged != was
}

// pacingChanged records an engagement or a release.
func (x *Exchange) pacingChanged(e *paceEntry, req limiter.PaceRequest, engaged bool) {
	x.g.pacingChanged(e, x.up.name, req, engaged)
}

// ReleaseIdlePacing releases every paced upstream that nothing has asked
// of for a whole window, with nothing in flight to it and the provider's
// last readings showing room (or void, past their reset): pacing is
// otherwise released only by a request, so an upstream that went idle
// while paced would read as paced — on the dashboard, in the engaged
// gauge — for as long as it stays idle. serve calls it every few seconds.
// An upstream paced from declared limits alone (no reading yet) stays
// paced, as a request would find it.
func (g *Gate) ReleaseIdlePacing() {
	if g.pacer == nil {
		return
	}
	cfg := g.opts.Config.Load()
	now := g.opts.Now()
	replicas := g.replicas(cfg)
	type release struct {
		e   *paceEntry
		req limiter.PaceRequest
	}
	var released []release
	g.paces.mu.Lock()
	for _, e := range g.paces.m {
		if !e.engaged || e.inflight != [limiter.PaceDims]int64{} || now.Sub(e.slackAt) < e.declared.Window {
			continue
		}
		if req, engaged, changed := g.paces.assess(e, now, replicas, cfg.Upstreams.Pacing); changed && !engaged {
			released = append(released, release{e, req})
		}
	}
	g.paces.mu.Unlock()
	for _, r := range released {
		g.pacingChanged(r.e, r.e.host, r.req, false)
	}
}

// pacingChanged records an engagement or a release of an upstream of the
// host named name.
func (g *Gate) pacingChanged(e *paceEntry, name string, req limiter.PaceRequest, engaged bool) {
	g.paces.mu.Lock()
	n := g.paces.engaged[e.host]
	g.paces.mu.Unlock()
	o, ok := g.obs.(PacingObserver)
	if ok {
		o.PacingEngaged(e.host, n)
	}
	for d, l := range req.Limits {
		rate := 0.0
		if engaged && l.Rate > 0 {
			rate = float64(l.Rate) / l.Period.Seconds()
		}
		if ok && (engaged || n == 0) {
			o.PacingRate(e.host, limiter.PaceDimNames[d], rate)
		}
	}
	if engaged {
		g.log.Info("pacing an upstream: the provider is near its limit", "host", name, "requests_per_window", req.Limits[limiter.PaceRequests].Rate,
			"tokens_per_window", req.Limits[limiter.PaceTokens].Rate, "window", req.Limits[limiter.PaceRequests].Period)
	} else {
		g.log.Info("pacing released: the provider has room again", "host", name)
	}
}

// paceForward counts the request as in flight to its upstream until an
// answer reflects it.
func (x *Exchange) paceForward(e *paceEntry, cost [limiter.PaceDims]int64) {
	x.g.paces.mu.Lock()
	for d := range cost {
		e.inflight[d] += cost[d]
	}
	x.g.paces.mu.Unlock()
	x.pace = paceState{e: e, cost: cost, counted: true}
}

// paceRelease ends the request's in-flight count: its answer arrived (the
// provider's reading now reflects it), or it never reached the provider.
func (x *Exchange) paceRelease() {
	if !x.pace.counted {
		return
	}
	x.pace.counted = false
	x.g.paces.mu.Lock()
	for d, c := range x.pace.cost {
		x.pace.e.inflight[d] = max(x.pace.e.inflight[d]-c, 0)
	}
	x.g.paces.mu.Unlock()
}

// paceReading keeps what the provider's answer says of its limits.
func (x *Exchange) paceReading(l wire.ProviderLimits, now time.Time) {
	x.paceRelease()
	if !l.Any() || x.g.pacer == nil {
		return
	}
	g := x.g
	g.paces.mu.Lock()
	defer g.paces.mu.Unlock()
	e := g.paces.entry(x.up.id, x.up.host, x.cfg.Upstreams.Host(x.up.name), now, true)
	if e == nil {
		return
	}
	for d, w := range [limiter.PaceDims]wire.LimitWindow{l.Requests, l.Tokens, l.InputTokens, l.OutputTokens} {
		if !w.Known || w.Limit <= 0 {
			continue
		}
		rem, reset := w.Remaining, w.Reset
		if e.seen[d] && e.limit[d] == w.Limit && now.Before(e.reset[d]) {
			// Answers arrive out of order: one that left the provider
			// before the reading held, answered later, shows more left than
			// there is, while the requests it missed are no longer counted
			// in flight. What the provider can have now is at most the
			// held reading plus its refill since (limit per window).
			refill := float64(w.Limit) * float64(now.Sub(e.readAt)) / float64(e.declared.Window)
			rem = min(rem, e.remaining[d]+int64(refill))
			reset = later(reset, e.reset[d])
		}
		e.limit[d], e.remaining[d], e.reset[d], e.seen[d] = w.Limit, rem, reset, true
	}
	e.readAt = now
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// paced is the local answer to a request whose turn has not come: a 429
// in its dialect with the real wait, which the SDKs honour (x-should-retry:
// true, retry-after-ms first).
// A denial by a lane group names the group and its share.
func (x *Exchange) paced(wait time.Duration, dim int, group string) *Reply {
	if o, ok := x.g.obs.(PacingObserver); ok {
		o.PacedDenied(x.up.host)
	}
	window := "requests"
	if dim >= 0 && dim < limiter.PaceDims {
		window = limiter.PaceDimNames[dim]
	}
	what := "its " + window + " per window"
	if group != "" {
		what = "the lanes at or below " + group + " get " + strconv.FormatFloat(math.Round(1000*x.laneShare(group))/10, 'f', -1, 64) + "% of its " + window + " per window"
	}
	return x.upstreamDenial(DeniedUpstreamPaced, wait, "tokenwarden: the provider is near its rate limit and this upstream is paced ("+
		what+"); retry in "+strconv.FormatInt(max(wait.Milliseconds(), 1), 10)+"ms")
}
