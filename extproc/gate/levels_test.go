package gate

import (
	"context"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// A hierarchy under orgs:, the caller's levels from JWT claims.
const levelsYAML = `
identity:
  from:
    - jwt: {org: org_id, team: team, user: sub}
  unknown: deny
  unconfigured: deny
policies:
  default:
    limits: {requests_per_minute: 1000}
orgs:
  acme:
    budgets: [{window: day, usd: 100}]
    teams:
      search:
        budgets: [{window: day, usd: 0.0001}]
      ads:
        users: {limits: {requests_per_minute: 2}}
`

func jwtCaller(org, team, user string) EnvoyValues {
	return EnvoyValues{Meta: map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{"org_id": org, "team": team, "sub": user}}}}
}

// The gate admits a caller of an org at every level it resolves to, in its
// org's state; the 429 names the level and dimension that refused.
func TestLevelsAdmittedAndNamedInDenials(t *testing.T) {
	h := newHarness(t, levelsYAML)
	do := func(team, user string) (*Exchange, BodyVerdict) {
		t.Helper()
		x, hv := h.g.Begin(context.Background(), Request{Headers: post(pathMessages), Envoy: jwtCaller("acme", team, user)})
		if hv.PassThrough || hv.Reply != nil {
			t.Fatalf("Begin: %+v", hv)
		}
		return x, x.Body([]byte(sonnetBody))
	}
	for range 2 {
		x, bv := do("ads", "bob")
		if bv.Reply != nil || x.Tenant() != "acme" {
			t.Fatalf("bob: tenant %q, reply %+v", x.Tenant(), bv.Reply)
		}
	}
	_, bv := do("ads", "bob")
	if r := bv.Reply; r == nil || r.Status != 429 || headerOf(r.Headers, contract.DeniedHeader) != "user/requests" ||
		!strings.Contains(string(r.Body), "the user bob: over the limit of 2 requests per minute") {
		t.Fatalf("bob's third: %+v", r)
	}
	if x, bv := do("ads", "cat"); bv.Reply != nil {
		t.Fatalf("cat, another user of ads: %+v", bv.Reply)
	} else if x.decision.Requests.Limit != 2 || x.decision.Requests.Remaining != 1 {
		t.Fatalf("rate state %+v; want cat's own, the most constraining", x.decision.Requests)
	}
	_, bv = do("search", "ann")
	if r := bv.Reply; r == nil || r.Status != 429 || headerOf(r.Headers, contract.DeniedHeader) != "team/budget_day" ||
		!strings.Contains(string(r.Body), "the team search: this request reserves") {
		t.Fatalf("ann in search: %+v", r)
	}
	// The org's pool holds the three admitted requests, and nothing of the
	// team denial.
	states, err := h.mem.Budgets(context.Background(), "acme", limiter.LevelBudgets([]limiter.Level{
		{Key: "", Budgets: policy.LimiterBudgetsOf(h.cfg.Resolve(policy.Caller{policy.LevelOrg: "acme"}, "").Levels[0].Budgets, h.clock.Now())},
	}))
	if err != nil || len(states) != 1 || states[0].Reserved <= 0 {
		t.Fatalf("org budgets %+v %v", states, err)
	}
	x, _ := do("ads", "dan")
	one := x.estimateCost
	if states[0].Reserved != 3*int64(one) {
		t.Fatalf("org reserved %d, want 3 × %d", states[0].Reserved, one)
	}
}
