package policy

import (
	"fmt"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/limiter"
)

// Upstreams is the top-level upstreams: block: how tokenwarden paces the
// provider upstreams from their own rate-limit headers, and what an
// operator declares about a provider host's limits before any answer has
// reported them.
type Upstreams struct {
	Pacing Pacing
	hosts  map[string]UpstreamHost
}

// Pacing says when an upstream is paced and how fast.
type Pacing struct {
	// Enabled is false only when the operator turned pacing off.
	Enabled bool
	// EngageBelow: pacing starts when what the provider has left of any
	// window it reports (less what this replica has in flight to it, times
	// the replicas) falls under this fraction of the window's limit.
	EngageBelow float64
	// ReleaseAbove: pacing stops only when every window is back above this
	// fraction and the shared schedule has caught up (hysteresis).
	ReleaseAbove float64
	// Headroom is the fraction of the provider's limit the pace lets
	// through, so the provider's own bucket never runs dry.
	Headroom float64
	// Burst is the fraction of a window's paced rate that may go at once.
	Burst float64
}

// UpstreamHost is what is known of a provider host before it says so.
type UpstreamHost struct {
	// Window is the period of the provider's limits (one minute for every
	// limit Anthropic and OpenAI report).
	Window time.Duration
	// Limits are the declared limits per Window, by limiter.Pace*
	// dimension (0: not declared); the provider's headers replace them
	// once an answer carries them.
	Limits [limiter.PaceDims]int64
}

// Declared reports whether any limit is declared.
func (h UpstreamHost) Declared() bool { return h.Limits != [limiter.PaceDims]int64{} }

// Pacing defaults.
const (
	DefaultEngageBelow  = 0.25
	DefaultReleaseAbove = 0.5
	DefaultHeadroom     = 0.95
	DefaultPaceBurst    = 0.05
	DefaultLimitWindow  = time.Minute
)

// Host is what is declared of a provider host (lower-case, without port).
func (u Upstreams) Host(host string) UpstreamHost {
	if h, ok := u.hosts[host]; ok {
		return h
	}
	return UpstreamHost{Window: DefaultLimitWindow}
}

type upstreamsFile struct {
	Pacing *pacingFile                 `json:"pacing"`
	Hosts  map[string]upstreamHostFile `json:"hosts"`
}

type pacingFile struct {
	Enabled      *bool    `json:"enabled"`
	EngageBelow  *float64 `json:"engage_below"`
	ReleaseAbove *float64 `json:"release_above"`
	Headroom     *float64 `json:"headroom"`
	Burst        *float64 `json:"burst"`
}

type upstreamHostFile struct {
	Window duration           `json:"window"`
	Limits upstreamLimitsFile `json:"limits"`
}

type upstreamLimitsFile struct {
	Requests     int64 `json:"requests"`
	Tokens       int64 `json:"tokens"`
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
}

func compileUpstreams(f upstreamsFile) (Upstreams, error) {
	u := Upstreams{
		Pacing: Pacing{Enabled: true, EngageBelow: DefaultEngageBelow, ReleaseAbove: DefaultReleaseAbove,
			Headroom: DefaultHeadroom, Burst: DefaultPaceBurst},
		hosts: map[string]UpstreamHost{},
	}
	if p := f.Pacing; p != nil {
		if p.Enabled != nil {
			u.Pacing.Enabled = *p.Enabled
		}
		for _, v := range []struct {
			name string
			src  *float64
			dst  *float64
		}{{"engage_below", p.EngageBelow, &u.Pacing.EngageBelow}, {"release_above", p.ReleaseAbove, &u.Pacing.ReleaseAbove},
			{"headroom", p.Headroom, &u.Pacing.Headroom}, {"burst", p.Burst, &u.Pacing.Burst}} {
			if v.src == nil {
				continue
			}
			if !(*v.src > 0 && *v.src <= 1) {
				return u, fmt.Errorf("upstreams.pacing.%s: %v must be above 0 and at most 1", v.name, *v.src)
			}
			*v.dst = *v.src
		}
		if u.Pacing.ReleaseAbove < u.Pacing.EngageBelow {
			return u, fmt.Errorf("upstreams.pacing.release_above: %v is below engage_below %v; pacing would stop before it starts", u.Pacing.ReleaseAbove, u.Pacing.EngageBelow)
		}
	}
	for _, name := range sortedKeys(f.Hosts) {
		at := "upstreams.hosts." + name
		if name == "" || len(name) > 253 || name != strings.ToLower(name) || strings.ContainsAny(name, " :/#@{}") {
			return u, fmt.Errorf("%s: a host is a lower-case DNS name without port or path", at)
		}
		h := f.Hosts[name]
		out := UpstreamHost{Window: h.Window.Duration}
		if !h.Window.set {
			out.Window = DefaultLimitWindow
		}
		if out.Window < time.Second || out.Window > limiter.MaxPacePeriod {
			return u, fmt.Errorf("%s.window: %s must be between 1s and %s", at, out.Window, limiter.MaxPacePeriod)
		}
		l := h.Limits
		out.Limits = [limiter.PaceDims]int64{l.Requests, l.Tokens, l.InputTokens, l.OutputTokens}
		for d, v := range out.Limits {
			if v < 0 || v > limiter.MaxTokens {
				return u, fmt.Errorf("%s.limits.%s: %d must be between 0 and %d", at, limiter.PaceDimNames[d], v, limiter.MaxTokens)
			}
		}
		u.hosts[name] = out
	}
	return u, nil
}
