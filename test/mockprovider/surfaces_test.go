package mockprovider

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// The Responses, embeddings and Gemini handlers: the wire shapes the SDKs
// rely on, and usage that matches the ledger.

func TestResponsesStreamShape(t *testing.T) {
	s := startMock(t, Options{})
	body := `{"model":"gpt-5.6-terra","instructions":"Be brief.","input":[{"role":"user","content":[{"type":"input_text","text":"Hello there"}]}],"stream":true,"max_output_tokens":30}`
	resp, got, err := post(t, s.URL()+"/v1/responses", body, with(openaiHeaders(), "x-mock-output-tokens", "40", "x-mock-reasoning-tokens", "5", "x-mock-cached-tokens", "2"))
	if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("content-type"), "text/event-stream") {
		t.Fatalf("%v %d %s", err, resp.StatusCode, got)
	}
	events, err := decodeSSE(got)
	if err != nil {
		t.Fatal(err)
	}
	var last map[string]any
	for i, ev := range events {
		m := mustJSON(t, []byte(ev.Data))
		if m["type"] != ev.Event || num(t, m, "sequence_number") != int64(i) {
			t.Fatalf("event %d: %s %s", i, ev.Event, ev.Data)
		}
		last = m
	}
	if events[0].Event != "response.created" || events[len(events)-1].Event != "response.incomplete" {
		t.Errorf("first %s, last %s", events[0].Event, events[len(events)-1].Event)
	}
	// The bound includes reasoning: 5 reasoning + 25 visible.
	if num(t, last, "response.usage.output_tokens") != 30 || num(t, last, "response.usage.output_tokens_details.reasoning_tokens") != 5 ||
		num(t, last, "response.usage.input_tokens_details.cached_tokens") != 2 {
		t.Errorf("usage %v", last["response"].(map[string]any)["usage"])
	}
	e := s.Provider().Ledger()[0]
	if e.Dialect != DialectResponses || !e.Complete || e.Reported.OutputTokens != 30 || e.Reported.CacheReadTokens != 2 ||
		e.Reported.InputTokens+2 != num(t, last, "response.usage.input_tokens") {
		t.Errorf("ledger %+v", e)
	}
}

func TestBackgroundResponseRetrieved(t *testing.T) {
	s := startMock(t, Options{})
	_, got, _ := post(t, s.URL()+"/v1/responses", `{"model":"o3-pro","input":"hi","background":true}`, openaiHeaders())
	q := mustJSON(t, got)
	if q["status"] != "queued" || q["usage"] != nil {
		t.Fatalf("%s", got)
	}
	req, _ := http.NewRequest(http.MethodGet, s.URL()+"/v1/responses/"+q["id"].(string), nil)
	req.Header = openaiHeaders()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var done map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&done); err != nil || done["status"] != "completed" || num(t, done, "usage.output_tokens") == 0 {
		t.Fatalf("%v %v", err, done)
	}
	l := s.Provider().Ledger()
	if len(l) != 2 || !l[0].Deferred || len(l[0].Usage) != 0 || l[1].Reported != l[0].Computed {
		t.Errorf("ledger %+v", l)
	}
}

func TestEmbeddingsShape(t *testing.T) {
	s := startMock(t, Options{})
	_, got, _ := post(t, s.URL()+"/v1/embeddings", `{"model":"text-embedding-3-small","input":[[1,2,3],[4]],"dimensions":4}`, openaiHeaders())
	m := mustJSON(t, got)
	if num(t, m, "usage.prompt_tokens") != 4 || len(m["data"].([]any)) != 2 {
		t.Errorf("%s", got)
	}
	if e := s.Provider().Ledger()[0]; e.Reported.InputTokens != 4 || e.Dialect != DialectEmbeddings {
		t.Errorf("ledger %+v", e)
	}
}

func TestGeminiStreamShapes(t *testing.T) {
	s := startMock(t, Options{})
	h := http.Header{"Content-Type": {"application/json"}, "X-Goog-Api-Key": {"k"}, "X-Mock-Reasoning-Tokens": {"7"}}
	body := `{"contents":[{"role":"user","parts":[{"text":"Explain how AI works"}]}],"system_instruction":{"parts":[{"text":"Be brief."}]}}`
	// SSE: CRLF-framed data events with cumulative usage, no [DONE].
	resp, got, err := post(t, s.URL()+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", body, h)
	if err != nil || resp.Header.Get("content-type") != "text/event-stream" {
		t.Fatal(err, resp.Header)
	}
	var prev int64 = -1
	chunks := strings.Split(strings.TrimSuffix(string(got), "\r\n\r\n"), "\r\n\r\n")
	for _, c := range chunks {
		m := mustJSON(t, []byte(strings.TrimPrefix(c, "data: ")))
		n := num(t, m, "usageMetadata.totalTokenCount")
		if n < prev {
			t.Errorf("usage is cumulative: %d after %d", n, prev)
		}
		prev = n
	}
	e := s.Provider().Ledger()[0]
	if len(e.Usage) != len(chunks) || e.Reported.OutputTokens != e.Computed.OutputTokens || !e.Complete {
		t.Errorf("ledger %+v", e)
	}
	// Without alt=sse: one JSON array.
	resp, got, _ = post(t, s.URL()+"/v1beta/models/gemini-2.5-flash:streamGenerateContent", body, h)
	var arr []map[string]any
	if err := json.Unmarshal(got, &arr); err != nil || len(arr) == 0 || !strings.HasPrefix(resp.Header.Get("content-type"), "application/json") {
		t.Fatalf("%v %s", err, got)
	}
	if arr[len(arr)-1]["candidates"].([]any)[0].(map[string]any)["finishReason"] != "STOP" {
		t.Errorf("last chunk %v", arr[len(arr)-1])
	}
	// Errors in Google's shape.
	resp, got, _ = post(t, s.URL()+"/v1beta/models/gemini-2.5-flash:generateContent", body, with(h, "x-mock-status", "429"))
	if m := mustJSON(t, got); resp.StatusCode != 429 || m["error"].(map[string]any)["status"] != "RESOURCE_EXHAUSTED" {
		t.Errorf("%d %s", resp.StatusCode, got)
	}
}
