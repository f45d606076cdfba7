package policy

import (
	"sort"
	"strings"
)

// LevelOfKey is the level a level key names (limiter.Level.Key, as Resolve
// gives them): "" the org, "t:" a team, "u:" a user, "k:" a key.
func LevelOfKey(key string) Level {
	switch {
	case strings.HasPrefix(key, "t:"):
		return LevelTeam
	case strings.HasPrefix(key, "u:"):
		return LevelUser
	case strings.HasPrefix(key, "k:"):
		return LevelKey
	}
	return LevelOrg
}

// LevelLabel is the bounded metric label of a level of org, as Resolve
// labels it: the org's own label, "org/team" for a team configured under
// it, and "other" for anything else (users and keys are never named one by
// one: their number is unbounded).
func (c *Config) LevelLabel(org, key string) string {
	switch LevelOfKey(key) {
	case LevelOrg:
		return c.TenantLabel(org)
	case LevelTeam:
		if o := c.orgs[org]; o != nil {
			if t := o.teams[key[len("t:"):]]; t != nil {
				return t.label
			}
		}
	}
	return OtherLabel
}

// Teams lists the teams configured under org, sorted; none for an org not
// under orgs:.
func (c *Config) Teams(org string) []string {
	o := c.orgs[org]
	if o == nil {
		return nil
	}
	out := make([]string, 0, len(o.teams))
	for name := range o.teams {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// IsOrg reports whether name is an org under orgs: (not a flat tenant).
func (c *Config) IsOrg(name string) bool {
	_, ok := c.orgs[name]
	return ok
}
