package limiter

import (
	"fmt"
	"strings"
)

// Levels: one org's hierarchy (org, team, user, key) admitted in one call.
//
// Every level of an org keeps its budgets under the org's hash tag, so one
// Admit — one Lua script in one Redis Cluster slot — checks and reserves the
// budgets of every level at once, all or nothing: a request denied at the
// team level reserves nothing at the org. The reservation record lists every
// window it charged, so Settle, Cancel and expiry release exactly those at
// every level.
//
// A level's budgets are stored under a budget name that carries the level's
// key (LevelBudgets encodes, SplitBudgetName decodes); the org level (key "")
// keeps the plain window name, so a flat tenant's keys are what they were.

// Level is one level of the caller's hierarchy and its budgets. Key names the
// level's state within its org ("" for the org itself, "t:<team>",
// "u:<team>/<user>", "k:<team>/<key>", as policy.Resolve gives them).
type Level struct {
	Key     string
	Budgets []Budget
}

// levelEscapes are the bytes a level key may not carry into a budget name,
// a store key or a hash field ('/' separates a budget name's level from its
// window kind, ':' a key's parts, braces the hash tag), escaped as %XX with
// upper-case hex; '%' is escaped so that the mapping is one-to-one.
const levelEscapes = "%/:{}\t\n"

const upperHex = "0123456789ABCDEF"

// writeEscapedLevel writes key escaped. Budget names and store keys are
// built on every admit and settle; one buffer for the whole name, not a
// strings.Replacer's result and a concatenation on top, is one allocation
// per name instead of two or three.
func writeEscapedLevel(b *strings.Builder, key string) {
	for i := 0; i < len(key); i++ {
		c := key[i]
		if strings.IndexByte(levelEscapes, c) < 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(upperHex[c>>4])
		b.WriteByte(upperHex[c&15])
	}
}

// escapedLen is the length of key escaped.
func escapedLen(key string) int {
	n := len(key)
	for i := 0; i < len(key); i++ {
		if strings.IndexByte(levelEscapes, key[i]) >= 0 {
			n += 2
		}
	}
	return n
}

// unescapeLevel inverts writeEscapedLevel. Only the escapes it writes are
// decoded; any other '%' stays as it is.
func unescapeLevel(s string) string {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for ; i >= 0; i = strings.IndexByte(s, '%') {
		b.WriteString(s[:i])
		if c, ok := unhex(s[i:]); ok {
			b.WriteByte(c)
			s = s[i+3:]
			continue
		}
		b.WriteByte('%')
		s = s[i+1:]
	}
	b.WriteString(s)
	return b.String()
}

// unhex decodes the escape at the start of s ("%2F") if it is one that
// writeEscapedLevel writes.
func unhex(s string) (byte, bool) {
	if len(s) < 3 {
		return 0, false
	}
	hi, lo := strings.IndexByte(upperHex, s[1]), strings.IndexByte(upperHex, s[2])
	if hi < 0 || lo < 0 {
		return 0, false
	}
	c := byte(hi<<4 | lo)
	return c, strings.IndexByte(levelEscapes, c) >= 0
}

// LevelBudgetName is the store name of level key's budget window kind.
func LevelBudgetName(key, window string) string {
	if key == "" {
		return window
	}
	var b strings.Builder
	b.Grow(escapedLen(key) + 1 + len(window))
	writeEscapedLevel(&b, key)
	b.WriteByte('/')
	b.WriteString(window)
	return b.String()
}

// SplitBudgetName returns the level key and window kind of a store budget
// name made by LevelBudgetName.
func SplitBudgetName(name string) (key, window string) {
	i := strings.IndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return unescapeLevel(name[:i]), name[i+1:]
}

// LevelBudgets flattens every level's budgets into the one list an
// AdmitRequest, SettleRequest or Budgets call carries, in level order (the
// first budget that does not fit is the one reported as denied).
func LevelBudgets(levels []Level) []Budget {
	var out []Budget
	for _, l := range levels {
		for _, b := range l.Budgets {
			b.Name = LevelBudgetName(l.Key, b.Name)
			out = append(out, b)
		}
	}
	return out
}

func levelOf(name string) string {
	k, _ := SplitBudgetName(name)
	return k
}

// levelNames is levelOf over one call's budget names, which come level by
// level (a day and a month budget each): a level's key is unescaped once,
// not once per budget.
type levelNames struct{ escaped, key string }

func (l *levelNames) of(name string) string {
	i := strings.IndexByte(name, '/')
	if i < 0 {
		return ""
	}
	if esc := name[:i]; esc != l.escaped {
		l.escaped, l.key = esc, unescapeLevel(esc)
	}
	return l.key
}

// LevelLimits are one level's own per-minute and concurrency limits (a zero
// field is unlimited). Key is the level's key as in Level, never "" (the
// org's limits are AdmitRequest.Limits).
type LevelLimits struct {
	Key               string
	RequestsPerMinute int64
	TokensPerMinute   int64
	Concurrent        int64
}

func (l *LevelLimits) enforces() bool {
	return l.RequestsPerMinute > 0 || l.TokensPerMinute > 0 || l.Concurrent > 0
}

// escapedLevel is a level key as it appears in store keys, hash fields and
// reservation records: no separator of any of them.
func escapedLevel(key string) string {
	n := escapedLen(key)
	if n == len(key) {
		return key
	}
	var b strings.Builder
	b.Grow(n)
	writeEscapedLevel(&b, key)
	return b.String()
}

func validateLevelLimits(ls []LevelLimits) error {
	for i := range ls {
		l := &ls[i]
		switch {
		case l.Key == "":
			return fmt.Errorf("%w: level limits without a key (the org's limits are Limits)", ErrInvalid)
		case l.RequestsPerMinute < 0 || l.TokensPerMinute < 0 || l.Concurrent < 0:
			return fmt.Errorf("%w: level %q: negative limit", ErrInvalid, l.Key)
		}
		for j := range i {
			if ls[j].Key == l.Key {
				return fmt.Errorf("%w: level %q given twice", ErrInvalid, l.Key)
			}
		}
	}
	return nil
}
