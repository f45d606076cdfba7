package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
	"github.com/tokenwarden/tokenwarden/test/internal/procs"
)

// serveProc is a `tokenwarden serve` process.
type serveProc struct {
	cmd    *exec.Cmd
	grpc   string
	admin  string
	config string // the config file's path
	done   chan struct{}
}

func startServe(t *testing.T, configYAML string, extraArgs ...string) *serveProc {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "tokenwarden.yaml")
	if err := os.WriteFile(cfgPath, []byte(withMeshIdentity(configYAML)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &serveProc{grpc: procs.FreeAddr(t), admin: procs.FreeAddr(t), config: cfgPath, done: make(chan struct{})}
	args := append([]string{"serve", "--config", cfgPath, "--grpc-addr", p.grpc, "--admin-addr", p.admin, "--log-level", "warn"}, extraArgs...)
	p.cmd = exec.Command(procs.Binary(t), args...)
	stderr, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Logf("serve: %s", sc.Text())
		}
	}()
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + p.admin + "/healthz"); err == nil {
			resp.Body.Close()
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("tokenwarden serve did not come up")
	return nil
}

func (p *serveProc) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *serveProc) metric(t *testing.T, series string) string {
	_, body := p.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimPrefix(line, series+" ")
		}
	}
	return ""
}

func (p *serveProc) filter(t *testing.T) *sim.Filter {
	conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f, err := sim.New(extprocv3.NewExternalProcessorClient(conn), gateway.DefaultFilterConfig())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestKilledReplicaLeaksNothing: a replica killed with SIGKILL mid-request
// holds its tenant's concurrency slot only until the lease expires, and its
// reservation is charged once, at its estimate, by whichever replica finds
// it expired.
func TestKilledReplicaLeaksNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts processes")
	}
	rs := redistest.Start(t, redistest.Options{})
	cfg := fmt.Sprintf(`
store: {redis: "redis://%s/0", timeout: 500ms}
policies:
  default:
    limits: {concurrent: 1, lease_ttl: 2s}
    budgets: [{window: month, usd: 100}]
tenants:
  k: {}
`, rs.Addr())
	s := newStack(t, stackOptions{config: cfg, redis: rs.Addr()}) // replica B, in-process
	a := startServe(t, cfg)                                       // replica A, to be killed

	body := `{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"A slow story, please."}]}`
	req, err := anthropic.ParseRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	estimate := req.InputTokens*nanoPrices["claude-sonnet-4-5"][0] + 100*nanoPrices["claude-sonnet-4-5"][1]

	resp, err := a.filter(t).Do(context.Background(), anthropicRequest(body,
		sim.Header{Name: "x-tenant-id", Value: "k"},
		sim.Header{Name: "x-mock-output-tokens", Value: "100"},
		sim.Header{Name: "x-mock-chunk-delay", Value: "100ms"}), s.upstream)
	if err != nil || resp.Status != 200 {
		t.Fatalf("slow stream through A: %v %+v", err, resp)
	}
	if _, err := resp.Body.Read(make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	_, _ = io.Copy(io.Discard, resp.Body) // the stream breaks: Envoy would reset or fail it
	killedAt := time.Now()

	tenantK := sim.Header{Name: "x-tenant-id", Value: "k"}
	x := s.do(context.Background(), 0, anthropicRequest(budgetBody(false), tenantK))
	if x.resp.Status != 429 || x.header("x-tokenwarden-denied") != "org/concurrency" {
		t.Fatalf("before the lease expires the dead replica's slot is still held: %d %v", x.resp.Status, x.resp.Headers)
	}
	if b := s.budget("k", "month"); b.Reserved != estimate || b.Spent != 0 {
		t.Fatalf("before expiry: %+v, want reserved %d", b, estimate)
	}
	time.Sleep(time.Until(killedAt.Add(2500 * time.Millisecond)))

	n := len(s.mock.Provider().Ledger())
	x = s.do(context.Background(), 0, anthropicRequest(budgetBody(false), tenantK, sim.Header{Name: "x-mock-output-tokens", Value: "100"}))
	if x.err != nil || x.resp.Status != 200 {
		t.Fatalf("after the lease expired the slot must be free: %v %+v", x.err, x.resp)
	}
	s.waitSettled(t, "k")
	entries := s.ledgerSince(n)
	if len(entries) != 1 {
		t.Fatalf("ledger %+v", entries)
	}
	second := expectedCost(t, "claude-sonnet-4-5", entries[0].Reported)
	if b := s.budget("k", "month"); b.Spent != estimate+second || b.Reserved != 0 {
		t.Fatalf("after expiry: %+v; want spent %d (the killed request's estimate %d + %d)", b, estimate+second, estimate, second)
	}
	estimatedUSD := s.total("tokenwarden_spend_usd_total", "tenant", "k", "source", "estimated")
	if want := float64(estimate) / 1e9; estimatedUSD < want*0.999999 || estimatedUSD > want*1.000001 {
		t.Fatalf("estimated spend %v USD, want %v", estimatedUSD, want)
	}

	// Charged once: later requests add only their own cost.
	n = len(s.mock.Provider().Ledger())
	x = s.do(context.Background(), 0, anthropicRequest(budgetBody(false), tenantK, sim.Header{Name: "x-mock-output-tokens", Value: "100"}))
	if x.resp.Status != 200 {
		t.Fatalf("third request: %+v", x.resp)
	}
	s.waitSettled(t, "k")
	third := expectedCost(t, "claude-sonnet-4-5", s.ledgerSince(n)[0].Reported)
	if b := s.budget("k", "month"); b.Spent != estimate+second+third {
		t.Fatalf("the expired reservation was charged again: %+v", b)
	}
	if got := s.total("tokenwarden_spend_usd_total", "tenant", "k", "source", "estimated"); got != estimatedUSD {
		t.Fatalf("estimated spend changed from %v to %v", estimatedUSD, got)
	}
}

// waitSettled waits until the tenant has no outstanding reservation.
func (s *stack) waitSettled(t *testing.T, tenant string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if s.budget(tenant, "month").Reserved == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("tenant %s still has reservations", tenant)
}

// TestStoreFailurePolicies kills Redis under a running serve: each policy
// does what it says, tokenwarden_store_up and /readyz's detail tell the
// truth (the replica stays ready: it answers), and the Redis that comes back
// is used again without a restart.
func TestStoreFailurePolicies(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts processes")
	}
	rs := redistest.Start(t, redistest.Options{})
	p := startServe(t, fmt.Sprintf(`
store: {redis: "redis://%s/0", timeout: 50ms, on_failure: closed, replicas: 2}
policies:
  default:
    limits: {requests_per_minute: 1000}
  lenient:
    limits: {requests_per_minute: 1000}
    on_failure: open
  shared:
    limits: {requests_per_minute: 4}
    on_failure: local
tenants:
  c: {}
  o: {policy: lenient}
  l: {policy: shared}
`, rs.Addr()))
	mock := newStack(t, stackOptions{config: "policies: {}"}) // for its mock provider
	f := p.filter(t)
	send := func(tenant string) (int, string) {
		resp, err := f.Do(context.Background(), anthropicRequest(budgetBody(false), sim.Header{Name: "x-tenant-id", Value: tenant}), mock.upstream)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		<-resp.Done()
		return resp.Status, string(b)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	for _, tenant := range []string{"c", "o", "l"} {
		if code, body := send(tenant); code != 200 {
			t.Fatalf("tenant %s with Redis up: %d %s", tenant, code, body)
		}
	}
	if code, _ := p.get(t, "/readyz"); code != 200 || p.metric(t, "tokenwarden_store_up") != "1" {
		t.Fatalf("ready %d store_up %q with Redis up", code, p.metric(t, "tokenwarden_store_up"))
	}

	rs.Kill()
	// The first request notices; the circuit then answers at once.
	send("o")
	waitFor("store_up 0", func() bool { return p.metric(t, "tokenwarden_store_up") == "0" })
	// Still ready: it answers every request (503s in the API's dialect for
	// the closed policy); the store's health is store_up and /readyz's detail.
	waitFor("the breaker to open", func() bool {
		code, body := p.get(t, "/readyz")
		return code == 200 && strings.Contains(body, "breaker open")
	})
	if code, body := send("c"); code != 503 || !strings.Contains(body, `"api_error"`) || !strings.Contains(body, "unavailable") {
		t.Errorf("closed policy with Redis down: %d %s", code, body)
	}
	if code, body := send("o"); code != 200 {
		t.Errorf("open policy with Redis down: %d %s", code, body)
	}
	// local: each of 2 replicas enforces half of 4 requests per minute.
	var ok, denied int
	for range 4 {
		switch code, _ := send("l"); code {
		case 200:
			ok++
		case 429:
			denied++
		}
	}
	if ok != 2 || denied != 2 {
		t.Errorf("local policy at 4 rpm over 2 replicas: %d admitted, %d denied; want 2 and 2", ok, denied)
	}

	rs.Restart()
	waitFor("store_up 1", func() bool { return p.metric(t, "tokenwarden_store_up") == "1" })
	if code, _ := p.get(t, "/readyz"); code != 200 {
		t.Errorf("/readyz = %d after Redis came back", code)
	}
	waitFor("the closed policy to admit again", func() bool { code, _ := send("c"); return code == 200 })
}
