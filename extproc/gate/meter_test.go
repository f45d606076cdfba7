package gate

import (
	"reflect"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// A Messages API stream as the API sends it
// (https://docs.anthropic.com/en/docs/build-with-claude/streaming), in three
// parts: everything before the final usage, the message_delta that carries
// it, and message_stop.
const (
	sseStart = "event: message_start\n" +
		`data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}` + "\n\n" +
		"event: content_block_start\n" +
		`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}` + "\n\n" +
		"event: ping\n" +
		`data: {"type": "ping"}` + "\n\n" +
		"event: content_block_delta\n" +
		`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello! How can I help you today?"}}` + "\n\n" +
		"event: content_block_stop\n" +
		`data: {"type":"content_block_stop","index":0}` + "\n\n"
	sseDelta = "event: message_delta\n" +
		`data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":12}}` + "\n\n"
	sseStop  = "event: message_stop\n" + `data: {"type":"message_stop"}` + "\n\n"
	sseError = "event: error\n" + `data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}` + "\n\n"
	// sseText is the text sseStart streams: 32 bytes, estimated as
	// (32+3)/4 = 8 output tokens when the stream is cut before its usage.
	sseText = "Hello! How can I help you today?"
)

// A Messages API JSON response with every billed token class
// (https://docs.anthropic.com/en/api/messages).
const messageJSON = `{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",` +
	`"content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","stop_sequence":null,` +
	`"usage":{"input_tokens":25,"cache_creation_input_tokens":200,"cache_read_input_tokens":1000,` +
	`"cache_creation":{"ephemeral_5m_input_tokens":200,"ephemeral_1h_input_tokens":0},"output_tokens":150}}`

// A Chat Completions stream with include_usage: content chunks, a usage
// chunk with empty choices, then [DONE]
// (https://platform.openai.com/docs/api-reference/chat/streaming).
const (
	chatStart = `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1755137921,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}` + "\n\n" +
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1755137921,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"Hi there, friend!"},"finish_reason":null}],"usage":null}` + "\n\n" +
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1755137921,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}` + "\n\n"
	chatUsage = `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1755137921,"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":50,"total_tokens":1050,"prompt_tokens_details":{"cached_tokens":768}}}` + "\n\n" +
		"data: [DONE]\n\n"
	chatText = "Hi there, friend!" // 17 bytes: (17+3)/4 = 5 tokens
)

const chatJSON = `{"id":"chatcmpl-2","object":"chat.completion","created":1755137921,"model":"gpt-4o-mini-2024-07-18",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Hi there!"},"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":1000,"completion_tokens":50,"total_tokens":1050,"prompt_tokens_details":{"cached_tokens":768}}}`

// chunks cuts s every n bytes, as a network would, ignoring event bounds.
func chunks(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

// sonnetCost and miniCost price a usage from the published prices above,
// class by class, without accounting's help.
func sonnetCost(u accounting.Usage) int64 {
	return u.InputTokens*sonnetIn + u.OutputTokens*sonnetOut + u.CacheReadTokens*sonnetRead + u.CacheWrite5mTokens*sonnetWrite5m + u.CacheWrite1hTokens*6000
}

func miniCost(u accounting.Usage) int64 {
	return u.InputTokens*miniIn + u.OutputTokens*miniOut + u.CacheReadTokens*miniRead
}

var (
	jsonHeaders = HeaderList{{":status", "200"}, {"content-type", "application/json"}, {"content-length", "512"}}
	sseHeaders  = HeaderList{{":status", "200"}, {"content-type", "text/event-stream; charset=utf-8"}, {"content-length", "4096"}}
)

func TestMeter(t *testing.T) {
	const latency = 1500 * time.Millisecond
	cases := []struct {
		name string
		path string // pathMessages unless set
		// run drives the response; it returns whether it aborted (Abort
		// settles by itself).
		run        func(t *testing.T, x *Exchange) (aborted bool)
		want       func(in int64) accounting.Usage
		wantResult Result
		wantSource Source
		wantStatus int  // the status observed from the provider
		noHeaders  bool // the run sends no response headers: no status is observed
	}{
		{
			name: "provider error: released in full, body skipped",
			run: func(t *testing.T, x *Exchange) bool {
				v := x.ResponseHeaders(HeaderList{{":status", "529"}, {"content-type", "application/json"}}, false)
				if !v.SkipBody || !v.Done || v.Stream {
					t.Errorf("verdict %+v", v)
				}
				if cv := x.ResponseBody([]byte(`{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`), true); cv.Done {
					t.Error("a skipped body was metered")
				}
				return false
			},
			want: func(int64) accounting.Usage { return accounting.Usage{} }, wantResult: ResultUpstreamError, wantSource: SourceMeasured, wantStatus: 529,
		},
		{
			name: "client error from the provider",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(HeaderList{{":status", "400"}}, false)
				return false
			},
			want: func(int64) accounting.Usage { return accounting.Usage{} }, wantResult: ResultUpstreamError, wantSource: SourceMeasured, wantStatus: 400,
		},
		{
			name: "a redirect is not an answer",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(HeaderList{{":status", "307"}, {"location", "https://api.anthropic.com/v1/messages"}}, false)
				return false
			},
			want: func(int64) accounting.Usage { return accounting.Usage{} }, wantResult: ResultUpstreamError, wantSource: SourceMeasured, wantStatus: 307,
		},
		{
			name: "no :status at all counts as an error",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(HeaderList{{"content-type", "application/json"}}, false)
				return false
			},
			want: func(int64) accounting.Usage { return accounting.Usage{} }, wantResult: ResultUpstreamError, wantSource: SourceMeasured,
		},
		{
			name: "no response headers to read (a nil Headers)",
			run: func(t *testing.T, x *Exchange) bool {
				if v := x.ResponseHeaders(nil, false); !v.Done || !v.SkipBody {
					t.Errorf("verdict %+v", v)
				}
				return false
			},
			want: func(int64) accounting.Usage { return accounting.Usage{} }, wantResult: ResultUpstreamError, wantSource: SourceMeasured,
		},
		{
			name: "JSON with usage: measured, every token class priced",
			run: func(t *testing.T, x *Exchange) bool {
				v := x.ResponseHeaders(jsonHeaders, false)
				if v.Stream || v.SkipBody || v.Done || len(v.Edits.Remove) != 0 {
					t.Errorf("verdict %+v", v)
				}
				parts := chunks(messageJSON, 100)
				for i, c := range parts {
					if cv := x.ResponseBody([]byte(c), i == len(parts)-1); cv.Done != (i == len(parts)-1) {
						t.Fatalf("chunk %d: done %v", i, cv.Done)
					}
				}
				return false
			},
			want: func(int64) accounting.Usage {
				return accounting.Usage{InputTokens: 25, OutputTokens: 150, CacheReadTokens: 1000, CacheWrite5mTokens: 200}
			},
			wantResult: ResultOK, wantSource: SourceMeasured, wantStatus: 200,
		},
		{
			name: "JSON without usage: the input estimate and the body's text",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(jsonHeaders, false)
				x.ResponseBody([]byte(`{"type":"message","content":[{"type":"text","text":"Hello there, how are you?"}]}`), true)
				return false
			},
			want: func(in int64) accounting.Usage {
				return accounting.Usage{InputTokens: in, OutputTokens: wire.EstimateTokens([]byte(`{"type":"message","content":[{"type":"text","text":"Hello there, how are you?"}]}`))}
			},
			wantResult: ResultUsageMissing, wantSource: SourceEstimated, wantStatus: 200,
		},
		{
			name: "response headers end the stream: no body, no usage",
			run: func(t *testing.T, x *Exchange) bool {
				if v := x.ResponseHeaders(HeaderList{{":status", "200"}}, true); !v.Done || v.SkipBody {
					t.Errorf("verdict %+v", v)
				}
				return false
			},
			want:       func(in int64) accounting.Usage { return accounting.Usage{InputTokens: in} },
			wantResult: ResultUsageMissing, wantSource: SourceEstimated, wantStatus: 200,
		},
		{
			name: "SSE with its final usage, chunked anywhere",
			run: func(t *testing.T, x *Exchange) bool {
				v := x.ResponseHeaders(sseHeaders, false)
				if !v.Stream || v.SkipBody || v.Done || !reflect.DeepEqual(v.Edits.Remove, []string{"content-length"}) {
					t.Errorf("verdict %+v", v)
				}
				for _, c := range chunks(sseStart+sseDelta+sseStop, 37) {
					if x.ResponseBody([]byte(c), false).Done {
						t.Fatal("done before the end of the stream")
					}
				}
				if !x.ResponseBody(nil, true).Done {
					t.Fatal("not done at the end of the stream")
				}
				return false
			},
			want:       func(int64) accounting.Usage { return accounting.Usage{InputTokens: 25, OutputTokens: 12} },
			wantResult: ResultOK, wantSource: SourceMeasured, wantStatus: 200,
		},
		{
			name: "SSE that ends without usage",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(sseHeaders, false)
				x.ResponseBody([]byte(sseStart+sseStop), true)
				return false
			},
			// message_start's input, and the streamed text estimated.
			want: func(int64) accounting.Usage {
				return accounting.Usage{InputTokens: 25, OutputTokens: (int64(len(sseText)) + 3) / 4}
			},
			wantResult: ResultUsageMissing, wantSource: SourceEstimated, wantStatus: 200,
		},
		{
			name: "SSE cut before its usage",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(sseHeaders, false)
				x.ResponseBody([]byte(sseStart), false)
				x.Abort()
				return true
			},
			want:       func(int64) accounting.Usage { return accounting.Usage{InputTokens: 25, OutputTokens: 8} },
			wantResult: ResultEstimated, wantSource: SourceEstimated, wantStatus: 200,
		},
		{
			name: "SSE cut after its usage, before its last chunk",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(sseHeaders, false)
				x.ResponseBody([]byte(sseStart+sseDelta), false)
				x.Abort()
				return true
			},
			want:       func(int64) accounting.Usage { return accounting.Usage{InputTokens: 25, OutputTokens: 12} },
			wantResult: ResultOK, wantSource: SourceMeasured, wantStatus: 200,
		},
		{
			name: "SSE error event",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(sseHeaders, false)
				x.ResponseBody([]byte(sseStart), false)
				x.ResponseBody([]byte(sseError), true)
				return false
			},
			want:       func(int64) accounting.Usage { return accounting.Usage{InputTokens: 25, OutputTokens: 8} },
			wantResult: ResultUpstreamError, wantSource: SourceEstimated, wantStatus: 200,
		},
		{
			name: "JSON that ends in trailers",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(jsonHeaders, false)
				x.ResponseBody([]byte(messageJSON), false)
				if !x.ResponseEnd() {
					t.Fatal("ResponseEnd did not meter")
				}
				if x.ResponseEnd() || x.ResponseBody([]byte("late"), true).Done {
					t.Error("metered twice")
				}
				return false
			},
			want: func(int64) accounting.Usage {
				return accounting.Usage{InputTokens: 25, OutputTokens: 150, CacheReadTokens: 1000, CacheWrite5mTokens: 200}
			},
			wantResult: ResultOK, wantSource: SourceMeasured, wantStatus: 200,
		},
		{
			name: "SSE that ends in trailers",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(sseHeaders, false)
				x.ResponseBody([]byte(sseStart+sseDelta+sseStop), false)
				if !x.ResponseEnd() {
					t.Fatal("ResponseEnd did not meter")
				}
				return false
			},
			want:       func(int64) accounting.Usage { return accounting.Usage{InputTokens: 25, OutputTokens: 12} },
			wantResult: ResultOK, wantSource: SourceMeasured, wantStatus: 200,
		},
		{
			name: "trailers with neither headers nor body",
			run: func(t *testing.T, x *Exchange) bool {
				if !x.ResponseEnd() {
					t.Fatal("ResponseEnd did not meter")
				}
				return false
			},
			want:       func(in int64) accounting.Usage { return accounting.Usage{InputTokens: in} },
			wantResult: ResultUsageMissing, wantSource: SourceEstimated, noHeaders: true,
		},
		{
			name: "a body without response headers: SSE sniffed",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseBody([]byte("\n"+sseStart), false)
				x.ResponseBody([]byte(sseDelta+sseStop), true)
				return false
			},
			want:       func(int64) accounting.Usage { return accounting.Usage{InputTokens: 25, OutputTokens: 12} },
			wantResult: ResultOK, wantSource: SourceMeasured, noHeaders: true,
		},
		{
			name: "a body without response headers: JSON",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseBody([]byte(messageJSON), true)
				return false
			},
			want: func(int64) accounting.Usage {
				return accounting.Usage{InputTokens: 25, OutputTokens: 150, CacheReadTokens: 1000, CacheWrite5mTokens: 200}
			},
			wantResult: ResultOK, wantSource: SourceMeasured, noHeaders: true,
		},
		{
			name: "JSON cut short",
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(jsonHeaders, false)
				x.ResponseBody([]byte(messageJSON[:40]), false)
				x.Abort()
				return true
			},
			want:       func(in int64) accounting.Usage { return accounting.Usage{InputTokens: in} },
			wantResult: ResultEstimated, wantSource: SourceEstimated, wantStatus: 200,
		},
		{
			name: "cut before any response",
			run: func(t *testing.T, x *Exchange) bool {
				x.Abort()
				return true
			},
			want:       func(in int64) accounting.Usage { return accounting.Usage{InputTokens: in} },
			wantResult: ResultEstimated, wantSource: SourceEstimated, noHeaders: true,
		},
		{
			name: "OpenAI JSON: cached tokens priced as cache reads",
			path: pathChat,
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(jsonHeaders, false)
				x.ResponseBody([]byte(chatJSON), true)
				return false
			},
			want: func(int64) accounting.Usage {
				return accounting.Usage{InputTokens: 232, OutputTokens: 50, CacheReadTokens: 768}
			},
			wantResult: ResultOK, wantSource: SourceMeasured, wantStatus: 200,
		},
		{
			name: "OpenAI stream with its usage chunk",
			path: pathChat,
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(sseHeaders, false)
				for _, c := range chunks(chatStart+chatUsage, 29) {
					x.ResponseBody([]byte(c), false)
				}
				x.ResponseBody(nil, true)
				return false
			},
			want: func(int64) accounting.Usage {
				return accounting.Usage{InputTokens: 232, OutputTokens: 50, CacheReadTokens: 768}
			},
			wantResult: ResultOK, wantSource: SourceMeasured, wantStatus: 200,
		},
		{
			name: "OpenAI stream cut before its usage chunk",
			path: pathChat,
			run: func(t *testing.T, x *Exchange) bool {
				x.ResponseHeaders(sseHeaders, false)
				x.ResponseBody([]byte(chatStart), false)
				x.Abort()
				return true
			},
			// No input is reported before the usage chunk: the request's
			// own estimate stands in.
			want: func(in int64) accounting.Usage {
				return accounting.Usage{InputTokens: in, OutputTokens: (int64(len(chatText)) + 3) / 4}
			},
			wantResult: ResultEstimated, wantSource: SourceEstimated, wantStatus: 200,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, baseYAML)
			path, body, cost, dialect := pathMessages, sonnetBody, sonnetCost, "anthropic"
			if tc.path == pathChat {
				path, body, cost, dialect = pathChat, miniBody256, miniCost, "openai"
			}
			in := inputEstimate(t, path, body)
			estimate := cost(accounting.Usage{InputTokens: in, OutputTokens: 256})

			x, _ := h.admit(post(path, tenantHeader("acme")), body)
			h.wantBudgets("acme", "", estimate, 0)
			h.clock.Advance(latency)
			aborted := tc.run(t, x)

			o := h.obs.lastOutcome(t)
			u := tc.want(in)
			want := Outcome{Dialect: dialect, Tenant: "acme", TenantLabel: "acme", Policy: "default",
				RequestedModel: map[string]string{pathMessages: "claude-sonnet-4-5", pathChat: "gpt-4o-mini"}[path],
				Model:          map[string]string{pathMessages: "claude-sonnet-4-5", pathChat: "gpt-4o-mini"}[path],
				ModelLabel:     map[string]string{pathMessages: "claude-sonnet-4-5", pathChat: "gpt-4o-mini"}[path],
				Result:         tc.wantResult, Decision: "allowed", Metered: true, Usage: u, Source: tc.wantSource,
				UsageMissing: tc.wantResult == ResultUsageMissing, Latency: latency}
			if o.Cost.Total != accounting.NanoUSD(cost(u)) {
				t.Errorf("cost %d nano-USD, want %d for %+v", o.Cost.Total, cost(u), u)
			}
			o.Cost = accounting.Cost{}
			if o != want {
				t.Errorf("outcome\n got %+v\nwant %+v", o, want)
			}
			if !x.Done() {
				t.Error("not done")
			}

			// Until the settle, the store still holds the estimate; the
			// settle moves exactly the cost from reserved to spent.
			if !aborted {
				h.wantBudgets("acme", "", estimate, 0)
				if h.obs.calls("settle") != 0 {
					t.Error("settled before Settle")
				}
				x.Settle()
			}
			h.wantBudgets("acme", "", 0, cost(u))
			if h.obs.calls("settle") != 1 {
				t.Errorf("%d settles", h.obs.calls("settle"))
			}
			var wantProviders []providerResponse
			if !tc.noHeaders {
				wantProviders = []providerResponse{{dialect, tc.wantStatus}}
			}
			if !reflect.DeepEqual(h.obs.providers, wantProviders) {
				t.Errorf("provider responses %+v, want %+v", h.obs.providers, wantProviders)
			}
		})
	}
}

// The response carries the tenant's own limit state and, when the policy
// rewrote the model, what it was rewritten to.
func TestResponseHeaderEdits(t *testing.T) {
	h := newHarness(t, baseYAML)
	x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
	v := x.ResponseHeaders(jsonHeaders, false)
	want := map[string]string{
		"x-tokenwarden-ratelimit-limit-requests":     "1000",
		"x-tokenwarden-ratelimit-remaining-requests": "999",
		"x-tokenwarden-ratelimit-reset-requests":     "60ms",
		"x-tokenwarden-ratelimit-limit-tokens":       "6000000",
	}
	for name, value := range want {
		if got, _ := header(v.Edits.Set, name); got != value {
			t.Errorf("%s = %q, want %q", name, got, value)
		}
	}
	if _, ok := header(v.Edits.Set, "x-tokenwarden-model-rewritten"); ok {
		t.Error("a model that was not rewritten is reported rewritten")
	}
	// A second ResponseHeaders (or one after the end) changes nothing.
	if v2 := x.ResponseHeaders(jsonHeaders, false); !v2.Edits.Empty() || v2.Done {
		t.Errorf("second ResponseHeaders %+v", v2)
	}
}

// Usage that says nothing is missing usage; usage no request can have is a
// fault. Both are charged the estimate — never zero, never the absurd
// figure — and the reservation still ends, its slot freed.
func TestEmptyAndImpossibleUsage(t *testing.T) {
	cases := []struct {
		name, body string
		want       Result
	}{
		{"empty usage object", `{"model":"claude-sonnet-4-5","usage":{}}`, ResultUsageMissing},
		{"all zero", `{"model":"claude-sonnet-4-5","usage":{"input_tokens":0,"output_tokens":0}}`, ResultUsageMissing},
		{"2^63-1 input tokens", `{"model":"claude-sonnet-4-5","usage":{"input_tokens":9223372036854775807,"output_tokens":1}}`, ResultUsageInvalid},
		{"1e30 output tokens", `{"model":"claude-sonnet-4-5","usage":{"input_tokens":10,"output_tokens":1e30}}`, ResultUsageInvalid},
		{"above any context window", `{"model":"claude-sonnet-4-5","usage":{"input_tokens":20000000,"output_tokens":1}}`, ResultUsageInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, `
policies:
  default:
    limits: {concurrent: 1, tokens_per_minute: 1000000}
    budgets: [{window: day, usd: 10}]
tenants:
  acme: {}
`)
			hdrs := post(pathMessages, tenantHeader("acme"))
			x, _ := h.admit(hdrs, sonnetBody)
			estimate := x.estimateCost
			x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
			if v := x.ResponseBody([]byte(tc.body), true); !v.Done {
				t.Fatal("not metered")
			}
			x.Settle()
			o := x.Outcome()
			if o.Result != tc.want || o.Source != SourceEstimated {
				t.Fatalf("outcome %s (%s), want %s estimated", o.Result, o.Source, tc.want)
			}
			b := h.budgets("acme", "")["day"]
			if b.Reserved != 0 || b.Spent <= 0 || (tc.want == ResultUsageInvalid && b.Spent != int64(estimate)) {
				t.Fatalf("budget %+v, want the estimate %d spent and nothing reserved", b, estimate)
			}
			// The slot is free again.
			y, _ := h.admit(hdrs, sonnetBody)
			finish(y)
		})
	}
}
