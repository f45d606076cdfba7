package wire

import (
	"bytes"
	"fmt"
	"testing"
)

func hashOf(parts ...[]byte) uint64 {
	var h Hash64
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum64()
}

func TestHash64SplitInvariant(t *testing.T) {
	data := []byte("You are a careful coding agent. Today is 2026-03-01; tools follow.\x00\x01")
	want := hashOf(data)
	for i := 0; i <= len(data); i++ {
		for j := i; j <= len(data); j += 7 {
			if got := hashOf(data[:i], data[i:j], data[j:]); got != want {
				t.Fatalf("split at %d,%d: %x, want %x", i, j, got, want)
			}
		}
	}
	var h Hash64
	h.WriteString(string(data[:10]))
	for _, c := range data[10:] {
		_ = h.WriteByte(c)
	}
	if h.Sum64() != want {
		t.Error("WriteString/WriteByte disagree with Write")
	}
}

func TestHash64Distinguishes(t *testing.T) {
	seen := map[uint64]string{}
	add := func(name string, b []byte) {
		t.Helper()
		s := hashOf(b)
		if prev, ok := seen[s]; ok {
			t.Errorf("%s collides with %s", name, prev)
		}
		seen[s] = name
	}
	add("empty", nil)
	// Zero bytes of every length: the length is part of the hash.
	for n := 1; n <= 17; n++ {
		add(fmt.Sprintf("%d zeros", n), make([]byte, n))
	}
	// Every single-bit flip of a 24-byte message.
	base := []byte("system prompt v1 2026-03")
	add("base", base)
	for i := range base {
		for bit := range 8 {
			b := bytes.Clone(base)
			b[i] ^= 1 << bit
			add(fmt.Sprintf("flip %d.%d", i, bit), b)
		}
	}
}

// TestHash64Stable pins the algorithm: fingerprints are compared across
// replicas and restarts, so a change here must be deliberate.
func TestHash64Stable(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"", 0xe220a8397b1dcdaf},
		{"tokenwarden", 0x5de6f9924725a79b},
		{"The quick brown fox jumps over the lazy dog", 0xb63f2dae254aa132},
	} {
		if got := hashOf([]byte(tc.in)); got != tc.want {
			t.Errorf("Hash64(%q) = %#x, want %#x", tc.in, got, tc.want)
		}
	}
	if CombineHashes(1, 2) == CombineHashes(2, 1) {
		t.Error("CombineHashes ignores order")
	}
}

func BenchmarkHash64(b *testing.B) {
	data := bytes.Repeat([]byte("You are a careful coding agent. "), 100<<10/32)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		hashOf(data)
	}
}
