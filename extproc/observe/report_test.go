package observe

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// The tree's levels: the org's pool only when the org has one, each team's
// pool, and the member asked for with its own budgets under its team.
func TestReportLevels(t *testing.T) {
	cfg, err := policy.Parse([]byte(`
policies:
  default:
    budgets: [{window: day, usd: 10}]
tenants:
  flat: {}
orgs:
  acme:
    budgets: [{window: month, usd: 100}]
    teams:
      search: {budgets: [{window: day, usd: 20}]}
      idle: {}
  nopool:
    teams:
      ads: {budgets: [{window: week, usd: 30}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	// Each row as "level name key window:usd...".
	show := func(rows []reportRow) []string {
		var out []string
		for _, r := range rows {
			s := fmt.Sprintf("%s %s %q", r.level, strings.TrimSpace(r.name), r.key)
			for _, b := range r.levelBudgets {
				s += fmt.Sprintf(" %s:%g", b.Window, b.Cap.USD())
			}
			out = append(out, s)
		}
		return out
	}
	for _, tc := range []struct {
		tenant string
		o      ReportOptions
		want   []string
		isOrg  bool
	}{
		{"flat", ReportOptions{}, []string{`org flat "" day:10`}, false},
		{"acme", ReportOptions{}, []string{`org acme "" month:100`, `team search "t:search" day:20`}, true},
		{"acme", ReportOptions{Team: "search", User: "ann"}, []string{
			`org acme "" month:100`, `team search "t:search" day:20`, `user ann "u:search/ann" day:10`}, true},
		{"acme", ReportOptions{Key: "key-0123"}, []string{
			`org acme "" month:100`, `team search "t:search" day:20`, `key key-0123 "k:/key-0123" day:10`}, true},
		// An org with no pool of its own shows no org row, never a
		// member's budgets under the org's name.
		{"nopool", ReportOptions{}, []string{`team ads "t:ads" week:30`}, true},
		{"nopool", ReportOptions{User: "bob"}, []string{`team ads "t:ads" week:30`, `user bob "u:/bob" day:10`}, true},
	} {
		rows, _, isOrg := reportLevels(cfg, tc.tenant, tc.o)
		got := show(rows)
		if isOrg != tc.isOrg || strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
			t.Errorf("%s %+v: org %v rows\n%s\nwant\n%s", tc.tenant, tc.o, isOrg, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
}
