// Package procs holds what the cross-process tests under test/ share: the
// tokenwarden binary built once per test binary, free loopback addresses,
// the repository root, and an in-process processor wired as `serve` wires
// it.
package procs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/extproc"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// RepoRoot walks up from the working directory to this module's go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for ; dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/tokenwarden/tokenwarden\n")) {
			return dir
		}
	}
	t.Fatal("repository root (go.mod of github.com/tokenwarden/tokenwarden) not found")
	return ""
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds the tokenwarden command once per test binary and returns its
// path. A build failure fails the test: the binary is what is under test.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tokenwarden-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "tokenwarden")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", binPath, ".")
		cmd.Dir = RepoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build -o %s . (in %s): %v\n%s", binPath, cmd.Dir, err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ProcessorOptions configures Processor.
type ProcessorOptions struct {
	Config   *policy.Holder
	Store    limiter.Store
	Registry prometheus.Registerer // nil: a fresh registry
	Logger   *slog.Logger          // nil: discard
	Now      func() time.Time
	// Upstreams is the upstream view; nil: a view of this replica alone.
	Upstreams limiter.UpstreamView
	// Pacer keeps paced upstreams' schedules; nil: this replica's own.
	Pacer limiter.Pacer
}

// Processor wires an in-process ext_proc server the way `serve` does, for
// tests that run replicas without a process boundary. It returns the server
// and its metrics.
func Processor(t testing.TB, o ProcessorOptions) (*extproc.Server, *observe.Metrics) {
	t.Helper()
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := observe.NewMetrics(o.Registry)
	g, err := gate.New(gate.Options{Config: o.Config, Store: o.Store, Upstreams: o.Upstreams, Pacer: o.Pacer, Observer: m, Logger: o.Logger, Now: o.Now})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := extproc.NewServer(extproc.Options{Gate: g, Metrics: m, Logger: o.Logger})
	if err != nil {
		t.Fatal(err)
	}
	return srv, m
}
