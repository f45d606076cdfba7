package load

import (
	"context"
	"strings"
	"testing"
	"time"
)

const commandStats = "# Commandstats\r\ncmdstat_evalsha:calls=120,usec=3400,usec_per_call=28.33,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=3,usec=90,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r\ncmdstat_script|load:calls=2,usec=50,usec_per_call=25.00,rejected_calls=0,failed_calls=0\r\n"

func TestParseCommandStats(t *testing.T) {
	tests := []struct {
		name    string
		info    string
		want    map[string]int64
		wantErr bool
	}{
		{"redis 7", commandStats, map[string]int64{"evalsha": 120, "info": 3, "script|load": 2}, false},
		{"empty section", "# Commandstats\r\n", map[string]int64{}, false},
		{"upper-case names fold", "cmdstat_EVALSHA:calls=1,usec=1\ncmdstat_evalsha:calls=2,usec=1\n", map[string]int64{"evalsha": 3}, false},
		{"no calls field", "cmdstat_get:usec=1\n", nil, true},
		{"bad calls", "cmdstat_get:calls=x\n", nil, true},
		{"negative calls", "cmdstat_get:calls=-1\n", nil, true},
		{"no name", "cmdstat_:calls=1\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCommandStats(tt.info)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("= %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %d, want %d", k, got[k], v)
				}
			}
		})
	}
}

func TestCommandDeltaLeavesOutInfo(t *testing.T) {
	before := map[string]int64{"evalsha": 10, "info": 4}
	after := map[string]int64{"evalsha": 25, "info": 9, "script|load": 2}
	if got := CommandDelta(before, after); got != 17 {
		t.Errorf("CommandDelta = %d, want 17 (15 evalsha + 2 script load, info excluded)", got)
	}
}

func FuzzParseCommandStats(f *testing.F) {
	f.Add(commandStats)
	f.Add("cmdstat_a:calls=1,calls=2")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseCommandStats(s)
		if err != nil {
			return
		}
		for k, v := range m {
			if v < 0 {
				t.Errorf("%s: negative calls %d", k, v)
			}
		}
	})
}

func TestRedisCountsCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a redis-server")
	}
	ctx := context.Background()
	r, err := StartRedis(ctx, "", 10*time.Second)
	if err != nil {
		t.Fatalf("StartRedis: %v (redis-server is required by make test)", err)
	}
	defer r.Stop()
	before, err := r.CommandCalls(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := r.client.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	after, err := r.CommandCalls(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := CommandDelta(before, after); got != 3 {
		t.Errorf("3 SETs counted as %d commands (%v → %v)", got, before, after)
	}

	// A script with three calls is one client command and three script ones.
	m, err := r.Monitor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	script := "redis.call('set','a','1'); redis.call('get','a'); redis.call('get','a'); return 1"
	if err := r.client.Eval(ctx, script, nil).Err(); err != nil {
		t.Fatal(err)
	}
	// MONITOR output is asynchronous: a PING after the EVAL, seen on the
	// monitor, proves the EVAL's lines were delivered before it.
	if err := r.client.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.mu.Lock()
		seen := m.client["ping"]
		m.mu.Unlock()
		if seen > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	client, inner := m.Stop()
	if client["eval"] != 1 || inner != 3 {
		t.Errorf("client commands %v, script commands %d; want eval 1 and 3", client, inner)
	}
}

func TestParseMonitorLine(t *testing.T) {
	tests := []struct {
		line, src, cmd string
		ok             bool
	}{
		{"+1700000000.123456 [0 127.0.0.1:51234] \"evalsha\" \"ab12\" \"1\" \"tw:{t}:r\"\r\n", "127.0.0.1:51234", "evalsha", true},
		{"+1700000000.123456 [0 lua] \"HINCRBY\" \"tw:{t}:b\" \"spent\" \"5\"\r\n", "lua", "hincrby", true},
		{"+1700000000.123456 [3 unix:/tmp/r.sock] \"get\" \"k\"", "unix:/tmp/r.sock", "get", true},
		{"+OK\r\n", "", "", false},
		{"-ERR x\r\n", "", "", false},
		{"+1 [0] \"get\"", "", "", false},
		{"+1 [0 lua]", "", "", false},
		{"+1 [0 lua] \"\"", "", "", false},
		{"+1 [0 lua \"get\"", "", "", false},
	}
	for _, tt := range tests {
		src, cmd, ok := ParseMonitorLine(tt.line)
		if src != tt.src || cmd != tt.cmd || ok != tt.ok {
			t.Errorf("ParseMonitorLine(%q) = %q, %q, %v; want %q, %q, %v", tt.line, src, cmd, ok, tt.src, tt.cmd, tt.ok)
		}
	}
}

func FuzzParseMonitorLine(f *testing.F) {
	f.Add("+1700000000.123456 [0 lua] \"hincrby\" \"k\"\r\n")
	f.Add("+1 [0 127.0.0.1:1] \"evalsha\"")
	f.Fuzz(func(t *testing.T, line string) {
		src, cmd, ok := ParseMonitorLine(line)
		if ok && (src == "" || cmd == "" || strings.ContainsAny(cmd, "\"\n")) {
			t.Errorf("ok with source %q command %q", src, cmd)
		}
		if !ok && (src != "" || cmd != "") {
			t.Errorf("not ok but returned %q %q", src, cmd)
		}
	})
}
