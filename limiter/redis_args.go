package limiter

// scriptArgs builds a script's ARGV with a few allocations instead of one
// per argument. An int64 or a string put in an `any` is copied to the heap
// (only values below 256 are not), and an admit at four levels with eight
// budgets has more than a hundred of them; a pointer in an `any` is not
// copied, and go-redis writes *int64 and *string arguments as it writes
// int64 and string ones
// (https://pkg.go.dev/github.com/redis/go-redis/v9/internal/proto#Writer.WriteArg).
// So each value is kept in one backing array per kind and ARGV holds
// pointers into them.
//
// The arrays are not pooled: a call that gives up while queued for a
// pipeline returns before the pipeline has written its arguments
// (pipeline.do), so nothing may reuse them; they are the garbage of one
// call. KEYS stay plain strings: Redis Cluster routing reads the first key
// as a string.
type scriptArgs struct {
	argv []any
	ints []int64
	strs []string
}

// newScriptArgs sizes the arrays for n arguments, at most ni of them
// integers and ns strings. More only costs a larger array: a pointer into an
// outgrown one still reads the value it was given.
func newScriptArgs(n, ni, ns int) *scriptArgs {
	return &scriptArgs{argv: make([]any, 0, n), ints: make([]int64, 0, ni), strs: make([]string, 0, ns)}
}

func (a *scriptArgs) int(v int64) {
	if v >= 0 && v < 256 { // boxed without an allocation
		a.argv = append(a.argv, v)
		return
	}
	a.ints = append(a.ints, v)
	a.argv = append(a.argv, &a.ints[len(a.ints)-1])
}

func (a *scriptArgs) str(s string) {
	a.strs = append(a.strs, s)
	a.argv = append(a.argv, &a.strs[len(a.strs)-1])
}

// alerts adds the alerts block that lua/common.lua read_alerts reads, of
// the budgets that have thresholds: a budget the block leaves out has none
// to cross, as one listed with none, and each listed costs every settle a
// table and two arguments to parse.
func (a *scriptArgs) alerts(budgets []Budget) {
	n := 0
	for i := range budgets {
		if len(budgets[i].Alerts) > 0 {
			n++
		}
	}
	a.int(int64(n))
	for _, b := range budgets {
		if len(b.Alerts) == 0 {
			continue
		}
		a.str(b.Name)
		a.int(int64(len(b.Alerts)))
		for _, t := range b.Alerts {
			a.int(t)
		}
	}
}

// alertsLen is at most how many arguments alerts adds for budgets.
func alertsLen(budgets []Budget) int {
	n := 1 + 2*len(budgets)
	for _, b := range budgets {
		n += len(b.Alerts)
	}
	return n
}

// callKeys are the s, p and r:<id> keys of a tenant's call, cut from one
// string: one allocation, not three.
func callKeys(prefix, requestID string) []string {
	all := prefix + "s" + prefix + "p" + prefix + "r:" + requestID
	n := len(prefix)
	return []string{all[:n+1], all[n+1 : 2*n+2], all[2*n+2:]}
}
