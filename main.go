// Command tokenwarden is an Envoy external processor that governs LLM API
// traffic: per-tenant limits and dollar budgets shared through Redis, exact
// cost from provider usage, and request shaping.
//
// main is thin: it parses the command line and wires packages together; run
// is the whole program, so tests start servers in-process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/extproc"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
	"github.com/tokenwarden/tokenwarden/test/mockprovider"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "tokenwarden:", err)
		}
		os.Exit(exitCode(err))
	}
}

// errUsage marks a command line the user must correct; the usage text has
// already been printed.
var errUsage = errors.New("usage")

func exitCode(err error) int {
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"serve":         {"run the ext_proc server", runServe},
	"gateway":       {"run an HTTP front that stands in for Envoy (built on envoy/sim)", runGateway},
	"mock-provider": {"run an offline, wire-faithful Anthropic and OpenAI stand-in", runMockProvider},
	"check-config":  {"validate a tokenwarden.yaml", runCheckConfig},
	"budgets":       {"show spend, reservations and caps per budget window", runBudgets},
}

// run executes one tokenwarden command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "tokenwarden: unknown command %q\n\n", args[0])
		usage(stderr)
		return errUsage
	}
	return cmd.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: tokenwarden <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nEvery flag may also be set as TOKENWARDEN_<FLAG> (e.g. TOKENWARDEN_GRPC_ADDR); a flag on the command line wins.")
}

// parseFlags parses args, first filling every flag not given on the command
// line from its TOKENWARDEN_* environment variable.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || envErr != nil {
			return
		}
		key := "TOKENWARDEN_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(key); ok {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", key, v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if fs.NArg() > 0 && fs.Name() != "check-config" {
		fmt.Fprintf(stderr, "tokenwarden %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

func runCheckConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: tokenwarden check-config FILE")
		return errUsage
	}
	_, cfg, err := loadConfig(fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: OK (%d policies, %d tenants, store %s)\n", fs.Arg(0), len(cfg.PolicyNames()), len(cfg.Tenants()), cfg.Store.Kind())
	return nil
}

// loadConfig reads a tokenwarden.yaml, or the embedded defaults when path
// is empty.
func loadConfig(path string) ([]byte, *policy.Config, error) {
	data, name := policy.DefaultYAML(), "embedded defaults"
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, nil, err
		}
		name = path
	}
	cfg, err := policy.Parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return data, cfg, nil
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// storeRuntime is what serve adds to the configured store: where the
// journal lives and who hears the store's events.
type storeRuntime struct {
	journalDir string
	metrics    *observe.Metrics
}

func openStore(s policy.Store, logger *slog.Logger, direct bool, rt storeRuntime) (limiter.Opened, error) {
	o := limiter.OpenOptions{Redis: s.Redis, Cluster: s.RedisCluster, Timeout: s.Timeout,
		MaxInFlight: s.MaxInFlight, QueueTimeout: s.QueueTimeout,
		Replicas: s.Replicas, Logger: logger, Direct: direct, JournalDir: rt.journalDir}
	if rt.metrics != nil {
		o.Events, o.OnRenew = rt.metrics, rt.metrics.LeaseRenewed
	}
	return limiter.Open(o)
}

// Shutdown budget: what is left of --shutdown-grace after the drain is for
// settling the streams the drain cut and flushing the store's journal.
const (
	settleReserve = 10 * time.Second
	minDrain      = time.Second
)

// drainFor is the default --drain-timeout for a shutdown grace period.
func drainFor(grace time.Duration) time.Duration {
	reserve := min(settleReserve, grace/3)
	return max(grace-reserve, minDrain)
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	configPath := fs.String("config", "", "tokenwarden.yaml; empty runs on the embedded defaults")
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:50051", "ext_proc gRPC listen address")
	tlsCert := fs.String("tls-cert", "", "PEM certificate of the gRPC port (reloaded when it changes)")
	tlsKey := fs.String("tls-key", "", "PEM private key of --tls-cert")
	clientCA := fs.String("client-ca", "", "PEM CA bundle: only clients with a certificate it signed may call (mutual TLS)")
	insecureListen := fs.Bool("insecure-listen", false, "accept plaintext ext_proc on a non-loopback --grpc-addr; only behind a proxy that authenticates callers (an Istio sidecar with STRICT mTLS and an AuthorizationPolicy)")
	adminAddr := fs.String("admin-addr", "127.0.0.1:9090", "admin HTTP listen address (/metrics, /healthz, /readyz, /debug/pprof)")
	metricsAddr := fs.String("metrics-addr", "", "a second HTTP address serving only /metrics, /healthz and /readyz, for scrapers and probes (empty: none)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	reloadEvery := fs.Duration("reload-interval", 2*time.Second, "how often --config is checked for changes")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "how long this process has from SIGTERM to exit (the pod's terminationGracePeriodSeconds less its preStop delay); the drain, the settles of the streams it cuts and the journal flush fit in it")
	drain := fs.Duration("drain-timeout", 0, "how long shutdown lets open streams finish before cutting them (0: --shutdown-grace less min(10s, a third of it), kept for settling and flushing)")
	heapFloor := fs.Int("gc-heap-floor-mib", extproc.DefaultHeapFloor>>20, "the heap the garbage collector may grow to before collecting while the live heap is small (max(2×live, floor)); 0 leaves Go's default; ignored when GOGC is set")
	journalDir := fs.String("journal-dir", "", "directory for the store journal (what this replica owes the shared store: decisions made while it was down, settles not yet taken, cancels) and ledger, replayed at start; empty keeps them in memory, lost at exit")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *drain == 0 {
		*drain = drainFor(*grace)
	}
	if *grace <= 0 || *drain > *grace {
		return fmt.Errorf("--drain-timeout %s must fit in --shutdown-grace %s", *drain, *grace)
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	if *heapFloor < 0 || *heapFloor > 1<<20 {
		return fmt.Errorf("--gc-heap-floor-mib %d must be between 0 and 1048576", *heapFloor)
	}
	if *heapFloor > 0 && os.Getenv("GOGC") == "" {
		defer extproc.KeepHeapFloor(ctx, uint64(*heapFloor)<<20)()
	}
	data, cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	creds, err := grpcCredentials(*grpcAddr, extproc.TLSFiles{Cert: *tlsCert, Key: *tlsKey, ClientCA: *clientCA}, *insecureListen, logger)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := observe.NewMetrics(reg)
	metrics.ConfigLoaded(true, cfg.PolicyNames())
	store, err := openStore(cfg.Store, logger, false, storeRuntime{journalDir: *journalDir, metrics: metrics})
	if err != nil {
		return err
	}
	storeClosed := false
	closeStore := func() {
		if !storeClosed {
			storeClosed = true
			if err := store.Close(); err != nil {
				logger.Error("closing the store", "err", err)
			}
		}
	}
	defer closeStore()
	// The response cache lives next to the limiter's state, on its own
	// client; it is only used by policies that enable response_cache.
	cache, closeCache, err := limiter.OpenResponseCache(limiter.OpenOptions{Redis: cfg.Store.Redis, Cluster: cfg.Store.RedisCluster, Timeout: cfg.Store.Timeout})
	if err != nil {
		return err
	}
	defer closeCache()
	// The upstream view (provider cool-downs) shares the store's Redis on a
	// client of its own: its subscriber holds one connection for itself.
	upstreams, closeUpstreams, err := limiter.OpenUpstreams(limiter.OpenOptions{Redis: cfg.Store.Redis, Cluster: cfg.Store.RedisCluster, Timeout: cfg.Store.Timeout, Logger: logger})
	if err != nil {
		return err
	}
	defer closeUpstreams()
	// Pacing's schedules too, on a client of their own; while Redis is
	// down each replica paces at its share (1/replicas) of the rate.
	var replicas func() int64
	if store.Resilient != nil {
		replicas = store.Resilient.Replicas
	}
	pacer, closePacer, err := limiter.OpenPacer(limiter.OpenOptions{Redis: cfg.Store.Redis, Cluster: cfg.Store.RedisCluster, Timeout: cfg.Store.Timeout}, replicas)
	if err != nil {
		return err
	}
	defer closePacer()
	holder := policy.NewHolder(cfg)
	g, err := gate.New(gate.Options{Config: holder, Store: store.Store, ResponseCache: cache, Upstreams: upstreams, Pacer: pacer, Replicas: replicas,
		Observer: metrics, Logger: logger})
	if err != nil {
		return err
	}
	metrics.WatchQueue(g.QueueStats)
	if store.Leased != nil {
		metrics.WatchLeases(store.Leased.Stats)
	}
	go every(ctx, 5*time.Second, g.ReleaseIdlePacing) // an idle upstream does not stay paced
	srv, err := extproc.NewServer(extproc.Options{Gate: g, Metrics: metrics, Logger: logger})
	if err != nil {
		return err
	}

	grpcLis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		return fmt.Errorf("--grpc-addr: %w", err)
	}
	adminLis, err := net.Listen("tcp", *adminAddr)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("--admin-addr: %w", err)
	}
	gs := srv.NewGRPCServer(creds...)
	var draining atomic.Bool
	adminOpts := observe.AdminOptions{Gatherer: reg, Ready: observe.Readiness(observe.ReadinessOptions{Draining: &draining, Config: holder, Store: store.Resilient})}
	admin := &http.Server{Handler: observe.AdminHandler(adminOpts), ReadHeaderTimeout: 5 * time.Second}
	var scrape *http.Server
	var scrapeLis net.Listener
	if *metricsAddr != "" {
		if scrapeLis, err = net.Listen("tcp", *metricsAddr); err != nil {
			grpcLis.Close()
			adminLis.Close()
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		scrape = &http.Server{Handler: observe.ScrapeHandler(adminOpts), ReadHeaderTimeout: 5 * time.Second}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	go func() { errc <- gs.Serve(grpcLis) }()
	serveHTTP := func(h *http.Server, l net.Listener) {
		if err := h.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}
	go serveHTTP(admin, adminLis)
	if scrape != nil {
		go serveHTTP(scrape, scrapeLis)
	}
	go metrics.WatchStore(ctx, store.Up, time.Second)
	if *configPath != "" {
		go policy.Watch(ctx, policy.WatchOptions{
			Read:     func() ([]byte, error) { return os.ReadFile(*configPath) },
			Interval: *reloadEvery,
			Initial:  data,
			Apply: func(c *policy.Config) {
				if c.Store.Kind() != cfg.Store.Kind() || c.Store.Redis != cfg.Store.Redis {
					logger.Warn("config reloaded; store settings change only on restart")
				}
				holder.Store(c)
				metrics.ConfigLoaded(true, c.PolicyNames())
				logger.Info("config reloaded", "path", *configPath)
			},
			Rejected: func(err error) {
				metrics.ConfigLoaded(false, nil)
				logger.Error("config rejected; keeping the last good config", "path", *configPath, "err", err)
			},
		})
	}
	logger.Info("tokenwarden serving", "grpc", grpcLis.Addr().String(), "admin", adminLis.Addr().String(), "store", cfg.Store.Kind())
	fmt.Fprintf(stdout, "tokenwarden serve: grpc %s admin %s\n", grpcLis.Addr(), adminLis.Addr())

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// Shutdown, in order: not ready; open streams finish for the drain
	// timeout, then are cut; every stream's end settles it (gRPC's Stop
	// returns before those have run); only then the store closes, flushing
	// its journal (to its file when the store is down).
	shutdownStart := time.Now()
	draining.Store(true)
	gs.Drain(*drain)
	// What is left of the grace, less the journal flush and one call it may
	// have in flight, and at least one settle's timeout.
	if !srv.WaitStreams(max(*grace-time.Since(shutdownStart)-limiter.DefaultFlushTimeout-2*time.Second, gate.DefaultSettleTimeout+time.Second)) {
		logger.Error("shutdown: streams still settling when the store closes; their reservations expire in the store", "streams", srv.OpenStreams())
	}
	closeStore()
	logger.Info("shutdown: streams settled and store closed", "took", time.Since(shutdownStart).Round(time.Millisecond))
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShutdown()
	_ = admin.Shutdown(shutdownCtx)
	if scrape != nil {
		_ = scrape.Shutdown(shutdownCtx)
	}
	return err
}

// grpcCredentials decides how the ext_proc port accepts callers: TLS (and
// mutual TLS with a client CA) when given certificates; plaintext only on a
// loopback address, or where the operator states that a proxy in front
// authenticates callers. Anything else would let any pod that reaches the
// port report invented usage or pick any route policy.
func grpcCredentials(addr string, f extproc.TLSFiles, insecureListen bool, logger *slog.Logger) ([]grpc.ServerOption, error) {
	if (f.Cert == "") != (f.Key == "") || (f.ClientCA != "" && f.Cert == "") {
		return nil, errors.New("--tls-cert and --tls-key go together, and --client-ca needs both")
	}
	if f.ClientCA == "" && !insecureListen && !loopback(addr) {
		return nil, fmt.Errorf("--grpc-addr %s is not a loopback address: give --tls-cert, --tls-key and --client-ca (mutual TLS), or --insecure-listen behind a proxy that authenticates callers", addr)
	}
	if f.Cert == "" {
		return nil, nil
	}
	cfg, err := extproc.NewTLSConfig(f, logger)
	if err != nil {
		return nil, err
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(cfg))}, nil
}

// loopback reports whether a listen address accepts only local callers.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func runBudgets(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("budgets", flag.ContinueOnError)
	configPath := fs.String("config", "", "tokenwarden.yaml naming the store and the budgets; empty uses the embedded defaults")
	tenant := fs.String("tenant", "", "one tenant (default: every tenant named in the config)")
	pol := fs.String("policy", "", "the policy whose budgets apply (default: the tenant's own)")
	team := fs.String("team", "", "with --user or --key: the member's team in an org under orgs:")
	user := fs.String("user", "", "one user of an org under orgs: to show with its levels (members are not listed)")
	key := fs.String("key", "", "one key (key_id or key-<fingerprint>) of an org under orgs: to show with its levels")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	_, cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	if !cfg.Store.Shared() {
		fmt.Fprintln(stderr, "tokenwarden budgets: the config uses the in-memory store, whose state lives inside each serve process; nothing to read")
		return errors.New("no shared store configured")
	}
	logger, _ := newLogger(stderr, "error")
	store, err := openStore(cfg.Store, logger, true, storeRuntime{})
	if err != nil {
		return err
	}
	defer store.Close()
	o := observe.ReportOptions{Policy: *pol, Team: *team, User: *user, Key: *key}
	if *tenant != "" {
		o.Tenants = []string{*tenant}
	}
	return observe.WriteBudgets(ctx, stdout, store.Store, cfg, o, time.Now())
}

func runMockProvider(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mock-provider", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:18000", "listen address")
	rpm := fs.Int64("rpm", 0, "requests per minute behind the rate-limit headers (0: the mock's default)")
	tpm := fs.Int64("tpm", 0, "a combined tokens-per-minute limit, input and output together (OpenAI's TPM; 0: none, input and output limits apart)")
	window := fs.Duration("window", 0, "the period the limits refill over (0: one minute, as the providers'); shorter runs the same limits faster")
	enforce := fs.Bool("enforce", false, "answer 429 with retry-after when the mock's own limits are exhausted")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "tokenwarden mock-provider: %s\n", *listen)
	return mockprovider.Run(ctx, mockprovider.Options{Listen: *listen, RPM: *rpm, TPM: *tpm, Window: *window, Enforce: *enforce})
}

func runGateway(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:10000", "listen address")
	upstream := fs.String("upstream", "http://127.0.0.1:18000", "provider base URL")
	processor := fs.String("processor", "127.0.0.1:50051", "tokenwarden serve gRPC address")
	pol := fs.String("policy", "", "route policy handed to the processor as route metadata (empty: none)")
	lane := fs.String("lane", "", "route lane handed to the processor as route metadata (empty: the policy's default lane)")
	bufferLimit := fs.Int("buffer-limit", gateway.DefaultBufferLimit, "per-request buffer limit in bytes, as Envoy's per_connection_buffer_limit_bytes (envoy/envoy.yaml: 32 MiB); a larger body is refused with 413")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	opts := gateway.Options{Listen: *listen, Upstream: *upstream, Processor: *processor, Logger: logger, BufferLimit: *bufferLimit}
	if *pol != "" || *lane != "" {
		attrs := map[string]any{}
		if *pol != "" {
			attrs[contract.PolicyAttribute] = *pol
		}
		if *lane != "" {
			attrs[contract.LaneAttribute] = *lane
		}
		opts.RouteAttributes = func(*http.Request) map[string]any { return attrs }
	}
	fmt.Fprintf(stdout, "tokenwarden gateway: %s -> %s (processor %s)\n", *listen, *upstream, *processor)
	return gateway.Run(ctx, opts)
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
