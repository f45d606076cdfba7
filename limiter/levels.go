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

var levelEscaper = strings.NewReplacer("%", "%25", "/", "%2F", ":", "%3A", "{", "%7B", "}", "%7D",
	"\t", "%09", "\n", "%0A")

var levelUnescaper = strings.NewReplacer("%25", "%", "%2F", "/", "%3A", ":", "%7B", "{", "%7D", "}",
	"%09", "\t", "%0A", "\n")

// LevelBudgetName is the store name of level key's budget window kind.
func LevelBudgetName(key, window string) string {
	if key == "" {
		return window
	}
	return levelEscaper.Replace(key) + "/" + window
}

// SplitBudgetName returns the level key and window kind of a store budget
// name made by LevelBudgetName.
func SplitBudgetName(name string) (key, window string) {
	i := strings.IndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return levelUnescaper.Replace(name[:i]), name[i+1:]
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
func escapedLevel(key string) string { return levelEscaper.Replace(key) }

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
