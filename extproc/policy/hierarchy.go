package policy

import (
	"fmt"

	"github.com/tokenwarden/tokenwarden/limiter"
)

// The hierarchy: orgs, the teams inside them, and the users and keys of
// each. Every level can carry limits and budgets, checked together with
// every other level of a request in one admission (all-or-nothing): an org's
// monthly pool, a team's daily budget inside it, each user's own rate, each
// key's own cap.
//
//	orgs:
//	  acme:
//	    budgets: [{window: month, usd: 5000}]     # the org's pool, shared by everyone in it
//	    users: {limits: {requests_per_minute: 60}} # each user directly in the org, own state
//	    teams:
//	      search:
//	        budgets: [{window: day, usd: 200}]     # the team's pool
//	        users: {limits: {requests_per_minute: 60}}
//
// A level's block holds what that level is held to: the org and team blocks
// are pools shared by everyone below them, the users and keys blocks are the
// defaults each member gets for itself. The caller's own level — the most
// specific one it has — also gets its policy's limits and budgets, overridden
// field by field by its block: exactly what a flat tenants: entry gets, so a
// tenant is a one-level org.

// Resolution is where one caller stands in the configuration: the org that
// keys its shared state, the levels it is admitted against, and its policy.
type Resolution struct {
	// Org is the caller's org: every key of every level shares it as the
	// store's hash tag, so one script decides all levels in one slot.
	Org string
	// Levels are the levels the request counts against, org first; the last
	// is the caller's own.
	Levels []ResolvedLevel
	Policy *Policy
	// KnownRoute is false when the route named a policy the configuration
	// does not define (the level's or default policy is used).
	KnownRoute bool
}

// ResolvedLevel is one level of a caller with what it is held to.
type ResolvedLevel struct {
	Level Level
	// Name is the level's own name (the org, the team, the user, the key).
	Name string
	// Key names the level's state within its org: "" for the org itself,
	// then "t:<team>", "u:<team>/<user>" (team empty for a user directly in
	// the org), "k:<team>/<key>".
	Key string
	// Label is the level's metric label: its path of configured names
	// ("acme", "acme/search"), or "other" for users and keys (never named
	// one by one, so their number is unbounded).
	Label   string
	Limits  limiter.Limits
	Budgets []Budget
}

// Enforces reports whether the level has anything to check.
func (l *ResolvedLevel) Enforces() bool {
	lm := l.Limits
	return lm.RequestsPerMinute > 0 || lm.TokensPerMinute > 0 || lm.Concurrent > 0 || len(l.Budgets) > 0
}

type orgFile struct {
	levelFile
	Users *levelFile          `json:"users"`
	Keys  *levelFile          `json:"keys"`
	Teams map[string]teamFile `json:"teams"`
}

type teamFile struct {
	levelFile
	Users *levelFile `json:"users"` // each user of the team; default: the org's users block
	Keys  *levelFile `json:"keys"`  // each key of the team; default: the org's keys block
}

// levelFile is what one level's block may say; the same shape as a flat
// tenants: entry.
type levelFile = tenantOverride

// org and team are compiled blocks.
type org struct {
	name  string
	block block
	users *block // defaults of each user directly in the org
	keys  *block
	teams map[string]*team
}

type team struct {
	name string
	// key and label are the team's level key ("t:<team>") and metric label
	// ("<org>/<team>"), built once: every request of the team names both.
	key, label string
	block      block
	users      *block
	keys       *block
}

// block is one level's block, compiled: its own limits and budgets (what a
// pool is held to), its policy name, and the block layered on every policy
// (what the level gets when it is the caller's own).
type block struct {
	policy    string
	own       ResolvedLevel
	onPolicy  map[string]*Policy // policy name → policy ⊕ block
	hasOwnCfg bool
}

// compileBlock compiles a level block at the given path.
func compileBlock(at string, f levelFile, policies map[string]*Policy) (block, error) {
	b := block{policy: f.Policy, onPolicy: map[string]*Policy{}}
	if f.Policy != "" {
		if _, ok := policies[f.Policy]; !ok {
			return b, fmt.Errorf("%s.policy: no policy named %q", at, f.Policy)
		}
	}
	var err error
	if f.Limits != nil {
		if b.own.Limits, err = compileLimits(at+".limits", limiter.Limits{}, *f.Limits); err != nil {
			return b, err
		}
	}
	if b.own.Budgets, err = compileBudgets(at+".budgets", f.Budgets); err != nil {
		return b, err
	}
	b.hasOwnCfg = b.own.Enforces()
	for name, p := range policies {
		eff, err := applyOverride(at, p, f)
		if err != nil {
			return b, err
		}
		b.onPolicy[name] = eff
	}
	return b, nil
}

func compileOrgs(f map[string]orgFile, policies map[string]*Policy) (map[string]*org, error) {
	out := map[string]*org{}
	for _, name := range sortedKeys(f) {
		at := "orgs." + name
		if !validName(name) {
			return nil, fmt.Errorf("%s: an org name must be 1-64 letters, digits, '.', '_' or '-'", at)
		}
		of := f[name]
		o := &org{name: name, teams: map[string]*team{}}
		var err error
		if o.block, err = compileBlock(at, of.levelFile, policies); err != nil {
			return nil, err
		}
		if o.users, err = optionalBlock(at+".users", of.Users, policies); err != nil {
			return nil, err
		}
		if o.keys, err = optionalBlock(at+".keys", of.Keys, policies); err != nil {
			return nil, err
		}
		for _, tname := range sortedKeys(of.Teams) {
			tat := at + ".teams." + tname
			if !validName(tname) {
				return nil, fmt.Errorf("%s: a team name must be 1-64 letters, digits, '.', '_' or '-'", tat)
			}
			tf := of.Teams[tname]
			t := &team{name: tname, key: "t:" + tname, label: name + "/" + tname}
			if t.block, err = compileBlock(tat, tf.levelFile, policies); err != nil {
				return nil, err
			}
			if t.users, err = optionalBlock(tat+".users", tf.Users, policies); err != nil {
				return nil, err
			}
			if t.keys, err = optionalBlock(tat+".keys", tf.Keys, policies); err != nil {
				return nil, err
			}
			o.teams[tname] = t
		}
		out[name] = o
	}
	return out, nil
}

func optionalBlock(at string, f *levelFile, policies map[string]*Policy) (*block, error) {
	if f == nil {
		return nil, nil
	}
	b, err := compileBlock(at, *f, policies)
	if err != nil {
		return nil, err
	}
	return &b, nil
}

// Resolve places a caller in the hierarchy. A caller whose org is
// configured is admitted against the org, its team (if configured), and
// its own user or key level; a caller named under tenants: is a one-level
// org; any other caller is a one-level org of its own most specific name
// (the identity rules have already decided whether such a caller may have
// state: see Identity.Unconfigured).
func (c *Config) Resolve(caller Caller, routePolicy string) Resolution {
	r := Resolution{KnownRoute: true}
	route := routePolicy
	if route != "" {
		if _, ok := c.policies[route]; !ok {
			r.KnownRoute, route = false, ""
		}
	}
	o := c.orgs[caller[LevelOrg]]
	if o == nil {
		// A flat tenant, or an unconfigured caller: one level.
		t := caller.Tenant()
		r.Org = t
		r.Policy, _ = c.Policy(t, route)
		label := c.TenantLabel(t)
		r.Levels = []ResolvedLevel{{Level: LevelOrg, Name: t, Label: label, Limits: r.Policy.Limits, Budgets: r.Policy.Budgets}}
		return r
	}
	r.Org = o.name
	// The chain of blocks the caller passes through, and its own (last).
	chain := make([]ResolvedLevel, 0, 4)
	blocks := make([]*block, 0, 4)
	chain = append(chain, ResolvedLevel{Level: LevelOrg, Name: o.name, Label: o.name})
	blocks = append(blocks, &o.block)
	users, keys := o.users, o.keys
	teamName := ""
	if t := o.teams[caller[LevelTeam]]; t != nil {
		teamName = t.name
		chain = append(chain, ResolvedLevel{Level: LevelTeam, Name: t.name, Key: t.key, Label: t.label})
		blocks = append(blocks, &t.block)
		// A team's member defaults replace the org's; without its own, the
		// team's members get the org's.
		if t.users != nil {
			users = t.users
		}
		if t.keys != nil {
			keys = t.keys
		}
	}
	if u := caller[LevelUser]; u != "" {
		chain = append(chain, ResolvedLevel{Level: LevelUser, Name: u, Key: "u:" + teamName + "/" + u, Label: OtherLabel})
		blocks = append(blocks, users) // nil: no per-user defaults beyond the policy
	}
	if k := caller[LevelKey]; k != "" {
		chain = append(chain, ResolvedLevel{Level: LevelKey, Name: k, Key: "k:" + teamName + "/" + k, Label: OtherLabel})
		blocks = append(blocks, keys)
	}
	// The policy: the route's, else the most specific block's own, else
	// default.
	name := route
	for i := len(blocks) - 1; i >= 0 && name == ""; i-- {
		if blocks[i] != nil && blocks[i].policy != "" {
			name = blocks[i].policy
		}
	}
	if name == "" {
		name = DefaultPolicy
	}
	last := len(chain) - 1
	for i := range chain {
		b := blocks[i]
		switch {
		case i == last && b != nil:
			p := b.onPolicy[name]
			chain[i].Limits, chain[i].Budgets = p.Limits, p.Budgets
			r.Policy = p
		case i == last:
			p := c.policies[name]
			chain[i].Limits, chain[i].Budgets = p.Limits, p.Budgets
			r.Policy = p
		case b != nil:
			chain[i].Limits, chain[i].Budgets = b.own.Limits, b.own.Budgets
		}
	}
	// Pools with nothing to check cost no store work.
	r.Levels = chain[:0]
	for i := range chain {
		if i == last || chain[i].Enforces() {
			r.Levels = append(r.Levels, chain[i])
		}
	}
	return r
}

// InOrg reports whether the caller names an org configured under orgs:.
func (c *Config) InOrg(caller Caller) bool {
	_, ok := c.orgs[caller[LevelOrg]]
	return ok
}

// Orgs lists the configured orgs, sorted.
func (c *Config) Orgs() []string { return sortedKeys(c.orgs) }
