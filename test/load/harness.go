package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

// Options configures a whole harness run.
type Options struct {
	// Tokenwarden is the path of the tokenwarden binary to start with
	// `serve`. Required.
	Tokenwarden string
	// Floor returns the command that serves the no-op floor on addr (the
	// harness binary re-executed, see ServeNoop). Required.
	Floor func(addr string) *exec.Cmd
	// RedisServer is the redis-server binary (default "redis-server").
	RedisServer string
	// Scenarios run in order, each against both targets.
	Scenarios []Scenario
	// Rounds splits each scenario's Duration into this many alternating
	// floor/tokenwarden slices (default 4), so both targets see the same
	// background load on a machine whose load drifts; only the first slice
	// of each target has the warmup.
	Rounds int
	// Conns is the number of gRPC connections per target, round-robin; Envoy
	// opens one per worker thread, and this machine would run 2 (default 2).
	Conns int
	// WorkloadSize is how many distinct exchanges are generated (default
	// 2,048); runs cycle through them.
	WorkloadSize int
	// Seed makes the workload reproducible.
	Seed uint64
	// StoreTimeout is store.timeout in tokenwarden's config (default 100ms:
	// a saturated 2-core machine must not turn scheduling delays into store
	// failures, which would hide the Redis cost behind the local fallback).
	StoreTimeout time.Duration
	// MemoryStore runs tokenwarden with its in-memory store instead of the
	// harness's Redis, to tell the store's share of a cost from the rest.
	MemoryStore bool
	// Leases, when set, is the governed policy's `leases:` value (a YAML flow
	// map such as "{max_age: 2s, max_requests: 64}"): admissions decided from
	// slices leased from the store instead of one store call per request.
	// Empty measures exact admission.
	Leases string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Pair is one scenario measured against both targets.
type Pair struct {
	Scenario    Scenario
	Floor, Twdn *Result
}

// Harness is a running set of processes: Redis, the floor and tokenwarden.
type Harness struct {
	opts  Options
	dir   string
	redis *Redis
	floor *process
	twdn  *process
	// twdnMetrics is tokenwarden's /metrics, for its GC counters.
	twdnMetrics string
}

// Start starts redis-server, the no-op floor and tokenwarden serve, and
// waits until each listens. Close stops them.
func Start(ctx context.Context, opts Options) (h *Harness, err error) {
	if opts.Tokenwarden == "" || opts.Floor == nil {
		return nil, errors.New("load: Options.Tokenwarden and Options.Floor are required")
	}
	if opts.Conns <= 0 {
		opts.Conns = 2
	}
	if opts.Rounds <= 0 {
		opts.Rounds = 4
	}
	if opts.WorkloadSize <= 0 {
		opts.WorkloadSize = 2048
	}
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = 100 * time.Millisecond
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	started := &Harness{opts: opts}
	h = started
	defer func() {
		// A failed start returns a nil *Harness; what it started so far is
		// still stopped through started.
		if err != nil {
			started.Close()
		}
	}()
	if h.dir, err = os.MkdirTemp("", "twload-"); err != nil {
		return nil, fmt.Errorf("load: temp dir: %w", err)
	}
	if h.redis, err = StartRedis(ctx, opts.RedisServer, 10*time.Second); err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Log, "redis-server on %s\n", h.redis.Addr)

	floorAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if h.floor, err = startProcess("floor", opts.Floor(floorAddr), floorAddr, opts.Conns); err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Log, "no-op floor pid %d on %s\n", h.floor.cmd.Process.Pid, floorAddr)

	cfgPath := filepath.Join(h.dir, "tokenwarden.yaml")
	storeURL := h.redis.URL()
	if opts.MemoryStore {
		storeURL = ""
	}
	if err := os.WriteFile(cfgPath, []byte(TokenwardenConfig(storeURL, opts.StoreTimeout, opts.Leases)), 0o600); err != nil {
		return nil, fmt.Errorf("load: write config: %w", err)
	}
	grpcAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	adminAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(opts.Tokenwarden, "serve", "--config", cfgPath, "--grpc-addr", grpcAddr,
		"--admin-addr", adminAddr, "--log-level", "warn")
	if h.twdn, err = startProcess("tokenwarden", cmd, grpcAddr, opts.Conns); err != nil {
		return nil, err
	}
	if err := waitReady(ctx, "http://"+adminAddr+"/readyz", 10*time.Second); err != nil {
		return nil, err
	}
	h.twdnMetrics = "http://" + adminAddr + "/metrics"
	fmt.Fprintf(opts.Log, "tokenwarden pid %d on %s (admin %s)\n", h.twdn.cmd.Process.Pid, grpcAddr, adminAddr)
	return h, nil
}

// Floor and Tokenwarden are the two targets.
func (h *Harness) Floor() Target {
	return Target{Name: "no-op floor", Filter: h.floor.filter, PID: h.floor.cmd.Process.Pid}
}

// Tokenwarden is the processor under test, with its Redis.
func (h *Harness) Tokenwarden() Target {
	return Target{Name: "tokenwarden", Filter: h.twdn.filter, PID: h.twdn.cmd.Process.Pid, Redis: h.redis, Metrics: h.twdnMetrics}
}

// RunScenarios runs every scenario against the floor and tokenwarden, on
// the same workload, in alternating rounds (Options.Rounds).
func (h *Harness) RunScenarios(ctx context.Context) ([]Pair, error) {
	var out []Pair
	for i, sc := range h.opts.Scenarios {
		w, err := NewWorkload(sc.Mix, h.opts.Seed+uint64(i), h.opts.WorkloadSize)
		if err != nil {
			return nil, fmt.Errorf("load: scenario %s: %w", sc.Name, err)
		}
		rounds := h.opts.Rounds
		if sc.Rounds > 0 {
			rounds = sc.Rounds
		}
		slice := sc.Duration / time.Duration(rounds)
		var floor, twdn []*Result
		for round := range rounds {
			for _, t := range []struct {
				target Target
				dst    *[]*Result
			}{{h.Floor(), &floor}, {h.Tokenwarden(), &twdn}} {
				part := sc
				part.Duration = slice
				if round > 0 {
					// Connections and heaps are warm; a short settle is enough.
					part.Warmup = min(sc.Warmup, 500*time.Millisecond)
				}
				fmt.Fprintf(h.opts.Log, "%s round %d/%d: %s (%s warmup + %s)\n", sc.Name, round+1, rounds, t.target.Name, part.Warmup, part.Duration)
				res, err := Run(ctx, part, t.target, w)
				if err != nil {
					return nil, fmt.Errorf("load: scenario %s on %s: %w", sc.Name, t.target.Name, err)
				}
				if err := t.target.alive(); err != nil {
					return nil, err
				}
				*t.dst = append(*t.dst, res)
				// Let stragglers (settles after the last answer) finish so
				// the next slice starts from a quiet processor.
				time.Sleep(200 * time.Millisecond)
			}
		}
		out = append(out, Pair{Scenario: sc, Floor: Merge(floor), Twdn: Merge(twdn)})
	}
	return out, nil
}

func (t Target) alive() error {
	if t.PID <= 0 {
		return nil
	}
	if _, err := ReadProc(t.PID); err != nil {
		return fmt.Errorf("load: %s (pid %d) is gone: %w", t.Name, t.PID, err)
	}
	return nil
}

// Close stops every process the harness started and removes its files.
func (h *Harness) Close() {
	for _, p := range []*process{h.twdn, h.floor} {
		if p != nil {
			p.stop()
		}
	}
	if h.redis != nil {
		h.redis.Stop()
	}
	if h.dir != "" {
		_ = os.RemoveAll(h.dir)
	}
}

// HierarchyOrgs are the orgs the harness's tokenwarden.yaml configures
// (tenant-0000 …), HierarchyTeam the one team of each, with hierarchyUsers
// users and as many keys: a caller of the default mix is admitted at four
// levels, org, team, user and key, each with its own limits and a day and
// a month budget, as issue 17 asks the governed exchange to be measured.
const (
	HierarchyOrgs  = 100
	HierarchyTeam  = "eng"
	hierarchyUsers = 4
	jwtNamespace   = "envoy.filters.http.jwt_authn"
)

// TokenwardenConfig is the tokenwarden.yaml the harness serves: one policy
// with two lanes and a four-level hierarchy (HierarchyOrgs) with limits and
// budgets far above the load at every level, so every request is admitted
// yet every limit (and, for batch work, its lane's share of it) and budget
// of every level is checked and settled in the store. A non-empty leases is
// the policy's `leases:` (Options.Leases).
func TokenwardenConfig(redisURL string, storeTimeout time.Duration, leases string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `store:
  redis: %q
  timeout: %s
  on_failure: local
identity:
  # The harness plays the mesh: it sets jwt_authn's verified payload itself.
  from:
    - jwt: {org: org_id, team: team, user: sub, key_id: kid}
  unknown: default:anonymous
  unconfigured: own
policies:
  default:
    limits: {requests_per_minute: 100000000, tokens_per_minute: 100000000000, concurrent: 1000000}
    output_reservation: 1024%s
    # two lanes, as a shared account for tools and bulk jobs would have:
    # a batch request is also checked against its lane's share of every
    # limit at every level (Spec.Lane picks it, as route metadata would)
    lanes:
      interactive: {priority: 2, share: 0.7, default: true}
      batch: {priority: 1, share: 0.3}
    budgets:
      - {window: day, usd: 1000000, timezone: UTC}
      - {window: month, usd: 1000000, timezone: UTC}
prices:
  gpt-4o-mini: {input: 0.15, output: 0.6, cache_read: 0.075}
orgs:
`, redisURL, storeTimeout, leasesLine(leases))
	const level = `{limits: {requests_per_minute: 100000000, tokens_per_minute: 100000000000, concurrent: 1000000}, ` +
		`budgets: [{window: day, usd: 1000000, timezone: UTC}, {window: month, usd: 1000000, timezone: UTC}]`
	for i := range HierarchyOrgs {
		// every user and every key its own limits and budgets
		fmt.Fprintf(&b, "  tenant-%04d: %s, teams: {%s: %s, users: %s}, keys: %s}}}}\n", i, level, HierarchyTeam, level, level, level)
	}
	return b.String()
}

// leasesLine is the policy line for TokenwardenConfig's leases, or nothing.
func leasesLine(leases string) string {
	if leases == "" {
		return ""
	}
	return "\n    leases: " + leases
}

// SimConfig is the ext_proc filter configuration the harness plays Envoy
// with: the recommended one (gateway.DefaultFilterConfig, the same as
// envoy/envoy.yaml: request body BUFFERED, response body BUFFERED with SSE
// switched to STREAMED by mode_override, fail closed), without sim's trace
// and body copies, which a real Envoy does not make.
func SimConfig() sim.Config {
	c := gateway.DefaultFilterConfig()
	c.NoTrace, c.NoRecordBody = true, true
	c.ForwardingNamespaces = []string{jwtNamespace}
	return c
}

// NewFilter returns a sim filter with SimConfig over client (a client from
// Dial, whose streams are timed).
func NewFilter(client extprocv3.ExternalProcessorClient) (*sim.Filter, error) {
	return sim.New(client, SimConfig())
}

// Dial opens n gRPC connections to addr with TimingInterceptor and returns a
// client that spreads streams over them round-robin, and their closer.
func Dial(addr string, n int) (extprocv3.ExternalProcessorClient, func(), error) {
	rr := &roundRobin{}
	var conns []*grpc.ClientConn
	closeAll := func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
	for range max(n, 1) {
		c, err := grpc.NewClient("passthrough:///"+addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithStreamInterceptor(TimingInterceptor),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("load: dial %s: %w", addr, err)
		}
		conns = append(conns, c)
		rr.clients = append(rr.clients, extprocv3.NewExternalProcessorClient(c))
	}
	return rr, closeAll, nil
}

type roundRobin struct {
	clients []extprocv3.ExternalProcessorClient
	next    atomic.Uint64
}

func (r *roundRobin) Process(ctx context.Context, opts ...grpc.CallOption) (extprocv3.ExternalProcessor_ProcessClient, error) {
	return r.clients[(r.next.Add(1)-1)%uint64(len(r.clients))].Process(ctx, opts...)
}

// process is a started processor and the filter that talks to it.
type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	filter *sim.Filter
	close  func()
}

func startProcess(name string, cmd *exec.Cmd, addr string, conns int) (*process, error) {
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("load: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	if err := waitTCP(addr, p.exited, 15*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("load: %s: %w", name, err)
	}
	client, closeConns, err := Dial(addr, conns)
	if err != nil {
		p.stop()
		return nil, err
	}
	p.close = closeConns
	if p.filter, err = NewFilter(client); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

func (p *process) stop() {
	if p.close != nil {
		p.close()
	}
	stopProcess(p.cmd, p.exited, 10*time.Second)
}

func freeAddr() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// waitReady polls url until it answers 200.
func waitReady(ctx context.Context, url string, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("load: readiness: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("load: %s not ready after %v: %w", url, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RoundTrips is the calibration of Redis round trips per request: a short,
// light closed-loop run against tokenwarden with MONITOR counting what
// clients sent (script-internal commands excluded).
type RoundTrips struct {
	Exchanges int64
	// PerRequest counts every client command but connection housekeeping
	// (HELLO, CLIENT, SELECT, AUTH, PING), divided by Exchanges.
	// SteadyState leaves out the script loads: the store sends a script's
	// source (EVAL) only when Redis does not know its SHA yet (first use,
	// a restart), each right after the EVALSHA that Redis answered NOSCRIPT
	// — a cost per script and Redis, not per request — so each EVAL and
	// the EVALSHA before it.
	PerRequest, SteadyState float64
	// Client are the client commands by name; Script the commands the
	// scripts ran (what INFO commandstats adds on top).
	Client map[string]int64
	Script int64
	Errors int64
}

// housekeeping are per-connection or health commands, not per-request work.
var housekeeping = map[string]bool{"hello": true, "client": true, "select": true, "auth": true, "ping": true}

// CountRoundTrips runs the calibration: 4 workers for 2 s over DefaultMix
// (bodies up to 16 KB: body size does not change the store's work).
func (h *Harness) CountRoundTrips(ctx context.Context) (*RoundTrips, error) {
	mix := DefaultMix
	mix.MaxBody = 16 << 10
	w, err := NewWorkload(mix, h.opts.Seed+99, 256)
	if err != nil {
		return nil, err
	}
	m, err := h.redis.Monitor(ctx)
	if err != nil {
		return nil, err
	}
	t := h.Tokenwarden()
	t.Redis = nil // commandstats are not needed here
	res, err := Run(ctx, Scenario{Name: "round-trips", Concurrency: 4, Duration: 2 * time.Second, Mix: mix, Seed: 99}, t, w)
	// Settles run after the last answer; give them time to reach Redis.
	time.Sleep(500 * time.Millisecond)
	client, script := m.Stop()
	if err != nil {
		return nil, err
	}
	rt := &RoundTrips{Exchanges: res.Exchanges, Client: client, Script: script, Errors: res.Errors}
	var n int64
	for k, v := range client {
		if !housekeeping[k] {
			n += v
		}
	}
	if rt.Exchanges > 0 {
		rt.PerRequest = float64(n) / float64(rt.Exchanges)
		rt.SteadyState = float64(n-2*client["eval"]) / float64(rt.Exchanges)
	}
	fmt.Fprintf(h.opts.Log, "round trips: %.2f per request over %d exchanges (%v; %d script commands)\n", rt.PerRequest, rt.Exchanges, client, script)
	return rt, nil
}
