package anthropic

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func batchBody(n int, extra string) string {
	var b strings.Builder
	b.WriteString(`{"requests":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"custom_id":"r%d","params":{"model":"claude-sonnet-4-5","max_tokens":%d,%s"messages":[{"role":"user","content":"Hello number %d"}]}}`, i, 100+i, extra, i)
	}
	b.WriteString(`]}`)
	return b.String()
}

func TestParseBatch(t *testing.T) {
	lines, err := ParseBatch([]byte(batchBody(3, "")), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines", len(lines))
	}
	for i, l := range lines {
		one, err := ParseRequest([]byte(fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":%d,"messages":[{"role":"user","content":"Hello number %d"}]}`, 100+i, i)))
		if err != nil {
			t.Fatal(err)
		}
		if l.CustomID != fmt.Sprint("r", i) || l.Request.MaxTokens != int64(100+i) || l.Request.InputTokens != one.InputTokens || l.Request.Model != "claude-sonnet-4-5" {
			t.Fatalf("line %d: %+v; want the estimate of the same request sent alone (%d input tokens)", i, l, one.InputTokens)
		}
	}
	for name, tc := range map[string]struct {
		body string
		max  int
		want error
	}{
		"not json":     {`{"requests":`, 0, ErrBatchInvalid},
		"no requests":  {`{"requests":[]}`, 0, ErrBatchInvalid},
		"no params":    {`{"requests":[{"custom_id":"a"}]}`, 0, ErrBatchInvalid},
		"streaming":    {batchBody(1, `"stream":true,`), 0, ErrBatchInvalid},
		"over the max": {batchBody(5, ""), 4, ErrBatchTooLarge},
		"bad params":   {`{"requests":[{"custom_id":"a","params":{"model":1}}]}`, 0, nil},
	} {
		_, err := ParseBatch([]byte(tc.body), tc.max)
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v; want %v", name, err, tc.want)
		}
	}
}

func FuzzParseBatch(f *testing.F) {
	f.Add([]byte(batchBody(2, "")))
	f.Add([]byte(`{"requests":[{"custom_id":"a","params":{}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		lines, err := ParseBatch(b, 1000)
		if err == nil && (len(lines) == 0 || len(lines) > 1000) {
			t.Fatalf("%d lines without an error", len(lines))
		}
	})
}

func TestBatchResultsAndIDs(t *testing.T) {
	r, err := ParseBatchResult([]byte(`{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","usage":{"input_tokens":12,"output_tokens":34}}}}`))
	if err != nil || !r.Succeeded || r.Usage.InputTokens != 12 || r.Usage.OutputTokens != 34 || r.Model != "claude-sonnet-4-5" {
		t.Fatalf("%+v %v", r, err)
	}
	if r, err := ParseBatchResult([]byte(`{"custom_id":"b","result":{"type":"errored","error":{"type":"invalid_request_error"}}}`)); err != nil || r.Succeeded || r.Type != "errored" {
		t.Fatalf("errored line: %+v %v", r, err)
	}
	for _, bad := range []string{`{"custom_id":"c","result":{"type":"succeeded","message":{}}}`, `not json`} {
		if _, err := ParseBatchResult([]byte(bad)); err == nil {
			t.Fatalf("%s accepted", bad)
		}
	}
	for path, want := range map[string]string{
		"/v1/messages/batches/msgbatch_01abc/results":     "msgbatch_01abc",
		"/v1/messages/batches/msgbatch_01abc/results?x=1": "msgbatch_01abc",
		"/v1/messages/batches/msgbatch_01abc":             "",
		"/v1/messages/batches/msgbatch_{x}/results":       "",
		"/v1/messages/batches/other_01/results":           "",
		"/v1/messages/batches/msgbatch_a/b/results":       "",
	} {
		if id, ok := BatchResultsPath(path); id != want || ok != (want != "") {
			t.Errorf("%s: %q %v; want %q", path, id, ok, want)
		}
	}
	if id, ok := BatchCreated([]byte(`{"id":"msgbatch_01xyz","type":"message_batch"}`)); !ok || id != "msgbatch_01xyz" {
		t.Fatalf("created: %q %v", id, ok)
	}
	if _, ok := BatchCreated([]byte(`{"id":"msgbatch_01xyz","type":"error"}`)); ok {
		t.Fatal("an error read as a created batch")
	}
}

func FuzzParseBatchResult(f *testing.F) {
	f.Add([]byte(`{"custom_id":"a","result":{"type":"succeeded","message":{"usage":{"input_tokens":1,"output_tokens":2}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseBatchResult(b)
		if err == nil && r.Succeeded && (r.Usage.InputTokens < 0 || r.Usage.OutputTokens < 0) {
			t.Fatalf("negative usage %+v", r.Usage)
		}
	})
}
