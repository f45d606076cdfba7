package gate

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// The upstream view: what the provider says about its own limits, per
// upstream. An upstream is the provider host plus a fingerprint of the
// credential the request carries when the processor sees one (the
// provider's limits are per key or per organisation behind it), else the
// route's policy (the credential is added by Envoy after the processor,
// and every request on the route shares it). The credential itself is never
// kept: only policy.Fingerprint of it.

// DeniedUpstreamCooldown is the x-tokenwarden-denied value of a request
// refused locally because its upstream is in a cool-down the provider asked
// for.
const DeniedUpstreamCooldown = "upstream/cooldown"

// credentialHeaders are where the providers' SDKs put the key, in the order
// looked at: Anthropic's x-api-key, OpenAI's authorization, Azure's
// api-key, Gemini's x-goog-api-key.
var credentialHeaders = [...]string{"x-api-key", "authorization", "api-key", "x-goog-api-key"}

// knownHosts are the metric labels an upstream host may have; any other
// host is "other", so a client choosing :authority cannot grow a series.
var knownHosts = map[string]bool{
	"api.anthropic.com":                 true,
	"api.openai.com":                    true,
	"generativelanguage.googleapis.com": true,
}

// upstreamState is the Exchange's part of the upstream view.
type upstreamState struct {
	id   string // host#credential-fingerprint or host@policy
	host string // the metric label: a known host, else "other"
	name string // the host itself (upstreams.hosts: keys)
}

// UpstreamObserver is implemented by an Observer that records the upstream
// view (package observe's Metrics); the gate asks for it once, so an
// Observer without it records nothing of the view.
type UpstreamObserver interface {
	// ProviderRemaining records the fraction left of a provider window
	// (requests, tokens, input_tokens, output_tokens) on a host.
	ProviderRemaining(host, window string, fraction float64)
	// UpstreamCooldown records a provider's 429/529 that put a host's
	// upstream into cool-down for wait.
	UpstreamCooldown(host string, status int, wait time.Duration)
	// CooldownDenied records a request answered locally because its
	// upstream was cooling down.
	CooldownDenied(host string)
}

// upstreamRequest names the request's upstream from its headers.
func (x *Exchange) upstreamRequest(h Headers, routePolicy string) {
	host, _ := h.Get(":authority")
	host = strings.ToLower(host)
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	x.up.host, x.up.name = host, host
	if !knownHosts[host] {
		x.up.host = policy.OtherLabel
	}
	for _, name := range credentialHeaders {
		if v, ok := h.Get(name); ok && strings.TrimSpace(v) != "" {
			x.up.id = host + "#" + policy.Fingerprint(v)
			return
		}
	}
	x.up.id = host + "@" + routePolicy
}

// upstreamGate refuses a request whose upstream is cooling down, before it
// costs the provider a request: a 429 in the request's dialect with the
// cool-down's remaining wait. The SDKs retry it (x-should-retry: true)
// after retry-after-ms, which is when the provider expects them.
func (x *Exchange) upstreamGate() *Reply {
	if x.g.upstreams == nil || x.up.id == "" {
		return nil
	}
	now := x.g.opts.Now()
	until := x.g.upstreams.CooldownUntil(x.up.id, now)
	if until.IsZero() {
		return nil
	}
	wait := until.Sub(now)
	if o, ok := x.g.obs.(UpstreamObserver); ok {
		o.CooldownDenied(x.up.host)
	}
	secs := max(int64(math.Ceil(wait.Seconds())), 1)
	return x.upstreamDenial(DeniedUpstreamCooldown, wait,
		"tokenwarden: the provider asked for a pause on this upstream (rate limited or overloaded); retry in "+strconv.FormatInt(secs, 10)+"s")
}

// upstreamDenial is the local 429 of a request held back for its
// upstream's sake (a cool-down, pacing): in the request's dialect, with the
// real wait in retry-after-ms (and retry-after in whole seconds, at least
// 1), x-should-retry: true, and the wait as retryIn.
func (x *Exchange) upstreamDenial(denied string, wait time.Duration, msg string) *Reply {
	wait = max(wait, time.Millisecond)
	x.retryIn = wait
	var h HeaderEdits
	h.set("retry-after", strconv.FormatInt(max(int64(math.Ceil(wait.Seconds())), 1), 10))
	h.set("retry-after-ms", strconv.FormatInt(max(wait.Milliseconds(), 1), 10))
	h.set("x-should-retry", "true")
	h.set(contract.DeniedHeader, denied)
	x.decisionTag = "denied_" + strings.ReplaceAll(denied, "/", "_")
	x.g.obs.Admission(x.cfg.TenantLabel(x.tenant), x.decisionTag)
	return x.reject(429, wire.ErrorRateLimited, denied, msg, ResultDenied, &h)
}

// upstreamResponse reads what the provider's answer says about its
// limits: the remaining fractions for the gauges, and for a 429 or 529 the
// cool-down every replica then applies — retry-after, else for a 429 the
// reset of an exhausted window. Nothing here waits for the shared store.
func (x *Exchange) upstreamResponse(h Headers) {
	x.paceRelease()
	if x.g.upstreams == nil || x.up.id == "" {
		return
	}
	lr, ok := x.dialect.(dialect.LimitReading)
	if !ok {
		return
	}
	now := x.g.opts.Now()
	l := lr.ProviderLimits(h.Get, now)
	x.paceReading(l, now)
	obs, _ := x.g.obs.(UpstreamObserver)
	if obs != nil {
		for _, w := range [...]struct {
			name string
			w    wire.LimitWindow
		}{{"requests", l.Requests}, {"tokens", l.Tokens}, {"input_tokens", l.InputTokens}, {"output_tokens", l.OutputTokens}} {
			if w.w.Known {
				obs.ProviderRemaining(x.up.host, w.name, w.w.Fraction())
			}
		}
	}
	if x.status != 429 && x.status != 529 {
		return
	}
	wait := l.RetryAfter
	if wait == 0 && x.status == 429 {
		if _, w, ok := l.Lowest(); ok && w.Remaining == 0 {
			wait = w.Reset.Sub(now)
		}
	}
	if wait <= 0 {
		return
	}
	// The provider's answer waits for this one write (bounded by the
	// view's timeout; only a cool-down that extends what this replica knew
	// is written), so that the other replicas hold it before this client
	// can even retry.
	ctx, cancel := x.g.detached(x.ctx)
	defer cancel()
	if err := x.g.upstreams.Cooldown(ctx, x.up.id, now.Add(wait)); err != nil {
		if n, ok := x.g.cooldownLog.Allow(time.Now()); ok {
			x.g.log.Warn("a provider cool-down holds on this replica only", "err", err, "suppressed_since_last", n)
		}
	}
	if obs != nil {
		obs.UpstreamCooldown(x.up.host, x.status, wait)
	}
}
