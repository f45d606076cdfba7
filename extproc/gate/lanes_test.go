package gate

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// lanesYAML: one policy, an interactive lane (the default) with 70% and a
// batch lane with 30% of 10 concurrent requests: batch alone gets 3,
// interactive alone all 10.
const lanesYAML = `
policies:
  default: {}
  shaped:
    limits: {concurrent: 10}
    lanes:
      interactive: {priority: 2, share: 0.7, default: true}
      batch: {priority: 1, share: 0.3}
tenants:
  acme: {policy: shaped}
`

// laneRequest runs Begin and Body for one request of acme on lane.
func (h *harness) laneRequest(ctx context.Context, lane string) (*Exchange, BodyVerdict) {
	h.t.Helper()
	x, hv := h.g.Begin(ctx, Request{Headers: post(pathMessages, tenantHeader("acme")), RouteLane: lane})
	if hv.PassThrough || hv.Reply != nil {
		h.t.Fatalf("Begin: %+v", hv)
	}
	return x, x.Body([]byte(sonnetBody))
}

// fill admits requests of lane until one is refused; it returns the
// admitted exchanges and the refusal.
func (h *harness) fill(lane string, most int) ([]*Exchange, *Reply) {
	h.t.Helper()
	var in []*Exchange
	for range most {
		x, v := h.laneRequest(context.Background(), lane)
		if v.Reply != nil {
			return in, v.Reply
		}
		if v.Wait != nil {
			h.t.Fatalf("lane %s waits; it has no max_wait", lane)
		}
		in = append(in, x)
	}
	return in, nil
}

func TestLaneShares(t *testing.T) {
	t.Run("batch saturates, interactive keeps its share", func(t *testing.T) {
		h := newHarness(t, lanesYAML)
		batch, refused := h.fill("batch", 20)
		if len(batch) != 3 || refused == nil {
			t.Fatalf("batch admitted %d, want 3 (30%% of 10)", len(batch))
		}
		if d, _ := header(refused.Headers, contract.DeniedHeader); d != "org/concurrency" {
			t.Errorf("batch denied as %q", d)
		}
		if _, _, msg := errorType(t, refused.Body); !strings.Contains(msg, "lanes at or below batch") || !strings.Contains(msg, "3 requests") {
			t.Errorf("batch denial says %q", msg)
		}
		inter, _ := h.fill("interactive", 20)
		if len(inter) != 7 {
			t.Errorf("interactive admitted %d beside 3 batch, want 7", len(inter))
		}
	})
	t.Run("interactive idle, batch capped at its share", func(t *testing.T) {
		h := newHarness(t, lanesYAML)
		batch, _ := h.fill("batch", 20)
		for _, x := range batch {
			x.Abort()
		}
		// Its slots given back, batch again gets exactly its share, no more.
		again, _ := h.fill("batch", 20)
		if len(again) != 3 {
			t.Errorf("batch admitted %d after release, want 3", len(again))
		}
	})
	t.Run("interactive borrows batch's unused share", func(t *testing.T) {
		h := newHarness(t, lanesYAML)
		inter, _ := h.fill("interactive", 20)
		if len(inter) != 10 {
			t.Fatalf("interactive admitted %d, want all 10", len(inter))
		}
		// Never the reverse: interactive holds everything, batch gets none.
		if batch, _ := h.fill("batch", 5); len(batch) != 0 {
			t.Errorf("batch admitted %d with every slot taken", len(batch))
		}
		inter[0].Abort()
		if batch, _ := h.fill("batch", 5); len(batch) != 1 {
			t.Errorf("batch admitted %d after one interactive slot freed, want 1", len(batch))
		}
	})
	t.Run("the default lane and an unknown one", func(t *testing.T) {
		h := newHarness(t, lanesYAML)
		// A route naming no lane, or one the policy lacks, is interactive:
		// all 10 are admitted, none held to batch's 3.
		for i, lane := range []string{"", "nonesuch"} {
			in, _ := h.fill(lane, 5)
			if len(in) != 5 {
				t.Errorf("lane %q: admitted %d of 5", lane, len(in))
			}
			if got := in[0].laneName(); got != "interactive" {
				t.Errorf("lane %q ran as %q", lane, got)
			}
			// Counted once per request that named it.
			if n := countKind(h.obs, UnconfiguredRouteLane); n != 5*i {
				t.Errorf("after lane %q: %d unconfigured route_lane, want %d", lane, n, 5*i)
			}
		}
	})
}

func countKind(r *recorder, kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(slices.DeleteFunc(slices.Clone(r.unknown), func(k string) bool { return k != kind }))
}

// TestLaneGroupsPerLevel: a team's own limit is shared by lanes too.
func TestLaneGroupsPerLevel(t *testing.T) {
	h := newHarness(t, `
policies:
  default: {}
  shaped:
    lanes:
      interactive: {priority: 2, share: 0.5, default: true}
      batch: {priority: 1, share: 0.5}
orgs:
  acme:
    policy: shaped
    limits: {concurrent: 100}
    teams:
      search: {limits: {concurrent: 4}}
`)
	// The levels an org caller gets are Resolve's; the groups follow every
	// limited one: the org's 100 and the team's 4, each halved for batch.
	x := &Exchange{g: h.g, cfg: h.cfg}
	p, _ := h.cfg.Policy("", "shaped")
	x.policy = p
	x.chooseLane("batch", nil)
	org := h.cfg.Resolve(policy.Caller{policy.LevelOrg: "acme", policy.LevelTeam: "search"}, "shaped")
	x.tenant, x.levels = org.Org, org.Levels
	_, ll, _ := x.levelRequest(t0)
	got := map[string]int64{}
	for _, l := range ll {
		got[l.Key] = l.Concurrent
	}
	want := map[string]int64{"t:search": 4, "~lane:batch": 50, "t:search~lane:batch": 2}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("group %q concurrent = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("groups %v, want %v", got, want)
	}
}

// TestLaneFromClaim: with identity.lane, a verified claim picks the lane
// when the route names none; the route's own lane wins; a header a client
// sends picks nothing.
func TestLaneFromClaim(t *testing.T) {
	h := newHarness(t, `
identity:
  from:
    - header: x-tenant-id
      trusted: true
  unknown: default:guest
  unconfigured: own
  lane: {claim: tw.lane}
`+lanesYAML)
	claim := EnvoyValues{Meta: map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{"tw": map[string]any{"lane": "batch"}}}}}
	for _, tc := range []struct {
		name  string
		env   Envoy
		route string
		hdr   []Header
		want  string
	}{
		{"claim", claim, "", nil, "batch"},
		{"route wins", claim, "interactive", nil, "interactive"},
		{"no claim", EnvoyValues{}, "", nil, "interactive"},
		{"a client header", EnvoyValues{}, "", []Header{{"x-tokenwarden-lane", "batch"}, {"lane", "batch"}}, "interactive"},
	} {
		x, _ := h.g.Begin(context.Background(), Request{Headers: post(pathMessages, append(tc.hdr, tenantHeader("acme"))...), Envoy: tc.env, RouteLane: tc.route})
		if got := x.laneName(); got != tc.want {
			t.Errorf("%s: lane %q, want %q", tc.name, got, tc.want)
		}
	}
}
