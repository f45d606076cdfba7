package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a redis-server process the harness owns: a free port on
// 127.0.0.1, no persistence, its files in a private temp directory. It is
// never the shared :6379, so INFO commandstats counts only the harness's own
// traffic.
type Redis struct {
	Addr   string
	cmd    *exec.Cmd
	dir    string
	client *redis.Client
	exited chan struct{}
}

// StartRedis starts bin (default "redis-server") and waits up to timeout for
// it to answer PING.
func StartRedis(ctx context.Context, bin string, timeout time.Duration) (*Redis, error) {
	if bin == "" {
		bin = "redis-server"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("load: redis-server not found: %w", err)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "twload-redis-")
	if err != nil {
		return nil, fmt.Errorf("load: redis dir: %w", err)
	}
	cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "yes", "--loglevel", "warning")
	// Its log stays in its directory: the harness's output is the report.
	logf, err := os.Create(dir + "/redis.log")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("load: redis log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("load: start redis-server: %w", err)
	}
	r := &Redis{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, dir: dir, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(r.exited) }()
	r.client = redis.NewClient(&redis.Options{Addr: r.Addr, DialTimeout: time.Second, ReadTimeout: 5 * time.Second, MaxRetries: -1})
	deadline := time.Now().Add(timeout)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := r.client.Ping(pctx).Err()
		cancel()
		if err == nil {
			return r, nil
		}
		select {
		case <-r.exited:
			r.Stop()
			return nil, fmt.Errorf("load: redis-server exited at start: %w", err)
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			r.Stop()
			return nil, fmt.Errorf("load: redis-server did not answer PING within %v: %w", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the redis-server process.
func (r *Redis) PID() int { return r.cmd.Process.Pid }

// URL is the store URL for tokenwarden.yaml.
func (r *Redis) URL() string { return "redis://" + r.Addr + "/0" }

// CommandCalls returns the calls per command from INFO commandstats.
func (r *Redis) CommandCalls(ctx context.Context) (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := r.client.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("load: INFO commandstats: %w", err)
	}
	return ParseCommandStats(info)
}

// Stop terminates the server (SIGTERM, then SIGKILL after 5 s) and removes
// its directory. It is safe to call more than once.
func (r *Redis) Stop() {
	if r.client != nil {
		_ = r.client.Close()
	}
	stopProcess(r.cmd, r.exited, 5*time.Second)
	_ = os.RemoveAll(r.dir)
}

// stopProcess signals cmd's process (only that pid) and waits for exited.
func stopProcess(cmd *exec.Cmd, exited <-chan struct{}, grace time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// ParseCommandStats parses the body of INFO commandstats: lines such as
// "cmdstat_evalsha:calls=12,usec=340,usec_per_call=28.33,..." become
// {"evalsha": 12}. Other lines (the "# Commandstats" header, blanks) are
// skipped; a cmdstat line without a valid calls field is an error.
func ParseCommandStats(info string) (map[string]int64, error) {
	out := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		rest, ok := strings.CutPrefix(line, "cmdstat_")
		if !ok {
			continue
		}
		name, fields, ok := strings.Cut(rest, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("load: commandstats line %q", line)
		}
		calls := int64(-1)
		for f := range strings.SplitSeq(fields, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || n < 0 {
					return nil, fmt.Errorf("load: commandstats %s calls %q", name, v)
				}
				calls = n
			}
		}
		if calls < 0 {
			return nil, fmt.Errorf("load: commandstats %s: no calls field", name)
		}
		out[strings.ToLower(name)] += calls
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load: commandstats: %w", err)
	}
	return out, nil
}

// CommandDelta is the number of commands between two commandstats readings,
// leaving out the harness's own INFO calls.
func CommandDelta(before, after map[string]int64) int64 {
	var n int64
	for k, v := range after {
		if k == "info" {
			continue
		}
		n += v - before[k]
	}
	return n
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("load: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitTCP waits until addr accepts connections, the process exits, or the
// timeout passes.
func waitTCP(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("load: process exited before listening")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("load: %s not listening after %v: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
