package load

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Monitor counts the commands clients send to a Redis server, as opposed to
// the commands its Lua scripts run: INFO commandstats counts both (a script
// that calls HINCRBY five times adds five), so it cannot tell round trips.
// MONITOR reports each command with its source, "lua" for script calls. It
// slows Redis down, so the harness uses it only in a short calibration run.
type Monitor struct {
	conn net.Conn
	done chan struct{}

	mu     sync.Mutex
	client map[string]int64 // commands sent by clients, by name
	script int64            // commands run by scripts
	err    error
}

// Monitor starts counting; Stop ends it.
func (r *Redis) Monitor(ctx context.Context) (*Monitor, error) {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(ctx, "tcp", r.Addr)
	if err != nil {
		return nil, fmt.Errorf("load: monitor dial: %w", err)
	}
	rd := bufio.NewReaderSize(conn, 64<<10)
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		conn.Close()
		return nil, fmt.Errorf("load: monitor: %w", err)
	}
	ok, err := rd.ReadString('\n')
	if err != nil || strings.TrimSpace(ok) != "+OK" {
		conn.Close()
		return nil, fmt.Errorf("load: MONITOR answered %q: %v", ok, err)
	}
	_ = conn.SetDeadline(time.Time{})
	m := &Monitor{conn: conn, done: make(chan struct{}), client: map[string]int64{}}
	go m.read(rd)
	return m, nil
}

func (m *Monitor) read(rd *bufio.Reader) {
	defer close(m.done)
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return // Stop closed the connection
		}
		src, cmd, ok := ParseMonitorLine(line)
		if !ok {
			continue
		}
		m.mu.Lock()
		if src == "lua" {
			m.script++
		} else {
			m.client[cmd]++
		}
		m.mu.Unlock()
	}
}

// Stop ends monitoring and returns the client commands by name and the
// number of script-internal commands.
func (m *Monitor) Stop() (client map[string]int64, script int64) {
	m.conn.Close()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.client, "monitor")
	return m.client, m.script
}

// ParseMonitorLine parses one MONITOR line,
//
//	+1700000000.123456 [0 127.0.0.1:51234] "evalsha" "ab12" "1" "tw:{t}:r"
//
// into its source ("127.0.0.1:51234", or "lua" for a script's call) and the
// command name, lower-cased. ok is false for anything else.
func ParseMonitorLine(line string) (source, command string, ok bool) {
	line = strings.TrimRight(line, "\r\n")
	line, ok = strings.CutPrefix(line, "+")
	// Redis quotes every argument, escaping control bytes: a raw one means
	// this is not a MONITOR line.
	if !ok || strings.ContainsAny(line, "\r\n") {
		return "", "", false
	}
	open := strings.IndexByte(line, '[')
	if open < 0 {
		return "", "", false
	}
	close := strings.IndexByte(line[open:], ']')
	if close < 0 {
		return "", "", false
	}
	inside := line[open+1 : open+close]
	_, source, ok = strings.Cut(inside, " ")
	if !ok || source == "" {
		return "", "", false
	}
	rest := strings.TrimLeft(line[open+close+1:], " ")
	if len(rest) < 2 || rest[0] != '"' {
		return "", "", false
	}
	end := strings.IndexByte(rest[1:], '"')
	if end <= 0 {
		return "", "", false
	}
	return source, strings.ToLower(rest[1 : 1+end]), true
}
