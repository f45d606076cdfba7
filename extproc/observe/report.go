package observe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
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
	// Timeout bounds each tenant's read; zero means 5s.
	Timeout time.Duration
}

// WriteBudgets writes, per tenant and budget window, the spend, the open
// reservations and the cap, as the store holds them now — the report of
// `tokenwarden budgets`.
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
	fmt.Fprintln(tw, "TENANT\tPOLICY\tWINDOW\tSTART\tEND\tSPENT_USD\tRESERVED_USD\tCAP_USD\tUSED\tDEGRADED_USD")
	for _, t := range tenants {
		p, _ := cfg.Policy(t, o.Policy)
		budgets := p.LimiterBudgets(now)
		if len(budgets) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\tno budgets\t-\n", t, p.Name)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		states, err := store.Budgets(cctx, t, budgets)
		cancel()
		if err != nil {
			return errors.Join(tw.Flush(), fmt.Errorf("tenant %s: %w", t, err))
		}
		for _, s := range states {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.6f\t%.6f\t%.2f\t%.1f%%\t%.6f\n", t, p.Name, s.Name,
				s.Window.Start.Format(time.RFC3339), s.Window.End.Format(time.RFC3339),
				accounting.NanoUSD(s.Spent).USD(), accounting.NanoUSD(s.Reserved).USD(), accounting.NanoUSD(s.Cap).USD(), 100*s.Used(),
				accounting.NanoUSD(s.Degraded).USD())
		}
	}
	return tw.Flush()
}
