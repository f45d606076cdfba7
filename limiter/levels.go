package limiter

import "strings"

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
	// Limits are the level's own per-minute and concurrency limits (zero
	// fields unlimited).
	Limits Limits
}

// LevelLimits are one level's limits in an AdmitRequest. Key is never ""
// there: the org's limits are AdmitRequest.Limits.
type LevelLimits struct {
	Key    string
	Limits Limits
}

// LevelAdmission splits levels into what an AdmitRequest carries: the org
// level's limits (Limits), every other level that limits anything (Levels),
// and every level's budgets (Budgets).
func LevelAdmission(levels []Level) (org Limits, rest []LevelLimits, budgets []Budget) {
	for _, l := range levels {
		switch {
		case l.Key == "":
			org = l.Limits
		case l.Limits.RequestsPerMinute > 0 || l.Limits.TokensPerMinute > 0 || l.Limits.Concurrent > 0:
			rest = append(rest, LevelLimits{Key: l.Key, Limits: l.Limits})
		}
	}
	return org, rest, LevelBudgets(levels)
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
