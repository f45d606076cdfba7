package limiter

import (
	"strings"
	"testing"
)

// The escaping as strings.Replacer tables: what the store's keys and budget
// names were written with before it was hand-rolled, and what it must still
// write (names already in Redis are looked up by it).
var (
	refLevelEscaper = strings.NewReplacer("%", "%25", "/", "%2F", ":", "%3A", "{", "%7B", "}", "%7D",
		"\t", "%09", "\n", "%0A")
	refLevelUnescaper = strings.NewReplacer("%25", "%", "%2F", "/", "%3A", ":", "%7B", "{", "%7D", "}",
		"%09", "\t", "%0A", "\n")
)

// FuzzLevelEscape: escaping, budget names and their splitting agree with the
// reference tables on any key, and unescaping with them on any name, even
// one no escaping wrote ("%2", "%41", "%2525").
func FuzzLevelEscape(f *testing.F) {
	for _, s := range []string{"", "t:eng", "u:eng/ann", "k:eng/k1", "%", "%2", "%2F", "%2f", "%41", "%2525",
		"a{b}c", "\t\n", "%%3A", "é/ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := escapedLevel(s), refLevelEscaper.Replace(s); got != want {
			t.Fatalf("escapedLevel(%q) = %q, want %q", s, got, want)
		}
		if got, want := unescapeLevel(s), refLevelUnescaper.Replace(s); got != want {
			t.Fatalf("unescapeLevel(%q) = %q, want %q", s, got, want)
		}
		if s == "" {
			return
		}
		name := LevelBudgetName(s, "day")
		if want := refLevelEscaper.Replace(s) + "/day"; name != want {
			t.Fatalf("LevelBudgetName(%q) = %q, want %q", s, name, want)
		}
		if k, w := SplitBudgetName(name); k != s || w != "day" {
			t.Fatalf("SplitBudgetName(%q) = %q, %q, want %q, day", name, k, w, s)
		}
		var lv levelNames
		for _, n := range []string{name, LevelBudgetName(s, "month"), "day", name} {
			if got, want := lv.of(n), levelOf(n); got != want {
				t.Fatalf("levelNames.of(%q) = %q, want %q", n, got, want)
			}
		}
	})
}

// A name is one allocation, a key with nothing to escape none.
func TestLevelEscapeAllocs(t *testing.T) {
	for _, c := range []struct {
		name string
		f    func()
		want float64
	}{
		{"LevelBudgetName", func() { _ = LevelBudgetName("u:eng/ann", "month") }, 1},
		{"SplitBudgetName", func() { _, _ = SplitBudgetName("u%3Aeng%2Fann/month") }, 1},
		{"SplitBudgetName plain", func() { _, _ = SplitBudgetName("team/month") }, 0},
		{"escapedLevel plain", func() { _ = escapedLevel("team") }, 0},
	} {
		if got := testing.AllocsPerRun(100, c.f); got != c.want {
			t.Errorf("%s: %v allocations, want %v", c.name, got, c.want)
		}
	}
}
