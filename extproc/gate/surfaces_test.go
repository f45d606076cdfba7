package gate

import (
	"context"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
)

// The surfaces beyond Messages and Chat Completions, as the gate plans and
// meters them: the Responses API (background responses included), the
// embeddings API, Gemini's generateContent (model in the path), and the
// WebSocket upgrade that cannot be metered.

const surfacesYAML = `
policies:
  default:
    limits: {requests_per_minute: 1000, tokens_per_minute: 6000000, concurrent: 100}
    budgets: [{window: day, usd: 50}]
    models:
      allow: ["gpt-*", "gemini-*", "text-embedding-*"]
      aliases: {cheap: gemini-2.5-flash, small: text-embedding-3-small, terse: gpt-5-nano}
prices:
  gpt-5.6-terra: {input: 2, output: 12, cache_write_5m: 2.5, cache_read: 0.2}
  gpt-5-nano: {input: 0.05, output: 0.4, cache_read: 0.005}
  text-embedding-3-small: {input: 0.02, output: 0}
  text-embedding-3-large: {input: 0.13, output: 0}
  gemini-2.5-pro: {input: 1.25, output: 10, cache_read: 0.125}
  gemini-2.5-flash: {input: 0.3, output: 2.5, cache_read: 0.03}
`

// Per-token nano-USD of the prices above ($1/MTok = 1000 nano-USD per token).
const (
	terraIn, terraOut, terraWrite, terraRead = 2000, 12000, 2500, 200
	embedSmallIn                             = 20
	flashIn, flashOut, flashRead             = 300, 2500, 30
)

func jsonResponse(x *Exchange, body string) {
	x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
	x.ResponseBody([]byte(body), true)
	x.Settle()
}

func TestResponsesMeteredExactly(t *testing.T) {
	h := newHarness(t, surfacesYAML)
	body := `{"model":"gpt-5.6-terra","input":"hi","max_output_tokens":100}`
	x, _ := h.admit(post("/v1/responses", tenantHeader("acme")), body)
	in := inputEstimate(t, "/v1/responses", body)
	h.wantBudgets("acme", "", in*terraIn+100*terraOut, 0)
	jsonResponse(x, `{"id":"resp_1","object":"response","status":"completed","model":"gpt-5.6-terra","usage":{"input_tokens":1000,"input_tokens_details":{"cached_tokens":600,"cache_write_tokens":300},"output_tokens":50,"output_tokens_details":{"reasoning_tokens":20},"total_tokens":1050}}`)
	o := h.obs.lastOutcome(t)
	want := accounting.Usage{InputTokens: 100, CacheReadTokens: 600, CacheWrite5mTokens: 300, OutputTokens: 50}
	if o.Dialect != "openai_responses" || o.Result != ResultOK || o.Usage != want {
		t.Errorf("outcome %+v", o)
	}
	h.wantBudgets("acme", "", 0, 100*terraIn+600*terraRead+300*terraWrite+50*terraOut)
}

func TestResponsesCompactIsMetered(t *testing.T) {
	h := newHarness(t, surfacesYAML)
	x, _ := h.admit(post("/v1/responses/compact?beta=true", tenantHeader("acme")), `{"model":"gpt-5.6-terra","previous_response_id":"resp_1"}`)
	jsonResponse(x, `{"id":"cmp_1","object":"response.compaction","output":[],"usage":{"input_tokens":40,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":49}}`)
	if o := h.obs.lastOutcome(t); o.Result != ResultOK || o.Usage != (accounting.Usage{InputTokens: 40, OutputTokens: 9}) {
		t.Errorf("outcome %+v", o)
	}
	h.wantBudgets("acme", "", 0, 40*terraIn+9*terraOut)
}

// A background response answers at once, without usage: the whole
// reservation is charged, labelled estimated.
func TestBackgroundResponseChargedItsEstimate(t *testing.T) {
	h := newHarness(t, surfacesYAML)
	body := `{"model":"gpt-5.6-terra","input":"write a long essay","background":true,"max_output_tokens":2000}`
	x, _ := h.admit(post("/v1/responses", tenantHeader("acme")), body)
	in := inputEstimate(t, "/v1/responses", body)
	jsonResponse(x, `{"id":"resp_1","object":"response","status":"queued","background":true,"model":"gpt-5.6-terra","output":[],"usage":null}`)
	o := h.obs.lastOutcome(t)
	if o.Result != ResultBackground || o.Source != SourceEstimated || o.Usage != (accounting.Usage{InputTokens: in, OutputTokens: 2000}) {
		t.Errorf("outcome %+v", o)
	}
	h.wantBudgets("acme", "", 0, in*terraIn+2000*terraOut)

	// Streamed and cut: the response goes on generating, so the output is
	// charged at the reservation too.
	x, _ = h.admit(post("/v1/responses", tenantHeader("beta")), `{"model":"gpt-5.6-terra","input":"hi","background":true,"stream":true,"max_output_tokens":300}`)
	x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "text/event-stream"}}, false)
	x.ResponseBody([]byte("event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"model\":\"gpt-5.6-terra\",\"status\":\"queued\",\"usage\":null}}\n\n"), false)
	x.Abort()
	if o := h.obs.lastOutcome(t); o.Result != ResultEstimated || o.Usage.OutputTokens != 300 {
		t.Errorf("outcome %+v", o)
	}
}

func TestEmbeddingsReserveNoOutput(t *testing.T) {
	h := newHarness(t, surfacesYAML)
	body := `{"model":"small","input":["The food was delicious","and the waiter was kind"]}`
	x, bv := h.admit(post("/v1/embeddings", tenantHeader("acme")), body)
	in := inputEstimate(t, "/v1/embeddings", body)
	h.wantBudgets("acme", "", in*embedSmallIn, 0)
	if !bv.BodyChanged || string(bv.Body) != `{"model":"text-embedding-3-small","input":["The food was delicious","and the waiter was kind"]}` {
		t.Errorf("the alias is rewritten in the body: %s", bv.Body)
	}
	jsonResponse(x, `{"object":"list","data":[],"model":"text-embedding-3-small","usage":{"prompt_tokens":11,"total_tokens":11}}`)
	if o := h.obs.lastOutcome(t); o.Dialect != "openai_embeddings" || o.Usage != (accounting.Usage{InputTokens: 11}) {
		t.Errorf("outcome %+v", o)
	}
	h.wantBudgets("acme", "", 0, 11*embedSmallIn)
}

func TestGeminiModelRewriteSetsThePath(t *testing.T) {
	h := newHarness(t, surfacesYAML)
	body := `{"contents":[{"role":"user","parts":[{"text":"Explain how AI works"}]}],"generationConfig":{"maxOutputTokens":64}}`
	x, bv := h.admit(post("/v1beta/models/cheap:streamGenerateContent?alt=sse", tenantHeader("acme")), body)
	if got, _ := header(bv.Edits.Set, ":path"); got != "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse" {
		t.Errorf(":path = %q", got)
	}
	if got, _ := header(bv.Edits.Set, contract.ModelHeader); got != "gemini-2.5-flash" || bv.BodyChanged {
		t.Errorf("model header %q, body changed %v", got, bv.BodyChanged)
	}
	in := inputEstimate(t, "/v1beta/models/cheap:streamGenerateContent", body)
	h.wantBudgets("acme", "", in*flashIn+64*flashOut, 0)
	rv := x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "text/event-stream"}}, false)
	if !rv.Stream {
		t.Fatal("an SSE answer is streamed")
	}
	x.ResponseBody([]byte(`data: {"candidates":[{"content":{"parts":[{"text":"AI"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":900,"cachedContentTokenCount":800,"totalTokenCount":900},"modelVersion":"gemini-2.5-flash"}`+"\r\n\r\n"), false)
	x.ResponseBody([]byte(`data: {"candidates":[{"content":{"parts":[{"text":" learns"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":900,"cachedContentTokenCount":800,"candidatesTokenCount":4,"thoughtsTokenCount":30,"totalTokenCount":934},"modelVersion":"gemini-2.5-flash"}`+"\r\n\r\n"), true)
	x.Settle()
	want := accounting.Usage{InputTokens: 100, CacheReadTokens: 800, OutputTokens: 34}
	if o := h.obs.lastOutcome(t); o.Dialect != "gemini" || o.Result != ResultOK || o.Usage != want || o.Model != "gemini-2.5-flash" || o.RequestedModel != "cheap" {
		t.Errorf("outcome %+v", o)
	}
	h.wantBudgets("acme", "", 0, 100*flashIn+800*flashRead+34*flashOut)

	// Without a rewrite the path is left alone; a JSON array (no alt=sse)
	// is metered from its last usageMetadata.
	x, bv = h.admit(post("/v1beta/models/gemini-2.5-flash:streamGenerateContent", tenantHeader("beta")), body)
	if _, ok := header(bv.Edits.Set, ":path"); ok {
		t.Error("no rewrite, no :path")
	}
	jsonResponse(x, `[{"candidates":[{"content":{"parts":[{"text":"AI"}]}}],"usageMetadata":{"promptTokenCount":9}},{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3}}]`)
	if o := h.obs.lastOutcome(t); o.Usage != (accounting.Usage{InputTokens: 9, OutputTokens: 3}) {
		t.Errorf("outcome %+v", o)
	}
}

func TestGeminiDenialInGoogleShape(t *testing.T) {
	h := newHarness(t, surfacesYAML)
	_, r := h.refuse(post("/v1beta/models/gemini-2.5-flash:generateContent", tenantHeader("acme")), `{"contents":{}}`)
	if r.Status != 400 || string(r.Body) != `{"error":{"code":400,"message":"tokenwarden: contents: must be an array","status":"INVALID_ARGUMENT"}}` {
		t.Errorf("%d %s", r.Status, r.Body)
	}
	checkReplyFraming(t, r)
}

func TestWebSocketRefused(t *testing.T) {
	h := newHarness(t, surfacesYAML)
	for _, hdrs := range []HeaderList{
		{{":method", "GET"}, {":path", "/v1/responses"}, {"upgrade", "websocket"}, {"connection", "Upgrade"}, tenantHeader("acme")},
		{{":method", "CONNECT"}, {":path", "/v1/responses?beta=true"}, {":protocol", "websocket"}, tenantHeader("acme")},
	} {
		_, v := h.g.Begin(context.Background(), Request{Headers: hdrs, EndOfStream: true})
		if v.PassThrough || v.Reply == nil || v.Reply.Status != 400 {
			t.Fatalf("a WebSocket must be refused: %+v", v)
		}
		typ, _, msg := errorType(t, v.Reply.Body)
		if typ != "invalid_request_error" || msg == "" {
			t.Errorf("OpenAI error shape: %s", v.Reply.Body)
		}
		checkReplyFraming(t, v.Reply)
	}
	// A plain GET of a response (polling a background one) passes through.
	_, v := h.g.Begin(context.Background(), Request{Headers: HeaderList{{":method", "GET"}, {":path", "/v1/responses/resp_1"}}, EndOfStream: true})
	if !v.PassThrough {
		t.Errorf("GET /v1/responses/{id} passes through: %+v", v)
	}
}
