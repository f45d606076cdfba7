package mockprovider

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"testing"
)

const oaiBatchFile = `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","max_tokens":40,"messages":[{"role":"user","content":"hello there"}]}}
{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[{"role":"user","content":"write a longer answer please"}]}}
{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"no-such-model","messages":[{"role":"user","content":"x"}]}}
`

// uploadBatchFile posts content as a multipart purpose=batch file and
// returns the file id.
func uploadBatchFile(t *testing.T, base, content string) string {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	_ = mw.WriteField("purpose", "batch")
	fw, err := mw.CreateFormFile("file", "in.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write([]byte(content))
	_ = mw.Close()
	resp, b, _ := post(t, base+"/v1/files", buf.String(), with(openaiHeaders(), "content-type", mw.FormDataContentType()))
	if resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	m := mustJSON(t, b)
	if m["purpose"] != "batch" || num(t, m, "bytes") != int64(len(content)) {
		t.Fatalf("upload: %s", b)
	}
	return m["id"].(string)
}

func TestOpenAIBatchLifecycle(t *testing.T) {
	s := startMock(t, Options{Models: []string{"gpt-4o"}})
	fid := uploadBatchFile(t, s.URL(), oaiBatchFile)
	if _, b := getBody(t, s.URL()+"/v1/files/"+fid+"/content", openaiHeaders()); string(b) != oaiBatchFile {
		t.Fatalf("content: %q", b)
	}
	resp, b, _ := post(t, s.URL()+"/v1/batches", `{"input_file_id":"`+fid+`","endpoint":"/v1/chat/completions","completion_window":"24h"}`, openaiHeaders())
	if resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, b)
	}
	m := mustJSON(t, b)
	id := m["id"].(string)
	if m["status"] != "validating" || m["output_file_id"] != nil || m["usage"] != nil {
		t.Fatalf("create: %s", b)
	}
	_, b = getBody(t, s.URL()+"/v1/batches/"+id, openaiHeaders())
	if m = mustJSON(t, b); m["status"] != "in_progress" || num(t, m, "request_counts.total") != 3 {
		t.Fatalf("in progress: %s", b)
	}
	if resp, b, _ = post(t, s.URL()+"/mock/openai/batches/"+id+"/end", "", http.Header{}); resp.StatusCode != 200 {
		t.Fatalf("end: %d %s", resp.StatusCode, b)
	}
	_, b = getBody(t, s.URL()+"/v1/batches/"+id, openaiHeaders())
	m = mustJSON(t, b)
	if m["status"] != "completed" || num(t, m, "request_counts.completed") != 2 || num(t, m, "request_counts.failed") != 1 {
		t.Fatalf("completed: %s", b)
	}
	var in, out int64
	led := s.Provider().Ledger()
	for _, e := range led {
		if e.Dialect != DialectOpenAIBatch || e.ServiceTier != "batch" {
			t.Fatalf("ledger entry %+v", e)
		}
		in += e.Computed.InputTokens
		out += e.Computed.OutputTokens
	}
	if len(led) != 2 || num(t, m, "usage.input_tokens") != in || num(t, m, "usage.output_tokens") != out || in == 0 || out == 0 {
		t.Fatalf("usage %s against ledger %+v", b, led)
	}
	// Polling and downloading again changes nothing in the ledger.
	_, _ = getBody(t, s.URL()+"/v1/batches/"+id, openaiHeaders())
	_, lines := getBody(t, s.URL()+"/v1/files/"+m["output_file_id"].(string)+"/content", openaiHeaders())
	if n := bytes.Count(lines, []byte("\n")); n != 2 || len(s.Provider().Ledger()) != 2 {
		t.Fatalf("output file %d lines, ledger %d: %s", n, len(s.Provider().Ledger()), lines)
	}
	if _, errs := getBody(t, s.URL()+"/v1/files/"+m["error_file_id"].(string)+"/content", openaiHeaders()); !bytes.Contains(errs, []byte(`"custom_id":"c"`)) {
		t.Fatalf("error file: %s", errs)
	}
	// A second end is refused: a batch finishes once.
	if resp, _, _ = post(t, s.URL()+"/mock/openai/batches/"+id+"/end", "", http.Header{}); resp.StatusCode != 404 {
		t.Fatalf("second end: %d", resp.StatusCode)
	}
}

func TestOpenAIBatchRefusalsAndExpiry(t *testing.T) {
	s := startMock(t, Options{})
	cases := []struct {
		name, body string
		status     int
	}{
		{"unknown file", `{"input_file_id":"file-nope","endpoint":"/v1/chat/completions","completion_window":"24h"}`, 404},
		{"window", `{"input_file_id":"file-nope","endpoint":"/v1/chat/completions","completion_window":"1h"}`, 400},
		{"no endpoint", `{"input_file_id":"file-nope","completion_window":"24h"}`, 400},
	}
	for _, tc := range cases {
		if resp, b, _ := post(t, s.URL()+"/v1/batches", tc.body, openaiHeaders()); resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s", tc.name, resp.StatusCode, b)
		}
	}
	if resp, _, _ := post(t, s.URL()+"/v1/batches", `{}`, http.Header{}); resp.StatusCode != 401 {
		t.Errorf("no key: %d", resp.StatusCode)
	}
	fid := uploadBatchFile(t, s.URL(), oaiBatchFile)
	resp, b, _ := post(t, s.URL()+"/v1/batches", `{"input_file_id":"`+fid+`","endpoint":"/v1/chat/completions","completion_window":"24h"}`,
		with(openaiHeaders(), "x-mock-batch", "expire"))
	if resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, b)
	}
	_, b = getBody(t, s.URL()+"/v1/batches/"+mustJSON(t, b)["id"].(string), openaiHeaders())
	if m := mustJSON(t, b); m["status"] != "expired" || m["usage"] != nil || m["output_file_id"] != nil || len(s.Provider().Ledger()) != 0 {
		t.Fatalf("expired: %s", b)
	}
}
