package extproc

import (
	"bytes"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
)

// step is one message Envoy sends and what the server must answer: the
// answer's oneof (with an HTTP status for immediate_response), or the gRPC
// error that ends the stream.
type step struct {
	send   *extprocv3.ProcessingRequest
	want   string     // the answer's oneof; "" when the stream must fail
	status int        // immediate_response's HTTP status
	code   codes.Code // the stream's error code when want is ""
	msg    string     // in the error's message, or in the immediate body
	check  func(t *testing.T, r *extprocv3.ProcessingResponse)
}

// ending is how the client side ends a stream after its steps.
type ending uint8

const (
	refused   ending = iota // the server ended it with an error at the last step
	closeSend               // half-close only (Envoy's graceful close)
	cancel                  // reset only (a client or upstream reset)
	both                    // half-close, then reset (Envoy's default close)
)

// stateCase is one message order and what the tenant is charged for it:
// spent within [lo, hi] nano-USD, and never anything left reserved.
type stateCase struct {
	name   string
	tenant string
	steps  []step
	end    ending
	lo, hi int64
}

func answer(kind string) step { return step{want: kind} }

func (s step) to(m *extprocv3.ProcessingRequest) step { s.send = m; return s }

func (s step) checked(f func(t *testing.T, r *extprocv3.ProcessingResponse)) step {
	s.check = f
	return s
}

func fails(m *extprocv3.ProcessingRequest, code codes.Code, msg string) step {
	return step{send: m, code: code, msg: msg}
}

func immediate(m *extprocv3.ProcessingRequest, status int, msg string) step {
	return step{send: m, want: "immediate_response", status: status, msg: msg}
}

const (
	kReqHeaders  = "request_headers"
	kReqBody     = "request_body"
	kReqTrailers = "request_trailers"
	kRspHeaders  = "response_headers"
	kRspBody     = "response_body"
	kRspTrailers = "response_trailers"
)

// meta reads one access-log field tokenwarden attached to an answer.
func meta(r *extprocv3.ProcessingResponse, key string) *structpb.Value {
	return r.GetDynamicMetadata().GetFields()[contract.MetadataNamespace].GetStructValue().GetFields()[key]
}

func setHeader(c *extprocv3.CommonResponse, name string) (string, bool) {
	for _, h := range c.GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == name {
			return string(h.GetHeader().GetRawValue()), true
		}
	}
	return "", false
}

// admitted: the body answer carries the model tokenwarden resolved, which
// it sets only once the request is admitted.
func admitted(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	if m, ok := setHeader(r.GetRequestBody().GetResponse(), contract.ModelHeader); !ok || m != "claude-sonnet-4-5" {
		t.Errorf("body answer %v does not set %s: not admitted", r, contract.ModelHeader)
	}
}

// unchanged: an empty answer, which Envoy reads as "continue as it is".
func unchanged(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	var c *extprocv3.CommonResponse
	switch {
	case r.GetRequestBody() != nil:
		c = r.GetRequestBody().GetResponse()
	case r.GetResponseBody() != nil:
		c = r.GetResponseBody().GetResponse()
	case r.GetResponseHeaders() != nil:
		c = r.GetResponseHeaders().GetResponse()
	}
	if c != nil || r.GetModeOverride() != nil || r.GetDynamicMetadata() != nil {
		t.Errorf("answer %v, want it unchanged", r)
	}
}

func cleared(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	if !r.GetRequestBody().GetResponse().GetBodyMutation().GetClearBody() {
		t.Errorf("chunk answer %v, want clear_body (held back until the last chunk)", r)
	}
}

func measured(cost int64) func(t *testing.T, r *extprocv3.ProcessingResponse) {
	return func(t *testing.T, r *extprocv3.ProcessingResponse) {
		t.Helper()
		if src := meta(r, "usage_source").GetStringValue(); src != "measured" || int64(meta(r, "cost_nano_usd").GetNumberValue()) != cost {
			t.Errorf("final answer metadata %v, want usage_source measured and cost_nano_usd %d", r.GetDynamicMetadata(), cost)
		}
	}
}

func askedBuffered(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	if r.GetModeOverride().GetRequestBodyMode() != filterv3.ProcessingMode_BUFFERED {
		t.Errorf("request_headers answer %v, want mode_override request_body_mode BUFFERED", r)
	}
}

func streamedSSE(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	removed := false
	for _, h := range r.GetResponseHeaders().GetResponse().GetHeaderMutation().GetRemoveHeaders() {
		removed = removed || h == "content-length"
	}
	if r.GetModeOverride().GetResponseBodyMode() != filterv3.ProcessingMode_STREAMED || !removed {
		t.Errorf("SSE response_headers answer %v, want mode_override STREAMED and content-length removed", r)
	}
}

func withProtocolConfig(m *extprocv3.ProcessingRequest, mode filterv3.ProcessingMode_BodySendMode) *extprocv3.ProcessingRequest {
	m.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: mode, ResponseBodyMode: filterv3.ProcessingMode_BUFFERED}
	return m
}

func withPath(m *extprocv3.ProcessingRequest, method, path string) *extprocv3.ProcessingRequest {
	for _, h := range m.GetRequestHeaders().GetHeaders().GetHeaders() {
		switch h.Key {
		case ":method":
			h.RawValue = []byte(method)
		case ":path":
			h.RawValue = []byte(path)
		}
	}
	return m
}

func headersEnd(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingRequest {
	m.GetRequestHeaders().EndOfStream = true
	return m
}

func withRoutePolicy(m *extprocv3.ProcessingRequest, name string) *extprocv3.ProcessingRequest {
	m.Attributes = map[string]*structpb.Struct{contract.AttributesKey: {Fields: map[string]*structpb.Value{
		contract.PolicyAttribute: structpb.NewStringValue(name),
	}}}
	return m
}

// sse joins events and cuts the result at the given offsets, as Envoy's
// STREAMED chunks fall anywhere in an event.
func sse(events []string, cuts ...int) []string {
	all := strings.Join(events, "")
	var out []string
	prev := 0
	for _, c := range cuts {
		out = append(out, all[prev:c])
		prev = c
	}
	return append(out, all[prev:])
}

const (
	noOneof  = "carries no message"
	notFirst = "must start with request_headers"
)

func stateCases(t *testing.T) []stateCase {
	est := inputEstimate(t, messagesBody)
	rq := func(tn string) *extprocv3.ProcessingRequest {
		return requestHeaders(tn, filterv3.ProcessingMode_BUFFERED)
	}
	body := requestBody(messagesBody, true)
	json200 := responseHeaders(200, "application/json", false)
	sse200 := responseHeaders(200, "text/event-stream; charset=utf-8", false)
	chunks := sse(sseEvents, 37, 400, 401, 700)
	half := len(messagesBody) / 2
	return []stateCase{
		// Refused: orders Envoy cannot produce for a governed route.
		{name: "body first (request_header_mode SKIP)", tenant: "s01", end: refused, steps: []step{
			fails(withProtocolConfig(requestBody(messagesBody, true), filterv3.ProcessingMode_BUFFERED), codes.FailedPrecondition, notFirst),
		}},
		{name: "request trailers first", tenant: "s02", end: refused, steps: []step{fails(requestTrailers(), codes.FailedPrecondition, notFirst)}},
		{name: "response headers first", tenant: "s03", end: refused, steps: []step{fails(responseHeaders(200, "application/json", false), codes.FailedPrecondition, notFirst)}},
		{name: "response body first", tenant: "s04", end: refused, steps: []step{fails(responseBody(jsonResponse, true), codes.FailedPrecondition, notFirst)}},
		{name: "response trailers first", tenant: "s05", end: refused, steps: []step{fails(responseTrailers(), codes.FailedPrecondition, notFirst)}},
		{name: "no oneof first", tenant: "s06", end: refused, steps: []step{fails(&extprocv3.ProcessingRequest{}, codes.InvalidArgument, noOneof)}},
		{name: "request headers twice", tenant: "s07", end: refused, steps: []step{
			answer(kReqHeaders).to(rq("s07")),
			fails(rq("s07"), codes.FailedPrecondition, "request_headers received twice"),
		}},
		{name: "request headers again after admission", tenant: "s08", end: refused, lo: est, hi: est, steps: []step{
			answer(kReqHeaders).to(rq("s08")),
			answer(kReqBody).to(body).checked(admitted),
			fails(rq("s08"), codes.FailedPrecondition, "request_headers received twice"),
		}},
		{name: "no oneof after admission", tenant: "s09", end: refused, lo: est, hi: est, steps: []step{
			answer(kReqHeaders).to(rq("s09")),
			answer(kReqBody).to(body).checked(admitted),
			fails(&extprocv3.ProcessingRequest{}, codes.InvalidArgument, noOneof),
		}},

		// Handled.
		{name: "canonical BUFFERED exchange", tenant: "s10", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(rq("s10")),
			answer(kReqBody).to(body).checked(admitted),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(measured(jsonResponseCost)),
		}},
		{name: "BUFFERED body without end_of_stream, then request trailers", tenant: "s11", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(rq("s11")),
			answer(kReqBody).to(requestBody(messagesBody, false)).checked(admitted),
			answer(kReqTrailers).to(requestTrailers()),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(measured(jsonResponseCost)),
		}},
		{name: "request trailers after a BUFFERED body", tenant: "s12", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(rq("s12")),
			answer(kReqBody).to(body).checked(admitted),
			answer(kReqTrailers).to(requestTrailers()),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(measured(jsonResponseCost)),
		}},
		{name: "STREAMED chunks then trailers", tenant: "s13", end: both, steps: []step{
			answer(kReqHeaders).to(requestHeaders("s13", filterv3.ProcessingMode_STREAMED)).checked(askedBuffered),
			answer(kReqBody).to(requestBody(messagesBody[:half], false)).checked(cleared),
			answer(kReqBody).to(requestBody(messagesBody[half:], false)).checked(cleared),
			immediate(requestTrailers(), 500, `"api_error"`),
		}},
		{name: "STREAMED chunks then the last chunk", tenant: "s14", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(requestHeaders("s14", filterv3.ProcessingMode_STREAMED)).checked(askedBuffered),
			answer(kReqBody).to(requestBody(messagesBody[:half], false)).checked(cleared),
			answer(kReqBody).to(requestBody(messagesBody[half:], true)).checked(func(t *testing.T, r *extprocv3.ProcessingResponse) {
				admitted(t, r)
				if got := r.GetRequestBody().GetResponse().GetBodyMutation().GetBody(); string(got) != messagesBody {
					t.Errorf("last chunk's answer carries %q, want the whole body", got)
				}
			}),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(measured(jsonResponseCost)),
		}},
		{name: "response trailers end the response", tenant: "s15", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(rq("s15")),
			answer(kReqBody).to(body).checked(admitted),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse[:40], false)).checked(unchanged),
			answer(kRspBody).to(responseBody(jsonResponse[40:], false)).checked(unchanged),
			answer(kRspTrailers).to(responseTrailers()).checked(measured(jsonResponseCost)),
		}},
		{name: "response headers while the request body streams", tenant: "s16", end: both, steps: []step{
			answer(kReqHeaders).to(requestHeaders("s16", filterv3.ProcessingMode_STREAMED)),
			answer(kReqBody).to(requestBody(messagesBody[:half], false)).checked(cleared),
			answer(kRspHeaders).to(responseHeaders(413, "application/json", false)).checked(unchanged),
			answer(kRspBody).to(responseBody(`{"type":"error"}`, true)).checked(unchanged),
			answer(kReqBody).to(requestBody(messagesBody[half:], true)).checked(unchanged),
			answer(kRspTrailers).to(responseTrailers()),
		}},
		// The same with response_header_mode SKIP: the response's body (or
		// its trailers) is the first sign of it.
		{name: "response body while the request body streams", tenant: "s36", end: both, steps: []step{
			answer(kReqHeaders).to(requestHeaders("s36", filterv3.ProcessingMode_STREAMED)),
			answer(kReqBody).to(requestBody(messagesBody[:half], false)).checked(cleared),
			answer(kRspBody).to(responseBody(`{"type":"error"}`, true)).checked(unchanged),
			answer(kReqBody).to(requestBody(messagesBody[half:], true)).checked(unchanged),
		}},
		{name: "response trailers while the request body streams", tenant: "s37", end: both, steps: []step{
			answer(kReqHeaders).to(requestHeaders("s37", filterv3.ProcessingMode_STREAMED)),
			answer(kReqBody).to(requestBody(messagesBody[:half], false)).checked(cleared),
			answer(kRspTrailers).to(responseTrailers()),
			answer(kReqBody).to(requestBody(messagesBody[half:], true)).checked(unchanged),
		}},
		{name: "final request body twice", tenant: "s17", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(rq("s17")),
			answer(kReqBody).to(body).checked(admitted),
			answer(kReqBody).to(body).checked(unchanged),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(measured(jsonResponseCost)),
		}},
		{name: "response body end twice", tenant: "s18", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(rq("s18")),
			answer(kReqBody).to(body).checked(admitted),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(measured(jsonResponseCost)),
			answer(kRspBody).to(responseBody("", true)).checked(unchanged),
			answer(kRspTrailers).to(responseTrailers()).checked(unchanged),
		}},

		// Streams that end early, as Envoy ends them (half-close and/or reset).
		{name: "ends after request headers", tenant: "s19", end: both, steps: []step{answer(kReqHeaders).to(rq("s19"))}},
		{name: "ends after the request body", tenant: "s20", end: closeSend, lo: est, hi: est, steps: []step{
			answer(kReqHeaders).to(rq("s20")), answer(kReqBody).to(body).checked(admitted),
		}},
		{name: "reset after the request body", tenant: "s21", end: cancel, lo: est, hi: est, steps: []step{
			answer(kReqHeaders).to(rq("s21")), answer(kReqBody).to(body).checked(admitted),
		}},
		{name: "ends after response headers", tenant: "s22", end: both, lo: est, hi: est, steps: []step{
			answer(kReqHeaders).to(rq("s22")), answer(kReqBody).to(body).checked(admitted), answer(kRspHeaders).to(json200),
		}},
		// message_start said 1000 input tokens: the charge starts from there,
		// not from the request's estimate, plus the output seen so far.
		{name: "ends mid SSE body", tenant: "s23", end: cancel, lo: 1000*inNano + outNano, hi: 1000*inNano + 64*outNano, steps: []step{
			answer(kReqHeaders).to(rq("s23")), answer(kReqBody).to(requestBody(streamBody, true)),
			answer(kRspHeaders).to(sse200).checked(streamedSSE),
			answer(kRspBody).to(responseBody(chunks[0], false)).checked(unchanged),
			answer(kRspBody).to(responseBody(chunks[1], false)).checked(unchanged),
			answer(kRspBody).to(responseBody(chunks[2], false)).checked(unchanged),
		}},
		{name: "SSE to its end, then ends", tenant: "s24", end: closeSend, lo: sseCost, hi: sseCost, steps: []step{
			answer(kReqHeaders).to(rq("s24")), answer(kReqBody).to(requestBody(streamBody, true)),
			answer(kRspHeaders).to(sse200).checked(streamedSSE),
			answer(kRspBody).to(responseBody(chunks[0], false)), answer(kRspBody).to(responseBody(chunks[1], false)),
			answer(kRspBody).to(responseBody(chunks[2], false)), answer(kRspBody).to(responseBody(chunks[3], false)),
			answer(kRspBody).to(responseBody(chunks[4], false)),
			answer(kRspBody).to(responseBody("", true)).checked(measured(sseCost)),
		}},

		// What else the adapter decides.
		{name: "not an LLM call: passed through", tenant: "s25", end: both, steps: []step{
			answer(kReqHeaders).to(withPath(rq("s25"), "GET", "/v1/models")).checked(func(t *testing.T, r *extprocv3.ProcessingResponse) {
				if m := r.GetModeOverride(); m.GetResponseHeaderMode() != filterv3.ProcessingMode_SKIP || m.GetRequestBodyMode() != filterv3.ProcessingMode_NONE {
					t.Errorf("pass-through answer %v, want everything after request headers switched off", r)
				}
			}),
			answer(kReqBody).to(body).checked(unchanged),
			answer(kRspHeaders).to(json200).checked(unchanged),
		}},
		{name: "a request without a body", tenant: "s26", end: both, steps: []step{
			immediate(headersEnd(rq("s26")), 400, "has no body"),
			answer(kReqBody).to(body).checked(unchanged),
		}},
		{name: "a body that is not JSON", tenant: "s27", end: both, steps: []step{
			answer(kReqHeaders).to(rq("s27")),
			immediate(requestBody(`{"model":`, true), 400, `"invalid_request_error"`),
			answer(kRspHeaders).to(json200).checked(unchanged),
			answer(kRspTrailers).to(responseTrailers()).checked(unchanged),
		}},
		{name: "the route names the policy", tenant: "s28", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(withRoutePolicy(rq("s28"), "routed")),
			answer(kReqBody).to(body).checked(admitted),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(func(t *testing.T, r *extprocv3.ProcessingResponse) {
				if p := meta(r, "policy").GetStringValue(); p != "routed" {
					t.Errorf("policy %q, want the route's", p)
				}
			}),
		}},
		{name: "header in value, not raw_value", tenant: "s29", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(requestHeaders("", filterv3.ProcessingMode_BUFFERED, &corev3.HeaderValue{Key: "x-tenant-id", Value: "s29"})),
			answer(kReqBody).to(body).checked(admitted),
			answer(kRspHeaders).to(json200),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(func(t *testing.T, r *extprocv3.ProcessingResponse) {
				if tn := meta(r, "tenant").GetStringValue(); tn != "s29" {
					t.Errorf("tenant %q, want s29", tn)
				}
			}),
		}},
		// Providers do not bill failed requests: the reservation is released
		// in full at response headers.
		{name: "the provider fails", tenant: "s30", end: both, steps: []step{
			answer(kReqHeaders).to(rq("s30")), answer(kReqBody).to(body).checked(admitted),
			answer(kRspHeaders).to(responseHeaders(529, "application/json", false)).checked(func(t *testing.T, r *extprocv3.ProcessingResponse) {
				if r.GetModeOverride().GetResponseBodyMode() != filterv3.ProcessingMode_NONE || meta(r, "decision").GetStringValue() != "allowed" {
					t.Errorf("error answer %v, want the body switched off and the outcome attached", r)
				}
			}),
			answer(kRspBody).to(responseBody(`{"type":"error"}`, true)).checked(unchanged),
		}},
		{name: "a response without a body", tenant: "s31", end: both, lo: est, hi: est, steps: []step{
			answer(kReqHeaders).to(rq("s31")), answer(kReqBody).to(body),
			answer(kRspHeaders).to(responseHeaders(200, "application/json", true)),
		}},
		{name: "response_header_mode SKIP: the body comes first", tenant: "s32", end: both, lo: jsonResponseCost, hi: jsonResponseCost, steps: []step{
			answer(kReqHeaders).to(rq("s32")), answer(kReqBody).to(body),
			answer(kRspBody).to(responseBody(jsonResponse, true)).checked(measured(jsonResponseCost)),
		}},
		// response_header_mode SKIP, response_body_mode NONE, trailers SEND:
		// the trailers are all there is of the response.
		{name: "response trailers right after the request", tenant: "s35", end: both, lo: est, hi: est, steps: []step{
			answer(kReqHeaders).to(rq("s35")), answer(kReqBody).to(body),
			answer(kRspTrailers).to(responseTrailers()).checked(func(t *testing.T, r *extprocv3.ProcessingResponse) {
				if src := meta(r, "usage_source").GetStringValue(); src != "missing" {
					t.Errorf("usage_source %q, want missing (charged at the estimate)", src)
				}
			}),
		}},
		{name: "request_body_mode NONE: trailers with nothing to admit", tenant: "s33", end: both, steps: []step{
			answer(kReqHeaders).to(requestHeaders("s33", filterv3.ProcessingMode_NONE)),
			answer(kReqTrailers).to(requestTrailers()),
			answer(kRspHeaders).to(json200).checked(unchanged),
		}},
		// grpc-go refuses a message over the server's limit (RESOURCE_EXHAUSTED,
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/grpc_service.proto
		// max_receive_message_length is Envoy's side of it).
		{name: "a message over the server's limit", tenant: "s34", end: refused, steps: []step{
			answer(kReqHeaders).to(rq("s34")),
			fails(requestBody(strings.Repeat("x", maxTestMessage+1), true), codes.ResourceExhausted, "larger than max"),
		}},
	}
}

// TestStreamStateMachine drives every message order above through one
// in-process server: each step gets exactly the answer (or error) it names,
// and once the stream is over its tenant holds no reservation and was
// charged what the case says.
func TestStreamStateMachine(t *testing.T) {
	h := newHarness(t)
	protocolErrors := 0
	for _, c := range stateCases(t) {
		t.Run(c.name, func(t *testing.T) {
			h.t = t
			s := h.open()
			for i, st := range c.steps {
				resp, err := s.send(st.send)
				if st.want == "" {
					if status.Code(err) != st.code || !strings.Contains(status.Convert(err).Message(), st.msg) {
						t.Fatalf("step %d (%s): %v, want %v naming %q", i, kindOf(st.send), err, st.code, st.msg)
					}
					if st.code == codes.FailedPrecondition || st.code == codes.InvalidArgument {
						protocolErrors++
					}
					continue
				}
				if err != nil {
					t.Fatalf("step %d (%s): %v, want %s", i, kindOf(st.send), err, st.want)
				}
				if got := kindOf(resp); got != st.want {
					t.Fatalf("step %d (%s): answered %s %v, want %s", i, kindOf(st.send), got, resp, st.want)
				}
				if ir := resp.GetImmediateResponse(); ir != nil {
					if int(ir.GetStatus().GetCode()) != st.status || !bytes.Contains(ir.GetBody(), []byte(st.msg)) {
						t.Fatalf("step %d: immediate %d %s, want %d with %q", i, ir.GetStatus().GetCode(), ir.GetBody(), st.status, st.msg)
					}
				}
				if st.check != nil {
					st.check(t, resp)
				}
			}
			switch c.end {
			case closeSend:
				s.closeSend()
			case cancel:
				s.cancel()
			case both:
				_ = s.stream.CloseSend()
				s.cancel()
			case refused:
				s.cancel()
			}
			h.waitIdle()
			if b := h.budget(c.tenant); b.Reserved != 0 || b.Spent < c.lo || b.Spent > c.hi {
				t.Fatalf("tenant %s: %+v, want reserved 0 and spent in [%d, %d]", c.tenant, b, c.lo, c.hi)
			}
		})
	}
	h.t = t
	if got := h.streamErrors(observe.StreamProtocol); got != float64(protocolErrors) {
		t.Errorf("stream_errors_total{reason=protocol} = %v, want %d", got, protocolErrors)
	}
	if got := h.streamErrors(observe.StreamPanic); got != 0 {
		t.Errorf("stream_errors_total{reason=panic} = %v", got)
	}
	// Every tenant's one slot is free again.
	for _, tn := range []string{"s08", "s20", "s21", "s22", "s23", "s30"} {
		if !h.admitOK(tn) {
			t.Errorf("tenant %s: a new request is refused; a lease was left behind", tn)
		}
	}
}

// TestDeniedWhileInFlight: a second request of a tenant at its concurrency
// limit gets a 429 in the dialect, reserves nothing, and the first one still
// settles as usual.
func TestDeniedWhileInFlight(t *testing.T) {
	h := newHarness(t)
	a := h.open()
	a.must(requestHeaders("d", filterv3.ProcessingMode_BUFFERED))
	admitted(t, a.must(requestBody(messagesBody, true)))
	b := h.open()
	b.must(requestHeaders("d", filterv3.ProcessingMode_BUFFERED))
	ir := b.must(requestBody(messagesBody, true)).GetImmediateResponse()
	if ir.GetStatus().GetCode() != 429 || !bytes.Contains(ir.GetBody(), []byte(`"rate_limit_error"`)) {
		t.Fatalf("second request: %v, want a 429 rate_limit_error", ir)
	}
	if v, _ := setHeader(&extprocv3.CommonResponse{HeaderMutation: ir.GetHeaders()}, contract.DeniedHeader); v != "org/concurrency" {
		t.Errorf("%s = %q, want org/concurrency", contract.DeniedHeader, v)
	}
	b.closeSend()
	a.must(responseHeaders(200, "application/json", false))
	a.must(responseBody(jsonResponse, true))
	a.closeSend()
	if st := h.budget("d"); st.Reserved != 0 || st.Spent != jsonResponseCost {
		t.Fatalf("%+v, want reserved 0 and spent %d", st, jsonResponseCost)
	}
}

// TestStreamedBodyTooLarge: a STREAMED body the gate would have to hold
// beyond gate.MaxRequestBody is answered 413 before it is read whole.
func TestStreamedBodyTooLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 64 MiB")
	}
	h := newHarness(t)
	s := h.open()
	s.must(requestHeaders("big", filterv3.ProcessingMode_STREAMED))
	chunk := requestBody(strings.Repeat("x", maxTestMessage-64), false)
	for sent := 0; ; sent += maxTestMessage - 64 {
		resp := s.must(chunk)
		if ir := resp.GetImmediateResponse(); ir != nil {
			if ir.GetStatus().GetCode() != 413 || sent+maxTestMessage-64 <= gate.MaxRequestBody {
				t.Fatalf("after %d bytes: %v, want 413 once past %d", sent+maxTestMessage-64, ir, gate.MaxRequestBody)
			}
			break
		}
		if sent > gate.MaxRequestBody {
			t.Fatalf("%d bytes held without a 413", sent)
		}
	}
	s.closeSend()
	if st := h.budget("big"); st.Reserved != 0 || st.Spent != 0 {
		t.Fatalf("%+v, want nothing charged", st)
	}
}

func TestStateNames(t *testing.T) {
	if awaitRequestHeaders.String() != "await_request_headers" || finished.String() != "finished" || state(200).String() != "unknown" {
		t.Fatal("state names")
	}
}
