package limiter

import (
	"errors"
	"testing"
)

// runClampConformance checks the output clamp (AdmitRequest.Output) on
// both stores: the largest whole output that fits every budget of every
// level, decided in the one admission.
func runClampConformance(t *testing.T, h harness) {
	// A request of 100 input tokens costing 1000 and up to 1000 output
	// tokens at 10 each: 10100 reserved whole.
	req := func(org, id string, bs []Budget) AdmitRequest {
		return AdmitRequest{Tenant: org, RequestID: id, Tokens: 1100, Cost: 11000, Budgets: bs,
			Output: Output{Tokens: 1000, Price: 10, Min: 100}}
	}
	reserved := func(t *testing.T, org string, bs []Budget) []int64 {
		t.Helper()
		got, err := h.store.Budgets(ctxb, org, bs)
		if err != nil {
			t.Fatal(err)
		}
		var out []int64
		for _, b := range got {
			out = append(out, b.Reserved)
		}
		return out
	}

	t.Run("ClampFitsWhole", func(t *testing.T) {
		org := newTenant("clamp-whole")
		bs := LevelBudgets(levelsOf(h.now(t), "eng", "ann", 100_000, 11_000, 50_000))
		d := mustAdmit(t, h.store, req(org, "a", bs))
		if !d.Allowed || d.OutputTokens != 1000 {
			t.Fatalf("decision %+v; want allowed with all 1000 output tokens", d)
		}
		for i, r := range reserved(t, org, bs) {
			if r != 11000 {
				t.Fatalf("level %d reserved %d, want 11000", i, r)
			}
		}
	})

	t.Run("ClampToTightestLevel", func(t *testing.T) {
		org := newTenant("clamp-tight")
		bs := LevelBudgets(levelsOf(h.now(t), "eng", "ann", 100_000, 20_000, 50_000))
		// The team has 20000 − 13355 = 6645 left: 1000 of input and
		// ⌊5645/10⌋ = 564 output tokens fit; the org and user have more.
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "before", Cost: 13_355,
			Budgets: LevelBudgets(levelsOf(h.now(t), "eng", "bob", 100_000, 20_000, 50_000))})
		d := mustAdmit(t, h.replica, req(org, "a", bs))
		if !d.Allowed || d.OutputTokens != 564 {
			t.Fatalf("decision %+v; want allowed with 564 output tokens", d)
		}
		got := reserved(t, org, bs)
		if want := []int64{13_355 + 6640, 13_355 + 6640, 6640}; got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Fatalf("reserved %v, want %v", got, want)
		}
		// Settle releases exactly what the clamp reserved.
		mustSettle(t, h.store, SettleRequest{Tenant: org, RequestID: "a", Tokens: 300, Cost: 3000, Budgets: bs})
		if got := reserved(t, org, bs); got[0] != 13_355 || got[1] != 13_355 || got[2] != 0 {
			t.Fatalf("after settle reserved %v, want [13355 13355 0]", got)
		}
	})

	t.Run("ClampBelowMinimumDenies", func(t *testing.T) {
		org := newTenant("clamp-min")
		bs := LevelBudgets(levelsOf(h.now(t), "eng", "ann", 100_000, 1_999, 50_000))
		mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "seed", Budgets: bs})
		before := h.dump(t, org)
		// 999 left after the input: 99 output tokens, below the minimum 100.
		d := mustAdmit(t, h.store, req(org, "a", bs))
		if d.Allowed || d.Denied != BudgetDimension("day") || d.Level != "t:eng" || d.OutputTokens != 0 {
			t.Fatalf("decision %+v; want denied budget_day at t:eng", d)
		}
		if after := h.dump(t, org); after != before {
			t.Fatalf("denial wrote:\nbefore %s\nafter  %s", before, after)
		}
		// One more nano-USD of room is the minimum: admitted with 100.
		bs = LevelBudgets(levelsOf(h.now(t), "eng", "ann", 100_000, 2_000, 50_000))
		if d := mustAdmit(t, h.replica, req(org, "b", bs)); !d.Allowed || d.OutputTokens != 100 {
			t.Fatalf("decision %+v; want allowed with 100 output tokens", d)
		}
	})

	t.Run("ClampCountsClampedTokensPerMinute", func(t *testing.T) {
		org := newTenant("clamp-tpm")
		bs := LevelBudgets(levelsOf(h.now(t), "eng", "ann", 100_000, 6_000, 50_000))
		// 1100 tokens would not fit 700 per minute; clamped to 500 output
		// tokens the request is 600.
		r := req(org, "a", bs)
		r.Limits = Limits{TokensPerMinute: 700}
		d := mustAdmit(t, h.store, r)
		if !d.Allowed || d.OutputTokens != 500 {
			t.Fatalf("decision %+v; want allowed with 500 output tokens", d)
		}
		if d.Tokens.Remaining != 100 {
			t.Fatalf("tokens %+v; want 100 remaining after 600 of 700", d.Tokens)
		}
	})

	t.Run("ClampNeedsPriceAndRoom", func(t *testing.T) {
		org := newTenant("clamp-free")
		bs := LevelBudgets(levelsOf(h.now(t), "eng", "ann", 100_000, 1_000, 50_000))
		// Output that costs nothing is never clamped: the input alone
		// decides.
		r := AdmitRequest{Tenant: org, RequestID: "a", Tokens: 1100, Cost: 900, Budgets: bs, Output: Output{Tokens: 1000, Min: 1}}
		if d := mustAdmit(t, h.store, r); !d.Allowed || d.OutputTokens != 1000 {
			t.Fatalf("decision %+v; want allowed with 1000 output tokens", d)
		}
		// Without Output nothing is clamped and OutputTokens stays zero.
		r = AdmitRequest{Tenant: org, RequestID: "b", Tokens: 1100, Cost: 200, Budgets: bs}
		if d := mustAdmit(t, h.store, r); d.Allowed || d.OutputTokens != 0 {
			t.Fatalf("decision %+v; want a plain budget denial", d)
		}
	})

	t.Run("ClampInvalid", func(t *testing.T) {
		org := newTenant("clamp-invalid")
		for _, o := range []Output{
			{Tokens: 2000, Price: 1, Min: 1},     // more output than tokens
			{Tokens: 1000, Price: 10, Min: 1001}, // minimum above the output
			{Tokens: 1000, Price: 12, Min: 1},    // output costs more than the whole
			{Tokens: -1, Price: 1},
			{Tokens: 1000, Price: -1},
		} {
			r := req(org, "a", nil)
			r.Output = o
			if _, err := h.store.Admit(ctxb, r); !errors.Is(err, ErrInvalid) {
				t.Errorf("output %+v: err %v, want ErrInvalid", o, err)
			}
		}
	})
}

// TestClampOutput is the clamp arithmetic the Lua script repeats.
func TestClampOutput(t *testing.T) {
	o := Output{Tokens: 1000, Price: 10, Min: 100}
	for _, tc := range []struct {
		name       string
		o          Output
		cost, room int64
		want       int64
	}{
		{"fits", o, 11000, 11000, 1000},
		{"one nano short", o, 11000, 10999, 999},
		{"rounds down", o, 11000, 6645, 564},
		{"at the minimum", o, 11000, 2000, 100},
		{"below the minimum", o, 11000, 1999, 1000},
		{"no room for the input", o, 11000, 999, 1000},
		{"negative room", o, 11000, -5, 1000},
		{"minimum zero, input only", Output{Tokens: 1000, Price: 10}, 11000, 1005, 0},
		{"minimum zero, short of the input", Output{Tokens: 1000, Price: 10}, 11000, 995, 1000},
		{"free output", Output{Tokens: 1000, Min: 1}, 11000, 10, 1000},
		{"no output", Output{}, 11000, 10, 0},
	} {
		if got := clampOutput(tc.o, tc.cost, tc.room); got != tc.want {
			t.Errorf("%s: clampOutput(%+v, %d, %d) = %d, want %d", tc.name, tc.o, tc.cost, tc.room, got, tc.want)
		}
	}
}
