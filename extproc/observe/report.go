package observe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// ReportOptions selects what WriteBudgets reports.
type ReportOptions struct {
	// Tenants to report; empty means every tenant the config names, or the
	// default caller of unidentified requests when it names none.
	Tenants []string
	// Policy whose budgets apply; empty means each tenant's own.
	Policy string
	// Team, User and Key pick one member of an org under orgs: to show with
	// its levels (the store keeps no index of members, so they cannot be
	// listed): User and Key are shown under Team when it is set, else
	// directly in the org.
	Team, User, Key string
	// Timeout bounds each tenant's read; zero means 5s.
	Timeout time.Duration
}

// MemberNote is printed under an org's tree: why its users and keys are not
// listed, and how to show one.
const MemberNote = "# users and keys are not listed: the store keeps no index of members (finding them would scan the keyspace); show one with --team T --user U or --key K"

// WriteBudgets writes, per tenant and budget window, the spend, the open
// reservations and the cap, as the store holds them now — the report of
// `tokenwarden budgets`. An org under orgs: is printed as its tree: the
// org's pool, each configured team's pool under it, and the member asked
// for (ReportOptions.User/Key) with its own budgets; each org is one read.
func WriteBudgets(ctx context.Context, w io.Writer, store limiter.Store, cfg *policy.Config, o ReportOptions, now time.Time) error {
	tenants := o.Tenants
	if len(tenants) == 0 {
		tenants = cfg.Tenants()
	}
	if len(tenants) == 0 && cfg.Identity.Unknown.Default != "" {
		tenants = []string{cfg.Identity.Unknown.Default}
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	// DEGRADED_USD is the part of SPENT_USD decided while the store was
	// unreachable (local or open failure mode) and reconciled afterwards.
	fmt.Fprintln(tw, "TENANT\tLEVEL\tNAME\tPOLICY\tWINDOW\tSTART\tEND\tSPENT_USD\tRESERVED_USD\tCAP_USD\tUSED\tDEGRADED_USD")
	for _, t := range tenants {
		rows, pol, isOrg := reportLevels(cfg, t, o)
		var budgets []limiter.Budget
		for _, r := range rows {
			budgets = append(budgets, r.budgets(now)...)
		}
		if len(budgets) == 0 {
			fmt.Fprintf(tw, "%s\torg\t%s\t%s\t-\t-\t-\t-\t-\t-\tno budgets\t-\n", t, t, pol)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		states, err := store.Budgets(cctx, t, budgets)
		cancel()
		if err != nil {
			return errors.Join(tw.Flush(), fmt.Errorf("tenant %s: %w", t, err))
		}
		i := 0
		for _, r := range rows {
			for range r.levelBudgets {
				st := states[i]
				i++
				_, window := limiter.SplitBudgetName(st.Name)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.6f\t%.6f\t%.2f\t%.1f%%\t%.6f\n", t, r.level, r.name, pol, window,
					st.Window.Start.Format(time.RFC3339), st.Window.End.Format(time.RFC3339),
					accounting.NanoUSD(st.Spent).USD(), accounting.NanoUSD(st.Reserved).USD(), accounting.NanoUSD(st.Cap).USD(), 100*st.Used(),
					accounting.NanoUSD(st.Degraded).USD())
			}
		}
		if isOrg {
			fmt.Fprintln(tw, MemberNote)
		}
		if err := writeBatchLedger(ctx, tw, store, t, now, timeout); err != nil {
			return errors.Join(tw.Flush(), fmt.Errorf("tenant %s: %w", t, err))
		}
	}
	return tw.Flush()
}

// writeBatchLedger prints what the tenant's batches reserved on submit and
// were charged this month (UTC), by batch API, when there were any: the
// part of the budgets' spend and reservations that is batch work.
func writeBatchLedger(ctx context.Context, w io.Writer, store limiter.Store, tenant string, now time.Time, timeout time.Duration) error {
	ns, ok := store.(limiter.Notes)
	if !ok {
		return nil
	}
	dialects := []string{gate.BatchDialect, gate.OpenAIBatchDialect}
	var keys []string
	for _, d := range dialects {
		keys = append(keys, gate.BatchLedgerKey(gate.BatchReserved, d, now), gate.BatchLedgerKey(gate.BatchSettled, d, now))
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	v, err := ns.NoteCounts(cctx, tenant, keys)
	cancel()
	if err != nil {
		return err
	}
	for i, d := range dialects {
		if reserved, settled := v[2*i], v[2*i+1]; reserved != 0 || settled != 0 {
			fmt.Fprintf(w, "# %s batches %s (UTC month %s): reserved on submit %.6f USD, settled %.6f USD\n", tenant, d,
				now.UTC().Format("2006-01"), accounting.NanoUSD(reserved).USD(), accounting.NanoUSD(settled).USD())
		}
	}
	return nil
}

// reportRow is one level of the tree with its budgets.
type reportRow struct {
	level, name  string // name is indented by depth
	key          string
	levelBudgets []policy.Budget
}

func (r reportRow) budgets(now time.Time) []limiter.Budget {
	p := policy.Policy{Budgets: r.levelBudgets}
	return limiter.LevelBudgets([]limiter.Level{{Key: r.key, Budgets: p.LimiterBudgets(now)}})
}

// reportLevels is the tree of tenant: its levels as Resolve would admit a
// member of each team (the org's and the teams' pools, not the defaults a
// member gets), and the member asked for. A flat tenant is one level.
func reportLevels(cfg *policy.Config, tenant string, o ReportOptions) (rows []reportRow, pol string, isOrg bool) {
	teams := cfg.Teams(tenant)
	if !cfg.IsOrg(tenant) {
		// A flat tenant (or one not configured): its own policy's budgets.
		p, _ := cfg.Policy(tenant, o.Policy)
		return []reportRow{{level: "org", name: tenant, levelBudgets: p.Budgets}}, p.Name, false
	}
	// A placeholder member makes the org and team levels pools (what every
	// member shares) rather than the caller's own.
	const placeholder = "\x00member"
	member := func(team string) []policy.ResolvedLevel {
		c := policy.Caller{tenant, team, placeholder, ""}
		if o.Key != "" && o.User == "" {
			c = policy.Caller{tenant, team, "", o.Key}
		} else if o.User != "" {
			c[policy.LevelUser] = o.User
			c[policy.LevelKey] = o.Key
		}
		return cfg.Resolve(c, o.Policy).Levels
	}
	pol = cfg.Resolve(policy.Caller{tenant, "", "", ""}, o.Policy).Policy.Name
	// Resolve leaves out a pool that checks nothing: an org without budgets
	// or limits of its own has no org row.
	if l, ok := levelOf(member(""), policy.LevelOrg); ok {
		rows = append(rows, reportRow{level: "org", name: tenant, key: "", levelBudgets: l.Budgets})
	}
	for _, team := range teams {
		if l, ok := levelOf(member(team), policy.LevelTeam); ok {
			rows = append(rows, reportRow{level: "team", name: "  " + team, key: l.Key, levelBudgets: l.Budgets})
		}
	}
	if o.User != "" || o.Key != "" {
		lv := member(o.Team)
		indent := "  "
		if _, ok := levelOf(lv, policy.LevelTeam); ok && o.Team != "" {
			indent = "    "
		}
		for _, l := range lv {
			if l.Level == policy.LevelUser || l.Level == policy.LevelKey {
				rows = append(rows, reportRow{level: l.Level.String(), name: indent + l.Name, key: l.Key, levelBudgets: l.Budgets})
			}
		}
	}
	return rows, pol, true
}

// levelOf finds the level of kind l among a resolution's levels, which
// leave out the pools that check nothing.
func levelOf(levels []policy.ResolvedLevel, l policy.Level) (policy.ResolvedLevel, bool) {
	for _, r := range levels {
		if r.Level == l {
			return r, true
		}
	}
	return policy.ResolvedLevel{}, false
}
