package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

const clampPrompt = "Write the longest essay you can about harbours."

func clampBody(maxTokens int, stream bool) string {
	return fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":%d,"stream":%v,"messages":[{"role":"user","content":%q}]}`, maxTokens, stream, clampPrompt)
}

// TestClampedOutputLimit: under budget_reservation: full, a request asking
// for max_tokens 64000 against a nearly spent day budget is forwarded with
// its max_tokens lowered to the largest output the budget still holds; the
// mock provider sees that bound and honours it (it was told to write 64000
// tokens), the client is told in x-tokenwarden-output-clamped, and the day
// settles within its cap at exactly the mock's usage. Once less than
// min_output_tokens fits, the same request is a budget 429. One replica on
// the memory store, and three replicas on one Redis.
func TestClampedOutputLimit(t *testing.T) {
	const capNano = 50_000_000 // $0.05
	cfg := `
policies:
  default:
    budget_reservation: full
    min_output_tokens: 256
    budgets: [{window: day, usd: 0.05}]
tenants:
  team: {}
`
	sonnet := nanoPrices["claude-sonnet-4-5"]
	req, err := anthropic.ParseRequest([]byte(clampBody(64000, false)))
	if err != nil {
		t.Fatal(err)
	}
	inCost := req.InputTokens * sonnet[0]

	for _, tc := range []struct {
		name   string
		stream bool
		opts   func(t *testing.T) stackOptions
	}{
		{"memory, one replica, JSON", false, func(t *testing.T) stackOptions { return stackOptions{config: cfg} }},
		{"redis, three replicas, SSE", true, func(t *testing.T) stackOptions {
			return stackOptions{config: cfg, processors: 3, redis: redistest.Start(t, redistest.Options{}).Addr()}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, tc.opts(t))
			ctx := context.Background()
			send := func(i, maxTokens int, output string) exchange {
				return s.do(ctx, i, anthropicRequest(clampBody(maxTokens, tc.stream),
					sim.Header{Name: "x-tenant-id", Value: "team"},
					sim.Header{Name: "x-mock-output-tokens", Value: output}))
			}
			settled := func() {
				deadline := time.Now().Add(10 * time.Second)
				for s.budget("team", "day").Reserved != 0 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
			}

			// Three quarters of the day spent: 2500 output tokens, reserved
			// and settled whole.
			if x := send(0, 2500, "2500"); x.err != nil || x.resp.Status != 200 || x.header(contract.OutputClampedHeader) != "" {
				t.Fatalf("first request: %v %+v", x.err, x.resp)
			}
			settled()
			before := s.budget("team", "day")
			want := (capNano - before.Spent - inCost) / sonnet[1]
			if want < 256 || want >= 64000 {
				t.Fatalf("the setup leaves room for %d output tokens; the test needs a clamp above the minimum", want)
			}

			x := send(1, 64000, "64000")
			if x.err != nil || x.resp.Status != 200 {
				t.Fatalf("clamped request: %v %+v %s", x.err, x.resp, x.body)
			}
			if got := x.header(contract.OutputClampedHeader); got != strconv.FormatInt(want, 10) {
				t.Fatalf("%s = %q, want %d", contract.OutputClampedHeader, got, want)
			}
			if !strings.Contains(string(x.body), `"stop_reason":"max_tokens"`) {
				t.Errorf("the answer did not stop at max_tokens:\n%.300s", x.body)
			}
			ledger := s.mock.Provider().Ledger()
			if n := len(ledger); n != 2 || ledger[1].Computed.OutputTokens != want {
				t.Fatalf("the mock wrote %+v; want a second answer of exactly %d output tokens (the clamped max_tokens)", ledger, want)
			}
			settled()

			// Under the minimum now: the usual budget 429, nothing forwarded.
			x = send(2, 64000, "64000")
			if x.err != nil || x.resp.Status != 429 || x.header(contract.DeniedHeader) != "org/budget_day" {
				t.Fatalf("third request: %v %+v %s", x.err, x.resp, x.body)
			}
			settled()

			b := s.budget("team", "day")
			var priced int64
			for _, e := range s.mock.Provider().Ledger() {
				priced += expectedCost(t, "claude-sonnet-4-5", e.Reported)
			}
			t.Logf("day budget %d nano-USD: %d spent before, %d output tokens granted of 64000, %d spent after", capNano, before.Spent, want, b.Spent)
			if b.Spent > capNano || b.Reserved != 0 {
				t.Errorf("spent %d (reserved %d) of the cap %d", b.Spent, b.Reserved, capNano)
			}
			if b.Spent != priced {
				t.Errorf("spent %d, but the mock's usage priced exactly is %d", b.Spent, priced)
			}
			if got := s.total("tokenwarden_output_clamped_total", "policy", "default"); got != 1 {
				t.Errorf("tokenwarden_output_clamped_total = %v across the replicas, want 1", got)
			}
		})
	}
}
