package gate

import (
	"context"
	"fmt"
	"testing"
)

// batchHarnessYAML is the batch tests' configuration: one org whose day
// budget holds every batch they submit.
const batchHarnessYAML = `
policies:
  default:
    budgets: [{window: day, usd: 10}]
tenants:
  acme: {}
`

// submitMessageBatch submits a Message Batch of two requests for acme,
// which the provider names id.
func submitMessageBatch(h *harness, id string) {
	h.t.Helper()
	submit := fmt.Sprintf(`{"requests":[{"custom_id":"a","params":%s},{"custom_id":"b","params":%s}]}`, sonnetBody, sonnetBody)
	x, _ := h.admit(post("/v1/messages/batches", tenantHeader("acme")), submit)
	x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
	if v := x.ResponseBody([]byte(`{"id":"`+id+`","type":"message_batch","processing_status":"in_progress"}`), true); !v.Done {
		h.t.Fatal("the create answer did not end the exchange")
	}
}

// TestBatchSettlesOnlyFromAWholeDownload: a batch is settled by a complete,
// uncompressed (200) download of its results, once; a partial (206) or
// compressed answer settles nothing, and the client's Range is removed so
// it cannot ask for a part.
func TestBatchSettlesOnlyFromAWholeDownload(t *testing.T) {
	h := newHarness(t, batchHarnessYAML)
	submitMessageBatch(h, "msgbatch_01test")
	estimate := h.budgets("acme", "")["day"].Reserved
	if estimate == 0 {
		t.Fatal("the batch reserved nothing")
	}
	line := `{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","usage":{"input_tokens":100,"output_tokens":200}}}}` + "\n"
	download := func(status string, extra ...Header) HeadersVerdict {
		t.Helper()
		hdrs := append(HeaderList{{":method", "GET"}, {":path", "/v1/messages/batches/msgbatch_01test/results"}, tenantHeader("acme")}, extra...)
		x, hv := h.g.Begin(context.Background(), Request{Headers: hdrs, EndOfStream: true})
		if !hv.ResponseOnly {
			t.Fatalf("a results download is not read: %+v", hv)
		}
		rh := HeaderList{{":status", status}, {"content-type", "application/binary"}}
		if status == "200gz" {
			rh = HeaderList{{":status", "200"}, {"content-encoding", "gzip"}}
		}
		x.ResponseHeaders(rh, false)
		x.ResponseBody([]byte(line[:40]), false)
		if v := x.ResponseBody([]byte(line[40:]), true); !v.Done {
			t.Fatal("the download did not end")
		}
		x.Settle()
		return hv
	}
	for _, status := range []string{"206", "200gz"} {
		download(status)
		if b := h.budgets("acme", "")["day"]; b.Reserved != estimate || b.Spent != 0 {
			t.Fatalf("a %s download moved the budget: %+v", status, b)
		}
	}
	hv := download("200", Header{"range", "bytes=0-10"})
	removed := false
	for _, r := range hv.Edits.Remove {
		removed = removed || r == "range"
	}
	if !removed {
		t.Fatalf("the client's range reaches the provider: %+v", hv.Edits)
	}
	b := h.budgets("acme", "")["day"]
	// 100 input at $3/M and 200 output at $15/M, at half price.
	if want := int64((100*3000 + 200*15000) / 2); b.Reserved != 0 || b.Spent != want {
		t.Fatalf("after a whole download: %+v; want spent %d, nothing reserved", b, want)
	}
	download("200")
	if b2 := h.budgets("acme", "")["day"]; b2 != b {
		t.Fatalf("a second download charged again: %+v, was %+v", b2, b)
	}
}

// TestBatchDownloadCutShortSettlesNothing: a results download whose stream
// ends before the answer does settles nothing, whatever lines it held: the
// batch keeps its whole reservation, for a whole download or its lease's end.
func TestBatchDownloadCutShortSettlesNothing(t *testing.T) {
	h := newHarness(t, batchHarnessYAML)
	submitMessageBatch(h, "msgbatch_01cut")
	before := h.budgets("acme", "")["day"]
	line := `{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","usage":{"input_tokens":100,"output_tokens":200}}}}` + "\n"
	x, _ := h.g.Begin(context.Background(), Request{Headers: HeaderList{{":method", "GET"}, {":path", "/v1/messages/batches/msgbatch_01cut/results"}, tenantHeader("acme")}, EndOfStream: true})
	x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/binary"}}, false)
	x.ResponseBody([]byte(line), false)
	n := len(h.obs.outcomes)
	x.Abort()
	if b := h.budgets("acme", "")["day"]; b != before {
		t.Fatalf("a download cut short moved the budget: %+v, was %+v", b, before)
	}
	if len(h.obs.outcomes) != n+1 || h.obs.outcomes[n].Metered {
		t.Fatalf("outcomes after the cut: %+v", h.obs.outcomes[n:])
	}
}
