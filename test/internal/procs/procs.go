// Package procs holds what the cross-process tests under test/ share: the
// tokenwarden binary built once per test binary, free loopback addresses and
// the repository root.
package procs

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
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
