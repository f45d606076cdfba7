package load

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. The
// kernel exports it as 100 on every architecture Go supports on Linux (the
// value sysconf(_SC_CLK_TCK) returns), and reading it properly needs cgo.
const clockTicks = 100

// ProcStat is one reading of a process's resource use.
type ProcStat struct {
	CPU   time.Duration // utime+stime since the process started
	RSSKB int64         // VmRSS, resident set now
	HWMKB int64         // VmHWM, peak resident set
}

// ReadProc reads /proc/<pid>/stat and /proc/<pid>/status.
func ReadProc(pid int) (ProcStat, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}, fmt.Errorf("load: read stat: %w", err)
	}
	ticks, err := ParseStatCPU(stat)
	if err != nil {
		return ProcStat{}, err
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcStat{}, fmt.Errorf("load: read status: %w", err)
	}
	rss, err := ParseStatusKB(status, "VmRSS")
	if err != nil {
		return ProcStat{}, err
	}
	hwm, err := ParseStatusKB(status, "VmHWM")
	if err != nil {
		return ProcStat{}, err
	}
	return ProcStat{CPU: time.Duration(ticks) * time.Second / clockTicks, RSSKB: rss, HWMKB: hwm}, nil
}

// ParseStatCPU returns utime+stime, in clock ticks, from the contents of
// /proc/<pid>/stat. The command name (field 2) is parenthesized and may
// itself contain spaces and parentheses, so fields are counted from the last
// ')': utime and stime are fields 14 and 15 of the whole line.
func ParseStatCPU(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("load: /proc stat: no command name")
	}
	fields := bytes.Fields(stat[i+1:])
	// fields[0] is field 3 (state), so field n is fields[n-3].
	if len(fields) < 13 {
		return 0, fmt.Errorf("load: /proc stat: %d fields after the command name, want at least 13", len(fields))
	}
	utime, err := strconv.ParseUint(string(fields[11]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("load: /proc stat utime: %w", err)
	}
	stime, err := strconv.ParseUint(string(fields[12]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("load: /proc stat stime: %w", err)
	}
	if utime+stime < utime {
		return 0, errors.New("load: /proc stat: utime+stime overflows")
	}
	return utime + stime, nil
}

// ParseStatusKB returns the value of a "Key:   1234 kB" line of
// /proc/<pid>/status, in kB.
func ParseStatusKB(status []byte, key string) (int64, error) {
	for line := range bytes.SplitSeq(status, []byte("\n")) {
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(name) != key {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("load: /proc status %s: malformed %q", key, rest)
		}
		v, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("load: /proc status %s: malformed %q", key, rest)
		}
		return v, nil
	}
	return 0, fmt.Errorf("load: /proc status: no %s line", key)
}
