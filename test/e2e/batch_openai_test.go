package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/openai"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
	"github.com/tokenwarden/tokenwarden/test/mockprovider"
)

// oaiBudgetBody is the Chat Completions request the OpenAI batch tests
// send, one by one or as batch lines: a fixed prompt, max_tokens 100.
func oaiBudgetBody() string {
	return fmt.Sprintf(`{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":%q}]}`, budgetPrompt)
}

// oaiReservation is what the processor reserves for oaiBudgetBody at
// standard prices: its own input estimate plus max_tokens.
func oaiReservation(t testing.TB) int64 {
	req, err := openai.ParseRequest([]byte(oaiBudgetBody()))
	if err != nil {
		t.Fatal(err)
	}
	p := nanoPrices["gpt-4o"]
	return req.InputTokens*p[0] + 100*p[1]
}

// batchForm is a POST /v1/files multipart body: purpose batch and a file
// of n copies of oaiBudgetBody as Chat Completions lines.
func batchForm(t testing.TB, n int) (contentType string, body []byte) {
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	if err := w.WriteField("purpose", "batch"); err != nil {
		t.Fatal(err)
	}
	fw, err := w.CreateFormFile("file", "batch.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		fmt.Fprintf(fw, `{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":%s}`+"\n", i, oaiBudgetBody())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return w.FormDataContentType(), b.Bytes()
}

// oaiBatch drives the OpenAI Batch API through a stack.
type oaiBatch struct {
	t *testing.T
	s *stack
}

func (b oaiBatch) upload(i, n int, tenant string) exchange {
	ct, body := batchForm(b.t, n)
	req := openaiRequest(string(body), tenantH(tenant), sim.Header{Name: "content-length", Value: strconv.Itoa(len(body))})
	req.Path = "/v1/files"
	req.Headers[0] = sim.Header{Name: "content-type", Value: ct}
	return b.s.do(context.Background(), i, req)
}

// uploadOK uploads and returns the file id.
func (b oaiBatch) uploadOK(i, n int, tenant string) string {
	b.t.Helper()
	x := b.upload(i, n, tenant)
	var f struct{ ID, Object string }
	if x.err != nil || x.resp.Status != 200 || json.Unmarshal(x.body, &f) != nil || f.Object != "file" {
		b.t.Fatalf("upload: %v %+v %s", x.err, x.resp, x.body)
	}
	return f.ID
}

func (b oaiBatch) submit(i int, tenant, file string, extra ...sim.Header) exchange {
	req := openaiRequest(`{"input_file_id":"`+file+`","endpoint":"/v1/chat/completions","completion_window":"24h"}`, append(extra, tenantH(tenant))...)
	req.Path = "/v1/batches"
	return b.s.do(context.Background(), i, req)
}

// submitOK submits and returns the batch id.
func (b oaiBatch) submitOK(i int, tenant, file string, extra ...sim.Header) string {
	b.t.Helper()
	x := b.submit(i, tenant, file, extra...)
	var c struct{ ID, Object string }
	if x.err != nil || x.resp.Status != 200 || x.resp.LocalReply || json.Unmarshal(x.body, &c) != nil || c.Object != "batch" {
		b.t.Fatalf("submit: %v %+v %s", x.err, x.resp, x.body)
	}
	return c.ID
}

// poll reads the batch through the stack and returns its status.
func (b oaiBatch) poll(i int, tenant, id string) string {
	b.t.Helper()
	req := openaiRequest("", tenantH(tenant))
	req.Method, req.Path, req.Body = "GET", "/v1/batches/"+id, nil
	x := b.s.do(context.Background(), i, req)
	var o struct{ Status string }
	if x.err != nil || x.resp.Status != 200 || json.Unmarshal(x.body, &o) != nil {
		b.t.Fatalf("poll: %v %+v %s", x.err, x.resp, x.body)
	}
	return o.Status
}

// polled waits for n polls' settles (or non-settles) to be counted.
func (b oaiBatch) polled(n float64) {
	b.t.Helper()
	waitFor(b.t, func() bool {
		return b.s.total("tokenwarden_requests_total", "dialect", "openai_batch", "outcome", "batch_status")+
			b.s.total("tokenwarden_requests_total", "dialect", "openai_batch", "outcome", "ok")+
			b.s.total("tokenwarden_requests_total", "dialect", "openai_batch", "outcome", "estimated") >= n
	})
}

// mockCall posts to the mock directly, past tokenwarden.
func (b oaiBatch) mockCall(path, contentType string, body []byte) *http.Response {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.s.mock.URL()+path, bytes.NewReader(body))
	req.Header.Set("content-type", contentType)
	req.Header.Set("authorization", "Bearer sk-test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp
}

// TestOpenAIBatchesAreAdmittedOnSubmit: through envoy/sim against the mock,
// an OpenAI batch is admitted when POST /v1/batches names a file uploaded
// through tokenwarden, at batch prices with every line's whole max_tokens:
// one whose estimate exceeds what is left is refused there; an admitted one
// holds its estimate, so the same work sent as Chat Completions requests
// one by one cannot spend it again; an expired batch (no usage) is charged
// once at its estimate, counted as estimated, however often it is polled;
// a file uploaded past tokenwarden cannot be named; a policy may refuse
// batches. On one replica (memory) and on three sharing one Redis.
func TestOpenAIBatchesAreAdmittedOnSubmit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	res := oaiReservation(t)
	capNano := 9 * res / 2 // 4.5 requests, 9 batch lines (half price)
	cfg := fmt.Sprintf(`
policies:
  default:
    limits: {concurrent: 1}
    budgets: [{window: day, usd: %s}]
  nobatch:
    batches: {allow: false}
tenants:
  acme: {}
  initech: {policy: nobatch}
`, strconv.FormatFloat(float64(capNano)/1e9, 'f', 9, 64))
	for _, tc := range storeCases(cfg, false) {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, tc.opts(t))
			b := oaiBatch{t, s}
			ctx := context.Background()

			// Ten lines cost five standard requests: more than the 4.5 the
			// day allows. The upload reserves nothing; the batch is refused
			// on submit, in OpenAI's shape, and never reaches the provider.
			big := b.uploadOK(0, 10, "acme")
			if bs := s.budget("acme", "day"); bs.Reserved != 0 || bs.Spent != 0 {
				t.Fatalf("an upload moved the budget: %+v", bs)
			}
			x := b.submit(1, "acme", big)
			if x.err != nil || x.resp.Status != 429 || !x.resp.LocalReply || x.header(contract.DeniedHeader) != "org/budget_day" ||
				!strings.Contains(string(x.body), `"insufficient_quota"`) {
				t.Fatalf("a batch over the budget: %v %+v %s", x.err, x.resp, x.body)
			}
			if bs := s.budget("acme", "day"); bs.Reserved != 0 || bs.Spent != 0 {
				t.Fatalf("a refused batch left %+v", bs)
			}

			// Six lines fit (three standard requests' worth), reserved at
			// once on another replica than the upload's; no concurrency slot.
			id := b.submitOK(2, "acme", b.uploadOK(1, 6, "acme"))
			batchEstimate := s.budget("acme", "day").Reserved
			if batchEstimate < 3*res-res/10 || batchEstimate > 3*res+res/10 {
				t.Fatalf("the batch reserved %d; want about 3 requests' worth (%d)", batchEstimate, 3*res)
			}
			if got := s.total("tokenwarden_batch_usd_total", "tenant", "acme", "dialect", "openai_batch", "stage", "reserved"); int64(got*1e9+0.5) != batchEstimate {
				t.Errorf("batch reserved counted %v USD; want %d nano-USD", got, batchEstimate)
			}
			// The same work one by one finds what the batch holds: one more
			// request fits, the second does not.
			if x := s.do(ctx, 0, openaiRequest(oaiBudgetBody(), tenantH("acme"), sim.Header{Name: "x-mock-output-tokens", Value: "100"})); x.err != nil || x.resp.Status != 200 {
				t.Fatalf("one request beside the batch: %v %+v %s", x.err, x.resp, x.body)
			}
			waitFor(t, func() bool { return s.budget("acme", "day").Reserved == batchEstimate })
			if x := s.do(ctx, 1, openaiRequest(oaiBudgetBody(), tenantH("acme"))); x.err != nil || x.resp.Status != 429 || x.header(contract.DeniedHeader) != "org/budget_day" {
				t.Fatalf("the budget the batch holds was given away: %v %+v", x.err, x.resp)
			}
			spentBefore := s.budget("acme", "day").Spent

			// Unfinished, a poll changes nothing.
			if st := b.poll(0, "acme", id); st != "in_progress" {
				t.Fatalf("status %s", st)
			}
			b.polled(1)
			// The provider expires it: no usage. The first poll that sees it
			// charges the estimate, once, as estimated.
			if resp := b.mockCall("/mock/openai/batches/"+id+"/expire", "application/json", nil); resp.StatusCode != 200 {
				t.Fatalf("expire: %d", resp.StatusCode)
			}
			for i := range 3 {
				if st := b.poll(i, "acme", id); st != "expired" {
					t.Fatalf("status %s", st)
				}
			}
			b.polled(4)
			bs := s.budget("acme", "day")
			if bs.Reserved != 0 || bs.Spent != spentBefore+batchEstimate {
				t.Fatalf("after the expired batch's polls: %+v; want its estimate %d spent once (was %d)", bs, batchEstimate, spentBefore)
			}
			if got := s.total("tokenwarden_spend_usd_total", "tenant", "acme", "source", "estimated", "api", "batch"); int64(got*1e9+0.5) != batchEstimate {
				t.Errorf("estimated batch spend counted %v USD; want the batch's estimate %d nano-USD", got, batchEstimate)
			}

			// A file uploaded past tokenwarden cannot be named.
			ct, form := batchForm(t, 1)
			resp := b.mockCall("/v1/files", ct, form)
			var f struct{ ID string }
			if err := json.NewDecoder(resp.Body).Decode(&f); err != nil || f.ID == "" {
				t.Fatalf("direct upload: %v", err)
			}
			resp.Body.Close()
			x = b.submit(0, "acme", f.ID)
			if x.err != nil || x.resp.Status != 400 || !x.resp.LocalReply || !strings.Contains(string(x.body), "invalid_request_error") {
				t.Fatalf("a batch of a file uploaded elsewhere: %v %+v %s", x.err, x.resp, x.body)
			}
			if n := s.total("tokenwarden_admissions_total", "tenant", "acme", "result", "denied_unknown_file"); n != 1 {
				t.Errorf("unknown-file refusals counted %v, want 1", n)
			}

			// A policy that refuses batches refuses the upload and the batch.
			if x := b.upload(0, 1, "initech"); x.err != nil || x.resp.Status != 403 || x.header(contract.DeniedHeader) != "policy/batch" {
				t.Fatalf("a batch file on a policy without batches: %v %+v %s", x.err, x.resp, x.body)
			}
			if x := b.submit(0, "initech", big); x.err != nil || x.resp.Status != 403 || x.header(contract.DeniedHeader) != "policy/batch" {
				t.Fatalf("a batch on a policy without batches: %v %+v %s", x.err, x.resp, x.body)
			}
		})
	}
}

// TestOpenAIBatchSettlesOnceFromUsage: a completed batch is settled by the
// first poll that sees it, on whichever replica, to its usage at batch
// prices to the nano-USD (the mock's ledger of the lines it processed);
// further polls change nothing.
func TestOpenAIBatchSettlesOnceFromUsage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	for _, tc := range storeCases(batchSettleConfig, false) {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, tc.opts(t))
			b := oaiBatch{t, s}
			id := b.submitOK(1, "acme", b.uploadOK(0, 4, "acme"), sim.Header{Name: "x-mock-batch", Value: "end"})
			estimate := s.budget("acme", "day").Reserved
			if estimate == 0 {
				t.Fatal("the batch reserved nothing")
			}
			if st := b.poll(2, "globex", id); st != "completed" { // another org's poll settles nothing of acme's
				t.Fatalf("status %s", st)
			}
			b.polled(1)
			if bs := s.budget("acme", "day"); bs.Reserved != estimate || bs.Spent != 0 {
				t.Fatalf("another tenant's poll moved acme's budget: %+v", bs)
			}
			b.poll(2, "acme", id)
			var want int64
			lines := 0
			for _, e := range s.mock.Provider().Ledger() {
				if e.Dialect == mockprovider.DialectOpenAIBatch {
					want += expectedCost(t, "gpt-4o", e.Reported) / 2 // batch prices: half
					lines++
				}
			}
			waitFor(t, func() bool { return s.budget("acme", "day").Reserved == 0 })
			bs := s.budget("acme", "day")
			if lines != 4 || want == 0 || bs.Spent != want {
				t.Fatalf("settled %+v; want the usage of the %d processed lines at batch prices, %d nano-USD (estimate %d)", bs, lines, want, estimate)
			}
			for i := range 2 {
				b.poll(i, "acme", id)
			}
			b.polled(4)
			if bs := s.budget("acme", "day"); bs.Spent != want || bs.Reserved != 0 {
				t.Fatalf("a second poll charged again: %+v, want spent %d", bs, want)
			}
			if got := s.total("tokenwarden_spend_usd_total", "tenant", "acme", "source", "measured", "api", "batch"); int64(got*1e9+0.5) != want {
				t.Errorf("measured batch spend counted %v USD; want %d nano-USD once", got, want)
			}
			if got := s.total("tokenwarden_batch_usd_total", "tenant", "acme", "dialect", "openai_batch", "stage", "settled"); int64(got*1e9+0.5) != want {
				t.Errorf("batch settled counted %v USD; want %d nano-USD", got, want)
			}
			// `tokenwarden budgets` shows the batch's reservation and charge.
			var report bytes.Buffer
			if err := observe.WriteBudgets(context.Background(), &report, s.procs[len(s.procs)-1].store, s.cfg, observe.ReportOptions{Tenants: []string{"acme"}}, time.Now()); err != nil {
				t.Fatal(err)
			}
			line := fmt.Sprintf("# acme batches openai_batch (UTC month %s): reserved on submit %.6f USD, settled %.6f USD",
				time.Now().UTC().Format("2006-01"), float64(estimate)/1e9, float64(want)/1e9)
			if !strings.Contains(report.String(), line) {
				t.Errorf("the budgets report lacks %q:\n%s", line, report.String())
			}
		})
	}
}
