// Package mesh tests, from outside and across processes, that the binary exports every metric
// the Grafana dashboard and the Prometheus alert rules in deploy/ query.
//
// It builds tokenwarden, starts `mock-provider`, `serve` and `gateway` (the Envoy stand-in) on
// free loopback ports, drives Anthropic and OpenAI traffic (JSON and SSE, a provider error, a
// budget exhausted, a config reload failing then succeeding) and scrapes the admin /metrics.
package mesh

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/deploy"
	"github.com/tokenwarden/tokenwarden/test/internal/procs"
)

// start runs one subcommand until the test ends; its output goes to a log file that is printed
// if the test fails.
func start(t *testing.T, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), args[0]+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- %s log ---\n%s", args[0], b)
		}
	})
}

// waitFor polls cond every 100ms until it holds or the deadline passes.
func waitFor(t *testing.T, what string, deadline time.Duration, cond func() error) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var client = &http.Client{Timeout: 30 * time.Second}

func httpGet(url string) (int, []byte, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func dial(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

const configTemplate = `store:
  redis: ""
  timeout: 25ms
  on_failure: local
identity:
  # The harness plays the mesh: it sets x-tenant-id itself.
  from:
    - header: x-tenant-id
      trusted: true
  unknown: default:anonymous
  unconfigured: own
policies:
  default:
    limits: {requests_per_minute: %d, tokens_per_minute: 10000000, concurrent: 16}
    budgets:
      - {window: day, usd: 1000, timezone: UTC, alert_at: [0.8, 0.95]}
    models:
      aliases: {fast: claude-haiku-4-5}
    prompt_cache: {inject: true, ttl: 5m}
tenants:
  acme: {policy: default}
  # A cap a few requests exhaust: budget gauges, threshold alerts and denied_budget_day.
  spender: {policy: default, budgets: [{window: day, usd: 0.002, timezone: UTC, alert_at: [0.8, 0.95]}]}
`

// exchange sends one request through the gateway and returns the status and the whole body
// (for SSE, the whole stream).
func exchange(t *testing.T, gw, path, tenant, body string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+gw+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-tenant-id", tenant)
	if strings.HasPrefix(path, "/v1/messages") {
		req.Header.Set("anthropic-version", "2023-06-01")
		req.Header.Set("x-api-key", "sk-ant-test")
	} else {
		req.Header.Set("authorization", "Bearer sk-test")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: reading body: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// exposition is a parsed Prometheus text exposition: declared type per family, and sample
// values by full series text (name{labels}).
type exposition struct {
	types   map[string]string
	samples map[string]float64
}

func parseExposition(b []byte) (exposition, error) {
	e := exposition{types: map[string]string{}, samples: map[string]float64{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			f := strings.Fields(rest)
			if len(f) != 2 {
				return e, fmt.Errorf("bad TYPE line %q", line)
			}
			e.types[f[0]] = f[1]
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return e, fmt.Errorf("bad sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return e, fmt.Errorf("sample %q: %w", line, err)
		}
		e.samples[line[:i]] = v
	}
	return e, sc.Err()
}

// has reports whether the family has at least one sample (histograms through _bucket).
func (e exposition) has(family string, t deploy.MetricType) bool {
	series := family
	if t == deploy.Histogram {
		series += "_bucket"
	}
	for s := range e.samples {
		name, _, _ := strings.Cut(s, "{")
		if name == series {
			return true
		}
	}
	return false
}

func (e exposition) value(series string) float64 { return e.samples[series] }

func TestDashboardAndAlertMetricsAreExported(t *testing.T) {
	bin := procs.Binary(t)
	dir := t.TempDir()
	configPath := filepath.Join(dir, "tokenwarden.yaml")
	if err := os.WriteFile(configPath, fmt.Appendf(nil, configTemplate, 600), 0o600); err != nil {
		t.Fatal(err)
	}
	mockAddr, grpcAddr, adminAddr, gwAddr := procs.FreeAddr(t), procs.FreeAddr(t), procs.FreeAddr(t), procs.FreeAddr(t)

	start(t, bin, "mock-provider", "--listen", mockAddr)
	start(t, bin, "serve", "--config", configPath, "--grpc-addr", grpcAddr, "--admin-addr", adminAddr)
	waitFor(t, "mock provider", 30*time.Second, func() error { return dial(mockAddr) })
	waitFor(t, "serve /readyz", 30*time.Second, func() error {
		code, _, err := httpGet("http://" + adminAddr + "/readyz")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("status %d", code)
		}
		return err
	})
	start(t, bin, "gateway", "--listen", gwAddr, "--upstream", "http://"+mockAddr, "--processor", grpcAddr, "--policy", "default")
	waitFor(t, "gateway", 30*time.Second, func() error { return dial(gwAddr) })

	anthropic := `{"model":%q,"max_tokens":64,"stream":%t,"system":"You are terse.","messages":[{"role":"user","content":"Say hello."}]}`
	openai := `{"model":"gpt-4o-mini","stream":%t,"messages":[{"role":"user","content":"Say hello."}]}`
	for _, stream := range []bool{false, true} {
		for _, model := range []string{"claude-sonnet-4-5", "fast"} {
			if code, body := exchange(t, gwAddr, "/v1/messages", "acme", fmt.Sprintf(anthropic, model, stream), nil); code != http.StatusOK {
				t.Fatalf("anthropic %s stream=%t: %d %s", model, stream, code, body)
			}
		}
		if code, body := exchange(t, gwAddr, "/v1/chat/completions", "acme", fmt.Sprintf(openai, stream), nil); code != http.StatusOK {
			t.Fatalf("openai stream=%t: %d %s", stream, code, body)
		}
	}
	// A provider overload is passed through (and counted by code).
	if code, _ := exchange(t, gwAddr, "/v1/messages", "acme", fmt.Sprintf(anthropic, "claude-sonnet-4-5", false), map[string]string{"x-mock-status": "529"}); code != 529 {
		t.Errorf("scripted 529 came back as %d", code)
	}
	// Prompt caching: a cacheable system prompt (about 2000 tokens, above the 1024-token minimum)
	// is written by the first request and read by the second.
	system := strings.Repeat("Answer in one short sentence and never mention these instructions. ", 120)
	cached := fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":32,"system":[{"type":"text","text":%q,"cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"Say hello."}]}`, system)
	for range 2 {
		if code, body := exchange(t, gwAddr, "/v1/messages", "acme", cached, nil); code != http.StatusOK {
			t.Fatalf("cached prompt: %d %s", code, body)
		}
	}
	// Spend the small budget in small steps (max_tokens 8 keeps each reservation near 7% of the
	// cap) until it denies: on the way it crosses the 80% alert threshold.
	small := `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"Say hello."}]}`
	denied := false
	for i := 0; i < 60 && !denied; i++ {
		code, _ := exchange(t, gwAddr, "/v1/messages", "spender", small, nil)
		denied = code == http.StatusTooManyRequests
	}
	if !denied {
		t.Error("tenant spender was never denied by its $0.002 daily budget")
	}

	// Hot reload: a broken file is rejected, a valid change is loaded.
	metrics := func() exposition {
		code, b, err := httpGet("http://" + adminAddr + "/metrics")
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /metrics: %d %v", code, err)
		}
		e, err := parseExposition(b)
		if err != nil {
			t.Fatalf("/metrics: %v", err)
		}
		return e
	}
	waitReload := func(result string, atLeast float64) {
		series := fmt.Sprintf(`tokenwarden_config_reloads_total{result=%q}`, result)
		waitFor(t, series, 30*time.Second, func() error {
			if v := metrics().value(series); v < atLeast {
				return fmt.Errorf("%s = %v", series, v)
			}
			return nil
		})
	}
	if err := os.WriteFile(configPath, []byte("store: {on_failure: sometimes}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitReload("failure", 1)
	if err := os.WriteFile(configPath, fmt.Appendf(nil, configTemplate, 1200), 0o600); err != nil {
		t.Fatal(err)
	}
	waitReload("success", 1)

	used, err := deploy.UsedMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if len(used) == 0 {
		t.Fatal("the dashboard and rules query no tokenwarden_* metric")
	}
	e := metrics()
	for _, name := range used {
		m, ok := deploy.Lookup(name)
		if !ok {
			t.Errorf("%s is queried but not in the metric contract (deploy.Metrics)", name)
			continue
		}
		if got := e.types[name]; got != string(m.Type) {
			t.Errorf("%s: exported as type %q, the contract says %s", name, got, m.Type)
		}
		if !e.has(name, m.Type) {
			t.Errorf("%s: no samples exported (label vectors must be pre-initialised or exercised)", name)
		}
	}
	if v := e.value("tokenwarden_store_up"); v != 1 {
		t.Errorf("tokenwarden_store_up = %v with the in-memory store, want 1", v)
	}
}
