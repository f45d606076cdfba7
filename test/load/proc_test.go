package load

import (
	"os"
	"strings"
	"testing"
)

// A real /proc/<pid>/stat line (kernel 6.x) with utime=1234, stime=56.
const statLine = "4242 (tokenwarden) S 1 4242 4242 0 -1 4194560 2816 0 0 0 1234 56 0 0 20 0 9 0 123456 1300000000 5000 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0\n"

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    uint64
		wantErr bool
	}{
		{"plain", statLine, 1290, false},
		{"command with spaces and parens", strings.Replace(statLine, "(tokenwarden)", "(tw (serve) x)", 1), 1290, false},
		{"command with a closing paren and digits", strings.Replace(statLine, "(tokenwarden)", "(a) 9 9 9)", 1), 1290, false},
		{"no command", "4242 S 1 2 3", 0, true},
		{"truncated", "4242 (tw) S 1 4242 4242 0 -1 4194560 2816 0 0 0 1234", 0, true},
		{"non-numeric utime", strings.Replace(statLine, " 1234 ", " x ", 1), 0, true},
		{"negative stime", strings.Replace(statLine, " 56 ", " -56 ", 1), 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatCPU([]byte(tt.stat))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("ticks = %d, want %d", got, tt.want)
			}
		})
	}
}

const statusText = `Name:	tokenwarden
Umask:	0022
State:	S (sleeping)
VmPeak:	 1300000 kB
VmHWM:	   61440 kB
VmRSS:	   40960 kB
RssAnon:	   30000 kB
Threads:	9
`

func TestParseStatusKB(t *testing.T) {
	tests := []struct {
		name, text, key string
		want            int64
		wantErr         bool
	}{
		{"rss", statusText, "VmRSS", 40960, false},
		{"hwm", statusText, "VmHWM", 61440, false},
		{"prefix of another key does not match", statusText, "Vm", 0, true},
		{"missing", statusText, "VmSwap", 0, true},
		{"no unit", "VmRSS:\t12\n", "VmRSS", 0, true},
		{"wrong unit", "VmRSS:\t12 MB\n", "VmRSS", 0, true},
		{"negative", "VmRSS:\t-12 kB\n", "VmRSS", 0, true},
		{"no trailing newline", "VmRSS:\t12 kB", "VmRSS", 12, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatusKB([]byte(tt.text), tt.key)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("= %d, want %d", got, tt.want)
			}
		})
	}
}

func TestReadProcSelf(t *testing.T) {
	// Burn a little CPU so the reading cannot legitimately be zero.
	x := 0
	before, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50_000_000 {
		x += i % 7
	}
	after, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after.CPU <= before.CPU || x == 0 {
		t.Errorf("CPU did not advance: %v then %v", before.CPU, after.CPU)
	}
	if after.RSSKB <= 0 || after.HWMKB < after.RSSKB {
		t.Errorf("RSS %d kB, HWM %d kB: want 0 < RSS ≤ HWM", after.RSSKB, after.HWMKB)
	}
	if _, err := ReadProc(1 << 30); err == nil {
		t.Error("ReadProc of a pid that cannot exist succeeded")
	}
}

func FuzzParseStatCPU(f *testing.F) {
	f.Add([]byte(statLine))
	f.Add([]byte("1 (a)) S 1 1 1 0 -1 0 0 0 0 0 18446744073709551615 1 0"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseStatCPU(b)
		if err != nil && v != 0 {
			t.Errorf("error %v with value %d", err, v)
		}
	})
}

func FuzzParseStatusKB(f *testing.F) {
	f.Add([]byte(statusText), "VmRSS")
	f.Add([]byte("VmRSS: 1 kB\nVmRSS: 2 kB"), "VmRSS")
	f.Fuzz(func(t *testing.T, b []byte, key string) {
		v, err := ParseStatusKB(b, key)
		if err == nil && v < 0 {
			t.Errorf("negative %d without error", v)
		}
	})
}
