package policy

import (
	"strconv"
	"strings"
	"testing"
)

const hierarchyYAML = `
identity: {from: [{jwt: {org: org_id, team: team, user: sub}}, {api_key_of: x-api-key}], unconfigured: own}
policies:
  default:
    limits: {requests_per_minute: 600, concurrent: 32}
    budgets: [{window: day, usd: 50}]
  batch:
    limits: {requests_per_minute: 30}
orgs:
  acme:
    budgets: [{window: month, usd: 5000}]
    users: {limits: {requests_per_minute: 120}}
    teams:
      search:
        budgets: [{window: day, usd: 200}]
        users: {limits: {requests_per_minute: 60}, budgets: [{window: day, usd: 5}]}
        keys: {limits: {concurrent: 2}}
      ads:
        policy: batch
  lean:
    teams:
      quiet: {}
tenants:
  solo: {budgets: [{window: month, usd: 10}]}
`

func TestResolveHierarchy(t *testing.T) {
	c, err := Parse([]byte(hierarchyYAML))
	if err != nil {
		t.Fatal(err)
	}
	type lvl struct {
		key, label string
		rpm        int64
		budgets    string
	}
	budgets := func(l ResolvedLevel) string {
		var s []string
		for _, b := range l.Budgets {
			s = append(s, string(b.Window)+"="+strconv.FormatFloat(b.Cap.USD(), 'f', -1, 64))
		}
		return strings.Join(s, ",")
	}
	cases := []struct {
		name   string
		caller Caller
		route  string
		org    string
		policy string
		want   []lvl
	}{
		{"a user of a team: org pool, team pool, the user's own", Caller{"acme", "search", "alice", ""}, "", "acme", "default",
			[]lvl{{"", "acme", 0, "month=5000"}, {"t:search", "acme/search", 0, "day=200"}, {"u:search/alice", "other", 60, "day=5"}}},
		{"a user directly in the org", Caller{"acme", "", "bob", ""}, "", "acme", "default",
			[]lvl{{"", "acme", 0, "month=5000"}, {"u:/bob", "other", 120, "day=50"}}},
		{"a user of an unconfigured team counts as directly in the org", Caller{"acme", "nowhere", "carol", ""}, "", "acme", "default",
			[]lvl{{"", "acme", 0, "month=5000"}, {"u:/carol", "other", 120, "day=50"}}},
		{"a key of a team", Caller{"acme", "search", "", "key-1"}, "", "acme", "default",
			[]lvl{{"", "acme", 0, "month=5000"}, {"t:search", "acme/search", 0, "day=200"}, {"k:search/key-1", "other", 600, "day=50"}}},
		{"the team itself is the caller", Caller{"acme", "search", "", ""}, "", "acme", "default",
			[]lvl{{"", "acme", 0, "month=5000"}, {"t:search", "acme/search", 600, "day=200"}}},
		{"a team's policy", Caller{"acme", "ads", "dan", ""}, "", "acme", "batch",
			[]lvl{{"", "acme", 0, "month=5000"}, {"u:ads/dan", "other", 120, ""}}},
		{"the route's policy wins", Caller{"acme", "ads", "dan", ""}, "default", "acme", "default",
			[]lvl{{"", "acme", 0, "month=5000"}, {"u:ads/dan", "other", 120, "day=50"}}},
		{"pools with nothing to hold are skipped", Caller{"lean", "quiet", "erin", ""}, "", "lean", "default",
			[]lvl{{"u:quiet/erin", "other", 600, "day=50"}}},
		{"a flat tenant is a one-level org", Caller{"", "", "", "solo"}, "", "solo", "default",
			[]lvl{{"", "solo", 600, "day=50,month=10"}}},
		{"an unconfigured caller is a one-level org of its own", Caller{"zeta", "", "frank", ""}, "", "frank", "default",
			[]lvl{{"", "other", 600, "day=50"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.Resolve(tc.caller, tc.route)
			if r.Org != tc.org || r.Policy.Name != tc.policy || !r.KnownRoute {
				t.Fatalf("org %q policy %q known %v, want %q %q", r.Org, r.Policy.Name, r.KnownRoute, tc.org, tc.policy)
			}
			if len(r.Levels) != len(tc.want) {
				t.Fatalf("%d levels %+v, want %d", len(r.Levels), r.Levels, len(tc.want))
			}
			for i, w := range tc.want {
				l := r.Levels[i]
				if l.Key != w.key || l.Label != w.label || l.Limits.RequestsPerMinute != w.rpm || budgets(l) != w.budgets {
					t.Errorf("level %d = key %q label %q rpm %d budgets %q, want %+v", i, l.Key, l.Label, l.Limits.RequestsPerMinute, budgets(l), w)
				}
			}
		})
	}
	if r := c.Resolve(Caller{"acme", "", "x", ""}, "gold"); r.KnownRoute || r.Policy.Name != "default" {
		t.Errorf("an unknown route policy: %+v", r)
	}
	if !c.ConfiguredCaller(Caller{"acme", "", "anyone", ""}) || c.ConfiguredCaller(Caller{"zeta", "", "frank", ""}) || !c.ConfiguredCaller(Caller{"", "", "", "solo"}) {
		t.Error("ConfiguredCaller")
	}
	if c.TenantLabel("acme") != "acme" || c.TenantLabel("zeta") != OtherLabel {
		t.Error("TenantLabel covers orgs")
	}
}

func TestHierarchyErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"orgs: {acme: {policy: gold}}", "orgs.acme.policy"},
		{"orgs: {acme: {teams: {search: {budgets: [{window: year, usd: 1}]}}}}", "orgs.acme.teams.search.budgets[0].window"},
		{"orgs: {acme: {users: {limits: {requests_per_minute: -1}}}}", "orgs.acme.users.limits.requests_per_minute"},
		{"orgs: {'a b': {}}", "orgs.a b"},
		{"orgs: {acme: {teams: {'x/y': {}}}}", "orgs.acme.teams.x/y"},
		{"orgs: {acme: {}}\ntenants: {acme: {}}", "orgs.acme: also under tenants"},
	} {
		if _, err := Parse([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
