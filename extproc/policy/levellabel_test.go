package policy

import (
	"slices"
	"testing"
)

func TestLevelLabels(t *testing.T) {
	c, err := Parse([]byte(`
policies: {default: {}}
tenants: {flat: {}}
orgs:
  acme:
    budgets: [{window: month, usd: 100}]
    teams: {search: {}, ads: {}}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		org, key string
		level    Level
		label    string
	}{
		{"acme", "", LevelOrg, "acme"},
		{"acme", "t:search", LevelTeam, "acme/search"},
		{"acme", "t:unknown", LevelTeam, OtherLabel},
		{"acme", "u:search/ann", LevelUser, OtherLabel},
		{"acme", "k:/key-0123", LevelKey, OtherLabel},
		{"flat", "", LevelOrg, "flat"},
		{"flat", "t:search", LevelTeam, OtherLabel},
		{"stranger", "", LevelOrg, OtherLabel},
	} {
		if l, got := LevelOfKey(tc.key), c.LevelLabel(tc.org, tc.key); l != tc.level || got != tc.label {
			t.Errorf("%s %q: level %v label %q, want %v %q", tc.org, tc.key, l, got, tc.level, tc.label)
		}
	}
	// Resolve labels the same way.
	r := c.Resolve(Caller{"acme", "search", "ann", ""}, "")
	for _, l := range r.Levels {
		if got := c.LevelLabel(r.Org, l.Key); got != l.Label || LevelOfKey(l.Key) != l.Level {
			t.Errorf("level %+v: LevelLabel %q", l, got)
		}
	}
	if got := c.Teams("acme"); !slices.Equal(got, []string{"ads", "search"}) {
		t.Errorf("teams %v", got)
	}
	if got := c.Teams("flat"); got != nil {
		t.Errorf("a flat tenant's teams %v", got)
	}
}
