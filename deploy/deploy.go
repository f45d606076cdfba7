// Package deploy holds tokenwarden's mesh integration files (Istio, Kubernetes, Grafana,
// Prometheus) and the one contract they share with the binary: the Prometheus metrics that
// `tokenwarden serve` exports. The dashboard and the alert rules are embedded so that tests —
// here and end to end in test/mesh — can check every metric they query against that contract
// and against a live /metrics.
package deploy

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

//go:embed grafana/tokenwarden.json prometheus/tokenwarden-rules.yaml
var files embed.FS

// Paths of the embedded files, relative to this directory.
const (
	DashboardPath = "grafana/tokenwarden.json"
	RulesPath     = "prometheus/tokenwarden-rules.yaml"
)

// MetricType is a Prometheus metric type.
type MetricType string

// The metric types tokenwarden exports.
const (
	Counter   MetricType = "counter"
	Gauge     MetricType = "gauge"
	Histogram MetricType = "histogram"
)

// Metric is one metric family exported by `tokenwarden serve` on its admin /metrics.
type Metric struct {
	Name   string
	Type   MetricType
	Labels []string
}

// Metrics is the exporter contract: every family `tokenwarden serve` exports, with its labels.
// Label values are bounded (tenants and models from the config, everything else "other").
var Metrics = []Metric{
	{"tokenwarden_requests_total", Counter, []string{"dialect", "model", "outcome"}},
	{"tokenwarden_tokens_total", Counter, []string{"model", "type"}},
	{"tokenwarden_cost_usd_total", Counter, []string{"model"}},
	{"tokenwarden_processing_seconds", Histogram, []string{"phase"}},
	{"tokenwarden_admissions_total", Counter, []string{"tenant", "result"}},
	{"tokenwarden_spend_usd_total", Counter, []string{"tenant", "model", "source", "api"}},
	{"tokenwarden_batch_usd_total", Counter, []string{"tenant", "dialect", "stage"}},
	{"tokenwarden_budget_used_ratio", Gauge, []string{"tenant", "level", "name", "window"}},
	{"tokenwarden_budget_spent_usd", Gauge, []string{"tenant", "level", "name", "window"}},
	{"tokenwarden_budget_cap_usd", Gauge, []string{"tenant", "level", "name", "window"}},
	{"tokenwarden_budget_exhaustion_seconds", Gauge, []string{"tenant", "level", "name", "window"}},
	{"tokenwarden_budget_alerts_total", Counter, []string{"tenant", "level", "name", "window", "threshold"}},
	{"tokenwarden_provider_latency_seconds", Histogram, []string{"policy"}},
	{"tokenwarden_provider_responses_total", Counter, []string{"dialect", "code"}},
	{"tokenwarden_prompt_cache_tokens_total", Counter, []string{"model", "type"}},
	{"tokenwarden_prompt_prefix_changes_total", Counter, []string{"policy"}},
	{"tokenwarden_model_rewrites_total", Counter, []string{"policy", "reason"}},
	{"tokenwarden_input_estimate_error_ratio", Histogram, []string{"model"}},
	{"tokenwarden_input_estimate_factor", Gauge, []string{"model"}},
	{"tokenwarden_output_clamped_total", Counter, []string{"policy"}},
	{"tokenwarden_store_up", Gauge, nil},
	{"tokenwarden_store_errors_total", Counter, []string{"op"}},
	{"tokenwarden_store_seconds", Histogram, []string{"op"}},
	{"tokenwarden_store_breaker_state", Gauge, []string{"state"}},
	{"tokenwarden_store_degraded_total", Counter, []string{"policy", "cause"}},
	{"tokenwarden_store_journal_entries", Gauge, nil},
	{"tokenwarden_store_dropped_total", Counter, []string{"queue"}},
	{"tokenwarden_store_reconciled_total", Counter, []string{"kind"}},
	{"tokenwarden_store_resets_total", Counter, nil},
	{"tokenwarden_store_last_reset_timestamp_seconds", Gauge, nil},
	{"tokenwarden_store_live_replicas", Gauge, nil},
	{"tokenwarden_lease_renewals_total", Counter, []string{"result"}},
	{"tokenwarden_active_streams", Gauge, nil},
	{"tokenwarden_unpriced_requests_total", Counter, nil},
	{"tokenwarden_config_reloads_total", Counter, []string{"result"}},
	{"tokenwarden_config_last_reload_success_timestamp_seconds", Gauge, nil},
	{"tokenwarden_response_cache_lookups_total", Counter, []string{"tenant", "result", "reason"}},
	{"tokenwarden_response_cache_saved_requests_total", Counter, []string{"tenant", "model"}},
	{"tokenwarden_response_cache_saved_tokens_total", Counter, []string{"tenant", "model", "type", "source"}},
	{"tokenwarden_response_cache_saved_usd_total", Counter, []string{"tenant", "model", "source"}},
	{"tokenwarden_response_cache_fills_total", Counter, []string{"result"}},
	{"tokenwarden_response_cache_bytes", Gauge, []string{"partition"}},
	{"tokenwarden_response_cache_evictions_total", Counter, []string{"partition"}},
	{"tokenwarden_response_cache_store_seconds", Histogram, []string{"op"}},
	{"tokenwarden_response_cache_errors_total", Counter, []string{"op"}},
	{"tokenwarden_provider_remaining_ratio", Gauge, []string{"host", "window"}},
	{"tokenwarden_upstream_cooldowns_total", Counter, []string{"host", "code"}},
	{"tokenwarden_upstream_cooldown_until_timestamp_seconds", Gauge, []string{"host"}},
	{"tokenwarden_upstream_cooldown_denials_total", Counter, []string{"host"}},
	{"tokenwarden_queue_requests", Gauge, []string{"lane"}},
	{"tokenwarden_queue_oldest_age_seconds", Gauge, []string{"lane"}},
	{"tokenwarden_queue_bytes", Gauge, nil},
	{"tokenwarden_queue_wait_seconds", Histogram, []string{"lane", "result"}},
	{"tokenwarden_queue_overflows_total", Counter, []string{"lane", "reason"}},
	{"tokenwarden_provider_response_headers_seconds", Histogram, []string{"policy", "lane"}},
	{"tokenwarden_upstream_pacing_engaged", Gauge, []string{"host"}},
	{"tokenwarden_upstream_pacing_rate", Gauge, []string{"host", "window"}},
	{"tokenwarden_upstream_paced_total", Counter, []string{"host"}},
	{"tokenwarden_leases_open", Gauge, nil},
	{"tokenwarden_leases_taken_total", Counter, nil},
	{"tokenwarden_leased_requests_total", Counter, nil},
	{"tokenwarden_leased_overflows_total", Counter, nil},
}

// Lookup returns the contract entry for a family name.
func Lookup(name string) (Metric, bool) {
	i := slices.IndexFunc(Metrics, func(m Metric) bool { return m.Name == name })
	if i < 0 {
		return Metric{}, false
	}
	return Metrics[i], true
}

// histogramSuffixes are the suffixes of a histogram family's series: a query
// naming tokenwarden_x_bucket uses family tokenwarden_x — but only if that family is a histogram,
// so a counter that happens to end in _count keeps its name.
var histogramSuffixes = []string{"_bucket", "_sum", "_count"}

// Selector is one reference to a tokenwarden_* series in a PromQL expression.
type Selector struct {
	// Series is the name as written, e.g. tokenwarden_processing_seconds_bucket.
	Series string
	// Family is the metric family it belongs to (histogram suffixes mapped back).
	Family string
	// Matchers are the label names of its {…} matchers, in order.
	Matchers []string
}

// Selectors returns every tokenwarden_* series an expression references, in order. Identifiers
// inside string literals (label values, regexes) and comments are not series names.
func Selectors(expr string) []Selector {
	var out []Selector
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(expr, i)
		case c == '#': // a comment runs to the end of the line
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case isIdentStart(c) || (c >= '0' && c <= '9'):
			// Numbers and durations ("5m", "1e3") are consumed whole so they never start a name.
			j := i + 1
			for j < len(expr) && isIdentPart(expr[j]) {
				j++
			}
			name := expr[i:j]
			i = j
			if !isIdentStart(c) || !strings.HasPrefix(name, "tokenwarden_") {
				continue
			}
			sel := Selector{Series: name, Family: family(name)}
			sel.Matchers, i = matcherNames(expr, i)
			out = append(out, sel)
		default:
			i++
		}
	}
	return out
}

// matcherNames reads a {…} label matcher list starting at or after i (after spaces), returning
// its label names and the index past it. Without a list it returns i unchanged.
func matcherNames(expr string, i int) ([]string, int) {
	j := i
	for j < len(expr) && (expr[j] == ' ' || expr[j] == '\t' || expr[j] == '\n') {
		j++
	}
	if j >= len(expr) || expr[j] != '{' {
		return nil, i
	}
	var names []string
	for j++; j < len(expr); {
		c := expr[j]
		switch {
		case c == '}':
			return names, j + 1
		case c == '"' || c == '\'' || c == '`':
			j = skipString(expr, j)
		case isIdentStart(c):
			k := j + 1
			for k < len(expr) && isIdentPart(expr[k]) {
				k++
			}
			names = append(names, expr[j:k])
			j = k
		default:
			j++
		}
	}
	return names, j
}

// MetricsInPromQL returns, sorted and distinct, the tokenwarden_* metric families an expression
// reads.
func MetricsInPromQL(expr string) []string {
	var out []string
	for _, s := range Selectors(expr) {
		out = append(out, s.Family)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func family(series string) string {
	for _, s := range histogramSuffixes {
		base, ok := strings.CutSuffix(series, s)
		if !ok {
			continue
		}
		if m, known := Lookup(base); known && m.Type == Histogram {
			return base
		}
	}
	return series
}

// skipString returns the index just past the string literal starting at i; an unterminated
// literal runs to the end. Backquoted strings have no escapes.
func skipString(s string, i int) int {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1
		}
	}
	return len(s)
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentPart(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

// DashboardQueries returns every PromQL text in a Grafana dashboard: panel target "expr"s and
// templating "query"/"definition" strings, found anywhere in the JSON (rows nest panels).
func DashboardQueries(dashboard []byte) ([]string, error) {
	var v any
	if err := json.Unmarshal(dashboard, &v); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[string]any:
			for k, x := range t {
				if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					out = append(out, s)
					continue
				}
				walk(x)
			}
		case []any:
			for _, x := range t {
				walk(x)
			}
		}
	}
	walk(v)
	return out, nil
}

// Rule is one alerting or recording rule of a Prometheus rule file.
type Rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// RuleGroups is the Prometheus rule file format.
type RuleGroups struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []Rule `json:"rules"`
	} `json:"groups"`
}

// ParseRules decodes a Prometheus rule file strictly (unknown fields are errors).
func ParseRules(data []byte) (RuleGroups, error) {
	var g RuleGroups
	if err := yaml.UnmarshalStrict(data, &g); err != nil {
		return g, fmt.Errorf("rules: %w", err)
	}
	return g, nil
}

// Query is one PromQL expression and where it comes from ("dashboard" or "alert <name>").
type Query struct {
	Expr, From string
}

// Queries returns every PromQL expression of the dashboard and the alert rules as found in fsys
// (this directory, or the embedded copy when fsys is nil).
func Queries(fsys fs.FS) ([]Query, error) {
	if fsys == nil {
		fsys = files
	}
	dash, err := fs.ReadFile(fsys, DashboardPath)
	if err != nil {
		return nil, err
	}
	exprs, err := DashboardQueries(dash)
	if err != nil {
		return nil, err
	}
	var out []Query
	for _, e := range exprs {
		out = append(out, Query{Expr: e, From: "dashboard"})
	}
	rulesFile, err := fs.ReadFile(fsys, RulesPath)
	if err != nil {
		return nil, err
	}
	rules, err := ParseRules(rulesFile)
	if err != nil {
		return nil, err
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out = append(out, Query{Expr: r.Expr, From: "alert " + r.Alert})
		}
	}
	return out, nil
}

// UsedMetrics returns, sorted and distinct, every tokenwarden_* family the embedded dashboard
// and alert rules query.
func UsedMetrics() ([]string, error) {
	qs, err := Queries(nil)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, q := range qs {
		out = append(out, MetricsInPromQL(q.Expr)...)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
