package gate

import (
	"bytes"
	"context"
	"mime/multipart"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// gpt-4o's published price (https://platform.openai.com/docs/pricing):
// $2.50 in, $10 out per million, half at the batch tier.
const gpt4oIn, gpt4oOut = 2500, 10000

// uploadForm is a POST /v1/files body of purpose and a file of lines.
func uploadForm(t testing.TB, purpose string, lines ...string) (HeaderList, string) {
	t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	if err := w.WriteField("purpose", purpose); err != nil {
		t.Fatal(err)
	}
	fw, err := w.CreateFormFile("file", "batch.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write([]byte(strings.Join(lines, "\n") + "\n"))
	w.Close()
	return HeaderList{{":method", "POST"}, {":path", "/v1/files"}, {"content-type", w.FormDataContentType()},
		{"content-length", strconv.Itoa(b.Len())}, tenantHeader("acme")}, b.String()
}

func chatLine(id, model string, maxTokens int) string {
	return `{"custom_id":"` + id + `","method":"POST","url":"/v1/chat/completions","body":{"model":"` + model +
		`","max_tokens":` + strconv.Itoa(maxTokens) + `,"messages":[{"role":"user","content":"Hello there"}]}}`
}

// answerJSON sends the provider's 200 JSON answer and reports the exchange done.
func answerJSON(x *Exchange, body string) bool {
	x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
	v := x.ResponseBody([]byte(body), true)
	x.Settle()
	return v.Done
}

// submitOneLine uploads a one-line batch file for acme and creates the
// batch the provider names id.
func submitOneLine(h *harness, id string) {
	hdrs, form := uploadForm(h.t, "batch", chatLine("a", "gpt-4o", 40))
	x, _ := h.admit(hdrs, form)
	answerJSON(x, `{"id":"file-1","object":"file"}`)
	x, _ = h.admit(post("/v1/batches", tenantHeader("acme")), `{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}`)
	answerJSON(x, `{"id":"`+id+`","object":"batch","status":"validating"}`)
}

// TestOpenAIBatchIsAdmittedAndSettledOnce: a batch file's upload is read
// and estimated (nothing reserved); the batch naming it is admitted as one
// detached reservation of that estimate; polls of an unfinished batch
// change nothing; the first poll of the completed batch settles it to its
// usage at batch prices, a second charges nothing more. A batch naming a
// file the org did not upload through tokenwarden is refused.
func TestOpenAIBatchIsAdmittedAndSettledOnce(t *testing.T) {
	h := newHarness(t, `
policies:
  default:
    limits: {concurrent: 1}
    budgets: [{window: day, usd: 10}]
    models: {allow: ["gpt-4o"]}
tenants:
  acme: {}
  globex: {}
`)
	hdrs, form := uploadForm(t, "batch", chatLine("a", "gpt-4o", 40), chatLine("b", "gpt-4o", 60))
	x, _ := h.admit(hdrs, form)
	if !answerJSON(x, `{"id":"file-abc","object":"file","bytes":100,"purpose":"batch"}`) {
		t.Fatal("the upload's answer did not end it")
	}
	if o := h.obs.lastOutcome(t); o.Result != ResultBatchFile || o.Decision != "batch_file" {
		t.Fatalf("upload outcome %+v", o)
	}
	h.wantBudgets("acme", "", 0, 0) // an upload reserves nothing

	submit := func(tenant, file string) (*Exchange, BodyVerdict) {
		x, hv := h.g.Begin(context.Background(), Request{Headers: post("/v1/batches", tenantHeader(tenant))})
		if hv.Reply != nil || hv.PassThrough {
			t.Fatalf("submit headers: %+v", hv)
		}
		return x, x.Body([]byte(`{"input_file_id":"` + file + `","endpoint":"/v1/chat/completions","completion_window":"24h"}`))
	}
	// Another org cannot name acme's file; nor can acme name a file never
	// uploaded through tokenwarden.
	for _, c := range []struct{ tenant, file string }{{"globex", "file-abc"}, {"acme", "file-elsewhere"}} {
		_, bv := submit(c.tenant, c.file)
		if bv.Reply == nil || bv.Reply.Status != 400 || !strings.Contains(string(bv.Reply.Body), "invalid_request_error") {
			t.Fatalf("%s naming %s: %+v", c.tenant, c.file, bv.Reply)
		}
	}
	x, bv := submit("acme", "file-abc")
	if bv.Reply != nil {
		t.Fatalf("submit refused: %d %s", bv.Reply.Status, bv.Reply.Body)
	}
	estimate := h.budgets("acme", "")["day"].Reserved
	in := inputEstimate(t, "/v1/chat/completions", `{"model":"gpt-4o","max_tokens":40,"messages":[{"role":"user","content":"Hello there"}]}`)
	if want := (2*in*gpt4oIn + 100*gpt4oOut) / 2; estimate != want {
		t.Fatalf("the batch reserved %d; want both lines' input and whole max_tokens at batch prices, %d", estimate, want)
	}
	if !answerJSON(x, `{"id":"batch_123","object":"batch","endpoint":"/v1/chat/completions","status":"validating","input_file_id":"file-abc"}`) {
		t.Fatal("the create answer did not end the submit")
	}
	// The batch holds no concurrency slot (the limit is 1).
	if _, bv := h.admit(post("/v1/chat/completions", tenantHeader("acme")), `{"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`); bv.Reply != nil {
		t.Fatal("unreachable")
	}

	poll := func(tenant, body string) {
		t.Helper()
		x, hv := h.g.Begin(context.Background(), Request{Headers: HeaderList{{":method", "GET"}, {":path", "/v1/batches/batch_123"}, tenantHeader(tenant)}, EndOfStream: true})
		if !hv.ResponseOnly {
			t.Fatalf("a poll is not read: %+v", hv)
		}
		if !answerJSON(x, body) {
			t.Fatal("the poll did not end")
		}
	}
	poll("acme", `{"id":"batch_123","object":"batch","status":"in_progress"}`)
	completed := `{"id":"batch_123","object":"batch","status":"completed","usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":0},"output_tokens":70,"total_tokens":100}}`
	poll("globex", completed) // another org's poll reaches nothing of acme's
	if b := h.budgets("acme", "")["day"]; b.Spent != 0 {
		t.Fatalf("an unfinished or foreign poll settled: %+v", b)
	}
	poll("acme", completed)
	want := int64((30*gpt4oIn + 70*gpt4oOut) / 2)
	b := h.budgets("acme", "")["day"]
	if b.Spent != want {
		t.Fatalf("settled %+v; want the usage at batch prices, %d", b, want)
	}
	if o := h.obs.lastOutcome(t); o.Dialect != OpenAIBatchDialect || o.Source != SourceMeasured || int64(o.Cost.Total) != want || !o.Metered {
		t.Fatalf("settle outcome %+v", o)
	}
	poll("acme", completed)
	if b2 := h.budgets("acme", "")["day"]; b2.Spent != want {
		t.Fatalf("a second poll charged again: %+v", b2)
	}
	if o := h.obs.lastOutcome(t); o.Result != ResultBatchStatus || o.Metered {
		t.Fatalf("second poll outcome %+v", o)
	}
}

// TestOpenAIBatchUploadRefusals: what cannot be estimated as one batch is
// refused on upload, in OpenAI's shape; an upload of another purpose, or
// one the gate cannot read whole, passes through unread.
func TestOpenAIBatchUploadRefusals(t *testing.T) {
	h := newHarness(t, `
policies:
  default:
    budgets: [{window: day, usd: 10}]
    models: {allow: ["gpt-4o"]}
    batches: {max_requests: 2}
  nobatch:
    batches: {allow: false}
tenants:
  acme: {}
  initech: {policy: nobatch}
`)
	for name, lines := range map[string][]string{
		"a model the policy refuses": {chatLine("a", "gpt-4o-mini", 5)},
		"two models":                 {chatLine("a", "gpt-4o", 5), chatLine("b", "gpt-4o-mini", 5)},
		"over max_requests":          {chatLine("a", "gpt-4o", 5), chatLine("b", "gpt-4o", 5), chatLine("c", "gpt-4o", 5)},
		"an endpoint not estimated":  {`{"custom_id":"a","method":"POST","url":"/v1/moderations","body":{"input":"x"}}`},
	} {
		hdrs, form := uploadForm(t, "batch", lines...)
		_, r := h.refuse(hdrs, form)
		if r.Status != 400 || !strings.Contains(string(r.Body), "invalid_request_error") {
			t.Errorf("%s: %d %s", name, r.Status, r.Body)
		}
	}
	hdrs, form := uploadForm(t, "batch", chatLine("a", "gpt-4o", 5))
	hdrs[4] = tenantHeader("initech")
	if _, r := h.refuse(hdrs, form); r.Status != 403 {
		t.Errorf("a batch file on a policy without batches: %d", r.Status)
	} else if v, _ := header(r.Headers, contract.DeniedHeader); v != "policy/batch" {
		t.Errorf("denied header %q", v)
	}
	hdrs, form = uploadForm(t, "fine-tune", "anything at all")
	x, bv := h.admit(hdrs, form)
	if bv.Body == nil || !x.Done() || h.obs.lastOutcome(t).Dialect != PassThroughDialect {
		t.Fatalf("another purpose is not passed through: %+v %+v", bv, h.obs.lastOutcome(t))
	}
	hdrs, _ = uploadForm(t, "batch", chatLine("a", "gpt-4o", 5))
	hdrs[3] = Header{"content-length", strconv.Itoa(policy.DefaultBatchMaxFileBytes + 1)}
	if _, hv := h.g.Begin(context.Background(), Request{Headers: hdrs}); !hv.PassThrough {
		t.Fatalf("an upload too large to read is not passed through: %+v", hv)
	}
}

// TestOpenAIBatchFinishedWithoutUsage: a finished batch that reports no
// usage is charged at its estimate (estimated) — or nothing, when it
// failed — once.
func TestOpenAIBatchFinishedWithoutUsage(t *testing.T) {
	for _, tc := range []struct {
		status   string
		source   Source
		estimate bool
	}{{"expired", SourceEstimated, true}, {"cancelled", SourceEstimated, true}, {"failed", SourceMeasured, false}} {
		t.Run(tc.status, func(t *testing.T) {
			h := newHarness(t, batchHarnessYAML)
			submitOneLine(h, "batch_9")
			estimate := h.budgets("acme", "")["day"].Reserved
			for range 2 {
				x, _ := h.g.Begin(context.Background(), Request{Headers: HeaderList{{":method", "GET"}, {":path", "/v1/batches/batch_9"}, tenantHeader("acme")}, EndOfStream: true})
				answerJSON(x, `{"id":"batch_9","object":"batch","status":"`+tc.status+`"}`)
			}
			want := int64(0)
			if tc.estimate {
				want = estimate
			}
			if b := h.budgets("acme", "")["day"]; b.Reserved != 0 || b.Spent != want {
				t.Fatalf("after two polls: %+v; want spent %d", b, want)
			}
			n := 0
			for _, o := range h.obs.outcomes {
				if o.Metered && o.Dialect == OpenAIBatchDialect {
					n++
					if o.Source != tc.source || int64(o.Cost.Total) != want {
						t.Fatalf("settle outcome %+v", o)
					}
				}
			}
			if n != 1 {
				t.Fatalf("%d metered outcomes, want 1", n)
			}
		})
	}
}

// TestOpenAIBatchNeverPolledIsChargedItsEstimate: a batch whose finish is
// never seen is charged at its estimate when its reservation ends,
// reported as the OpenAI batch it was.
func TestOpenAIBatchNeverPolledIsChargedItsEstimate(t *testing.T) {
	h := newHarness(t, `
policies:
  default:
    budgets: [{window: day, usd: 10}]
    batches: {reservation_ttl: 1h}
tenants:
  acme: {}
`)
	submitOneLine(h, "batch_7")
	estimate := h.budgets("acme", "")["day"].Reserved
	h.clock.Advance(61 * time.Minute)
	h.admit(post("/v1/chat/completions", tenantHeader("acme")), `{"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`)
	want := []batchSeen{{"acme", OpenAIBatchDialect, "reserved", accounting.NanoUSD(estimate)}, {"acme", OpenAIBatchDialect, "expired", accounting.NanoUSD(estimate)}}
	if !reflect.DeepEqual(h.obs.batches, want) || len(h.obs.expired) != 0 {
		t.Fatalf("batches %+v (want %+v), request expiries %+v", h.obs.batches, want, h.obs.expired)
	}
	if b := h.budgets("acme", "")["day"]; b.Spent != estimate {
		t.Fatalf("spent %d, want the estimate %d", b.Spent, estimate)
	}
	// The ledger `tokenwarden budgets` reads.
	got, err := h.mem.NoteCounts(context.Background(), "acme", []string{BatchLedgerKey(BatchReserved, OpenAIBatchDialect, h.clock.Now()), BatchLedgerKey(BatchSettled, OpenAIBatchDialect, h.clock.Now())})
	if err != nil || got[0] != estimate || got[1] != estimate {
		t.Fatalf("ledger %v %v, want both %d", got, err, estimate)
	}
}

// TestOpenAIBatchSettlesFromOutputFile: a completed batch that reports no
// usage is settled by the first whole download of its output file, to the
// succeeded lines' usage at batch prices, once; a download of any other
// file is not read.
func TestOpenAIBatchSettlesFromOutputFile(t *testing.T) {
	h := newHarness(t, batchHarnessYAML)
	submitOneLine(h, "batch_out")
	estimate := h.budgets("acme", "")["day"].Reserved
	x, _ := h.g.Begin(context.Background(), Request{Headers: HeaderList{{":method", "GET"}, {":path", "/v1/batches/batch_out"}, tenantHeader("acme")}, EndOfStream: true})
	answerJSON(x, `{"id":"batch_out","object":"batch","status":"completed","output_file_id":"file-out"}`)
	if b := h.budgets("acme", "")["day"]; b.Reserved != estimate || b.Spent != 0 {
		t.Fatalf("a completed batch without usage settled on its poll: %+v", b)
	}
	lines := `{"custom_id":"a","response":{"status_code":200,"body":{"object":"chat.completion","model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":11,"completion_tokens":22}}}}` + "\n" +
		`{"custom_id":"b","response":{"status_code":500,"body":{"error":{}}}}` + "\n" +
		`{"custom_id":"c","response":{"status_code":200,"body":{"object":"chat.completion","model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":3,"completion_tokens":4}}}}` + "\n"
	download := func(file string) ResponseVerdict {
		t.Helper()
		x, hv := h.g.Begin(context.Background(), Request{Headers: HeaderList{{":method", "GET"}, {":path", "/v1/files/" + file + "/content"}, tenantHeader("acme")}, EndOfStream: true})
		if hv.PassThrough {
			return ResponseVerdict{}
		}
		if !hv.ResponseOnly {
			t.Fatalf("the output file's download is not read: %+v", hv)
		}
		rv := x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/octet-stream"}}, false)
		x.ResponseBody([]byte(lines[:50]), false)
		x.ResponseBody([]byte(lines[50:]), true)
		x.Settle()
		return rv
	}
	if _, hv := h.g.Begin(context.Background(), Request{Headers: HeaderList{{":method", "GET"}, {":path", "/v1/files/file-other/content"}, tenantHeader("acme")}, EndOfStream: true}); !hv.PassThrough || len(hv.Edits.Remove) != 0 {
		t.Fatalf("another file's download is not passed through untouched: %+v", hv)
	}
	if rv := download("file-out"); !rv.Stream {
		t.Fatalf("the output file is not streamed: %+v", rv)
	}
	want := int64((14*gpt4oIn + 26*gpt4oOut) / 2)
	if b := h.budgets("acme", "")["day"]; b.Reserved != 0 || b.Spent != want {
		t.Fatalf("after the output file: %+v; want spent %d", b, want)
	}
	download("file-out")
	if b := h.budgets("acme", "")["day"]; b.Spent != want {
		t.Fatalf("a second download charged again: %+v", b)
	}
}
