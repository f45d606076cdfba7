package deploy

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestSelectors(t *testing.T) {
	cases := []struct {
		expr string
		want []Selector
	}{
		{`rate(tokenwarden_requests_total{outcome="ok", model=~"claude-.*"}[5m])`,
			[]Selector{{"tokenwarden_requests_total", "tokenwarden_requests_total", []string{"outcome", "model"}}}},
		{`histogram_quantile(0.9, sum by (le) (rate(tokenwarden_processing_seconds_bucket[5m])))`,
			[]Selector{{"tokenwarden_processing_seconds_bucket", "tokenwarden_processing_seconds", nil}}},
		{`tokenwarden_store_seconds_sum / tokenwarden_store_seconds_count`,
			[]Selector{{"tokenwarden_store_seconds_sum", "tokenwarden_store_seconds", nil}, {"tokenwarden_store_seconds_count", "tokenwarden_store_seconds", nil}}},
		// Only histograms lose a suffix: an unknown _count name stays itself (and fails the contract).
		{`tokenwarden_requests_total_count`, []Selector{{"tokenwarden_requests_total_count", "tokenwarden_requests_total_count", nil}}},
		{`tokenwarden_active_streams_bucket`, []Selector{{"tokenwarden_active_streams_bucket", "tokenwarden_active_streams_bucket", nil}}},
		// Names inside strings, escaped quotes, backquotes and comments are not series.
		{`up{job="tokenwarden_fake"} + on() tokenwarden_store_up`, []Selector{{"tokenwarden_store_up", "tokenwarden_store_up", nil}}},
		{`up{a="\"tokenwarden_z"} or up{b='tokenwarden_y'} or up{c=~` + "`tokenwarden_w`" + `}`, nil},
		{"# tokenwarden_commented\ntokenwarden_active_streams { }", []Selector{{"tokenwarden_active_streams", "tokenwarden_active_streams", nil}}},
		{`label_values(tokenwarden_budget_cap_usd, tenant)`, []Selector{{"tokenwarden_budget_cap_usd", "tokenwarden_budget_cap_usd", nil}}},
		{`5m1tokenwarden_x + 1e3`, nil},
		{`tokenwarden_spend_usd_total{tenant=~"$tenant"`, []Selector{{"tokenwarden_spend_usd_total", "tokenwarden_spend_usd_total", []string{"tenant"}}}},
		{``, nil},
	}
	for _, tc := range cases {
		got := Selectors(tc.expr)
		if len(got) != len(tc.want) {
			t.Errorf("Selectors(%q) = %+v, want %+v", tc.expr, got, tc.want)
			continue
		}
		for i := range got {
			if got[i].Series != tc.want[i].Series || got[i].Family != tc.want[i].Family || !slices.Equal(got[i].Matchers, tc.want[i].Matchers) {
				t.Errorf("Selectors(%q)[%d] = %+v, want %+v", tc.expr, i, got[i], tc.want[i])
			}
		}
	}
	if got := MetricsInPromQL(`tokenwarden_store_up + tokenwarden_store_up + tokenwarden_active_streams`); !slices.Equal(got, []string{"tokenwarden_active_streams", "tokenwarden_store_up"}) {
		t.Errorf("MetricsInPromQL not sorted and distinct: %v", got)
	}
}

func FuzzSelectors(f *testing.F) {
	f.Add(`sum by (le) (rate(tokenwarden_processing_seconds_bucket{phase="x"}[5m]))`)
	f.Add(`tokenwarden_a{b="\"}`)
	f.Add("tokenwarden_x{`")
	f.Fuzz(func(t *testing.T, expr string) {
		for _, s := range Selectors(expr) {
			if !strings.HasPrefix(s.Series, "tokenwarden_") || !strings.Contains(expr, s.Series) {
				t.Fatalf("selector %+v not in %q", s, expr)
			}
			if !strings.HasPrefix(s.Series, s.Family) {
				t.Fatalf("family %q is not a prefix of %q", s.Family, s.Series)
			}
		}
	})
}

// queries returns every PromQL expression of the dashboard and the rules on disk.
func queries(t *testing.T) []Query {
	t.Helper()
	qs, err := Queries(os.DirFS("."))
	if err != nil {
		t.Fatal(err)
	}
	return qs
}

func readRules(t *testing.T) RuleGroups {
	t.Helper()
	b, err := os.ReadFile(RulesPath)
	if err != nil {
		t.Fatal(err)
	}
	g, err := ParseRules(b)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestQueriesUseTheContract checks every tokenwarden_* series the dashboard and the alert rules
// query against the exported metrics: the family exists, a histogram is read through its
// _bucket/_sum/_count series (its bare name has no samples), and every label matcher names a
// label the family has.
func TestQueriesUseTheContract(t *testing.T) {
	extra := []string{"instance", "job"} // added by the scrape
	for _, q := range queries(t) {
		from := q.From
		for _, s := range Selectors(q.Expr) {
			m, ok := Lookup(s.Family)
			if !ok {
				t.Errorf("%s: %q is not an exported metric (query %q)", from, s.Series, q.Expr)
				continue
			}
			if m.Type == Histogram && s.Series == s.Family {
				t.Errorf("%s: histogram %s queried by its bare name (use _bucket/_sum/_count)", from, s.Series)
			}
			for _, l := range s.Matchers {
				if !slices.Contains(m.Labels, l) && !slices.Contains(extra, l) && (l != "le" || !strings.HasSuffix(s.Series, "_bucket")) {
					t.Errorf("%s: %s has no label %q (labels %v)", from, s.Series, l, m.Labels)
				}
			}
		}
	}
}

// TestDashboardCoverage pins the topics the dashboard must show, by the families each needs.
func TestDashboardCoverage(t *testing.T) {
	var qs []string
	used := map[string]bool{}
	for _, q := range queries(t) {
		if q.From != "dashboard" {
			continue
		}
		qs = append(qs, q.Expr)
		for _, m := range MetricsInPromQL(q.Expr) {
			used[m] = true
		}
	}
	topics := map[string][]string{
		"spend against budget":         {"tokenwarden_budget_spent_usd", "tokenwarden_budget_cap_usd", "tokenwarden_budget_used_ratio"},
		"burn rate":                    {"tokenwarden_spend_usd_total"},
		"tokens by class, cache share": {"tokenwarden_tokens_total", "tokenwarden_prompt_cache_tokens_total"},
		"decisions and denials":        {"tokenwarden_admissions_total", "tokenwarden_requests_total"},
		"processor latency per phase":  {"tokenwarden_processing_seconds"},
		"provider latency by policy":   {"tokenwarden_provider_latency_seconds"},
		"store health":                 {"tokenwarden_store_up", "tokenwarden_store_errors_total", "tokenwarden_store_seconds"},
		"config reloads":               {"tokenwarden_config_reloads_total", "tokenwarden_config_last_reload_success_timestamp_seconds"},
	}
	for topic, need := range topics {
		for _, m := range need {
			if !used[m] {
				t.Errorf("dashboard topic %q: no query reads %s", topic, m)
			}
		}
	}
	for _, q := range []string{"0.5", "0.95", "0.99"} {
		if !slices.ContainsFunc(qs, func(e string) bool {
			return strings.Contains(e, "histogram_quantile("+q+",") && strings.Contains(e, "tokenwarden_provider_latency_seconds_bucket") && strings.Contains(e, "policy")
		}) {
			t.Errorf("no provider latency p%s by policy", q)
		}
	}
}

// TestDashboardStructure checks what Grafana needs to import and render it: unique panel ids,
// a datasource on every query panel, and only variables that are defined.
func TestDashboardStructure(t *testing.T) {
	b, err := os.ReadFile(DashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int            `json:"id"`
			Type       string         `json:"type"`
			Title      string         `json:"title"`
			Datasource map[string]any `json:"datasource"`
			GridPos    struct{ H, W, X, Y int }
			Targets    []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || len(d.Panels) < 10 {
		t.Fatalf("uid %q, %d panels", d.UID, len(d.Panels))
	}
	vars := map[string]bool{"__rate_interval": true, "__range": true, "__interval": true}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	varRef := regexp.MustCompile(`\$\{?(\w+)`)
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("duplicate panel id %d", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource["uid"] != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %v, %d targets", p.Title, p.Datasource, len(p.Targets))
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" {
				t.Errorf("panel %q: empty expr or refId", p.Title)
			}
			for _, m := range varRef.FindAllStringSubmatch(tg.Expr, -1) {
				if !vars[m[1]] {
					t.Errorf("panel %q uses undefined variable $%s", p.Title, m[1])
				}
			}
		}
	}
}

// TestRulesCovered requires every alert to be exercised by the promtool unit tests both firing
// (a non-empty exp_alerts) and not firing (an empty one).
func TestRulesCovered(t *testing.T) {
	b, err := os.ReadFile("prometheus/tokenwarden-rules.test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	var alerts []string
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			if !fires[r.Alert] {
				t.Errorf("alert %s: no promtool test where it fires", r.Alert)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: needs a severity label and a summary", r.Alert)
			}
		}
	}
	// Budget bands are tested "not firing" by their neighbours' tenants in the same evaluation;
	// everything else needs an explicit quiet case.
	for _, a := range alerts {
		if !quiet[a] && !strings.HasPrefix(a, "TokenwardenBudget") {
			t.Errorf("alert %s: no promtool test where it stays quiet", a)
		}
	}
	for _, want := range []string{"TokenwardenBudget80Percent", "TokenwardenBudget95Percent", "TokenwardenBudgetExhausted",
		"TokenwardenPromptCacheShareLow", "TokenwardenProviderLatencyHigh", "TokenwardenStoreDown", "TokenwardenStoreErrors",
		"TokenwardenDenialRateHigh", "TokenwardenConfigReloadFailing",
		"TokenwardenStoreQueueOverflow", "TokenwardenStoreReset", "TokenwardenStoreShedding", "TokenwardenStoreReconciliationStuck"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("missing alert %s", want)
		}
	}
}

// TestPromtool runs promtool's own syntax check and the unit tests in
// prometheus/tokenwarden-rules.test.yaml. deploy/install-tools.sh installs promtool.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test: deploy/install-tools.sh installs what it needs")
		}
		t.Skip("promtool not installed (deploy/install-tools.sh installs it)")
	}
	for _, args := range [][]string{
		{"check", "rules", "tokenwarden-rules.yaml"},
		{"test", "rules", "tokenwarden-rules.test.yaml"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, promtool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func TestUsedMetricsEmbedded(t *testing.T) {
	used, err := UsedMetrics()
	if err != nil {
		t.Fatal(err)
	}
	// The embedded copy is what test/mesh checks against a live /metrics; it must see the same
	// families as the files on disk.
	want := map[string]bool{}
	for _, q := range queries(t) {
		for _, m := range MetricsInPromQL(q.Expr) {
			want[m] = true
		}
	}
	if len(used) != len(want) {
		t.Fatalf("UsedMetrics %v, files use %v", used, want)
	}
	for _, m := range used {
		if !want[m] {
			t.Errorf("UsedMetrics has %s, the files do not", m)
		}
	}
}

// TestDashboardLevels: a level selector, budget panels that follow it, and a
// hierarchy table of every level of the selected orgs.
func TestDashboardLevels(t *testing.T) {
	b, err := os.ReadFile(DashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	level := false
	for _, v := range d.Templating.List {
		level = level || v.Name == "level" && v.Query == "org,team,user,key"
	}
	if !level {
		t.Error("no level variable over org,team,user,key")
	}
	hierarchy := false
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if strings.Contains(tg.Expr, "tokenwarden_budget_") && strings.Contains(p.Title, "$window") && p.Type != "table" &&
				!strings.Contains(tg.Expr, `level=~"$level"`) {
				t.Errorf("panel %q does not follow the level selector: %s", p.Title, tg.Expr)
			}
			if p.Type == "table" && strings.Contains(tg.Expr, "by (tenant, level, name)") {
				hierarchy = true
			}
		}
	}
	if !hierarchy {
		t.Error("no hierarchy table by tenant, level and name")
	}
}
