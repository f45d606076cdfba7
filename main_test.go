package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokenwarden.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckConfig(t *testing.T) {
	good := writeFile(t, "policies: {default: {limits: {requests_per_minute: 10}}}\n")
	bad := writeFile(t, "policies: {default: {budgets: [{window: fortnight, usd: 1}]}}\n")
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"check-config", good}, &out, &errOut); err != nil || !strings.Contains(out.String(), "OK") {
		t.Fatalf("good config: %v %q", err, out.String())
	}
	err := run(context.Background(), []string{"check-config", bad}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "policies.default.budgets[0].window") || exitCode(err) != 1 {
		t.Fatalf("bad config: %v", err)
	}
	if err := run(context.Background(), []string{"check-config"}, &out, &errOut); !errors.Is(err, errUsage) || exitCode(err) != 2 {
		t.Fatalf("missing file argument: %v", err)
	}
	// Empty, truncated and schema-less files are refused, and it says why.
	for body, why := range map[string]string{
		"":                                  "the file is empty",
		"# just a comment\n":                "the file is empty",
		"store: {timeout: 1s}\n":            "no policies: mapping",
		"policies:\n  default:\n    limits": "policies",
	} {
		err := run(context.Background(), []string{"check-config", writeFile(t, body)}, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), why) || exitCode(err) != 1 {
			t.Errorf("check-config of %q: %v, want it to say %q", body, err, why)
		}
	}
}

func TestUnknownCommandAndEnvFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"frobnicate"}, &out, &errOut); !errors.Is(err, errUsage) {
		t.Fatalf("unknown command: %v", err)
	}
	// A TOKENWARDEN_* variable fills a flag the command line leaves out.
	t.Setenv("TOKENWARDEN_GRPC_ADDR", "not-an-address")
	err := run(context.Background(), []string{"serve"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "--grpc-addr") {
		t.Fatalf("serve with a bad TOKENWARDEN_GRPC_ADDR: %v", err)
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestServeAnswersAdminAndStopsOnCancel(t *testing.T) {
	grpcAddr, adminAddr := freePort(t), freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--grpc-addr", grpcAddr, "--admin-addr", adminAddr}, io.Discard, io.Discard)
	}()
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + adminAddr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"tokenwarden_store_up 1", "tokenwarden_config_reloads_total{result=\"success\"} 1", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + adminAddr + path)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", path, err, resp)
		} else {
			resp.Body.Close()
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v on cancel", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not stop")
	}
}

func TestBudgetsReadsTheSharedStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	rs := redistest.Start(t, redistest.Options{})
	cfgPath := writeFile(t, fmt.Sprintf(`
store: {redis: "redis://%s/0"}
policies:
  default:
    budgets: [{window: day, usd: 10}, {window: month, usd: 100}]
tenants:
  acme: {}
`, rs.Addr()))
	// Spend $1.50 and reserve $0.25 for acme, as a serve replica would.
	spendAndHold(t, cfgPath, func(cfg *policy.Config, now time.Time) []limiter.Budget {
		p, _ := cfg.Policy("acme", "")
		return p.LimiterBudgets(now)
	}, 1_500_000_000, 250_000_000)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"budgets", "--config", cfgPath, "--tenant", "acme"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and two windows:\n%s", out.String())
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if f[0] != "acme" || f[1] != "org" || f[2] != "acme" || f[7] != "1.500000" || f[8] != "0.250000" {
			t.Errorf("row %q: want spent 1.500000 and reserved 0.250000", l)
		}
	}
	if !strings.Contains(lines[1], "day") || !strings.Contains(lines[1], "17.5%") || !strings.Contains(lines[2], "1.8%") {
		t.Errorf("used ratios:\n%s", out.String())
	}
}

// spendAndHold settles spent and leaves held reserved for acme against the
// budgets of cfgPath's configuration, in the shared store it names.
func spendAndHold(t *testing.T, cfgPath string, budgetsOf func(*policy.Config, time.Time) []limiter.Budget, spent, held int64) {
	t.Helper()
	_, cfg, err := loadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	opened, err := openStore(cfg.Store, nil, true, storeRuntime{})
	if err != nil {
		t.Fatal(err)
	}
	defer opened.Close()
	ctx := context.Background()
	budgets := budgetsOf(cfg, time.Now())
	for i, cost := range []int64{spent, held} {
		if _, err := opened.Store.Admit(ctx, limiter.AdmitRequest{Tenant: "acme", RequestID: fmt.Sprint(i), Cost: cost, Budgets: budgets}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := opened.Store.Settle(ctx, limiter.SettleRequest{Tenant: "acme", RequestID: "0", Cost: spent, Budgets: budgets}); err != nil {
		t.Fatal(err)
	}
}

// tokenwarden budgets prints an org as its tree: the org's pool, each
// configured team's pool, and the member asked for, from one real Redis.
func TestBudgetsPrintsTheOrgTree(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	rs := redistest.Start(t, redistest.Options{})
	cfgPath := writeFile(t, fmt.Sprintf(`
store: {redis: "redis://%s/0"}
policies:
  default:
    budgets: [{window: day, usd: 10}]
orgs:
  acme:
    budgets: [{window: month, usd: 100}]
    teams:
      search: {budgets: [{window: day, usd: 20}]}
      ads: {budgets: [{window: day, usd: 30}]}
`, rs.Addr()))
	// Alice of search spends $2 and holds $0.50, as the gate would admit her.
	var budgets []limiter.Budget
	spendAndHold(t, cfgPath, func(cfg *policy.Config, now time.Time) []limiter.Budget {
		r := cfg.Resolve(policy.Caller{"acme", "search", "alice", ""}, "")
		var levels []limiter.Level
		for _, l := range r.Levels {
			p := policy.Policy{Budgets: l.Budgets}
			levels = append(levels, limiter.Level{Key: l.Key, Budgets: p.LimiterBudgets(now)})
		}
		budgets = limiter.LevelBudgets(levels)
		return budgets
	}, 2_000_000_000, 500_000_000)
	if len(budgets) != 3 {
		t.Fatalf("alice's budgets %+v, want the org's month, the team's day and her own day", budgets)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		args []string
		want [][]string // level, name, window, spent, reserved, cap
	}{
		{nil, [][]string{
			{"org", "acme", "month", "2.000000", "0.500000", "100.00"},
			{"team", "ads", "day", "0.000000", "0.000000", "30.00"},
			{"team", "search", "day", "2.000000", "0.500000", "20.00"},
		}},
		{[]string{"--team", "search", "--user", "alice"}, [][]string{
			{"org", "acme", "month", "2.000000", "0.500000", "100.00"},
			{"team", "ads", "day", "0.000000", "0.000000", "30.00"},
			{"team", "search", "day", "2.000000", "0.500000", "20.00"},
			{"user", "alice", "day", "2.000000", "0.500000", "10.00"},
		}},
	} {
		var out bytes.Buffer
		args := append([]string{"budgets", "--config", cfgPath, "--tenant", "acme"}, tc.args...)
		if err := run(ctx, args, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		t.Logf("tokenwarden %s\n%s", strings.Join(args, " "), out.String())
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != len(tc.want)+2 || lines[len(lines)-1] != observe.MemberNote {
			t.Fatalf("want a header, %d levels and the members note:\n%s", len(tc.want), out.String())
		}
		for i, w := range tc.want {
			f := strings.Fields(lines[i+1])
			got := []string{f[1], f[2], f[4], f[7], f[8], f[9]}
			if f[0] != "acme" || !slices.Equal(got, w) {
				t.Errorf("row %d %q: want %v", i, lines[i+1], w)
			}
		}
	}
}

// The configuration examples in the README must stay valid tokenwarden.yaml
// files: the main one and the lanes one ("Lanes and the admission queue").
func TestReadmeConfigExampleIsValid(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, first := range []string{"store:", "queue:"} {
		start := bytes.Index(readme, []byte("```yaml\n"+first))
		if start < 0 {
			t.Fatalf("README has no tokenwarden.yaml example starting with %s", first)
		}
		body := readme[start+len("```yaml\n"):]
		end := bytes.Index(body, []byte("```"))
		var out bytes.Buffer
		if err := run(context.Background(), []string{"check-config", writeFile(t, string(body[:end]))}, &out, io.Discard); err != nil {
			t.Fatalf("the README example starting with %s does not validate: %v", first, err)
		}
	}
}

func TestGRPCCredentialsRefusePlaintextBeyondLoopback(t *testing.T) {
	cases := []struct {
		addr     string
		files    extproc.TLSFiles
		insecure bool
		wantErr  string
	}{
		{addr: "127.0.0.1:50051"},
		{addr: "[::1]:50051"},
		{addr: "localhost:50051"},
		{addr: "0.0.0.0:50051", wantErr: "not a loopback address"},
		{addr: ":50051", wantErr: "not a loopback address"},
		{addr: "10.1.2.3:50051", wantErr: "not a loopback address"},
		{addr: "0.0.0.0:50051", insecure: true},
		{addr: "0.0.0.0:50051", files: extproc.TLSFiles{Cert: "c"}, wantErr: "go together"},
		{addr: "0.0.0.0:50051", files: extproc.TLSFiles{ClientCA: "ca"}, wantErr: "go together"},
		{addr: "0.0.0.0:50051", files: extproc.TLSFiles{Cert: "/nonexistent", Key: "/nonexistent"}, wantErr: "not a loopback address"},
		{addr: "0.0.0.0:50051", files: extproc.TLSFiles{Cert: "/nonexistent", Key: "/nonexistent", ClientCA: "/nonexistent"}, wantErr: "no such file"},
	}
	for _, tc := range cases {
		_, err := grpcCredentials(tc.addr, tc.files, tc.insecure, nil)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("grpcCredentials(%q, %+v, insecure=%v) = %v, want %q", tc.addr, tc.files, tc.insecure, err, tc.wantErr)
		}
	}
}
