package gate

import (
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/limiter"
)

// A policy with leases: admits its requests with the lease terms, so
// limiter.Leased serves them from one lease and settles it with the
// actual cost; a policy without passes through.
func TestLeasedPolicy(t *testing.T) {
	yaml := strings.Replace(baseYAML, "      aliases: {fast: claude-haiku-4-5}\n",
		"      aliases: {fast: claude-haiku-4-5}\n    leases: {max_age: 2s, max_requests: 8}\n", 1)
	var ld *limiter.Leased
	h := newHarnessWith(t, yaml, func(m *limiter.Memory) limiter.Store {
		ld = limiter.NewLeased(limiter.LeasedOptions{Inner: m})
		return ld
	})
	defer ld.Close()
	for range 3 {
		x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
		respond(t, x)
		x.Settle()
	}
	if ld.Open() != 1 {
		t.Fatalf("%d leases open for three requests of one chain, want 1", ld.Open())
	}
	if err := ld.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed: the lease settled with the three actual costs.
	h.wantBudgets("acme", "", 0, 3*messageCost)
}
