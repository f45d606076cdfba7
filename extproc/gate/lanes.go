package gate

import (
	"strings"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// Lanes (policy/lanes.go): lane k's group is the lanes at or below its
// priority, held to GroupShare of every limit of every limited level. A
// request of lane j is admitted only if it fits every group that contains
// it — the groups of lanes 1..j (the top group, every lane, is the level's
// own limit and is checked already). Each group is one more
// limiter.LevelLimits in the same admission, under a key of its own, so
// admit, settle, cancel, renew and expiry hold for it as for any level, in
// one round trip and all-or-nothing. A policy with N lanes adds at most
// N-1 groups to each limited level: the key count is bounded by the
// configuration.

// UnconfiguredRouteLane is the tokenwarden_unconfigured_total kind of a
// route naming a lane its policy does not have (the default lane is used).
const UnconfiguredRouteLane = "route_lane"

// laneSep separates a level key from the lane group under it. Level keys
// never hold it (policy names and keys are escaped names), and the store
// escapes every key it writes (limiter.levelEscaper).
const laneSep = "~lane:"

// laneGroupKey is the LevelLimits key of the group headed by lane under
// the level levelKey ("" the org).
func laneGroupKey(levelKey, lane string) string { return levelKey + laneSep + lane }

// splitLaneKey returns the level key and the lane of a lane group key;
// lane is "" for a level's own key.
func splitLaneKey(key string) (levelKey, lane string) {
	if i := strings.Index(key, laneSep); i >= 0 {
		return key[:i], key[i+len(laneSep):]
	}
	return key, ""
}

// chooseLane picks the request's lane: the route's, else the caller's
// verified lane claim (identity.lane), else the policy's default.
func (x *Exchange) chooseLane(routeLane string, env Envoy) {
	if c := &x.cfg.Identity.Lane; routeLane == "" && c.Field != "" && env != nil {
		routeLane, _ = env.Metadata(c.Namespace, c.Path()...)
	}
	lane, i, known := x.policy.Lane(routeLane)
	x.lane, x.laneIndex = lane, i
	if !known && routeLane != "" {
		x.g.obs.Unconfigured(UnconfiguredRouteLane)
		if x.g.warned.add("lane:" + routeLane) {
			x.g.log.Warn("route names a lane its policy does not have; using the default lane", "lane", routeLane, "policy", x.policy.Name)
		}
	}
}

// laneName is the lane's metric label: a configured lane name, or "none"
// for a policy without lanes.
func (x *Exchange) laneName() string {
	if x.lane == nil {
		return NoLane
	}
	return x.lane.Name
}

// laneGroups adds, for the request's lane, one group per lane group that
// contains it (below the top) at the org's limits and at every level's.
func (x *Exchange) laneGroups(org limiter.Limits, levels []limiter.LevelLimits) []limiter.LevelLimits {
	if x.lane == nil || x.laneIndex == 0 {
		return levels
	}
	out := levels
	add := func(key string, rpm, tpm, conc int64) {
		for k := 1; k <= x.laneIndex; k++ {
			l := &x.policy.Lanes[k]
			s := l.GroupShare
			g := limiter.LevelLimits{Key: laneGroupKey(key, l.Name), RequestsPerMinute: policy.LaneLimit(rpm, s),
				TokensPerMinute: policy.LaneLimit(tpm, s), Concurrent: policy.LaneLimit(conc, s)}
			if g.RequestsPerMinute > 0 || g.TokensPerMinute > 0 || g.Concurrent > 0 {
				out = append(out, g)
			}
		}
	}
	add("", org.RequestsPerMinute, org.TokensPerMinute, org.Concurrent)
	for _, l := range levels {
		add(l.Key, l.RequestsPerMinute, l.TokensPerMinute, l.Concurrent)
	}
	return out
}

// paceGroups are the lane groups a request of its lane must fit on a
// paced upstream, below the whole schedule (the top lane's group): the
// same groups as its limits', each at its share of the upstream's pace.
// Named by the heading lane, so policies sharing an upstream share the
// schedule of a lane they both name.
func (x *Exchange) paceGroups() []limiter.PaceGroup {
	if x.lane == nil || x.laneIndex == 0 {
		return nil
	}
	out := make([]limiter.PaceGroup, 0, x.laneIndex)
	for k := 1; k <= x.laneIndex; k++ {
		l := &x.policy.Lanes[k]
		out = append(out, limiter.PaceGroup{Name: l.Name, Share: l.GroupShare})
	}
	return out
}

// laneShare is the share of the group a denial's lane group names, 1 for
// a level's own limits.
func (x *Exchange) laneShare(lane string) float64 {
	for _, l := range x.policy.Lanes {
		if l.Name == lane {
			return l.GroupShare
		}
	}
	return 1
}
