package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
)

// batchRequest is a Message Batch of n copies of budgetBody's request.
func batchRequest(n int, tenant string) *sim.Request {
	var b strings.Builder
	b.WriteString(`{"requests":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"custom_id":"r%d","params":%s}`, i, budgetBody(false))
	}
	b.WriteString(`]}`)
	req := anthropicRequest(b.String(), tenantH(tenant))
	req.Path = "/v1/messages/batches"
	return req
}

// TestBatchesAreAdmittedOnSubmit: through envoy/sim against the mock, a
// Message Batch is admitted against the budget when it is submitted, at
// batch prices with every request's whole max_tokens: one whose estimate
// exceeds what is left is refused there and never reaches the provider;
// an admitted one holds its estimate, so the same work cannot escape the
// budget by moving to the batch API; a batch that never settles is charged
// at its estimate when its reservation ends, counted as estimated; and a
// policy may refuse batches altogether. On one replica (memory) and on
// three sharing one Redis.
func TestBatchesAreAdmittedOnSubmit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	res := reservation(t)  // one request at standard prices
	capNano := 9 * res / 2 // 4.5 requests, 9 batch requests (half price)
	cfg := fmt.Sprintf(`
policies:
  default:
    limits: {concurrent: 1}
    budgets: [{window: day, usd: %s}]
    batches: {reservation_ttl: 2s}
  nobatch:
    batches: {allow: false}
tenants:
  acme: {}
  globex: {}
  initech: {policy: nobatch}
`, strconv.FormatFloat(float64(capNano)/1e9, 'f', 9, 64))
	for _, tc := range storeCases(cfg, false) {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, tc.opts(t))
			ctx := context.Background()

			// Ten batch requests cost five standard ones: more than the 4.5
			// the day allows. Refused on submit, in the dialect.
			x := s.do(ctx, 0, batchRequest(10, "acme"))
			if x.err != nil || x.resp.Status != 429 || !x.resp.LocalReply || x.header(contract.DeniedHeader) != "org/budget_day" ||
				!strings.Contains(string(x.body), `"rate_limit_error"`) {
				t.Fatalf("a batch over the budget: %v %+v %s", x.err, x.resp, x.body)
			}
			if b := s.budget("acme", "day"); b.Spent != 0 || b.Reserved != 0 {
				t.Fatalf("a refused batch left %+v", b)
			}

			// Six fit (three standard requests' worth) and are reserved at
			// once; they hold no concurrency slot (the limit is 1).
			x = s.do(ctx, 1, batchRequest(6, "acme"))
			if x.err != nil || x.resp.Status != 200 || x.resp.LocalReply {
				t.Fatalf("a batch within the budget: %v %+v %s", x.err, x.resp, x.body)
			}
			var created struct{ ID, Type string }
			if err := json.Unmarshal(x.body, &created); err != nil || created.Type != "message_batch" || created.ID == "" {
				t.Fatalf("create answer %s: %v", x.body, err)
			}
			batchEstimate := s.budget("acme", "day").Reserved
			if batchEstimate < 3*res-res/10 || batchEstimate > 3*res+res/10 {
				t.Fatalf("the batch reserved %d; want about 3 requests' worth (%d)", batchEstimate, 3*res)
			}
			// The same work sent as Messages requests finds what the batch
			// holds: one more fits, the second does not.
			if x := s.do(ctx, 2, anthropicRequest(budgetBody(false), tenantH("acme"), sim.Header{Name: "x-mock-output-tokens", Value: "100"})); x.err != nil || x.resp.Status != 200 {
				t.Fatalf("one request beside the batch: %v %+v", x.err, x.resp)
			}
			// Its settle follows its answer: until then it holds the one
			// concurrency slot.
			waitFor(t, func() bool { return s.budget("acme", "day").Reserved == batchEstimate })
			if x := s.do(ctx, 0, anthropicRequest(budgetBody(false), tenantH("acme"))); x.err != nil || x.resp.Status != 429 || x.header(contract.DeniedHeader) != "org/budget_day" {
				t.Fatalf("the budget the batch holds was given away: %v %+v", x.err, x.resp)
			}

			// Nothing settles this batch: when its reservation ends (2s
			// here) the next admitted request of the org charges it at its
			// estimate (a small one: the rest of the day is the batch's).
			time.Sleep(2500 * time.Millisecond)
			small := `{"model":"claude-sonnet-4-5","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}`
			if x := s.do(ctx, 1, anthropicRequest(small, tenantH("acme"))); x.err != nil || x.resp.Status != 200 {
				t.Fatalf("a small request after the batch's reservation ended: %v %+v %s", x.err, x.resp, x.body)
			}
			waitFor(t, func() bool { return s.budget("acme", "day").Reserved == 0 })
			b := s.budget("acme", "day")
			if b.Spent < batchEstimate || b.Reserved != 0 {
				t.Fatalf("after the batch's reservation ended: %+v; want its estimate %d spent", b, batchEstimate)
			}
			if got := s.total("tokenwarden_spend_usd_total", "tenant", "acme", "source", "estimated"); int64(got*1e9+0.5) != batchEstimate {
				t.Errorf("estimated spend counted %v USD; want the batch's estimate %d nano-USD", got, batchEstimate)
			}

			// A policy that refuses batches.
			x = s.do(ctx, 0, batchRequest(1, "initech"))
			if x.err != nil || x.resp.Status != 403 || x.header(contract.DeniedHeader) != "policy/batch" {
				t.Fatalf("a batch on a policy without batches: %v %+v %s", x.err, x.resp, x.body)
			}
		})
	}
}

// batchSettleConfig is the batch settle tests' configuration: a budget
// that holds every batch, and two orgs.
const batchSettleConfig = `
policies:
  default:
    budgets: [{window: day, usd: 10}]
tenants:
  acme: {}
  globex: {}
`

// TestBatchSettlesOnceFromResults: an admitted batch is settled when its
// results are downloaded, on whichever replica, to the succeeded lines'
// usage at batch prices to the nano-USD; a second download, on another
// replica, changes nothing, and another tenant's download reaches nothing.
func TestBatchSettlesOnceFromResults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	for _, tc := range storeCases(batchSettleConfig, false) {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, tc.opts(t))
			ctx := context.Background()
			submit := batchRequest(4, "acme")
			submit.Headers = append(submit.Headers, sim.Header{Name: "x-mock-batch", Value: "end"})
			x := s.do(ctx, 0, submit)
			var created struct{ ID string }
			if x.err != nil || x.resp.Status != 200 || json.Unmarshal(x.body, &created) != nil || created.ID == "" {
				t.Fatalf("submit: %v %+v %s", x.err, x.resp, x.body)
			}
			estimate := s.budget("acme", "day").Reserved
			if estimate == 0 {
				t.Fatal("the batch reserved nothing")
			}
			download := func(i int, tenant string) exchange {
				req := anthropicRequest("", tenantH(tenant))
				req.Method, req.Path, req.Body = "GET", "/v1/messages/batches/"+created.ID+"/results", nil
				x := s.do(ctx, i, req)
				if x.err != nil || x.resp.Status != 200 || strings.Count(string(x.body), "\n") != 4 {
					t.Fatalf("download: %v %+v %s", x.err, x.resp, x.body)
				}
				return x
			}
			// A download's settle follows its answer; each one that settles
			// nothing ends counted as batch_results.
			unsettled := func(n float64) {
				waitFor(t, func() bool {
					return s.total("tokenwarden_requests_total", "dialect", "anthropic_batch", "outcome", "batch_results") >= n
				})
			}
			download(1, "globex") // another tenant's download settles nothing of acme's
			unsettled(1)
			if b := s.budget("acme", "day"); b.Reserved != estimate || b.Spent != 0 {
				t.Fatalf("another tenant's download moved acme's budget: %+v", b)
			}
			first := download(1, "acme")
			var want int64
			for _, e := range s.mock.Provider().Ledger() {
				if e.Dialect == "anthropic_batch" {
					want += expectedCost(t, "claude-sonnet-4-5", e.Reported) / 2 // batch prices: half
				}
			}
			waitFor(t, func() bool { return s.budget("acme", "day").Reserved == 0 })
			b := s.budget("acme", "day")
			if want == 0 || b.Spent != want {
				t.Fatalf("settled %+v; want the succeeded lines' usage at batch prices, %d nano-USD (estimate %d)", b, want, estimate)
			}
			second := download(2, "acme")
			if string(second.body) != string(first.body) {
				t.Fatal("the second download differs")
			}
			unsettled(2)
			if b := s.budget("acme", "day"); b.Spent != want || b.Reserved != 0 {
				t.Fatalf("the second download charged again: %+v, want spent %d", b, want)
			}
			if got := s.total("tokenwarden_spend_usd_total", "tenant", "acme", "source", "measured", "api", "batch"); int64(got*1e9+0.5) != want {
				t.Errorf("measured spend counted %v USD; want %d nano-USD once", got, want)
			}
			for stage, n := range map[string]int64{"reserved": estimate, "settled": want} {
				if got := s.total("tokenwarden_batch_usd_total", "tenant", "acme", "dialect", "anthropic_batch", "stage", stage); int64(got*1e9+0.5) != n {
					t.Errorf("batch %s counted %v USD; want %d nano-USD", stage, got, n)
				}
			}
		})
	}
}
