package policy

import (
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
)

func TestBudgetReservation(t *testing.T) {
	const base = "identity: {from: [{api_key_of: x-api-key}]}\npolicies:\n  default:\n"
	for _, tc := range []struct {
		name, policy string
		want         Policy // only the reservation fields are compared
		err          string
	}{
		{"defaults", "    limits: {concurrent: 1}\n",
			Policy{BudgetReservation: ReservationCapped, MinOutputTokens: DefaultMinOutputTokens, DefaultMaxOutputTokens: accounting.UnknownModelMaxOutputTokens}, ""},
		{"full", "    budget_reservation: full\n    min_output_tokens: 512\n    default_max_output_tokens: 32000\n",
			Policy{BudgetReservation: ReservationFull, MinOutputTokens: 512, DefaultMaxOutputTokens: 32000}, ""},
		{"capped", "    budget_reservation: capped\n",
			Policy{BudgetReservation: ReservationCapped, MinOutputTokens: DefaultMinOutputTokens, DefaultMaxOutputTokens: accounting.UnknownModelMaxOutputTokens}, ""},
		{"unknown mode", "    budget_reservation: exact\n", Policy{}, `policies.default.budget_reservation: "exact" is not full or capped`},
		{"zero minimum", "    min_output_tokens: 0\n", Policy{}, "policies.default.min_output_tokens: 0 is outside [1, 50000000]"},
		{"negative default", "    default_max_output_tokens: -1\n", Policy{}, "policies.default.default_max_output_tokens: -1 is outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(base + tc.policy))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p, _ := c.Policy("", "")
			if p.BudgetReservation != tc.want.BudgetReservation || p.MinOutputTokens != tc.want.MinOutputTokens || p.DefaultMaxOutputTokens != tc.want.DefaultMaxOutputTokens {
				t.Fatalf("policy %s/%d/%d, want %s/%d/%d", p.BudgetReservation, p.MinOutputTokens, p.DefaultMaxOutputTokens,
					tc.want.BudgetReservation, tc.want.MinOutputTokens, tc.want.DefaultMaxOutputTokens)
			}
		})
	}
}
