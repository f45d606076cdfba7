// Package redistest starts real redis-server processes for tests: a single
// server that can be killed and restarted on the same port, and a small Redis
// Cluster. Every process listens on 127.0.0.1 on a free port, keeps its files
// in the test's temp dir, persists nothing, and is stopped by t.Cleanup. Tests
// are skipped with a clear message when redis-server is not installed.
package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long a starting server may take to answer PING;
// redis-server is ready in milliseconds, so this only matters on a stuck host.
const startTimeout = 10 * time.Second

// Options tune a server.
type Options struct {
	// Args are extra redis-server arguments, e.g. {"--maxmemory", "10mb"}.
	Args []string
}

// Server is one redis-server process owned by a test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd
	out *bytes.Buffer // the process's stdout+stderr, shown when a start fails
}

// Start starts a redis-server on a free port and registers Stop with
// t.Cleanup. It calls t.Skip when redis-server is not on PATH.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := lookup(t, "redis-server")
	s := &Server{t: t, bin: bin, dir: t.TempDir(), port: freePort(t, false), args: opts.Args}
	if err := s.start(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the server's TCP port.
func (s *Server) Port() int { return s.port }

// Kill stops the process with SIGKILL, as a crash would, and waits for it.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

// Pause stops the process with SIGSTOP: it keeps its connections and its
// data but answers nothing, as a stalled store does (a long fork for a
// snapshot, a swapped-out host), until Resume.
func (s *Server) Pause() { s.send(syscall.SIGSTOP) }

// Resume continues a paused process with SIGCONT; what it received while
// paused is then processed.
func (s *Server) Resume() { s.send(syscall.SIGCONT) }

func (s *Server) send(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// Stop shuts the server down with SIGTERM and waits; it is safe to call more
// than once and after Kill.
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

// Restart starts the server again on the same port after Kill or Stop. The
// data is gone: nothing is persisted.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused process handles no SIGTERM
	_ = s.cmd.Process.Signal(sig)
	_ = s.cmd.Wait()
	s.cmd = nil
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--dir", s.dir, "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--loglevel", "warning",
	}, s.args...)
	s.out = new(bytes.Buffer)
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	s.cmd = cmd
	if err := waitPing(s.Addr(), startTimeout); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		s.cmd = nil
		return fmt.Errorf("redis-server on %s: %w; output:\n%s", s.Addr(), err, s.out)
	}
	return nil
}

// Cluster is a Redis Cluster of masters without replicas.
type Cluster struct {
	Servers []*Server
}

// Addrs are the masters' host:port, for redis.ClusterOptions.Addrs.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		addrs[i] = s.Addr()
	}
	return addrs
}

// StartCluster starts masters (at least 3, which redis-cli requires) cluster
// nodes, joins them with redis-cli --cluster create and waits until every node
// reports cluster_state:ok.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	if masters < 3 {
		t.Fatalf("redistest: a cluster needs at least 3 masters, got %d", masters)
	}
	cli := lookup(t, "redis-cli")
	bin := lookup(t, "redis-server")
	c := &Cluster{}
	for i := 0; i < masters; i++ {
		s := &Server{t: t, bin: bin, dir: t.TempDir(), port: freePort(t, true),
			args: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", "2000"}}
		if err := s.start(); err != nil {
			t.Fatalf("redistest: cluster node: %v", err)
		}
		t.Cleanup(s.Stop)
		c.Servers = append(c.Servers, s)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(startTimeout)
	for _, s := range c.Servers {
		for {
			info, err := command(s.Addr(), "CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("redistest: node %s never reached cluster_state:ok (last: %q, %v)", s.Addr(), info, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

func lookup(t testing.TB, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redistest: %s is not on PATH, and CI must run this test (.ci/run installs redis-server)", name)
		}
		t.Skipf("redistest: %s is not on PATH; install redis-server (Redis 7) to run this test", name)
	}
	return bin
}

// freePort finds a port nobody listens on. With bus set, port+10000 (the
// cluster bus port) must be free too.
func freePort(t testing.TB, bus bool) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("redistest: free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !bus {
			return port
		}
		if port+10000 > 65535 {
			continue
		}
		b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		if err != nil {
			continue
		}
		_ = b.Close()
		return port
	}
	t.Fatalf("redistest: no free port pair found")
	return 0
}

func waitPing(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		reply, err := command(addr, "PING")
		if err == nil && reply == "PONG" {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("PING answered %q", reply)
			}
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// command sends one RESP command and returns a simple, integer or bulk
// string reply. It keeps this package free of a client dependency.
func command(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"), strings.HasPrefix(line, ":"):
		return line[1:], nil
	case strings.HasPrefix(line, "-"):
		return "", errors.New(line[1:])
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("bad bulk reply %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}
