package mockprovider

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
)

func getBody(t *testing.T, url string, h http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

const batchBody = `{"requests":[
 {"custom_id":"a","params":{"model":"claude-sonnet-4-5-20250929","max_tokens":50,"messages":[{"role":"user","content":"hello there"}]}},
 {"custom_id":"b","params":{"model":"claude-sonnet-4-5-20250929","max_tokens":50,"messages":[{"role":"user","content":"write a longer answer please"}]}},
 {"custom_id":"c","params":{"model":"claude-sonnet-4-5-20250929","messages":[{"role":"user","content":"no max_tokens"}]}}]}`

func TestAnthropicBatchLifecycle(t *testing.T) {
	s := startMock(t, Options{})
	resp, b, _ := post(t, s.URL()+"/v1/messages/batches", batchBody, anthropicHeaders())
	if resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, b)
	}
	m := mustJSON(t, b)
	id, _ := m["id"].(string)
	if m["processing_status"] != "in_progress" || m["results_url"] != nil || num(t, m, "request_counts.processing") != 3 {
		t.Fatalf("create: %s", b)
	}
	resp, b = getBody(t, s.URL()+"/v1/messages/batches/"+id+"/results", anthropicHeaders())
	if resp.StatusCode != 400 {
		t.Fatalf("results before end: %d %s", resp.StatusCode, b)
	}
	resp, b, _ = post(t, s.URL()+"/mock/batches/"+id+"/end", "", http.Header{})
	if resp.StatusCode != 200 {
		t.Fatalf("end: %d %s", resp.StatusCode, b)
	}
	_, b = getBody(t, s.URL()+"/v1/messages/batches/"+id, anthropicHeaders())
	m = mustJSON(t, b)
	if m["processing_status"] != "ended" || num(t, m, "request_counts.succeeded") != 2 ||
		num(t, m, "request_counts.errored") != 1 || num(t, m, "request_counts.processing") != 0 {
		t.Fatalf("retrieve: %s", b)
	}
	if m["results_url"] != "/v1/messages/batches/"+id+"/results" {
		t.Fatalf("results_url: %v", m["results_url"])
	}
	var first []byte
	for i := 0; i < 2; i++ {
		resp, b = getBody(t, s.URL()+"/v1/messages/batches/"+id+"/results?beta=true", anthropicHeaders())
		if resp.StatusCode != 200 {
			t.Fatalf("results: %d %s", resp.StatusCode, b)
		}
		if i == 0 {
			first = b
		} else if !bytes.Equal(first, b) {
			t.Fatal("a second download differs")
		}
	}
	var sum int64
	types := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(first))
	for sc.Scan() {
		var line struct {
			CustomID string `json:"custom_id"`
			Result   struct {
				Type    string `json:"type"`
				Message struct {
					Usage anthUsage `json:"usage"`
				} `json:"message"`
			} `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("%v: %s", err, sc.Bytes())
		}
		types[line.CustomID] = line.Result.Type
		if line.Result.Type == "succeeded" {
			if line.Result.Message.Usage.ServiceTier != "batch" || line.Result.Message.Usage.InputTokens <= 0 {
				t.Fatalf("usage: %+v", line.Result.Message.Usage)
			}
			sum += line.Result.Message.Usage.InputTokens + line.Result.Message.Usage.OutputTokens
		}
	}
	if types["a"] != "succeeded" || types["b"] != "succeeded" || types["c"] != "errored" {
		t.Fatalf("types: %v", types)
	}
	// The ledger has the succeeded lines once, however often they were downloaded.
	var ledgerSum int64
	n := 0
	for _, e := range s.Provider().Ledger() {
		if e.Dialect == DialectAnthropicBatch {
			n++
			ledgerSum += e.Reported.InputTokens + e.Reported.OutputTokens
		}
	}
	if n != 2 || ledgerSum != sum {
		t.Fatalf("ledger: %d entries, %d tokens; results %d", n, ledgerSum, sum)
	}
}

func TestAnthropicBatchKnobs(t *testing.T) {
	s := startMock(t, Options{})
	for _, tc := range []struct{ knob, field string }{{"end", "request_counts.succeeded"}, {"expire", "request_counts.expired"}} {
		resp, b, _ := post(t, s.URL()+"/v1/messages/batches", batchBody, with(anthropicHeaders(), "x-mock-batch", tc.knob))
		m := mustJSON(t, b)
		if resp.StatusCode != 200 || m["processing_status"] != "ended" || num(t, m, tc.field) == 0 {
			t.Fatalf("%s: %d %s", tc.knob, resp.StatusCode, b)
		}
	}
	for _, bad := range []string{`{"requests":[]}`, `{"requests":[{"custom_id":"a","params":{}},{"custom_id":"a","params":{}}]}`, `nope`} {
		if resp, b, _ := post(t, s.URL()+"/v1/messages/batches", bad, anthropicHeaders()); resp.StatusCode != 400 {
			t.Fatalf("%s: %d %s", bad, resp.StatusCode, b)
		}
	}
	if resp, _, _ := post(t, s.URL()+"/v1/messages/batches", batchBody, openaiHeaders()); resp.StatusCode != 401 {
		t.Fatalf("no key: %d", resp.StatusCode)
	}
	if resp, _ := getBody(t, s.URL()+"/v1/messages/batches/msgbatch_nope", anthropicHeaders()); resp.StatusCode != 404 {
		t.Fatalf("unknown: %d", resp.StatusCode)
	}
}
